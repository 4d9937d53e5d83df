#!/usr/bin/env bash
# Client tests of `awqc serve` (tests/clients): the official `openai` Python client, 16 concurrent
# streams plus a client killed mid-stream, and the web chat page in headless Chromium (Playwright
# driving Debian's /usr/bin/chromium; Playwright's own browser download is never used).
#
#   scripts/serve-client-tests.sh [PYTEST ARGS...]      (default: -q; called by `make test`)
#
# Makes, once: a venv out/venv-clients with the pinned packages below (re-made when the pins change),
# and the real AWQ checkpoint out/smollm2-awq-g64 (from fixtures/smollm2-hf, `make fixtures`; about
# 2 minutes on 2 cores). Needs python3 with venv (Debian: python3-venv) and chromium (.ci/run
# installs both). Env: AWQC (binary, default target/release/awqc), AWQC_CHROMIUM (/usr/bin/chromium).
# The exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

AWQC=${AWQC:-target/release/awqc}
VENV=out/venv-clients
MODEL=out/smollm2-awq-g64
PINS=(openai==2.54.0 pytest==9.2.0 playwright==1.65.2)

say() { echo "serve-client-tests.sh: $*" >&2; }
die() { echo "serve-client-tests.sh: ERROR: $*" >&2; exit 1; }

[ -x "$AWQC" ] || die "$AWQC missing: cargo build --release"

# The venv, made once; its stamp records the pins it was made with.
STAMP="$VENV/.pins"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "${PINS[*]}" ]; then
  say "creating $VENV (${PINS[*]})"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" > "$STAMP"
fi

# The real AWQ checkpoint of SmolLM2 (the same command as the demo's, fewer calibration samples).
if [ ! -f "$MODEL/config.json" ] || [ ! -f "$MODEL/model.safetensors" ]; then
  [ -f fixtures/smollm2-hf/config.json ] || die "fixtures/smollm2-hf missing: make fixtures"
  say "making $MODEL (about 2 minutes)"
  "$AWQC" --quiet quantize --model fixtures/smollm2-hf --out "$MODEL" --w-group-size 64 \
    --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --force
fi

export AWQC PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in tests/clients
mkdir -p out/test-artifacts
# -p no:cacheprovider: no .pytest_cache in the source tree.
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "${@:--q}" tests/clients
rc=$?
set -e
[ "$rc" = 0 ] || say "FAILED (pytest exit $rc); server log: out/test-artifacts/serve.log"
exit "$rc"
