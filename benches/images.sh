#!/usr/bin/env bash
# Build the benchmark layer stacks once, under $BENCH_DIR (default /var/tmp/stratafs-bench):
#   small/  2 layers, 10 files          large/  2 layers, 100,000 files (+ whiteouts)
#   wide/   2 layers, 200,000 entries   py/     a Debian 12 root with python3-numpy and
#           python3-scipy split into 3 layers (base, numpy, scipy)
set -euo pipefail
B=${BENCH_DIR:-/var/tmp/stratafs-bench}
mkdir -p "$B"

gen_files() { # DIR COUNT PER_DIR
  python3 - "$@" <<'PY'
import os, sys
root, count, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    d = os.path.join(root, f"d{i // per:05d}")
    if i % per == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07d}.txt"), "w") as f:
        f.write("x" * (i % 2000))
PY
}

if [ ! -e "$B/small/.done" ]; then
  rm -rf "$B/small"; mkdir -p "$B/small/top" "$B/small/bottom"
  gen_files "$B/small/bottom" 8 4; gen_files "$B/small/top" 2 4
  touch "$B/small/.done"
fi
if [ ! -e "$B/large/.done" ]; then
  rm -rf "$B/large"; mkdir -p "$B/large/top" "$B/large/bottom"
  gen_files "$B/large/bottom" 90000 500; gen_files "$B/large/top" 10000 500
  touch "$B/large/.done"
fi
if [ ! -e "$B/wide/.done" ]; then
  rm -rf "$B/wide"; mkdir -p "$B/wide/top" "$B/wide/bottom"
  gen_files "$B/wide/bottom" 150000 1000; gen_files "$B/wide/top" 50000 1000
  touch "$B/wide/.done"
fi
if [ ! -e "$B/py/.done" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  rm -rf "$B/py"; mkdir -p "$B/py"
  debootstrap --variant=minbase --include=python3-numpy,python3-scipy bookworm "$B/py/base" "$mirror" >"$B/py/debootstrap.log" 2>&1
  dp=usr/lib/python3/dist-packages
  for pkg in numpy scipy; do
    mkdir -p "$B/py/$pkg/$dp"
    mv "$B/py/base/$dp/$pkg" "$B/py/$pkg/$dp/"
    for lib in "$B/py/base/$dp/$pkg".libs; do [ -e "$lib" ] && mv "$lib" "$B/py/$pkg/$dp/"; done
  done
  rm -rf "$B/py/base/var/cache/apt/archives"/*.deb
  touch "$B/py/.done"
fi
echo "$B"
