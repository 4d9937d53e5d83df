#!/usr/bin/env python3
"""Load generator for any OpenAI-compatible server (awqc serve, llama-server, vLLM, ...).

Standard library only. For each concurrency level it sends --requests-per-level streaming chat
completions (greedy: temperature 0) from that many client threads and measures, from the SSE chunk
arrival times:

  output tok/s   total completion tokens of the level / wall time of the level
  req/s          successful requests / wall time
  TTFT p50/p99   request start -> first chunk that carries content
  ITL  p50/p99   gaps between consecutive content chunks (one chunk is one token on servers that
                 stream token by token; "tok/chunk" in the JSON tells when it is not)
  errors         HTTP errors, timeouts, broken streams, empty answers

Tokens are counted from the final `usage` chunk when the server honours
`stream_options.include_usage`, else from the number of content chunks ("tokens from" column).
`ignore_eos` is not standard, so the built-in prompts ask for long answers; the actual number of
tokens is reported. Every request has a deadline (--timeout) and the script ends by itself.

  scripts/bench-serve.py --url http://127.0.0.1:8080 --model NAME --concurrency 1,4,16 \
      --requests-per-level 16 --max-tokens 64 --prompts builtin --json-out out/x.json
  scripts/bench-serve.py --table out/a.json out/b.json     # one side-by-side table from saved runs
"""
import argparse
import http.client
import json
import os
import queue
import socket
import sys
import threading
import time
import urllib.parse

BUILTIN_PROMPTS = [
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a refrigerator works, step by step, for a curious teenager.",
    "Describe the history of the printing press and its effects on Europe, in several paragraphs.",
    "Write a detailed guide to planting and caring for a vegetable garden through the seasons.",
    "Tell a long fairy tale about a dragon who is afraid of the dark.",
    "Explain how the water cycle works, covering evaporation, condensation, precipitation and runoff.",
    "Write a long letter from a sailor to his family describing a voyage across the ocean.",
    "Describe, step by step, how to bake a loaf of bread from scratch, with tips for beginners.",
    "Explain in detail why the sky is blue and why sunsets are red.",
    "Write a long essay on the importance of sleep for health and learning.",
    "Tell a detailed story about two friends who build a treehouse together over a summer.",
    "Explain how computers store numbers and text in memory, with examples.",
    "Describe a day in the life of a medieval blacksmith in as much detail as you can.",
    "Write a long explanation of how airplanes fly, covering lift, thrust, drag and weight.",
    "Write a detailed travel guide for a week-long trip to a mountain village.",
    "Explain the causes and effects of the seasons on Earth in several paragraphs.",
    "Tell a long adventure story about a cat who sails around the world.",
    "Explain in detail how vaccines train the immune system.",
    "Write a step-by-step tutorial on learning to ride a bicycle, with safety advice.",
    "Describe the life cycle of a star, from nebula to its final state, in detail.",
    "Write a long story about a robot who wants to become a painter.",
    "Explain how bees make honey and why they are important for farming.",
    "Write a detailed description of a bustling city market in the early morning.",
    "Explain the rules of chess and some basic strategies for beginners, in detail.",
    "Tell a long story about a girl who discovers a secret library under her school.",
    "Explain how electricity gets from a power plant to the outlets in a house.",
    "Write a long diary entry of an astronaut on her first week on the space station.",
    "Describe in detail how to train a puppy to sit, stay and come when called.",
    "Explain the history of the Olympic Games from ancient Greece to today.",
    "Write a long bedtime story about a family of rabbits preparing for winter.",
    "Explain in detail how a bill becomes a law, step by step.",
    "Describe the process of making paper from trees, from forest to notebook.",
]


def pct(xs, p):
    """Percentile with linear interpolation (p in 0..100); None for no data."""
    if not xs:
        return None
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def load_prompts(spec):
    if spec == "builtin":
        return list(BUILTIN_PROMPTS)
    with open(spec, encoding="utf-8") as f:
        text = f.read()
    if spec.endswith(".json"):
        data = json.loads(text)
        return [p if isinstance(p, str) else p["prompt"] for p in data]
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if spec.endswith(".jsonl"):
            obj = json.loads(line)
            out.append(obj if isinstance(obj, str) else obj["prompt"])
        else:
            out.append(line)
    if not out:
        raise SystemExit(f"no prompts in {spec}")
    return out


class Target:
    def __init__(self, url, api_key):
        u = urllib.parse.urlparse(url)
        if u.scheme not in ("http", "https"):
            raise SystemExit(f"--url must be http(s)://HOST:PORT, got {url}")
        self.https = u.scheme == "https"
        self.host = u.hostname
        self.port = u.port or (443 if self.https else 80)
        base = u.path.rstrip("/")
        if base.endswith("/v1"):
            base = base[:-3]
        self.base = base
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def conn(self, timeout):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def get_json(self, path, timeout=10):
        c = self.conn(timeout)
        try:
            c.request("GET", self.base + path, headers={k: v for k, v in self.headers.items() if k != "Accept"})
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {r.status}: {body[:200]!r}")
            return json.loads(body)
        finally:
            c.close()


def one_request(target, model, prompt, max_tokens, timeout, include_usage=True, extra_body=None):
    """Send one streaming chat completion; return a dict of timings (never raises)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(extra_body or {})
    res = {"ok": False, "error": None, "ttft": None, "chunk_times": [], "usage_tokens": None,
           "chunks": 0, "finish_reason": None, "chars": 0}
    t0 = time.perf_counter()
    deadline = t0 + timeout
    c = target.conn(timeout=min(timeout, 60))
    try:
        c.request("POST", target.base + "/v1/chat/completions", body=json.dumps(body), headers=target.headers)
        r = c.getresponse()
        if r.status != 200:
            res["error"] = f"HTTP {r.status}: {r.read(300)!r}"
            return res
        done = False
        while True:
            if time.perf_counter() > deadline:
                res["error"] = f"timeout after {timeout}s"
                return res
            line = r.readline()
            if not line:
                break  # EOF
            line = line.strip()
            if not line or line.startswith(b":") or not line.startswith(b"data:"):
                continue  # blank separators, comments, event:/id: fields
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            now = time.perf_counter()
            try:
                obj = json.loads(data)
            except ValueError:
                res["error"] = f"bad SSE json: {data[:120]!r}"
                return res
            if "error" in obj:
                res["error"] = f"server error: {json.dumps(obj['error'])[:200]}"
                return res
            usage = obj.get("usage")
            if usage and usage.get("completion_tokens") is not None:
                res["usage_tokens"] = int(usage["completion_tokens"])
            for ch in obj.get("choices") or []:
                delta = ch.get("delta") or {}
                content = delta.get("content") or delta.get("reasoning_content") or ""
                if content:
                    if res["ttft"] is None:
                        res["ttft"] = now - t0
                    res["chunk_times"].append(now)
                    res["chunks"] += 1
                    res["chars"] += len(content)
                if ch.get("finish_reason"):
                    res["finish_reason"] = ch["finish_reason"]
        if not done and res["finish_reason"] is None:
            res["error"] = "stream ended without [DONE] or finish_reason"
            return res
        if res["chunks"] == 0:
            res["error"] = "empty answer"
            return res
        res["ok"] = True
        return res
    except (socket.timeout, TimeoutError):
        res["error"] = "socket timeout"
        return res
    except (OSError, http.client.HTTPException) as e:
        res["error"] = f"{type(e).__name__}: {e}"
        return res
    finally:
        res["latency"] = time.perf_counter() - t0
        try:
            c.close()
        except Exception:
            pass


def run_level(target, model, prompts, conc, n, max_tokens, timeout, prompt_offset, include_usage, extra_body=None):
    jobs = queue.Queue()
    for i in range(n):
        jobs.put(prompts[(prompt_offset + i) % len(prompts)])
    results = []
    lock = threading.Lock()

    def worker():
        while True:
            try:
                p = jobs.get_nowait()
            except queue.Empty:
                return
            r = one_request(target, model, p, max_tokens, timeout, include_usage, extra_body)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    # Every request is bounded by its own deadline; this join bound is a safety net only.
    hard_end = t0 + timeout * (n // max(conc, 1) + 2) + 30
    for t in threads:
        t.join(max(0.0, hard_end - time.perf_counter()))
    wall = time.perf_counter() - t0
    stuck = sum(t.is_alive() for t in threads)
    return summarize(results, wall, conc, n, stuck)


def summarize(results, wall, conc, n, stuck=0):
    ok = [r for r in results if r["ok"]]
    errs = [r["error"] for r in results if not r["ok"]]
    if stuck:
        errs += ["client thread did not finish"] * stuck
    usage_known = bool(ok) and all(r["usage_tokens"] is not None for r in ok)
    tokens = [(r["usage_tokens"] if usage_known else r["chunks"]) for r in ok]
    total_tokens = sum(tokens)
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    itl = []
    tpot = []
    for r in ok:
        ts = r["chunk_times"]
        itl += [b - a for a, b in zip(ts, ts[1:])]
        ntok = r["usage_tokens"] if usage_known else r["chunks"]
        if ntok and ntok > 1 and len(ts) > 1:
            tpot.append((ts[-1] - ts[0]) / (ntok - 1))
    chunks = sum(r["chunks"] for r in ok)
    ms = lambda v: None if v is None else round(v * 1000, 2)
    err_kinds = {}
    for e in errs:
        k = e.split(":")[0][:60]
        err_kinds[k] = err_kinds.get(k, 0) + 1
    return {
        "concurrency": conc,
        "requests": n,
        "ok": len(ok),
        "errors": len(errs),
        "error_kinds": err_kinds,
        "error_examples": errs[:3],
        "wall_s": round(wall, 3),
        "completion_tokens": total_tokens,
        "tokens_from": "usage" if usage_known else "chunks",
        "tokens_per_request_mean": round(total_tokens / len(ok), 1) if ok else None,
        "tokens_per_request_min": min(tokens) if tokens else None,
        "tokens_per_chunk": round(total_tokens / chunks, 3) if chunks else None,
        "finish_reasons": {fr: sum(1 for r in ok if r["finish_reason"] == fr) for fr in {r["finish_reason"] for r in ok}},
        "output_tok_s": round(total_tokens / wall, 2) if wall > 0 else None,
        "req_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "ttft_ms_p50": ms(pct(ttft, 50)),
        "ttft_ms_p99": ms(pct(ttft, 99)),
        "itl_ms_p50": ms(pct(itl, 50)),
        "itl_ms_p99": ms(pct(itl, 99)),
        "tpot_ms_mean": ms(sum(tpot) / len(tpot)) if tpot else None,
        "latency_s_p50": round(pct([r["latency"] for r in ok], 50), 3) if ok else None,
    }


def fmt(v):
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def table(runs):
    """runs: list of {"label":..., "levels":[...]} -> markdown, one row per (server, concurrency)."""
    head = ("| server | conc | ok/req | err | out tok/s | req/s | TTFT p50 ms | TTFT p99 ms | "
            "ITL p50 ms | ITL p99 ms | tok/req | tokens from |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    concs = sorted({lv["concurrency"] for run in runs for lv in run["levels"]})
    for c in concs:
        for run in runs:
            for lv in run["levels"]:
                if lv["concurrency"] != c:
                    continue
                lines.append("| " + " | ".join([
                    run["label"], str(c), f"{lv['ok']}/{lv['requests']}", str(lv["errors"]),
                    fmt(lv["output_tok_s"]), fmt(lv["req_s"]), fmt(lv["ttft_ms_p50"]), fmt(lv["ttft_ms_p99"]),
                    fmt(lv["itl_ms_p50"]), fmt(lv["itl_ms_p99"]), fmt(lv["tokens_per_request_mean"]),
                    lv["tokens_from"]]) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="server base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", default="", help="model name for the API (default: first of GET /v1/models)")
    ap.add_argument("--label", default="", help="name of this server in the table (default: --model)")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client concurrency levels")
    ap.add_argument("--requests-per-level", type=int, default=0,
                    help="requests per level (default: max(8, 2*concurrency))")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", default="builtin", help="'builtin' or a file: .txt one per line, .jsonl, .json list")
    ap.add_argument("--timeout", type=float, default=180.0, help="deadline of one request in seconds")
    ap.add_argument("--warmup", type=int, default=1, help="untimed requests before the first level")
    ap.add_argument("--no-usage", action="store_true", help="do not ask for stream_options.include_usage")
    ap.add_argument("--extra-body", default="", metavar="JSON",
                    help='fields merged into every request body, e.g. \'{"cache_prompt": false}\' for llama-server')
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    ap.add_argument("--json-out", help="write the results as JSON here")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="only print one table from saved --json-out files")
    a = ap.parse_args()

    if a.table:
        runs = []
        for p in a.table:
            with open(p) as f:
                runs.append(json.load(f))
        print(table(runs))
        return 0
    if not a.url:
        ap.error("--url is required")

    target = Target(a.url, a.api_key)
    model = a.model
    if not model:
        try:
            model = target.get_json("/v1/models")["data"][0]["id"]
        except Exception as e:
            raise SystemExit(f"--model not given and GET /v1/models failed: {e}")
    prompts = load_prompts(a.prompts)
    try:
        extra_body = json.loads(a.extra_body) if a.extra_body else {}
        assert isinstance(extra_body, dict)
    except (ValueError, AssertionError):
        raise SystemExit(f"--extra-body {a.extra_body!r}: expected a JSON object")
    levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    label = a.label or model
    print(f"bench-serve: {a.url} model={model} levels={levels} max_tokens={a.max_tokens} "
          f"prompts={a.prompts} ({len(prompts)})", file=sys.stderr)

    for i in range(a.warmup):
        r = one_request(target, model, prompts[i % len(prompts)], a.max_tokens, a.timeout, not a.no_usage, extra_body)
        if not r["ok"]:
            print(f"bench-serve: warmup request failed: {r['error']}", file=sys.stderr)

    out_levels = []
    for c in levels:
        n = a.requests_per_level or max(8, 2 * c)
        lv = run_level(target, model, prompts, c, n, a.max_tokens, a.timeout, 0, not a.no_usage, extra_body)
        out_levels.append(lv)
        print(f"bench-serve: conc={c} n={n} ok={lv['ok']} err={lv['errors']} wall={lv['wall_s']}s "
              f"out={lv['output_tok_s']} tok/s ttft_p50={lv['ttft_ms_p50']}ms itl_p50={lv['itl_ms_p50']}ms"
              + (f" errors={lv['error_kinds']}" if lv["errors"] else ""), file=sys.stderr)

    run = {
        "label": label, "url": a.url, "model": model, "max_tokens": a.max_tokens, "prompts": a.prompts,
        "n_prompts": len(prompts), "temperature": 0, "stream_options_include_usage": not a.no_usage, "extra_body": extra_body,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "levels": out_levels,
    }
    if a.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(a.json_out)), exist_ok=True)
        with open(a.json_out, "w") as f:
            json.dump(run, f, indent=2)
    print(table([run]))
    return 1 if all(lv["ok"] == 0 for lv in out_levels) else 0


if __name__ == "__main__":
    sys.exit(main())
