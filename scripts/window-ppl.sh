# Sourced by scripts/peer-load.sh and scripts/hf-engine-check.sh: what both compare against a
# Python peer, set up once. Needs AWQC (the awqc binary) set by the caller.
#
#   peers_venv VENV     create VENV once (marker VENV/.peers-ok): torch 2.7.1, transformers 4.55.4,
#                       accelerate 1.10.1, datasets 2.21.0 (pyarrow 17, pandas 2.2.3),
#                       intel-extension-for-pytorch 2.7.0 from PyPI and autoawq 0.2.9 without its
#                       dependencies: about 6 GB (torch from PyPI brings its CUDA libraries), about
#                       3 min on 2 cores. download.pytorch.org's CPU wheels are not used: only PyPI
#                       is reachable from CI.
#   window_text DIR     DIR/text.txt: the first 300 kB of the bundled Wikipedia text (more than the
#                       32 x 512 tokens scored), and DIR/window_ppl.py (the Python side's scorer)
#   awqc_ppl DIR MODEL [EVAL FLAGS...]
#                       `awqc eval --raw-text DIR/text.txt --seqlen 512 --windows 32`, the
#                       perplexity to 4 decimals (empty on failure)

peers_venv() {
  [ -f "$1/.peers-ok" ] && return 0
  python3 -m venv "$1"
  "$1/bin/pip" install -q torch==2.7.1 transformers==4.55.4 accelerate==1.10.1 "numpy<2" datasets==2.21.0 \
    pyarrow==17.0.0 pandas==2.2.3 zstandard==0.23.0 intel-extension-for-pytorch==2.7.0
  # autoawq 0.2.9 pins an older torch and wants triton; its CPU (IPEX) path needs neither.
  "$1/bin/pip" install -q --no-deps autoawq==0.2.9
  touch "$1/.peers-ok"
}

window_text() {
  mkdir -p "$1"
  head -c 300000 fixtures/text/wiki.utf8 > "$1/text.txt"
  cp scripts/window_ppl.py "$1/window_ppl.py"
}

awqc_ppl() {
  local dir=$1 model=$2
  shift 2
  "$AWQC" eval --model "$model" --raw-text "$dir/text.txt" --seqlen 512 --windows 32 --json "$@" 2>/dev/null \
    | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["ppl"])'
}
