#!/usr/bin/env bash
# Regenerate tests/fixtures/chat_templates/{smollm2,qwen2.5,python-compat}.json with transformers
# itself (apply_chat_template, tokenize=False), for tests/chat_templates.rs. python-compat.jinja is
# a made-up template that exercises the Jinja2/Python behaviours other models' templates use.
#
# A venv with pinned transformers + jinja2 (no torch) is made in $TEMPLATE_VENV
# (default /tmp/awqc-template-venv). The template texts are the checked-in
# tests/fixtures/chat_templates/*.jinja; a missing one is taken from the model:
#   smollm2.jinja: fixtures/smollm2-hf/tokenizer_config.json, else the GGUF's tokenizer.chat_template
#                  (downloaded by ./scripts/fetch-fixtures.sh);
#   qwen2.5.jinja: fixtures/qwen2.5-coder-0.5b-hf/tokenizer_config.json, else its GGUF
#                  (./scripts/fetch-qwen.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

TRANSFORMERS_VERSION=5.24.0
JINJA2_VERSION=3.1.6
VENV=${TEMPLATE_VENV:-/tmp/awqc-template-venv}
DIR=tests/fixtures/chat_templates
PY=scripts/chat-template-fixtures.py
mkdir -p "$DIR"

if ! "$VENV/bin/python" -c "import transformers, jinja2, sys; sys.exit(not (transformers.__version__ == '$TRANSFORMERS_VERSION' and jinja2.__version__ == '$JINJA2_VERSION'))" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "transformers==$TRANSFORMERS_VERSION" "jinja2==$JINJA2_VERSION"
fi

template_from() { # out.jinja  hf-dir  gguf  fetch-script
  local out=$1 hf=$2 gguf=$3 fetch=$4
  [ -f "$out" ] && return
  if [ -f "$hf/tokenizer_config.json" ]; then
    python3 -c 'import json, sys; open(sys.argv[2], "w", encoding="utf-8").write(json.load(open(sys.argv[1], encoding="utf-8"))["chat_template"])' \
      "$hf/tokenizer_config.json" "$out"
  else
    [ -f "$gguf" ] || "$fetch"
    python3 "$PY" --extract-gguf "$gguf" "$out"
  fi
  echo "$out: from the model"
}
template_from "$DIR/smollm2.jinja" fixtures/smollm2-hf fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ./scripts/fetch-fixtures.sh
template_from "$DIR/qwen2.5.jinja" fixtures/qwen2.5-coder-0.5b-hf \
  fixtures/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ./scripts/fetch-qwen.sh

# Tokenizer-free transformers: silence its "PyTorch was not found" notice.
TRANSFORMERS_VERBOSITY=error "$VENV/bin/python" "$PY" --out-dir "$DIR" \
  "smollm2=$DIR/smollm2.jinja" "qwen2.5=$DIR/qwen2.5.jinja" "python-compat=$DIR/python-compat.jinja"
