#!/bin/bash
# Writable-layer benchmarks: untar 10,000 files into the mount, rm -rf / chmod -R of 10,000
# lower files, append a line to 2,000 lower files, copy-up of a 1 GB file (append one byte),
# each on kernel overlayfs, fuse-overlayfs and stratafs over the same lower layers, upper and
# work on the same filesystem. Prints a markdown table of medians, and for stratafs the FUSE
# requests per file of one more run (`-o stats=`), with the three commonest opcodes.
# Usage (as root): bash benches/write.sh     RUNS=5 for more runs; FUSE_OVERLAYFS=path for
# another fuse-overlayfs build (fuse-overlayfs 2.0: cargo install fuse-overlayfs --version 2.0.0);
# OPTS=volatile adds that mount option to all three (no fsync of copy-ups: podman's
# `--volatile` containers); ONLY="chmod|append" for the rows whose names match.
# Upper and work dirs live on a journaled ext4 made for the run (a 4 GiB sparse loop file):
# ext4 without a journal (/var/tmp on the bench VMs) checks every new inode against those freed
# in the last half minute, and after the previous run's cleanup that scan was most of an
# untar's time, the kernel's too (one kernel untar: 0.8 s, then 6.6 s). UPPER=dir puts them
# in dir instead, as before 2026-12-05.
set -euo pipefail
RUNS=${RUNS:-3}
OPTS=${OPTS:-}
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
UP=${UPPER:-}
if [ -z "$UP" ]; then
  UP=$W/upperfs
  mkdir -p $UP
  if ! mountpoint -q $UP; then
    truncate -s 4G $W/upperfs.img
    mkfs.ext4 -q -F $W/upperfs.img
    mount -o loop $W/upperfs.img $UP
    trap 'umount $UP' EXIT
  fi
fi
FOVL=${FUSE_OVERLAYFS:-fuse-overlayfs}
STATS=""
mount_it() { # kind
  rm -rf $UP/u $UP/w; mkdir -p $UP/u $UP/w $W/m
  local lower=$W/src:$W/low dirs=upperdir=$UP/u,workdir=$UP/w
  case $1 in
    kernel) mount -t overlay overlay -o lowerdir=$lower,$dirs${OPTS:+,$OPTS} $W/m ;;
    fuse-overlayfs) $FOVL -o lowerdir=$lower,$dirs${OPTS:+,$OPTS} $W/m ;;
    stratafs) $BIN -o lowerdir=$lower,$dirs${OPTS:+,$OPTS}${STATS:+,stats=$STATS} $W/m ;;
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
requests() { # command, files -> "N.N/file (op a, op b, op c)"
  STATS=$W/stats.json
  mount_it stratafs; bash -c "$1"; umount_it; sleep 0.5
  STATS=""
  python3 - "$W/stats.json" "$2" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])); n = int(sys.argv[2])
top = sorted(v["ops"].items(), key=lambda kv: -kv[1]["count"])[:3]
print(f'{v["requests"] / n:.1f}/file (' + ", ".join(f'{k} {o["count"] / n:.1f}' for k, o in top) + ")")
PY
}
echo "| workload | kernel overlayfs | fuse-overlayfs | stratafs | stratafs / kernel | stratafs requests |"
echo "|---|---|---|---|---|---|"
for w in "untar 10,000 files|10000|mkdir $W/m/new && tar -C $W/m/new -xf $W/src.tar && sync" \
         "rm -rf of 10,000 lower files|10000|rm -rf $W/m/d* && sync" \
         "chmod -R over 10,000 lower files|10000|chmod -R g+w $W/m/d* && sync" \
         "append a line to 2,000 lower files|2000|for f in $W/m/d{1..20}/f*; do echo x >> \$f; done; sync" \
         "copy-up of a 1 GB file|1|echo x >> $W/m/big && sync"; do
  name=${w%%|*}; rest=${w#*|}; n=${rest%%|*}; cmd=${rest#*|}
  [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && continue
  k=$(timeit kernel "$cmd"); f=$(timeit fuse-overlayfs "$cmd"); s=$(timeit stratafs "$cmd")
  r=$(requests "$cmd" $n)
  printf "| %s | %.2f s | %.2f s | %.2f s | %.2fx | %s |\n" "$name" $k $f $s $(echo "$s / $k" | bc -l) "$r"
done
