#!/bin/bash
# The ceiling FUSE over io_uring could reach here: the same write workloads as write.sh with the
# daemon and the workload on one CPU (what per-CPU queues would give every request), on two
# different CPUs (every request a cross-CPU wakeup), and left to the scheduler; kernel overlayfs
# free and on one CPU beside. Prints a markdown table of medians.
# Usage (as root): bash benches/pinning.sh     RUNS=5 for more runs.
set -euo pipefail
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=${BIN:-$ROOT/target/release/stratafs}
[ "$(nproc)" -ge 2 ] || { echo "pinning.sh: needs at least 2 CPUs" >&2; exit 1; }
W=/var/tmp/stratafs-bench/pinning
if [ ! -f $W/src.tar ]; then
  rm -rf $W/src && mkdir -p $W/src
  for d in $(seq 1 100); do mkdir -p $W/src/d$d; for f in $(seq 1 100); do echo "file $d $f" > $W/src/d$d/f$f; done; done
  tar -C $W/src -cf $W/src.tar .
fi
mount_it() { # kind, cpu list for the daemon ("" = free)
  rm -rf $W/u $W/w; mkdir -p $W/u $W/w $W/m
  local pin=()
  [ -n "$2" ] && pin=(taskset -c "$2")
  case $1 in
    kernel) mount -t overlay overlay -o lowerdir=$W/src,upperdir=$W/u,workdir=$W/w $W/m ;;
    # The daemon forks from this process: the affinity goes with it to every thread.
    stratafs) "${pin[@]}" $BIN -o lowerdir=$W/src,upperdir=$W/u,workdir=$W/w $W/m ;;
  esac
}
umount_it() { umount $W/m 2>/dev/null || fusermount3 -u $W/m; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timeit() { # kind, daemon cpus, workload cpus, command
  local pin=()
  [ -n "$3" ] && pin=(taskset -c "$3")
  for i in $(seq $RUNS); do
    mount_it $1 "$2"; sync; echo 3 > /proc/sys/vm/drop_caches
    s=$(date +%s.%N); "${pin[@]}" bash -c "$4"; e=$(date +%s.%N)
    umount_it
    echo "$e - $s" | bc
  done | median
}
echo "| workload | kernel free | kernel on CPU 0 | stratafs free | daemon CPU 1, workload CPU 0 | both on CPU 0 | best / kernel free |"
echo "|---|---|---|---|---|---|---|"
for w in "untar 10,000 files|mkdir $W/m/new && tar -C $W/m/new -xf $W/src.tar && sync" \
         "rm -rf of 10,000 lower files|rm -rf $W/m/d* && sync" \
         "stat 10,000 lower files, cold|find $W/m -type f | xargs stat -c %s > /dev/null"; do
  name=${w%%|*}; cmd=${w#*|}
  kf=$(timeit kernel "" "" "$cmd"); k0=$(timeit kernel "" 0 "$cmd")
  sf=$(timeit stratafs "" "" "$cmd"); sx=$(timeit stratafs 1 0 "$cmd"); s0=$(timeit stratafs 0 0 "$cmd")
  best=$(printf '%s\n%s\n%s\n' $sf $sx $s0 | sort -n | head -1)
  printf "| %s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f s | %.2fx |\n" "$name" $kf $k0 $sf $sx $s0 $(echo "$best / $kf" | bc -l)
done
