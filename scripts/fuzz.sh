#!/usr/bin/env bash
# Builds Basalt's libFuzzer targets (fuzz/, a cargo-fuzz crate outside the
# workspace) and runs each for FUZZ_SECS seconds (default 20).
#
#   scripts/fuzz.sh                      # every target, 20 s each
#   FUZZ_SECS=600 scripts/fuzz.sh dirty_map wire_header
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs
# cargo-fuzz with `cargo install --locked cargo-fuzz` when it is missing.
# New inputs libFuzzer finds go to fuzz/corpus/<target>/ (only the seed-*
# files there are committed). Exits non-zero if any target crashed, leaked,
# ran out of memory or timed out, after printing the input that did it
# (fuzz/artifacts/<target>/...) and how to reproduce it.
#
# Environment: FUZZ_SECS (seconds per target), FUZZ_TIMEOUT (seconds one
# input may take, default 60: generous, as a loaded machine can starve one
# input of CPU for seconds), FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

secs=${FUZZ_SECS:-20}
timeout=${FUZZ_TIMEOUT:-60}
all_targets=(wire_header handshake virtio_request control_socket dirty_map copy_meta node_record storage_requests snapshot_manifest)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

# Per-target libFuzzer flags. Memory limits are part of what is tested:
# a frame's payload is bounded by 4 MiB before anything is allocated, and
# dirty-region maps must stay small whatever offsets they are given.
flags_for() {
    case "$1" in
        wire_header) echo "-max_len=8192 -rss_limit_mb=1024 -malloc_limit_mb=16" ;;
        control_socket) echo "-max_len=10000 -rss_limit_mb=1024" ;;
        dirty_map) echo "-rss_limit_mb=512 -malloc_limit_mb=256" ;;
        *) echo "-rss_limit_mb=1024" ;;
    esac
}

# Extra sanitizer options. dirty_map allocates maps of up to 128 MiB on
# purpose; a smaller ASan quarantine keeps freed ones from counting
# against its 512 MiB RSS limit.
asan_for() {
    local base=${ASAN_OPTIONS:-}
    case "$1" in
        dirty_map) echo "${base:+$base:}quarantine_size_mb=64" ;;
        *) echo "$base" ;;
    esac
}

if ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly Rust toolchain is required (cargo-fuzz needs -Zsanitizer);" >&2
    echo "fuzz: install it with: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

for t in "${targets[@]}"; do
    if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz: unknown target $t (targets: ${all_targets[*]})" >&2
        exit 2
    fi
done

echo "fuzz: building ${targets[*]}" >&2
# Default cargo-fuzz build: optimised, with debug assertions, overflow
# checks and AddressSanitizer.
for t in "${targets[@]}"; do
    cargo +nightly fuzz build "$t"
done

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
failed=()
for t in "${targets[@]}"; do
    corpus=fuzz/corpus/$t
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    marker=$(mktemp)
    echo "fuzz: running $t for ${secs}s" >&2
    # shellcheck disable=SC2046
    if ASAN_OPTIONS=$(asan_for "$t") cargo +nightly fuzz run "$t" "$corpus" -- \
        -max_total_time="$secs" -timeout="$timeout" -print_final_stats=1 \
        $(flags_for "$t") ${FUZZ_ARGS:-} >"$logs/$t.log" 2>&1; then
        status=ok
    else
        status=failed
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs|^stat::' "$logs/$t.log" | sed "s/^/fuzz: $t: /" >&2 || true
    if [ "$status" = failed ]; then
        failed+=("$t")
        tail -n 60 "$logs/$t.log" >&2
        found=$(find "fuzz/artifacts/$t" -type f -newer "$marker" 2>/dev/null || true)
        for a in $found; do
            echo "fuzz: $t: input that failed: $a" >&2
            echo "fuzz: reproduce with: cargo +nightly fuzz run $t $a" >&2
        done
        if [ -z "$found" ]; then
            echo "fuzz: $t failed without an artifact; see $logs/$t.log" >&2
        fi
    fi
    rm -f "$marker"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (logs in $logs)" >&2
    exit 1
fi
echo "fuzz: all targets ran ${secs}s without a failure (logs in $logs)" >&2
