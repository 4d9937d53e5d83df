"""Fixtures for the client tests: one real `awqc serve` on loopback, shared by the whole session.

The server runs the real SmolLM2 AWQ checkpoint (scripts/serve-client-tests.sh makes it when missing)
with `--api-keys test-key`: every /v1 request needs the key (the wrong-key tests rely on it, the web
page test types it into the page's API key field). It listens on `--server-port 0` (a free port
chosen by the kernel; the listening line says which, so there is no race between picking a port and
binding it). At the end it gets SIGTERM and must exit 0.

Environment overrides: AWQC (binary, default target/release/awqc), AWQC_SERVE_MODEL (default
out/smollm2-awq-g64), AWQC_SERVE_READY_TIMEOUT (seconds, default 120).
"""

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AWQC = Path(os.environ.get("AWQC", ROOT / "target/release/awqc"))
MODEL = Path(os.environ.get("AWQC_SERVE_MODEL", ROOT / "out/smollm2-awq-g64"))
READY_TIMEOUT = float(os.environ.get("AWQC_SERVE_READY_TIMEOUT", "120"))
ARTIFACTS = ROOT / "out/test-artifacts"
API_KEY = "test-key"
LISTENING = re.compile(r"awqc serve: listening on (http://127\.0\.0\.1:(\d+)) \(model (.+)\)")


class Server:
    def __init__(self, base_url, model, proc, log_path):
        self.base_url = base_url          # http://127.0.0.1:PORT
        self.api_base = base_url + "/v1"  # what openai.OpenAI(base_url=...) takes
        self.model = model
        self.api_key = API_KEY
        self.proc = proc
        self.log_path = log_path

    def get(self, path, timeout=10, key=None):
        """GET a path; returns (status, body text). `key` adds the Authorization header."""
        req = urllib.request.Request(self.base_url + path)
        if key:
            req.add_header("Authorization", "Bearer " + key)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post_json(self, path, body, key=API_KEY, timeout=120):
        """POST a JSON body; returns (status, parsed JSON or text)."""
        req = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", "Bearer " + key)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def metrics(self):
        """The Prometheus text of /metrics as {name: float} (unlabelled samples only)."""
        status, text = self.get("/metrics")
        assert status == 200, f"/metrics -> {status}: {text[:300]}"
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) >= 2 and "{" not in parts[0]:
                out[parts[0]] = float(parts[1])
        return out

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def server():
    assert AWQC.is_file(), f"{AWQC} missing: build it with `cargo build --release`"
    assert (MODEL / "config.json").is_file(), f"{MODEL} missing: scripts/serve-client-tests.sh makes it"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = ARTIFACTS / "serve.log"
    log = open(log_path, "w")
    cmd = [str(AWQC), "serve", "--model", str(MODEL), "--server-port", "0",
           "--api-keys", API_KEY, "--max-batch-size", "16", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)

    # Read stdout on a thread (a blocking readline cannot time out); keep draining it afterwards so
    # the server never blocks on a full pipe.
    found = {}
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            log.write("[stdout] " + line)
            log.flush()
            m = LISTENING.search(line)
            if m and not ready.is_set():
                found["url"], found["model"] = m.group(1), m.group(3)
                ready.set()
        ready.set()  # EOF: the server exited

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(READY_TIMEOUT) or "url" not in found:
        proc.kill()
        proc.wait()
        log.close()
        pytest.fail(f"awqc serve did not print its listening line within {READY_TIMEOUT:.0f} s "
                    f"(exit code {proc.returncode}); log:\n" + log_path.read_text(errors="replace")[-3000:])
    srv = Server(found["url"], found["model"], proc, log_path)

    # The listening line may come before the model is loaded (503 while loading): wait for /health.
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            status, _ = srv.get("/health", timeout=5)
        except OSError:
            status = None
        if status == 200:
            break
        assert proc.poll() is None, f"awqc serve exited with {proc.returncode}:\n{srv.log_tail()}"
        assert time.monotonic() < deadline, f"/health not 200 within {READY_TIMEOUT:.0f} s (last {status})"
        time.sleep(0.2)

    yield srv

    assert proc.poll() is None, f"awqc serve died during the tests (exit {proc.returncode}):\n{srv.log_tail()}"
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        log.close()
        pytest.fail("awqc serve did not exit within 30 s of SIGTERM")
    log.close()
    assert rc == 0, f"awqc serve exited with {rc} after SIGTERM:\n{srv.log_tail()}"


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.api_base, api_key=server.api_key, max_retries=0, timeout=120)
