#!/usr/bin/env bash
# Build the images (cached under $BENCH_DIR), then print the overlay benchmark table.
# Usage: bash benches/run.sh            (RUNS=N for repetitions, ONLY=substring for one row,
#   PEERS='label=cmd;...' for the programs beside the kernel, BIN=stratafs binary, MEMORY=0 skips RSS)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "benches/run.sh: run as root (kernel overlayfs, drop_caches)" >&2; exit 1; }
bash scripts/setup.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --quiet
dir=$(bash benches/images.sh | tail -1)
python3 benches/overlay.py "${BIN:-target/release/stratafs}" "$dir"
