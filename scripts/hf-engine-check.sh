#!/usr/bin/env bash
# Cross-check two serving features of awqc's engine against HF transformers: same model, same
# text, same 32 windows of 512 tokens, f32 on the CPU.
#  - KV-cache quantization (awq-reference §7): the HF side applies TurboMind's per-(token, KV head)
#    asymmetric fake quantization (scale and zero rounded to f16, round-half-even, real zero = min)
#    to post-RoPE K (a wrapper around apply_rotary_pos_emb) and to V (a forward hook on v_proj).
#    It also scores K-only and V-only int4 to show which one costs.
#  - Dynamic NTK (§8) with max_position_embeddings overridden to 256: HF's own "dynamic" rope type
#    (its base for a 512-token forward equals TurboMind's per-prompt base).
# Prints one line per setting; exits 1 if awqc and HF disagree by more than 0.5% relative on any
# compared perplexity (they differ only in float summation order, which moves a few quantization
# boundaries; int4 K amplifies it: HF's int4 value moved 0.11% between an AVX2 and an AVX-512
# machine). The HF side computes RoPE angles in f64, like awqc (see rotary_f64 below).
# Env: PEERS_VENV (default out/venv-peers, shared with scripts/peer-load.sh; created when missing,
# see peers_venv in scripts/window-ppl.sh; any venv with torch and transformers 4.55 will do),
# MODEL (default fixtures/smollm2-hf).
set -euo pipefail
cd "$(dirname "$0")/.."
AWQC=$PWD/target/release/awqc
VENV=${PEERS_VENV:-out/venv-peers}
MODEL=${MODEL:-$PWD/fixtures/smollm2-hf}
[ -x "$AWQC" ] || { echo "missing $AWQC (cargo build --release)" >&2; exit 2; }
[ -f "$MODEL/config.json" ] || { echo "missing $MODEL (make fixtures)" >&2; exit 2; }
. scripts/window-ppl.sh
[ -x "$VENV/bin/python" ] || peers_venv "$VENV"
DIR=$PWD/out/hf-engine-check
# 32 windows of 512 tokens (the "ci" window shape) from the start of the bundled Wikipedia text.
window_text "$DIR"

cat > "$DIR/hf_engine.py" <<'PY'
import sys, torch, transformers
import window_ppl
from transformers.models.llama import modeling_llama as ml
torch.set_num_threads(2)
# which: kv | k | v (what is quantized when bits > 0); max_pos 0 = the config's; rope: none | dynamic:F
model_dir, text_path, bits, which, max_pos, rope_flag = sys.argv[1:7]
bits, max_pos = int(bits), int(max_pos)
seqlen, nwin = 512, 32

def fq(x):
    """TurboMind's KV quantizer over the last dim (head_dim), dequantized back to f32."""
    if bits == 0:
        return x
    maxq = 2 ** bits - 1
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    s, z = ((hi - lo) / maxq).half().float(), lo.half().float()
    inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
    return torch.round((x - z) * inv).clamp(0, maxq) * s + z   # torch.round: half to even

# RoPE angles in f64, as awqc's tables are (engine/rope.rs), for the default rope type. HF's own
# f32 angles (position x f32 inv_freq) alone move the int4-KV perplexity by 0.3% (measured on
# SmolLM2: 16.7600 with them, 16.8102 with f64 angles; fp KV 15.3450 either way): int4 K rounding
# amplifies angle errors of ~1e-5 rad, so without this the rows would compare RoPE precision, not
# the KV quantizer. The NTK rows keep HF's own implementation (that is what they check).
def rotary_f64(self, x, position_ids):
    assert self.rope_type == 'default', f"f64 RoPE tables implemented for the default rope type, not {self.rope_type}"
    half = self.inv_freq.shape[0]
    inv = 1.0 / (self.config.rope_theta ** (torch.arange(0, 2 * half, 2, dtype=torch.float64) / (2 * half)))
    freqs = (inv[None, :, None] @ position_ids[:, None, :].double()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)
if rope_flag == 'none':
    ml.LlamaRotaryEmbedding.forward = rotary_f64

rope = ml.apply_rotary_pos_emb
def rope_then_quant(q, k, *a, **kw):
    q, k = rope(q, k, *a, **kw)                 # k: [batch, kv_heads, seq, head_dim]
    return q, (fq(k) if 'k' in which else k)
ml.apply_rotary_pos_emb = rope_then_quant

tok = transformers.AutoTokenizer.from_pretrained(model_dir)
cfg = transformers.AutoConfig.from_pretrained(model_dir)
if max_pos:
    cfg.max_position_embeddings = max_pos
if rope_flag != 'none':
    kind, factor = rope_flag.split(':')
    cfg.rope_scaling = {"rope_type": kind, "factor": float(factor)}
m = transformers.AutoModelForCausalLM.from_pretrained(model_dir, config=cfg, torch_dtype=torch.float32).eval()
hd = getattr(m.config, 'head_dim', None) or m.config.hidden_size // m.config.num_attention_heads
if 'v' in which:
    def v_hook(mod, inp, out):                  # out: [batch, seq, kv_heads * head_dim]
        b, s, w = out.shape
        return fq(out.view(b, s, w // hd, hd)).view(b, s, w)
    for layer in m.model.layers:
        layer.self_attn.v_proj.register_forward_hook(v_hook)
print(f"{window_ppl.perplexity(m, window_ppl.windows(tok, text_path, seqlen, nwin), 8):.4f}")
PY

# hf BITS WHICH MAX_POS ROPE; aw AWQC-EVAL-FLAGS...
hf() { "$VENV/bin/python" "$DIR/hf_engine.py" "$MODEL" "$DIR/text.txt" "$@" 2>/dev/null | tail -1; }
aw() { awqc_ppl "$DIR" "$MODEL" "$@"; }

fail=0
row() {  # label awqc-ppl hf-ppl
  [ -n "$2" ] && [ -n "$3" ] || { echo "$1: a run failed (awqc '$2', HF '$3')" >&2; exit 1; }
  printf '%-34s %10s %10s %9s\n' "$1" "$2" "$3" "$(python3 -c "print('%.5f' % ($2 / $3))")"
  python3 -c "import sys; sys.exit(abs($2 / $3 - 1) > 0.005)" || fail=1
}
printf '%-34s %10s %10s %9s\n' "setting" "awqc" "HF" "awqc/HF"
row "KV fp (quant-policy 0)" "$(aw --quant-policy 0)" "$(hf 0 kv 0 none)"
row "KV int8 (quant-policy 8)" "$(aw --quant-policy 8)" "$(hf 8 kv 0 none)"
row "KV int4 (quant-policy 4)" "$(aw --quant-policy 4)" "$(hf 4 kv 0 none)"
printf '%-34s %10s %10s\n' "KV int4, K only" "-" "$(hf 4 k 0 none)"
printf '%-34s %10s %10s\n' "KV int4, V only" "-" "$(hf 4 v 0 none)"
row "max_pos 256, no scaling" "$(aw --max-position-embeddings 256)" "$(hf 0 kv 256 none)"
row "max_pos 256, dynamic NTK factor 2" "$(aw --max-position-embeddings 256 --rope-scaling dynamic:2)" "$(hf 0 kv 256 dynamic:2)"
exit $fail
