#!/usr/bin/env bash
# llama.cpp as the side-by-side peer: build llama-bench, llama-server and llama-quantize from the
# llama.cpp tree vendored in the PyPI sdist llama_cpp_python==0.3.36 (llama.cpp commit 0c1e570), then
# make GGUFs of the same SmolLM2-135M weights awqc uses (fixtures/smollm2-hf, from `make fixtures`):
# f32 with the vendored convert_hf_to_gguf.py, then Q4_0 and Q4_K_M with llama-quantize.
#
#   scripts/llama-cpp.sh            build (if needed) + GGUFs (if missing)
#   scripts/llama-cpp.sh --bench    ... then llama-bench -t 2 -p 512 -n 128 -r 3 on each GGUF (JSON under out/llama.cpp/)
#
# Everything is cached under out/llama.cpp/ (never committed); re-running skips what is done
# (FORCE_BUILD=1 rebuilds; JOBS=n; ARCH_FLAGS, see step 3; QUIET_WAIT=300: the most seconds --bench
# waits for idle CPUs before each run on this shared machine). Needs only PyPI: the build tools (cmake, ninja, scikit-build-core) and the
# converter's requirements go into the venv out/llama.cpp/venv. The converter imports torch; PyPI's
# torch 2.11.0 wheel pulls the CUDA runtime wheels too (about 3 GB in the venv, CPU use only).
# Outputs: out/llama.cpp/bin/{llama-bench,llama-server,llama-quantize},
#          out/llama.cpp/smollm2-{f32,q4_0,q4_k_m}.gguf (and qwen2.5-coder-0.5b-* when
#          fixtures/qwen2.5-coder-0.5b-hf exists: `make fixtures-qwen`).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=out/llama.cpp
LCPP_PY_VERSION=0.3.36
SDIST=llama_cpp_python-$LCPP_PY_VERSION.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
BUILD_TOOLS=(scikit-build-core==1.1.2 cmake==4.4.5 ninja==1.13.2)
# requirements/requirements-convert_hf_to_gguf.txt of the vendored tree, pinned (the CPU torch index
# it names is not reachable here; gguf comes from the vendored gguf-py, which the converter puts first
# on sys.path, so only its dependencies are installed).
CONVERT_REQS=(torch==2.11.0 numpy==2.2.6 sentencepiece==0.2.1 transformers==4.57.6 protobuf==4.25.8
              safetensors==0.8.0 pyyaml==6.0.4 tqdm==4.70.1 requests==2.34.2)
TARGETS=(llama-bench llama-server llama-quantize)
JOBS=${JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
BENCH=0
for a in "$@"; do
  case $a in
    --bench) BENCH=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "llama-cpp.sh: unknown argument $a (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "llama-cpp.sh: $*"; }
die() { echo "llama-cpp.sh: ERROR: $*" >&2; exit 1; }
trap 'echo "llama-cpp.sh: ERROR: failed at line $LINENO (exit $?): $BASH_COMMAND" >&2' ERR

mkdir -p "$OUT"/{dl,bin,src}
VENV=$OUT/venv
VPY=$VENV/bin/python

# 1. venv with the build tools
if [ ! -x "$VPY" ]; then
  say "creating venv $VENV"
  "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv?)"
fi
TOOLS_STAMP=$VENV/.build-tools-$(echo "${BUILD_TOOLS[*]}" | sha256sum | cut -c1-12)
if [ ! -f "$TOOLS_STAMP" ]; then
  say "pip install ${BUILD_TOOLS[*]}"
  "$VPY" -m pip install -q "${BUILD_TOOLS[@]}" || die "pip install of the build tools failed"
  touch "$TOOLS_STAMP"
fi
export PATH=$PWD/$VENV/bin:$PATH

# 2. the sdist (sha256-pinned) and its vendored llama.cpp tree
if ! { [ -f "$OUT/dl/$SDIST" ] && echo "$SDIST_SHA256  $OUT/dl/$SDIST" | sha256sum -c --status; }; then
  say "pip download llama-cpp-python==$LCPP_PY_VERSION (sdist)"
  rm -f "$OUT/dl/$SDIST"
  "$VPY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$OUT/dl" \
    "llama-cpp-python==$LCPP_PY_VERSION" || die "pip download of the llama-cpp-python sdist failed"
  echo "$SDIST_SHA256  $OUT/dl/$SDIST" | sha256sum -c --quiet \
    || { rm -f "$OUT/dl/$SDIST"; die "sha256 mismatch for $SDIST (expected $SDIST_SHA256)"; }
fi
SRC=$OUT/src/llama_cpp_python-$LCPP_PY_VERSION
LCPP=$SRC/vendor/llama.cpp
if [ ! -f "$SRC/.unpacked" ]; then
  say "unpacking $SDIST"
  rm -rf "$SRC"
  tar -xzf "$OUT/dl/$SDIST" -C "$OUT/src" || die "cannot unpack $SDIST"
  [ -f "$LCPP/CMakeLists.txt" ] || die "$SDIST has no vendor/llama.cpp/CMakeLists.txt"
  touch "$SRC/.unpacked"
fi

# 3. build (Release, static, offline: no OpenSSL, no prebuilt web UI download). CPU flags: the host's
# x86 ISA extensions, spelled out instead of GGML_NATIVE (-march=native), because on this project's
# Sapphire Rapids VMs -march=native turns on ggml's AMX kernels and they segfault in
# ggml_backend_amx_mul_mat on every batched Q4_0/Q4_K/Q5_0/Q8_0 matmul (prompt processing; 0c1e570).
# ARCH_FLAGS=native restores -march=native; ARCH_FLAGS="-DGGML_AVX512=OFF ..." overrides.
cpu_has() { grep -m1 '^flags' /proc/cpuinfo | grep -qw "$1"; }
onoff() { if cpu_has "$1"; then echo ON; else echo OFF; fi; }
if [ "${ARCH_FLAGS:-}" = native ]; then
  ARCH_CMAKE=(-DGGML_NATIVE=ON)
elif [ -n "${ARCH_FLAGS:-}" ]; then
  read -r -a ARCH_CMAKE <<< "$ARCH_FLAGS"
else
  ARCH_CMAKE=(-DGGML_NATIVE=OFF -DGGML_SSE42=$(onoff sse4_2) -DGGML_AVX=$(onoff avx) -DGGML_AVX2=$(onoff avx2)
    -DGGML_FMA=$(onoff fma) -DGGML_F16C=$(onoff f16c) -DGGML_BMI2=$(onoff bmi2) -DGGML_AVX_VNNI=$(onoff avx_vnni)
    -DGGML_AVX512=$(onoff avx512bw) -DGGML_AVX512_VBMI=$(onoff avx512vbmi) -DGGML_AVX512_VNNI=$(onoff avx512_vnni)
    -DGGML_AVX512_BF16=$(onoff avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
have_bins=1
for t in "${TARGETS[@]}"; do [ -x "$OUT/bin/$t" ] || have_bins=0; done
if [ "$have_bins" = 1 ] && [ -z "${FORCE_BUILD:-}" ]; then
  say "llama.cpp binaries present in $OUT/bin (FORCE_BUILD=1 rebuilds)"
else
  say "configuring llama.cpp ($(cmake --version | head -1), $(ninja --version 2>/dev/null | sed 's/^/ninja /'))"
  say "CPU flags: ${ARCH_CMAKE[*]}"
  cmake -S "$LCPP" -B "$OUT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${ARCH_CMAKE[@]}" \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log" >&2; die "cmake configure failed (log: $OUT/configure.log)"; }
  say "building ${TARGETS[*]} with $JOBS jobs (about 10 min on 2 cores; log: $OUT/build.log)"
  t0=$(date +%s)
  cmake --build "$OUT/build" -j "$JOBS" --target "${TARGETS[@]}" > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log" >&2; die "build failed (log: $OUT/build.log)"; }
  t1=$(date +%s)
  for t in "${TARGETS[@]}"; do cp -f "$OUT/build/bin/$t" "$OUT/bin/$t"; done
  echo "build of ${TARGETS[*]}: $((t1 - t0)) s with -j $JOBS on $(nproc) cores, $(date -Iseconds)" | tee "$OUT/build-time.txt"
fi
"$OUT/bin/llama-quantize" --help > /dev/null 2>&1 || [ $? -le 1 ] || die "$OUT/bin/llama-quantize does not run"

# 4. the converter's Python requirements
CONV_STAMP=$VENV/.convert-reqs-$(echo "${CONVERT_REQS[*]}" | sha256sum | cut -c1-12)
if [ ! -f "$CONV_STAMP" ]; then
  say "pip install ${CONVERT_REQS[*]} (torch from PyPI brings the CUDA wheels: a few GB, once)"
  "$VPY" -m pip install -q "${CONVERT_REQS[@]}" || die "pip install of the converter requirements failed"
  touch "$CONV_STAMP"
fi

# 5. GGUFs: HF dir -> f32 GGUF -> Q4_0, Q4_K_M
make_ggufs() { # name hf_dir
  local name=$1 hf=$2 f32=$OUT/$1-f32.gguf
  [ -f "$hf/config.json" ] || die "$hf/config.json missing (run make fixtures)"
  if [ ! -s "$f32" ]; then
    say "converting $hf -> $f32 (convert_hf_to_gguf.py --outtype f32)"
    "$VPY" "$LCPP/convert_hf_to_gguf.py" "$hf" --outtype f32 --outfile "$f32.tmp" > "$OUT/convert-$name.log" 2>&1 \
      || { rm -f "$f32.tmp"; tail -30 "$OUT/convert-$name.log" >&2; die "conversion of $hf failed (log: $OUT/convert-$name.log)"; }
    mv "$f32.tmp" "$f32"
  fi
  local q
  for q in Q4_0 Q4_K_M; do
    local dst=$OUT/$name-$(echo "$q" | tr 'A-Z' 'a-z').gguf
    if [ ! -s "$dst" ]; then
      say "llama-quantize $f32 -> $dst ($q)"
      "$OUT/bin/llama-quantize" "$f32" "$dst.tmp" "$q" "$JOBS" > "$OUT/quantize-$name-$q.log" 2>&1 \
        || { rm -f "$dst.tmp"; tail -20 "$OUT/quantize-$name-$q.log" >&2; die "llama-quantize $q failed (log: $OUT/quantize-$name-$q.log)"; }
      mv "$dst.tmp" "$dst"
    fi
  done
  ls -l "$OUT/$name"-{f32,q4_0,q4_k_m}.gguf | awk '{printf "llama-cpp.sh:   %s  %d bytes\n", $NF, $5}'
}
MODELS=(smollm2)
make_ggufs smollm2 fixtures/smollm2-hf
if [ -f fixtures/qwen2.5-coder-0.5b-hf/config.json ]; then
  MODELS+=(qwen2.5-coder-0.5b)
  make_ggufs qwen2.5-coder-0.5b fixtures/qwen2.5-coder-0.5b-hf
else
  say "fixtures/qwen2.5-coder-0.5b-hf absent (make fixtures-qwen): Qwen GGUFs skipped"
fi

# 6. optional: llama-bench, 2 threads, pp512 / tg128, 3 repetitions
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
if [ "$BENCH" = 1 ]; then
  for name in "${MODELS[@]}"; do
    for q in f32 q4_0 q4_k_m; do
      m=$OUT/$name-$q.gguf j=$OUT/bench-$name-$q.json
      wait_quiet
      say "CPUs ${LAST_IDLE}% idle before this run"
      say "llama-bench -m $m -t 2 -p 512 -n 128 -r 3 -o json > $j"
      "$OUT/bin/llama-bench" -m "$m" -t 2 -p 512 -n 128 -r 3 -o json > "$j.tmp" 2> "$OUT/bench-$name-$q.log" \
        || { tail -20 "$OUT/bench-$name-$q.log" >&2; die "llama-bench failed on $m"; }
      mv "$j.tmp" "$j"
    done
  done
  "$VPY" - "$OUT" "${MODELS[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| model | type | size MiB | pp512 tok/s | tg128 tok/s |\n|---|---|---:|---:|---:|")
for n in names:
    for q in ("f32", "q4_0", "q4_k_m"):
        rows = json.load(open(f"{out}/bench-{n}-{q}.json"))
        pp = next(r for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0)
        tg = next(r for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0)
        print(f"| {n} | {pp['model_type']} | {pp['model_size']/2**20:.1f} | "
              f"{pp['avg_ts']:.1f} ± {pp['stddev_ts']:.1f} | {tg['avg_ts']:.1f} ± {tg['stddev_ts']:.1f} |")
PY
fi
say "done: $OUT/bin/{$(IFS=,; echo "${TARGETS[*]}")}, $(for n in "${MODELS[@]}"; do printf '%s ' "$OUT/$n-{f32,q4_0,q4_k_m}.gguf"; done)"
