#!/usr/bin/env bash
# Regenerate tests/fixtures/calib_sampling/c4-smollm2.json: AutoAWQ's get_calib_dataset and the
# contiguous construction run in Python with transformers' tokenizer on the bundled c4 text, for
# tests/data_sampling.rs (--calib-sampling autoawq / contiguous). Needs ./scripts/fetch-fixtures.sh
# and fixtures/smollm2-hf (awqc convert). The venv (pinned transformers, no torch) is shared with
# make-template-fixtures.sh: $TEMPLATE_VENV, default /tmp/awqc-template-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSFORMERS_VERSION=5.24.0
VENV=${TEMPLATE_VENV:-/tmp/awqc-template-venv}
if ! "$VENV/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '$TRANSFORMERS_VERSION')" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "transformers==$TRANSFORMERS_VERSION" "jinja2==3.1.6"
fi
mkdir -p tests/fixtures/calib_sampling
"$VENV/bin/python" scripts/calib-sampling-fixtures.py fixtures/smollm2-hf fixtures/text/c4.utf8 tests/fixtures/calib_sampling/c4-smollm2.json
echo "wrote tests/fixtures/calib_sampling/c4-smollm2.json"
