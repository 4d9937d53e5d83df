#!/usr/bin/env bash
# Serving benchmark, side by side: llama-server (SmolLM2 Q4_0 GGUF) and `awqc serve` (the AWQ g64
# checkpoint of the same SmolLM2 weights), same prompts, same load (scripts/bench-serve.py).
#
#   scripts/bench-serve.sh [LLAMA_SERVER_BIN [AWQC_BIN]]
#       defaults: out/llama.cpp/bin/llama-server (scripts/llama-cpp.sh) and target/release/awqc
#   env: LEVELS=1,4,16  REQUESTS=<per level; default max(8, 2*conc)>  MAX_TOKENS=64  PROMPTS=builtin
#        THREADS=2  SLOTS=16  CTX_PER_SLOT=512  LLAMA_GGUF=out/llama.cpp/smollm2-q4_0.gguf
#        AWQ_MODEL=out/smollm2-awq-g64  OUT_DIR=out/bench-serve  TIMEOUT=180 (per request)
#        QUIET_WAIT=300 (most seconds to wait for idle CPUs before each server is benchmarked)
#        SERVERS=llama,awqc (which servers to run: SERVERS=awqc benchmarks awqc serve alone, without
#        building or starting llama.cpp)
#        LLAMA_PROMPT_CACHE=1 (0 sends "cache_prompt": false with every llama-server request: each
#        level reuses the prompts of the level before, and llama-server's slots keep the KV of a
#        prompt they served, so with its cache on it skips most of the prefill of a repeated
#        prompt; awqc serve has no prefix cache)
#
# llama-server: -t THREADS -np SLOTS -c SLOTS*CTX_PER_SLOT (one KV cell range of CTX_PER_SLOT per slot:
# -np given explicitly turns the unified KV buffer off), continuous batching -cb (its default, made
# explicit), no web UI, loopback only. awqc serve: --max-batch-size SLOTS, RAYON_NUM_THREADS=THREADS.
# awqc is skipped (and said so) when `awqc serve --help` fails. Servers are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_SERVER=${1:-out/llama.cpp/bin/llama-server}
AWQC=${2:-target/release/awqc}
LEVELS=${LEVELS:-1,4,16}
REQUESTS=${REQUESTS:-0}
MAX_TOKENS=${MAX_TOKENS:-64}
PROMPTS=${PROMPTS:-builtin}
THREADS=${THREADS:-2}
SLOTS=${SLOTS:-16}
CTX_PER_SLOT=${CTX_PER_SLOT:-512}
LLAMA_GGUF=${LLAMA_GGUF:-out/llama.cpp/smollm2-q4_0.gguf}
AWQ_MODEL=${AWQ_MODEL:-out/smollm2-awq-g64}
OUT_DIR=${OUT_DIR:-out/bench-serve}
TIMEOUT=${TIMEOUT:-180}
READY_TIMEOUT=${READY_TIMEOUT:-180}
SERVERS=${SERVERS:-llama,awqc}
LLAMA_PROMPT_CACHE=${LLAMA_PROMPT_CACHE:-1}

say() { echo "bench-serve.sh: $*" >&2; }
die() { echo "bench-serve.sh: ERROR: $*" >&2; exit 1; }

want() { case ",$SERVERS," in *",$1,"*) return 0;; *) return 1;; esac; }
for s in ${SERVERS//,/ }; do
  case $s in llama|awqc) ;; *) say "ERROR: SERVERS=$SERVERS: unknown server '$s' (llama, awqc)"; exit 2;; esac
done
mkdir -p "$OUT_DIR"

SERVER_PID=
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$SERVER_PID" 2>/dev/null && { say "server $SERVER_PID ignored SIGTERM: SIGKILL"; kill -KILL "$SERVER_PID" 2>/dev/null || true; }
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# Benchmarks on a shared 2-core machine: wait (at most QUIET_WAIT seconds, default 300) until the CPUs
# are at least 90% idle over 3 s, then go on either way, saying how idle they were.
cpu_idle_pct() { # idle % over $1 seconds, from /proc/stat
  local a b
  read -r -a a < /proc/stat; sleep "${1:-3}"; read -r -a b < /proc/stat
  local i tot=0 idle=$(( (b[4] + b[5]) - (a[4] + a[5]) ))
  for i in 1 2 3 4 5 6 7 8; do tot=$(( tot + b[i] - a[i] )); done
  [ "$tot" -gt 0 ] && echo $(( 100 * idle / tot )) || echo 100
}
wait_quiet() {
  local t0=$SECONDS idle
  while :; do
    idle=$(cpu_idle_pct 3)
    if [ "$idle" -ge 90 ]; then LAST_IDLE=$idle; return 0; fi
    if [ $(( SECONDS - t0 )) -ge "${QUIET_WAIT:-300}" ]; then
      echo "$(basename "$0"): WARNING: CPUs only ${idle}% idle after waiting ${QUIET_WAIT:-300}s (other jobs running): numbers will be low and noisy" >&2
      LAST_IDLE=$idle; return 0
    fi
    sleep 5
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

bench() { # label url model json [extra body]
  wait_quiet
  say "CPUs ${LAST_IDLE}% idle before benchmarking $1"
  local args=(--url "$2" --model "$3" --label "$1" --concurrency "$LEVELS" --max-tokens "$MAX_TOKENS"
              --prompts "$PROMPTS" --timeout "$TIMEOUT" --json-out "$4")
  [ "$REQUESTS" != 0 ] && args+=(--requests-per-level "$REQUESTS")
  [ -n "${5:-}" ] && args+=(--extra-body "$5")
  python3 scripts/bench-serve.py "${args[@]}"
}

RESULTS=()

# --- llama-server -----------------------------------------------------------------------------------
if want llama; then
  [ -x "$LLAMA_SERVER" ] || die "$LLAMA_SERVER not found: run scripts/llama-cpp.sh"
  [ -f "$LLAMA_GGUF" ] || die "$LLAMA_GGUF not found: run scripts/llama-cpp.sh"
  P=$(free_port)
  LOG=$OUT_DIR/llama-server.log
  LLAMA_ARGS=(-m "$LLAMA_GGUF" -a smollm2-q4_0 -t "$THREADS" -tb "$THREADS" -np "$SLOTS" -c $((SLOTS * CTX_PER_SLOT))
              -cb --no-webui --host 127.0.0.1 --port "$P")
  say "starting $LLAMA_SERVER ${LLAMA_ARGS[*]} (log $LOG)"
  "$LLAMA_SERVER" "${LLAMA_ARGS[@]}" > "$LOG" 2>&1 &
  SERVER_PID=$!
  t0=$(date +%s)
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P/health" 2>/dev/null)" = 200 ]; do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$LOG" >&2; die "llama-server exited before /health was ready"; }
    [ $(( $(date +%s) - t0 )) -lt "$READY_TIMEOUT" ] || { tail -20 "$LOG" >&2; die "llama-server not ready after ${READY_TIMEOUT}s"; }
    sleep 0.5
  done
  say "llama-server ready on 127.0.0.1:$P after $(( $(date +%s) - t0 ))s"
  LLAMA_BODY=
  [ "$LLAMA_PROMPT_CACHE" = 0 ] && LLAMA_BODY='{"cache_prompt": false}'
  bench llama-server-q4_0 "http://127.0.0.1:$P" smollm2-q4_0 "$OUT_DIR/llama-server.json" "$LLAMA_BODY" \
    || say "bench-serve.py reported failure for llama-server"
  [ -f "$OUT_DIR/llama-server.json" ] && RESULTS+=("$OUT_DIR/llama-server.json")
  stop_server
else
  say "SERVERS=$SERVERS: llama-server skipped"
fi

# --- awqc serve ---------------------------------------------------------------------------------------
AWQC_NOTE=
if ! want awqc; then
  AWQC_NOTE="SERVERS=$SERVERS: awqc serve skipped"
elif [ ! -x "$AWQC" ]; then
  AWQC_NOTE="$AWQC not found: awqc serve skipped"
elif ! "$AWQC" serve --help > /dev/null 2>&1; then
  AWQC_NOTE="$AWQC has no 'serve' subcommand yet: awqc serve skipped"
elif [ ! -f "$AWQ_MODEL/config.json" ]; then
  AWQC_NOTE="$AWQ_MODEL missing (make demo): awqc serve skipped"
fi
if [ -n "$AWQC_NOTE" ]; then
  say "$AWQC_NOTE"
else
  P=$(free_port)
  LOG=$OUT_DIR/awqc-serve.log
  AWQC_ARGS=(serve --model "$AWQ_MODEL" --server-name 127.0.0.1 --server-port "$P" --max-batch-size "$SLOTS")
  say "starting RAYON_NUM_THREADS=$THREADS $AWQC ${AWQC_ARGS[*]} (log $LOG)"
  RAYON_NUM_THREADS=$THREADS "$AWQC" "${AWQC_ARGS[@]}" > "$LOG" 2>&1 &
  SERVER_PID=$!
  t0=$(date +%s)
  READY=
  until READY=$(grep -m1 -o 'awqc serve: listening on http://[^ ]* (model [^)]*)' "$LOG" 2>/dev/null); do
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$LOG" >&2; die "awqc serve exited before it was listening"; }
    [ $(( $(date +%s) - t0 )) -lt "$READY_TIMEOUT" ] || { tail -20 "$LOG" >&2; die "awqc serve not listening after ${READY_TIMEOUT}s"; }
    sleep 0.5
  done
  URL=$(echo "$READY" | sed -E 's/.*listening on (http:\/\/[^ ]*) .*/\1/')
  NAME=$(echo "$READY" | sed -E 's/.*\(model (.*)\)$/\1/')
  say "awqc serve ready at $URL (model $NAME) after $(( $(date +%s) - t0 ))s"
  bench awqc-serve-awq-g64 "$URL" "$NAME" "$OUT_DIR/awqc-serve.json" \
    || say "bench-serve.py reported failure for awqc serve"
  [ -f "$OUT_DIR/awqc-serve.json" ] && RESULTS+=("$OUT_DIR/awqc-serve.json")
  stop_server
fi

# --- one table ----------------------------------------------------------------------------------------
[ ${#RESULTS[@]} -gt 0 ] || die "no results"
{
  echo "Serving benchmark $(date -Iseconds): $(nproc) cores, threads $THREADS, slots/batch $SLOTS, max_tokens $MAX_TOKENS, prompts $PROMPTS, levels $LEVELS, llama-server prompt cache $LLAMA_PROMPT_CACHE"
  echo
  python3 scripts/bench-serve.py --table "${RESULTS[@]}"
  [ -z "$AWQC_NOTE" ] || { echo; echo "note: $AWQC_NOTE"; }
} | tee "$OUT_DIR/table.md"
