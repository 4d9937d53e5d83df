#!/usr/bin/env bash
# The TurboMind path on a real model whose sizes divide by 128 (Qwen2.5-Coder-0.5B: qwen2 arch,
# q/k/v biases, GQA 14/2): quantize once writing both formats, convert the AutoAWQ checkpoint to a
# workspace as `lmdeploy convert` did, check the two workspaces are byte-identical, and evaluate
# the fp model, the AutoAWQ checkpoint and the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
AWQC=target/release/awqc
QWEN=fixtures/qwen2.5-coder-0.5b-hf
SAMPLES=${QWEN_CALIB_SAMPLES:-8}
WINDOWS=${QWEN_EVAL_WINDOWS:-8}
mkdir -p out
$AWQC quantize --model $QWEN --out out/qwen-awq-g128 --turbomind-out out/qwen-awq-g128-tm \
  --w-group-size 128 --calib-dataset c4 --calib-samples "$SAMPLES" --calib-seqlen 512 --force
$AWQC convert --to turbomind out/qwen-awq-g128 --out out/qwen-awq-g128-tm-converted --force
if diff -r out/qwen-awq-g128-tm out/qwen-awq-g128-tm-converted; then
  echo "OK: direct TurboMind export and converted AutoAWQ checkpoint are byte-identical"
else
  echo "FAIL: the two workspaces differ" >&2; exit 1
fi
for m in $QWEN out/qwen-awq-g128 out/qwen-awq-g128-tm; do
  $AWQC eval --model "$m" --windows "$WINDOWS"
done
