#!/usr/bin/env bash
# Fuzz awqc's parsers with cargo-fuzz (libFuzzer + AddressSanitizer) on the stable toolchain.
#
#   scripts/fuzz.sh check                     build every target, replay seeds and regressions once
#   scripts/fuzz.sh run [SECONDS] [TARGET...] fuzz each target (default: all) for SECONDS (default 120)
#   scripts/fuzz.sh list                      the targets
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). RUSTC_BOOTSTRAP=1 lets the stable compiler accept
# the nightly-only flags cargo-fuzz passes (-Zsanitizer, -Cpasses=sancov).
#
# Layout (fuzz/):
#   fuzz_targets/<t>.rs   one-line wrappers around src/targets.rs
#   seeds/<t>/            valid inputs, committed (tests/bad_inputs.rs checks they are current)
#   regressions/<t>/      crash inputs found by fuzzing, kept after the fix (committed; replayed by
#                         `cargo test --release --test bad_inputs` without nightly)
#   corpus/<t>/           what libFuzzer grows while running (ignored by git)
#   artifacts/<t>/        new crash inputs (ignored by git): fix, then move them to regressions/<t>/
#
# The replay without nightly, for CI: cargo test --release --test bad_inputs fuzz_
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
target_dir=(--target-dir "${FUZZ_TARGET_DIR:-target}")

targets() { cargo fuzz list; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT

case "${1:-}" in
list)
    targets
    ;;
check)
    cargo fuzz build -O "${target_dir[@]}"
    for t in $(targets); do
        mkdir -p "regressions/$t"
        # -runs=0: execute every input once and exit; a crash fails the check.
        if ! cargo fuzz run -O "${target_dir[@]}" "$t" "seeds/$t" "regressions/$t" -- -runs=0 >"$log" 2>&1; then
            tail -40 "$log"
            echo "FAIL: fuzz target $t crashes on its seeds or regressions"
            exit 1
        fi
        echo "ok: $t ($(find "seeds/$t" "regressions/$t" -type f | wc -l) inputs)"
    done
    ;;
run)
    secs="${2:-120}"
    shift $(( $# >= 2 ? 2 : 1 ))
    list=("$@")
    [ ${#list[@]} -eq 0 ] && list=($(targets))
    cargo fuzz build -O "${target_dir[@]}"
    failed=()
    for t in "${list[@]}"; do
        mkdir -p "corpus/$t" "regressions/$t"
        echo "== $t: ${secs}s"
        # 4 GiB RSS and 20 s per input: a header that makes awqc allocate or loop without bound
        # is a finding, not a slow run.
        if ! cargo fuzz run -O "${target_dir[@]}" "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
            -max_total_time="$secs" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 >"$log" 2>&1; then
            failed+=("$t")
            grep -E "^(==[0-9]+==ERROR|SUMMARY|thread .* panicked|Test unit written|artifact_prefix)" "$log" | head -20
        fi
        grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
        grep -E "^#[0-9]+" "$log" | tail -1 || true
    done
    if [ ${#failed[@]} -gt 0 ]; then
        echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)"
        exit 1
    fi
    ;;
*)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
