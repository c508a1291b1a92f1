#!/bin/bash
# podman benchmarks (issue 3), rootful: container start (`podman run --rm IMAGE true`) and
# `podman commit` of a container that changed 10,000 files, each with podman's overlay driver
# on kernel overlayfs (no mount_program), with fuse-overlayfs and with stratafs as
# mount_program. One private store per kind under /var/tmp/stratafs-bench/podman.
# Prints a markdown table of medians.   Usage (as root): bash benches/podman.sh   RUNS=5 for more;
# PEERS='label=PROGRAM[ -o OPTS];...' adds mount programs (OPTS go to podman's mountopt), e.g.
# PEERS="fuse-overlayfs-2.0=/opt/fuse-overlayfs-2.0/bin/fuse-overlayfs;stratafs-io_uring=$PWD/target/release/stratafs -o io_uring"
# (labels without spaces; io_uring also needs `echo Y > /sys/module/fuse/parameters/enable_uring`).
# Ends with the requests stratafs served in both workloads; STATS_ONLY=1 prints only those.
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
  local d=$W/${DIR[$1]}
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
      kernel) ;;
      fuse-overlayfs) printf '[storage.options.overlay]\nmount_program = "%s"\n' "$(command -v fuse-overlayfs)" ;;
      stratafs) printf '[storage.options.overlay]\nmount_program = "%s"\n' "$BIN" ;;
      *) local spec=${PEER[$1]}
         printf '[storage.options.overlay]\nmount_program = "%s"\n' "${spec%% -o *}"
         [[ $spec == *" -o "* ]] && printf 'mountopt = "%s"\n' "${spec#* -o }" ;;
    esac
  } > $d/storage.conf
  printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\nnetns = "none"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > $d/containers.conf
  podman_ $1 import -q $W/base.tar base >/dev/null
}
# Stores of peers go under short names: conmon's socket paths under a longer runroot pass the
# 108-byte limit and podman then waits 20 s for every container's exit.
declare -A PEER DIR=([kernel]=kernel [fuse-overlayfs]=fuse-overlayfs [stratafs]=stratafs)
KINDS=(kernel fuse-overlayfs)
IFS=';' read -ra peers <<< "${PEERS:-}"
for p in "${peers[@]}"; do
  [ -n "$p" ] || continue
  PEER[${p%%=*}]=${p#*=}; DIR[${p%%=*}]=p${#KINDS[@]}; KINDS+=("${p%%=*}")
done
KINDS+=(stratafs)
podman_() { local d=$W/${DIR[$1]}; shift; CONTAINERS_STORAGE_CONF=$d/storage.conf CONTAINERS_CONF=$d/containers.conf podman "$@"; }
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

# Requests stratafs served, from `-o stats=` (written as each mount goes): a container start,
# and the container that writes the 10,000 files of the commit row.
stats_of() { # FILE FILES
  python3 - "$@" <<'PY'
import json, sys
v = json.load(open(sys.argv[1])); n = int(sys.argv[2]); r = v["requests"]
per = f" ({r / n:.1f}/file)" if n > 1 else ""
print(f'{r} requests{per}, {v["io_uring_requests"]} through io_uring')
PY
}
request_counts() {
  PEER[stats]="$BIN -o stats=$W/stats.json"; DIR[stats]=ps
  setup_store stats
  rm -f $W/stats.json; podman_ stats run --rm base true
  echo "- stratafs, \`podman run --rm IMAGE true\`: $(stats_of $W/stats.json 1)"
  rm -f $W/stats.json
  podman_ stats run --name c base sh -c 'mkdir /data && cd /data && for d in $(seq 100); do mkdir $d; for f in $(seq 100); do echo $d$f > $d/$f; done; done'
  podman_ stats rm -f c >/dev/null
  echo "- stratafs, a container writing the commit row's 10,000 files: $(stats_of $W/stats.json 10000)"
  podman_ stats rmi -af >/dev/null 2>&1 || true
}
if [ -n "${STATS_ONLY:-}" ]; then request_counts; exit 0; fi

declare -A start commit
for k in "${KINDS[@]}"; do
  setup_store "$k"
  start[$k]=$(start_time "$k")
  commit[$k]=$(commit_time "$k")
  podman_ "$k" rm -af >/dev/null 2>&1 || true
done
head="| workload"; rule="|---"
for k in "${KINDS[@]}"; do head+=" | ${k/kernel/kernel overlayfs}"; rule+="|---"; done
echo "$head | stratafs / kernel |"; echo "$rule|---|"
row() { # name, array name
  local -n t=$2; local line="| $1"
  for k in "${KINDS[@]}"; do line+=$(printf " | %.2f s" "${t[$k]}"); done
  printf "%s | %.2fx |\n" "$line" "$(echo "${t[stratafs]} / ${t[kernel]}" | bc -l)"
}
row "podman run --rm IMAGE true" start
row "podman commit, 10,000 changed files" commit
request_counts
