#!/bin/bash
# podman benchmarks (issue 3), rootful: container start (`podman run --rm IMAGE true`) and
# `podman commit` of a container that changed 10,000 files, each with podman's overlay driver
# on kernel overlayfs (no mount_program), with fuse-overlayfs and with stratafs as
# mount_program. One private store per kind under /var/tmp/stratafs-bench/podman.
# Prints a markdown table of medians.   Usage (as root): bash benches/podman.sh   RUNS=5 for more.
set -euo pipefail
shopt -s inherit_errexit
RUNS=${RUNS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/stratafs
W=/var/tmp/stratafs-bench/podman
for t in podman runc busybox; do command -v $t >/dev/null || { echo "missing $t: run scripts/setup.sh" >&2; exit 1; }; done

# A busybox base image made here (nothing is pulled).
if [ ! -f $W/base.tar ]; then
  rm -rf $W/base-root && mkdir -p $W/base-root/{bin,etc,tmp}
  cp "$(command -v busybox)" $W/base-root/bin/busybox
  for a in sh ls cat rm mkdir echo true seq touch; do ln -sf busybox $W/base-root/bin/$a; done
  tar -C $W/base-root -cf $W/base.tar .
fi

setup_store() { # kind
  local d=$W/$1
  if [ -d $d/graph ]; then
    podman_ $1 rm -af >/dev/null 2>&1 || true
    podman_ $1 rmi -af >/dev/null 2>&1 || true
  fi
  rm -rf $d; mkdir -p $d
  {
    echo '[storage]'
    echo 'driver = "overlay"'
    echo "graphroot = \"$d/graph\""
    echo "runroot = \"$d/run\""
    case $1 in
      fuse-overlayfs) printf '[storage.options.overlay]\nmount_program = "%s"\n' "$(command -v fuse-overlayfs)" ;;
      stratafs) printf '[storage.options.overlay]\nmount_program = "%s"\n' "$BIN" ;;
    esac
  } > $d/storage.conf
  printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\nnetns = "none"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > $d/containers.conf
  podman_ $1 import -q $W/base.tar base >/dev/null
}
podman_() { local k=$1; shift; CONTAINERS_STORAGE_CONF=$W/$k/storage.conf CONTAINERS_CONF=$W/$k/containers.conf podman "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

start_time() { # kind
  podman_ $1 run --rm base true # warm podman's own caches once
  for i in $(seq $RUNS); do
    s=$(now); podman_ $1 run --rm base true; e=$(now); echo "$e - $s" | bc
  done | median
}
commit_time() { # kind
  for i in $(seq $RUNS); do
    podman_ $1 rm -f c >/dev/null 2>&1 || true
    podman_ $1 run --name c base sh -c 'mkdir /data && cd /data && for d in $(seq 100); do mkdir $d; for f in $(seq 100); do echo $d$f > $d/$f; done; done'
    sync
    s=$(now); podman_ $1 commit -q c img$i >/dev/null; e=$(now); echo "$e - $s" | bc
    podman_ $1 rm -f c >/dev/null
  done | median
}

declare -A start commit
for k in kernel fuse-overlayfs stratafs; do
  setup_store $k
  start[$k]=$(start_time $k)
  commit[$k]=$(commit_time $k)
  podman_ $k rm -af >/dev/null 2>&1 || true
done
echo "| workload | kernel overlayfs | fuse-overlayfs | stratafs | stratafs / kernel |"
echo "|---|---|---|---|---|"
row() { printf "| %s | %.2f s | %.2f s | %.2f s | %.2fx |\n" "$1" $2 $3 $4 $(echo "$4 / $2" | bc -l); }
row "podman run --rm IMAGE true" ${start[kernel]} ${start[fuse-overlayfs]} ${start[stratafs]}
row "podman commit, 10,000 changed files" ${commit[kernel]} ${commit[fuse-overlayfs]} ${commit[stratafs]}
