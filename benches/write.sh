#!/bin/bash
# Writable-layer benchmarks (issue 3): untar 10,000 files into the mount, copy-up of a 1 GB
# file (append one byte), each on kernel overlayfs, fuse-overlayfs and stratafs over the same
# lower layer, upper and work on the same filesystem. Prints a markdown table of medians.
# Usage (as root): bash benches/write.sh     RUNS=5 for more runs.
set -euo pipefail
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=${BIN:-$ROOT/target/release/stratafs}
W=/var/tmp/stratafs-bench/write
mkdir -p $W/low
if [ ! -f $W/low/big ]; then
  head -c 1G /dev/urandom > $W/low/big
fi
if [ ! -f $W/src.tar ]; then
  rm -rf $W/src && mkdir -p $W/src
  for d in $(seq 1 100); do mkdir -p $W/src/d$d; for f in $(seq 1 100); do echo "file $d $f" > $W/src/d$d/f$f; done; done
  tar -C $W/src -cf $W/src.tar .
fi
mount_it() { # kind
  rm -rf $W/u $W/w; mkdir -p $W/u $W/w $W/m
  case $1 in
    kernel) mount -t overlay overlay -o lowerdir=$W/low,upperdir=$W/u,workdir=$W/w $W/m ;;
    fuse-overlayfs) fuse-overlayfs -o lowerdir=$W/low,upperdir=$W/u,workdir=$W/w $W/m ;;
    stratafs) $BIN -o lowerdir=$W/low,upperdir=$W/u,workdir=$W/w $W/m ;;
  esac
}
umount_it() { umount $W/m 2>/dev/null || fusermount3 -u $W/m; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timeit() { # kind, command
  for i in $(seq $RUNS); do
    mount_it $1; sync; echo 3 > /proc/sys/vm/drop_caches
    s=$(date +%s.%N); bash -c "$2"; e=$(date +%s.%N)
    umount_it
    echo "$e - $s" | bc
  done | median
}
echo "| workload | kernel overlayfs | fuse-overlayfs | stratafs | stratafs / kernel |"
echo "|---|---|---|---|---|"
for w in "untar 10,000 files|tar -C $W/m -xf $W/src.tar && sync" "copy-up of a 1 GB file|echo x >> $W/m/big && sync"; do
  name=${w%%|*}; cmd=${w#*|}
  k=$(timeit kernel "$cmd"); f=$(timeit fuse-overlayfs "$cmd"); s=$(timeit stratafs "$cmd")
  printf "| %s | %.2f s | %.2f s | %.2f s | %.2fx |\n" "$name" $k $f $s $(echo "$s / $k" | bc -l)
done
