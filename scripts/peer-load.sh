#!/usr/bin/env bash
# Does a peer load awqc's AutoAWQ-GEMM checkpoint and compute the same thing with it? (issue 14)
# AutoAWQ 0.2.9 (`AutoAWQForCausalLM.from_quantized` on the CPU, which AutoAWQ serves with its
# WQLinear_IPEX layers: the checkpoint's qweight / qzeros / scales handed to Intel Extension for
# PyTorch 2.7's weight-only-quantized linear in its AWQ format, scales in bf16, activations fp16)
# scores the same 32 windows of 512 tokens of the bundled Wikipedia text as `awqc eval --raw-text`
# on the same checkpoint (W4A16 in f32). Prints both perplexities; exits 1 if they differ by more
# than 0.5% relative (bf16 scales and fp16 activations against f32), or if AutoAWQ's is not
# at least 10x closer to awqc's than awqc's fp-to-checkpoint gap (so an unpacking error or a
# model AutoAWQ silently left unquantized cannot pass).
#
#   scripts/peer-load.sh [CHECKPOINT [FP_MODEL]]
#       defaults: out/smollm2-awq-g64-zero (made when missing with the quantize flags of
#       scripts/goldens.sh's entry awq-g64-ci-zero: AWQ + --zero-search, group 64, 4 x 512 c4 tokens) and
#       fixtures/smollm2-hf
#   env: PEERS_VENV (default out/venv-peers; created when missing, see peers_venv in
#        scripts/window-ppl.sh: torch, transformers, IPEX and autoawq from PyPI, about 6 GB)
set -euo pipefail
cd "$(dirname "$0")/.."
AWQC=$PWD/target/release/awqc
CKPT=${1:-out/smollm2-awq-g64-zero}
FP=${2:-fixtures/smollm2-hf}
VENV=${PEERS_VENV:-out/venv-peers}
DIR=out/peer-load
[ -x "$AWQC" ] || { echo "peer-load.sh: missing $AWQC (cargo build --release)" >&2; exit 2; }
[ -f "$FP/config.json" ] || { echo "peer-load.sh: missing $FP (make fixtures)" >&2; exit 2; }
. scripts/window-ppl.sh
if [ ! -f "$CKPT/model.safetensors" ]; then
  [ "$CKPT" = out/smollm2-awq-g64-zero ] || { echo "peer-load.sh: no $CKPT/model.safetensors" >&2; exit 2; }
  # The quantize flags of goldens.sh's entry (one definition of the job).
  args=$(sed -n 's/^ *"awq-g64-ci-zero|\([^|]*\)|.*/\1/p' scripts/goldens.sh)
  [ -n "$args" ] || { echo "peer-load.sh: no entry awq-g64-ci-zero in scripts/goldens.sh" >&2; exit 2; }
  # shellcheck disable=SC2086
  "$AWQC" --quiet quantize --model "$FP" $args --out "$CKPT" --force
fi
peers_venv "$VENV"
window_text "$DIR"

cat > "$DIR/autoawq_ppl.py" <<'PY'
import sys, warnings, torch
import window_ppl
from awq import AutoAWQForCausalLM
from awq.modules.linear.gemm import WQLinear_GEMM
from transformers import AutoTokenizer
torch.set_num_threads(2)
ckpt, text_path = sys.argv[1:3]
seqlen, nwin = 512, 32
warnings.filterwarnings("ignore")
tok = AutoTokenizer.from_pretrained(ckpt)
m = AutoAWQForCausalLM.from_quantized(ckpt, fuse_layers=False, device_map={"": "cpu"})
qs = [type(x).__name__ for x in m.model.modules() if isinstance(x, WQLinear_GEMM)]
n_q = len(qs)
print(f"AutoAWQ loaded {n_q} quantized linears: {sorted(set(qs))}", file=sys.stderr)
assert n_q > 0, "no quantized linear layers were loaded"
print(f"{window_ppl.perplexity(m.model, window_ppl.windows(tok, text_path, seqlen, nwin), 4):.4f}")
PY

fp=$(awqc_ppl "$DIR" "$FP")
ours=$(awqc_ppl "$DIR" "$CKPT")
peer=$("$VENV/bin/python" "$DIR/autoawq_ppl.py" "$CKPT" "$DIR/text.txt" | tail -1)
[ -n "$fp" ] && [ -n "$ours" ] && [ -n "$peer" ] || { echo "peer-load.sh: a run failed (fp '$fp', awqc '$ours', AutoAWQ '$peer')" >&2; exit 1; }
printf '%-44s %10s\n' "fp model, awqc eval" "$fp" "$CKPT, awqc eval (f32)" "$ours" "$CKPT, AutoAWQ 0.2.9 + IPEX (fp16)" "$peer"
python3 - "$fp" "$ours" "$peer" <<'PY'
import sys
fp, ours, peer = map(float, sys.argv[1:])
rel = abs(peer / ours - 1)
print(f"AutoAWQ / awqc = {peer / ours:.5f} (|diff| {abs(peer - ours):.4f}; awqc's gap to fp {ours - fp:.4f})")
ok = rel <= 0.005 and abs(peer - ours) * 10 <= abs(ours - fp)
print("peer-load: " + ("OK" if ok else "MISMATCH"))
sys.exit(0 if ok else 1)
PY
