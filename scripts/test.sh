#!/usr/bin/env bash
# Runs Basalt's whole test suite: unit tests, in-process tests, the
# end-to-end tests with real processes and a real QEMU guest, and a short
# run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "test: building" >&2
cargo build --workspace --bins --tests --locked
# Every libFuzzer target briefly (seed corpora in fuzz/corpus; longer runs:
# FUZZ_SECS=600 scripts/fuzz.sh, figures in docs/reliability.md).
echo "test: fuzzing each target for ${FUZZ_SECS:-10}s" >&2
FUZZ_SECS=${FUZZ_SECS:-10} bash scripts/fuzz.sh
# The guest tests boot QEMU guests; one at a time keeps them within the
# machine's two cores.
cargo test --workspace --locked -- --test-threads=1 --nocapture
