#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the main job: a local
# cluster (three storage servers), a replicated volume, a vhost-user-blk
# backend, and a QEMU guest that writes and reads data on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace --bins --locked
exec target/release/basalt-demo "$@"
