#!/usr/bin/env bash
# Byte-compare awqc's TurboMind export with lmdeploy 0.9.2's own `lmdeploy convert` (CPU only).
# For each tiny synth model (llama; qwen2 with q/k/v biases and tied embeddings): RTN-quantize at
# g128 writing AutoAWQ-GEMM + awqc's workspace, convert the AutoAWQ checkpoint with lmdeploy, then
# compare every workspace file. Prints one line per file; exits 1 on any difference.
# Env: LMDEPLOY_VENV (default /work/lmdeploy-venv, created if missing, ~6 GB), LMD_CMP_DIR (out/lmdeploy-compare).
set -euo pipefail
cd "$(dirname "$0")/.."
AWQC=$PWD/target/release/awqc
VENV=${LMDEPLOY_VENV:-/work/lmdeploy-venv}
DIR=${LMD_CMP_DIR:-$PWD/out/lmdeploy-compare}
[ -x "$AWQC" ] || { echo "missing $AWQC (cargo build --release)" >&2; exit 2; }

# lmdeploy 0.9.2 leaves transformers unpinned; 4.55.4 is its contemporary (transformers 5.x loads
# a qwen2 model's tokenizer as Qwen2Tokenizer, adds <|endoftext|> and so changes tokenizer_size).
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q lmdeploy==0.9.2 transformers==4.55.4
fi

mkdir -p "$DIR"
# Runs lmdeploy's CLI (`lmdeploy convert ...`) with two CPU shims that cannot change output bytes:
#  1. turbomind/turbomind.py does `import _turbomind`, a CUDA extension that needs libcuda.so.1.
#     The converter only takes update_parallel_config (pure python) from that module and never
#     touches _tm when writing files, so a stub module is enough.
#  2. policy.process_awq_gemm calls x.cuda(). With Tensor.cuda = identity the same exact integer /
#     bit ops (&, >>, stack, t, pad, cat) and f16 copies run on CPU instead of the GPU.
cat > "$DIR/lmdeploy_convert.py" <<'EOF'
import sys, types, torch
class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return type(name, (), {})
sys.modules['_turbomind'] = _Stub('_turbomind')
torch.Tensor.cuda = lambda self, *a, **k: self
from lmdeploy.cli.entrypoint import run
sys.argv = ['lmdeploy', 'convert'] + sys.argv[1:]
run()
EOF

# Compares two workspaces file by file; for a differing raw tensor, says how it differs.
cat > "$DIR/compare.py" <<'EOF'
import difflib, hashlib, os, sys
import numpy as np
a_root, b_root = sys.argv[1:3]
def files(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
def sha(p):
    return hashlib.sha256(open(p, 'rb').read()).hexdigest()[:16]
def how(a, b, name):
    if len(a) != len(b):
        return f'size {len(a)} vs {len(b)}'
    dt = np.int32 if name.endswith('qweight') else np.float16
    x, y = np.frombuffer(a, dt), np.frombuffer(b, dt)
    n = int((x.view(np.uint8) != y.view(np.uint8)).sum())
    msg = f'{n} of {len(a)} bytes differ'
    if dt is np.int32:
        nib = lambda v: np.stack([(v >> (4 * i)) & 15 for i in range(8)], -1)
        if np.array_equal(np.sort(nib(x), -1), np.sort(nib(y), -1)):
            msg += '; same nibbles per word (nibble order)'
    if np.array_equal(np.sort(x.view(np.uint8)), np.sort(y.view(np.uint8))):
        msg += '; same multiset of bytes (permutation?)'
    return msg
bad = 0
for rel in sorted(files(a_root) | files(b_root)):
    pa, pb = os.path.join(a_root, rel), os.path.join(b_root, rel)
    if not (os.path.exists(pa) and os.path.exists(pb)):
        print(f'DIFFERENT {rel}: only in {a_root if os.path.exists(pa) else b_root}'); bad = 1; continue
    A, B = open(pa, 'rb').read(), open(pb, 'rb').read()
    if A == B:
        print(f'same      {rel} {len(A)} B sha256 {sha(pa)}'); continue
    bad = 1
    if rel.endswith(('.yaml', '.json')):
        d = [l for l in difflib.unified_diff(A.decode().splitlines(), B.decode().splitlines(), 'awqc', 'lmdeploy', n=0, lineterm='')
             if l[:1] in '+-' and l[:3] not in ('+++', '---')]
        print(f'DIFFERENT {rel}: ' + ' | '.join(d))
    else:
        print(f'DIFFERENT {rel}: ' + how(A, B, rel))
sys.exit(bad)
EOF

# Quantize $2 (an HF model dir) with RTN g128 into both formats, convert the AutoAWQ checkpoint
# with lmdeploy, compare. $1 names the run; $3 is the model_name both tools write.
compare() {
  local name=$1 fp=$2 model_name=$3
  "$AWQC" --quiet quantize --model "$fp" --out "$DIR/$name-awq" --turbomind-out "$DIR/$name-tm-awqc" \
    --w-group-size 128 --calib-samples 0 --force
  # model_name = model_type and chat_template = base are what awqc writes; lmdeploy would otherwise
  # guess the template from the directory name (e.g. "qwen" for any path containing "qwen").
  "$VENV/bin/python" "$DIR/lmdeploy_convert.py" "$model_name" "$DIR/$name-awq" --model-format awq --group-size 128 \
    --chat-template base --dst-path "$DIR/$name-tm-lmdeploy" > "$DIR/$name-lmdeploy.log" 2>&1 \
    || { echo "lmdeploy convert failed, see $DIR/$name-lmdeploy.log" >&2; exit 2; }
  echo "== $name: awqc vs lmdeploy convert"
  "$VENV/bin/python" "$DIR/compare.py" "$DIR/$name-tm-awqc" "$DIR/$name-tm-lmdeploy" || status=1
}

status=0
# Tiny random models: llama, and qwen2 with q/k/v biases and tied embeddings.
SHAPE=(--hidden 256 --intermediate 512 --layers 2 --heads 4 --kv-heads 2 --vocab 512)
for spec in "llama" "qwen2 --tied"; do
  set -- $spec; arch=$1; shift
  "$AWQC" --quiet synth --out "$DIR/$arch-fp" --arch "$arch" "${SHAPE[@]}" "$@" --force
  compare "$arch" "$DIR/$arch-fp" "$arch"
done
# The real Qwen2.5-Coder-0.5B (make fixtures-qwen), when present: real tokenizer (tokenizer_size
# 151665 < vocab 151936), 24 layers, tied embeddings.
QWEN=fixtures/qwen2.5-coder-0.5b-hf
if [ -f "$QWEN/config.json" ]; then
  compare qwen2.5-coder-0.5b "$QWEN" qwen2
else
  echo "skipping the real-model comparison: $QWEN missing (make fixtures-qwen)"
fi
exit $status
