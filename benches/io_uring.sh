#!/bin/bash
# FUSE over io_uring against /dev/fuse (issue 12): the write workloads of write.sh and cold
# reads of the same 10,000-file tree, on kernel overlayfs and on stratafs three ways: without
# `-o io_uring`, with it while the kernel's switch (/sys/module/fuse/parameters/enable_uring)
# is off (the mount falls back to /dev/fuse), and with it on (listings leave out attributes
# nobody looked at, then `readdirplus=full` for comparison); then /dev/fuse and io_uring again
# with the workload pinned to CPU 0 (`taskset`), as a container on a cpuset runs: free, the
# scheduler wakes it on whichever CPU is idle after each reply, and every request pays a
# cross-CPU wakeup that per-CPU queues are meant to remove. The switch is put back at the end.
# Prints a markdown table of medians and the requests per file of one more io_uring run, with
# the share that came through the rings.
# Usage (as root): bash benches/io_uring.sh     RUNS=5 for more runs; ONLY="rm|stat" for the
# rows whose names match that extended regular expression.
set -euo pipefail
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=${BIN:-$ROOT/target/release/stratafs}
SWITCH=/sys/module/fuse/parameters/enable_uring
[ -f $SWITCH ] || { echo "io_uring.sh: $SWITCH missing: the kernel has no FUSE over io_uring" >&2; exit 1; }
WAS=$(cat $SWITCH)
trap 'echo $WAS > $SWITCH' EXIT
W=/var/tmp/stratafs-bench/io_uring
mkdir -p $W
if [ ! -f $W/src.tar ]; then
  rm -rf $W/src && mkdir -p $W/src
  for d in $(seq 1 100); do mkdir -p $W/src/d$d; for f in $(seq 1 100); do echo "file $d $f" > $W/src/d$d/f$f; done; done
  tar -C $W/src -cf $W/src.tar .
fi
mount_it() { # kind [extra options]
  rm -rf $W/u $W/w; mkdir -p $W/u $W/w $W/m
  case $1 in
    kernel) mount -t overlay overlay -o lowerdir=$W/src,upperdir=$W/u,workdir=$W/w $W/m ;;
    stratafs) $BIN -o lowerdir=$W/src,upperdir=$W/u,workdir=$W/w${2:+,$2} $W/m ;;
  esac
}
umount_it() { umount $W/m 2>/dev/null || fusermount3 -u $W/m; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timeit() { # switch Y|N, kind, options, command [workload CPUs]
  echo $1 > $SWITCH
  local pin=()
  [ -n "${5:-}" ] && pin=(taskset -c "$5")
  for i in $(seq $RUNS); do
    mount_it $2 "$3"; sync; echo 3 > /proc/sys/vm/drop_caches
    s=$(date +%s.%N); "${pin[@]}" bash -c "$4"; e=$(date +%s.%N)
    umount_it
    echo "$e - $s" | bc
  done | median
}
requests() { # command, files -> "N.N/file, R % through the rings"
  echo Y > $SWITCH
  mount_it stratafs io_uring,stats=$W/stats.json; bash -c "$1"; umount_it; sleep 0.5
  python3 - "$W/stats.json" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])); n = int(sys.argv[2])
print(f'{v["requests"] / n:.1f}/file, {100 * v["io_uring_requests"] / max(v["requests"], 1):.0f} % rings')
PY
}
echo "| workload | kernel overlayfs | stratafs /dev/fuse | io_uring asked, switch off | io_uring | io_uring / dev | io_uring, readdirplus=full | /dev/fuse, workload on CPU 0 | io_uring, workload on CPU 0 | pinned io_uring / dev | requests |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for w in "untar 10,000 files|10000|mkdir $W/m/new && tar -C $W/m/new -xf $W/src.tar && sync" \
         "rm -rf of 10,000 lower files|10000|rm -rf $W/m/d* && sync" \
         "chmod -R over 10,000 lower files|10000|chmod -R g+w $W/m/d* && sync" \
         "append a line to 2,000 lower files|2000|for f in $W/m/d{1..20}/f*; do echo x >> \$f; done; sync" \
         "find 10,000 lower files, cold|10000|find $W/m > /dev/null" \
         "stat 10,000 lower files, cold|10000|find $W/m -type f | xargs stat -c %s > /dev/null" \
         "tar c of 10,000 lower files, cold|10000|tar -C $W/m -cf - . | cat > /dev/null"; do
  name=${w%%|*}; rest=${w#*|}; n=${rest%%|*}; cmd=${rest#*|}
  [ -n "${ONLY:-}" ] && ! grep -Eq "$ONLY" <<< "$name" && continue
  k=$(timeit N kernel "" "$cmd"); d=$(timeit N stratafs "" "$cmd")
  f=$(timeit N stratafs io_uring "$cmd"); u=$(timeit Y stratafs io_uring "$cmd")
  uf=$(timeit Y stratafs io_uring,readdirplus=full "$cmd")
  dp=$(timeit N stratafs "" "$cmd" 0); up=$(timeit Y stratafs io_uring "$cmd" 0)
  r=$(requests "$cmd" $n)
  printf "| %s | %.2f s | %.2f s | %.2f s | %.2f s | %.2fx | %.2f s | %.2f s | %.2f s | %.2fx | %s |\n" "$name" $k $d $f $u \
    $(echo "$u / $d" | bc -l) $uf $dp $up $(echo "$up / $dp" | bc -l) "$r"
done
