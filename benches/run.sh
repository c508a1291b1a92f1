#!/usr/bin/env bash
# Build the images (cached under $BENCH_DIR), then print the overlay benchmark table.
# Usage: bash benches/run.sh            (RUNS=N for repetitions, ONLY=substring for one row)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "benches/run.sh: run as root (kernel overlayfs, drop_caches)" >&2; exit 1; }
bash scripts/setup.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --quiet
dir=$(bash benches/images.sh | tail -1)
echo "| workload | kernel overlayfs (s) | fuse-overlayfs (s) | stratafs (s) | fuse-overlayfs / kernel | stratafs / kernel |"
echo "|---|---|---|---|---|---|"
python3 benches/overlay.py target/release/stratafs "$dir"
