#!/usr/bin/env bash
# GPU check for awqc, from a bundle made by `make gpu-bundle` (a stripped release binary, this
# script and a small text; < 64 MiB). Needs no Rust toolchain and no network. In one run:
#   1. kernel-test   every CubeCL kernel against host references on the device
#   2. bench-gpu     W4A16 GEMV/GEMM at 4096x4096, 4096x11008, 11008x4096 (K x N; batch 1, 8, 32)
#                    against a dense f16 matmul of the same shape and the measured copy bandwidth
#   3. synth 7B      a random Llama-7B-shaped AutoAWQ checkpoint (RTN INT4, group 128)
#   4. bench-decode  decode tokens/s of that model (KV policies 0, 8, 4)
#   5. ppl           device vs CPU perplexity of a small random W4 model (must agree within 0.5%)
# Results: a table on stdout and in $OUT/gpu-check.md, plus each step's output, under $OUT
# (or ./gpu-check-out when OUT is unset). Exit status 1 if any step failed.
#
# usage: gpu-check.sh [--device cuda|wgpu] [--small] [--dry-run] [--awqc PATH] [--text FILE] [--work DIR]
#   --small    tiny shapes (to try the script on wgpu / lavapipe without a GPU)
#   --dry-run  print the commands without running them
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
DEVICE=cuda
SMALL=0
DRY=0
AWQC="$HERE/awqc"
TEXT="$HERE/eval.txt"
WORK="${TMPDIR:-/tmp}/awqc-gpu-check"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --small) SMALL=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --awqc) AWQC="$2"; shift 2 ;;
    --text) TEXT="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|wgpu) ;; *) echo "gpu-check: --device cuda or wgpu" >&2; exit 2 ;; esac
RES="${OUT:-$PWD/gpu-check-out}"

if [ "$SMALL" = 1 ]; then
  BENCH_ARGS=(--shapes 256x512,512x256 --batch 1,8 --iters 3 --copy-mib 16 --matmul-dtype f32)
  BIG_SYNTH=(--hidden 256 --intermediate 512 --layers 2 --heads 4 --kv-heads 2 --vocab 512 --w-group-size 64)
  DECODE_ARGS=(--prompt-tokens 16 --tokens 16)
  SMALL_SYNTH=(--hidden 128 --intermediate 256 --layers 2 --heads 4 --kv-heads 2 --vocab 300 --w-group-size 32)
  PPL_ARGS=(--seqlen 128 --windows 2)
else
  BENCH_ARGS=(--iters 50)
  BIG_SYNTH=(--shape 7b)
  DECODE_ARGS=(--prompt-tokens 128 --tokens 128)
  SMALL_SYNTH=(--shape smol --layers 6 --w-group-size 64)
  PPL_ARGS=(--seqlen 512 --windows 8)
fi

if [ "$DRY" = 0 ]; then
  [ -x "$AWQC" ] || { echo "gpu-check: no awqc binary at $AWQC (make gpu-bundle, or --awqc PATH)" >&2; exit 2; }
  [ -f "$TEXT" ] || { echo "gpu-check: no eval text at $TEXT (--text FILE)" >&2; exit 2; }
  mkdir -p "$RES" "$WORK" || exit 2
fi

ROWS=()
FAILED=0
# step NAME OUTFILE CMD...: run CMD with stdout to $RES/OUTFILE (and the terminal), record status and time.
step() {
  local name="$1" out="$2"; shift 2
  if [ "$DRY" = 1 ]; then
    printf '%q ' "$@"; echo "> \$OUT/$out"
    return 0
  fi
  echo "== $name" >&2
  local t0 t1 rc
  t0=$(date +%s.%N)
  "$@" > "$RES/$out" 2> "$RES/$out.stderr"
  rc=$?
  t1=$(date +%s.%N)
  cat "$RES/$out"
  [ $rc -eq 0 ] || { FAILED=1; tail -n 5 "$RES/$out.stderr" >&2; }
  ROWS+=("$name|$([ $rc -eq 0 ] && echo ok || echo "FAIL (exit $rc)")|$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')")
  return $rc
}

# A JSON number field from a file (first occurrence), without jq or python.
field() { grep -o "\"$2\": *[-0-9.eE+]*" "$1" 2>/dev/null | head -n 1 | sed 's/.*: *//'; }

if [ "$DRY" = 0 ]; then
  {
    echo "# awqc GPU check ($DEVICE$([ "$SMALL" = 1 ] && echo ', small shapes'))"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- awqc: $("$AWQC" --version 2>&1)"
    if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
      echo "- gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)"
    fi
  } > "$RES/header.md"
  cat "$RES/header.md"
fi

step "kernel-test ($DEVICE vs host references)" kernel-test.txt "$AWQC" --quiet kernel-test --device "$DEVICE"
step "bench-gpu (W4A16 vs dense matmul vs copy)" bench-gpu.md "$AWQC" --quiet bench-gpu --device "$DEVICE" "${BENCH_ARGS[@]}"
step "synth W4 model (${BIG_SYNTH[*]})" synth-big.txt "$AWQC" --quiet synth "${BIG_SYNTH[@]}" --quantized --force --out "$WORK/big-awq"
step "bench-decode ($DEVICE, KV policies 0/8/4)" bench-decode.txt "$AWQC" --quiet bench-decode --model "$WORK/big-awq" --device "$DEVICE" --quant-policy 0,8,4 "${DECODE_ARGS[@]}"
step "synth small W4 model (${SMALL_SYNTH[*]})" synth-small.txt "$AWQC" --quiet synth "${SMALL_SYNTH[@]}" --quantized --force --out "$WORK/small-awq"
step "ppl on cpu" ppl-cpu.json "$AWQC" --quiet --json eval --model "$WORK/small-awq" --raw-text "$TEXT" "${PPL_ARGS[@]}" --device cpu
step "ppl on $DEVICE" ppl-dev.json "$AWQC" --quiet --json eval --model "$WORK/small-awq" --raw-text "$TEXT" "${PPL_ARGS[@]}" --device "$DEVICE"

[ "$DRY" = 1 ] && exit 0

PPL_CPU=$(field "$RES/ppl-cpu.json" ppl)
PPL_DEV=$(field "$RES/ppl-dev.json" ppl)
if [ -n "$PPL_CPU" ] && [ -n "$PPL_DEV" ]; then
  PPL_LINE=$(awk -v c="$PPL_CPU" -v d="$PPL_DEV" 'BEGIN{r=(d-c)/c; if(r<0)r=-r; printf "cpu %.4f, %s %.4f, rel diff %.2e (bound 5e-3): %s", c, "'"$DEVICE"'", d, r, (r<5e-3?"ok":"FAIL")}')
  case "$PPL_LINE" in *FAIL) FAILED=1 ;; esac
else
  PPL_LINE="missing (see ppl-*.json.stderr)"
  FAILED=1
fi

{
  cat "$RES/header.md"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
  for r in "${ROWS[@]}"; do echo "| ${r//|/ | } |"; done
  echo
  echo "## Kernel checks"
  echo
  echo '```'
  cat "$RES/kernel-test.txt"
  echo '```'
  echo
  echo "## W4A16 vs dense matmul vs copy bandwidth"
  echo
  cat "$RES/bench-gpu.md"
  echo
  echo "## Decode (random W4 model: ${BIG_SYNTH[*]})"
  echo
  echo '```'
  cat "$RES/bench-decode.txt"
  echo '```'
  echo
  echo "## Perplexity, $DEVICE vs CPU (random W4 model: ${SMALL_SYNTH[*]}; ${PPL_ARGS[*]})"
  echo
  echo "$PPL_LINE"
} > "$RES/gpu-check.md"
echo
echo "=================== summary ($RES/gpu-check.md)"
sed -n '/^| step/,/^$/p' "$RES/gpu-check.md"
echo "ppl: $PPL_LINE"
exit $FAILED
