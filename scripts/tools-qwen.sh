#!/usr/bin/env bash
# The course's function-calling round trip on Qwen2.5-Coder-0.5B-Instruct AWQ (`make test-tools`):
# `awqc serve` on the quantized checkpoint, the official openai client, tool_choice "auto",
# streamed and not, final answer 16 (tests/clients_qwen). Not in `make test`: the quantization
# takes about 20 minutes on 2 cores (once; the checkpoint stays in out/qwen-awq-g128).
#
#   scripts/tools-qwen.sh [PYTEST ARGS...]
#
# Needs fixtures/qwen2.5-coder-0.5b-hf (`make fixtures-qwen`) and the client venv that
# scripts/serve-client-tests.sh makes (made here too when missing). The exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

AWQC=${AWQC:-target/release/awqc}
QWEN=fixtures/qwen2.5-coder-0.5b-hf
MODEL=out/qwen-awq-g128
VENV=out/venv-clients

say() { echo "tools-qwen.sh: $*" >&2; }
die() { echo "tools-qwen.sh: ERROR: $*" >&2; exit 1; }

[ -x "$AWQC" ] || die "$AWQC missing: cargo build --release"
[ -f "$QWEN/config.json" ] || die "$QWEN missing: make fixtures-qwen"
if [ ! -x "$VENV/bin/python" ]; then
  # The client tests' own script makes the venv (pins in one place): its setup, then a pytest
  # --collect-only that runs nothing. (The setup also makes out/smollm2-awq-g64 when missing.)
  ./scripts/serve-client-tests.sh --collect-only -q >/dev/null || die "making $VENV failed"
fi
if [ ! -f "$MODEL/config.json" ] || [ ! -f "$MODEL/model.safetensors" ]; then
  say "making $MODEL (about 20 minutes on 2 cores)"
  "$AWQC" --quiet quantize --model "$QWEN" --out "$MODEL" --w-group-size 128 \
    --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --force
fi

export AWQC AWQC_SERVE_MODEL="$MODEL" AWQC_SERVE_READY_TIMEOUT=300 PYTHONDONTWRITEBYTECODE=1
mkdir -p out/test-artifacts
start=$(date +%s)
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "${@:--v}" tests/clients_qwen
rc=$?
set -e
say "pytest exit $rc after $(( $(date +%s) - start )) s; transcripts: out/test-artifacts/tools-qwen-*.json, server log: out/test-artifacts/serve.log"
exit "$rc"
