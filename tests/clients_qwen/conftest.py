"""The Qwen2.5-Coder-0.5B AWQ round trip (`make test-tools`, scripts/tools-qwen.sh): the same
`awqc serve` fixture as tests/clients (its conftest is loaded from there), pointed by the script at
the quantized Qwen checkpoint with AWQC_SERVE_MODEL."""

import importlib.util
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
for name, path in [("clients_conftest", _here.parent / "clients/conftest.py"),
                   ("clients_test_tools", _here.parent / "clients/test_tools.py")]:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)

from clients_conftest import client, server  # noqa: E402,F401  (pytest fixtures)
