#!/bin/bash
# What checking layers against their records costs (issue 28): the big image of
# benches/repo_images.sh (Debian + numpy + scipy + a 300 MB data layer, > 1 GB) mounted by name
# from a repository, page cache dropped before each run, then the cold job (python3 importing
# numpy and scipy.linalg, chrooted into the mount) and a cold tar of the whole root; with
# verify off, on with an empty node table (`verify_cache=none`: every file hashed), and on with
# the node's table filled by an earlier run; over /dev/fuse and over io_uring (the kernel's
# switch is put back at the end). Medians of RUNS; bytes the server read and bytes it hashed
# from the mount's stats.
# Usage (as root): bash benches/verify.sh      RUNS=5 for more; WORKLOADS=job for one.
set -euo pipefail
shopt -s inherit_errexit
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=/var/tmp/stratafs-bench
W=$B/verify
SWITCH=/sys/module/fuse/parameters/enable_uring
[ -f $SWITCH ] || { echo "verify.sh: $SWITCH missing: the kernel has no FUSE over io_uring" >&2; exit 1; }
WAS=$(cat $SWITCH)
trap 'echo $WAS > $SWITCH; fusermount3 -u $W/mnt 2>/dev/null || true' EXIT
if [ "${1:-}" != once ]; then
  bash "$ROOT/benches/repo_images.sh"
  cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/stratafs
mkdir -p $W/mnt
if [ ! -e $W/repo/.done ]; then
  rm -rf $W/repo
  $BIN convert --repo $W/repo oci:$B/repo-run/big:t --name bench.local/big:t 2>/dev/null
  touch $W/repo/.done
fi
JOB="python3 -c 'import numpy, scipy.linalg'"
# Through a pipe: GNU tar reads nothing when its archive is /dev/null.
TAR="tar -cf - -C / --exclude=./proc --exclude=./dev . | cat"
# `verify.sh once OPTS [tar]`: one cold job (or tar) with mount options OPTS, for farm-bench
# to pair runs:
#   farm-bench -n 15 --vs 'bash benches/verify.sh once verify=off' -- bash benches/verify.sh once verify=on,verify_cache=none
if [ "${1:-}" = once ]; then
  trap - EXIT
  CMD=$JOB
  [ "${3:-}" = tar ] && CMD=$TAR
  sync; echo 3 > /proc/sys/vm/drop_caches
  $BIN mount --repo $W/repo --no-prefetch -o "$2" bench.local/big:t $W/mnt
  chroot $W/mnt /bin/sh -c "$CMD" > /dev/null; rc=$?
  fusermount3 -u $W/mnt
  exit $rc
fi
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# run: uring Y|N, mount options, command -> "seconds read_MB hashed_MB" (medians)
run() {
  echo $1 > $SWITCH
  for i in $(seq $RUNS); do
    sync; echo 3 > /proc/sys/vm/drop_caches
    $BIN mount --repo $W/repo --no-prefetch -o "$2,stats=$W/stats.json" bench.local/big:t $W/mnt
    s=$(date +%s.%N); chroot $W/mnt /bin/sh -c "$3" > /dev/null || echo "verify.sh: '$3' failed" >&2; e=$(date +%s.%N)
    fusermount3 -u $W/mnt; sleep 0.3
    python3 - "$W/stats.json" "$(echo "$e - $s" | bc)" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(sys.argv[2], v["read_bytes"] / 1e6, v["verified_bytes"] / 1e6)
PY
  done | sort -n | awk '{t[NR]=$1; r[NR]=$2; h[NR]=$3} END {m=int((NR+1)/2); printf "%.2f s | %.0f MB | %.0f MB", t[m], r[m], h[m]}'
}
TABLE=$W/verified
echo "| workload | transport | verify | time | read | hashed |"
echo "|---|---|---|---|---|---|"
for wl in ${WORKLOADS:-job tar}; do
  case $wl in
    job) CMD=$JOB ;;
    tar) CMD=$TAR ;;
  esac
  for t in dev io_uring; do
    sw=N; opt=io_uring=off
    [ $t = io_uring ] && { sw=Y; opt=io_uring; }
    echo "| $wl | $t | off | $(run $sw "$opt,verify=off" "$CMD") |"
    echo "| $wl | $t | on, empty node table | $(run $sw "$opt,verify=on,verify_cache=none" "$CMD") |"
    # One run to fill the node's table, then the measured ones.
    rm -f $TABLE; run $sw "$opt,verify=on,verify_cache=$TABLE" "$CMD" > /dev/null
    echo "| $wl | $t | on, node table filled | $(run $sw "$opt,verify=on,verify_cache=$TABLE" "$CMD") |"
  done
done
