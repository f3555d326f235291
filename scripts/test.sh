#!/usr/bin/env bash
# Runs Basalt's whole test suite: unit tests, in-process tests, and the
# end-to-end tests with real processes and a real QEMU guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "test: building" >&2
cargo build --workspace --bins --tests --locked
# The guest tests boot QEMU guests; one at a time keeps them within the
# machine's two cores.
cargo test --workspace --locked -- --test-threads=1 --nocapture
