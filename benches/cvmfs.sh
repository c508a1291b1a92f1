#!/usr/bin/env bash
# Cold start of the big image's Python job from a real CernVM-FS client (empty cache) behind
# a delay proxy (DELAYS ms each way, default "0 5 20"): stratafs without prefetch, stratafs
# with the image's trace, bwrap straight on the published .flat root, and "pull everything
# first" (the docker archive fetched over the same link, podman load, podman run).
# Prints a markdown table: of RUNS runs (odd), the median run's seconds and the bytes the client
# (or curl) fetched in that same run. MODES picks the columns (default "stratafs stratafs+trace
# flat pull"); stratafs+verify and stratafs+trace+verify mount with `-o verify=on` and no node
# table (every file read is hashed).
# Needs root and the CernVM-FS kit (../shared/cvmfs or $STRATAFS_CVMFS_KIT).
set -euo pipefail
shopt -s inherit_errexit
RUNS=${RUNS:-3}
# A median is one run's figure: an odd number of runs.
[ $((RUNS % 2)) -eq 1 ] || { echo "benches/cvmfs.sh: RUNS=$RUNS: give an odd number of runs" >&2; exit 1; }
DELAYS=${DELAYS:-"0 5 20"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=${STRATAFS_CVMFS_KIT:-$ROOT/../shared/cvmfs}
B=/var/tmp/stratafs-bench
W=$B/cvmfs
REPO=unpacked.test
SUB=stratafs-bench
LOG=/var/log/apache2/cvmfs-client-access.log
IMAGE=bench.local/big:t
JOB="python3 -c 'import numpy, scipy.linalg; print(numpy.__version__)'"
mkdir -p $W

bash "$ROOT/benches/repo_images.sh" >/dev/null
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/stratafs
CL=$(bash "$KIT/cvmfs-up.sh")
CLIENT=$CL/$SUB
M=$W/mnt
mkdir -p $M

# The median run by time, with that same run's bytes: "SECONDS BYTES" lines in, one out.
median_run() { sort -n -k1,1 | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
cold() {
  cvmfs_talk -i $REPO cleanup 0 >/dev/null
  sync
  echo 3 > /proc/sys/vm/drop_caches
}
mark() { wc -l < $LOG; }
fetched_since() { tail -n +$(($1 + 1)) $LOG | awk '{s += $(NF-1)} END {print s + 0}'; }
proxy=""
use_delay() { # ms: the client (and curl) talk to apache through the delay proxy
  [ -n "$proxy" ] && kill $proxy 2>/dev/null && wait $proxy 2>/dev/null || true
  proxy=""
  port=8000
  if [ "$1" != 0 ]; then
    port=8100
    python3 "$KIT/delayproxy.py" $port 8000 "$1" & proxy=$!
    sleep 0.5
  fi
  cvmfs_talk -i $REPO host set "http://127.0.0.1:$port/cvmfs/$REPO" >/dev/null
}
trap 'use_delay 0' EXIT
bwrap_job() { bwrap --bind "$1" / --proc /proc --dev /dev sh -c "$JOB" >/dev/null; }

# The repository: converted here (with its records), a trace recorded from a first run on the
# client, published.
if [ ! -e $W/.published-with-records ]; then
  rm -rf $W/repo
  $BIN convert --repo $W/repo oci:$B/repo-run/big:t --name $IMAGE 2>/dev/null
  bash "$KIT/cvmfs-publish.sh" $W/repo $SUB >&2
  CL=$(bash "$KIT/cvmfs-up.sh")
  use_delay 0
  cold
  $BIN mount --repo $CLIENT --no-prefetch --access-log $W/record.log $IMAGE $M 2>/dev/null
  bwrap_job $M
  fusermount3 -u $M
  sleep 1
  $BIN trace --repo $W/repo $W/record.log 2>/dev/null
  bash "$KIT/cvmfs-publish.sh" $W/repo $SUB >&2
  CL=$(bash "$KIT/cvmfs-up.sh")
  touch $W/.published-with-records
fi
FLAT=$(ls -d $CLIENT/.flat/*/*/ | head -1)
ln -sf $B/repo-run/big.tar /var/www/html/stratafs-big.tar
conf() {
  rm -rf $1 && mkdir -p $1
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' $1 $1 > $1/storage.conf
  printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\nnetns = "none"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > $1/containers.conf
}
p() { CONTAINERS_STORAGE_CONF=$W/native/storage.conf CONTAINERS_CONF=$W/native/containers.conf podman "$@"; }

run_mode() { # mode -> "seconds bytes"
  local s e m bytes
  case $1 in
    pull) p rmi -af >/dev/null 2>&1 || true; conf $W/native ;;
  esac
  cold
  m=$(mark)
  s=$(now)
  case $1 in
    stratafs)
      $BIN mount --repo $CLIENT --no-prefetch $IMAGE $M 2>/dev/null
      bwrap_job $M ;;
    stratafs+trace)
      $BIN mount --repo $CLIENT --access-log $W/prefetch.log $IMAGE $M 2>/dev/null
      bwrap_job $M ;;
    stratafs+verify)
      $BIN mount --repo $CLIENT --no-prefetch -o verify=on,verify_cache=none $IMAGE $M 2>/dev/null
      bwrap_job $M ;;
    stratafs+trace+verify)
      $BIN mount --repo $CLIENT --access-log $W/prefetch.log -o verify=on,verify_cache=none $IMAGE $M 2>/dev/null
      bwrap_job $M ;;
    flat)
      bwrap_job $FLAT ;;
    pull)
      curl -sf -o $W/pulled.tar http://127.0.0.1:$port/stratafs-big.tar
      p load -q -i $W/pulled.tar >/dev/null
      p run --rm bench/big:t sh -c "$JOB" >/dev/null ;;
  esac
  e=$(now)
  case $1 in
    stratafs*) fusermount3 -u $M; sleep 0.5 ;;
  esac
  if [ $1 = pull ]; then
    bytes=$(stat -c %s $W/pulled.tar)
    rm -f $W/pulled.tar
    p rmi -af >/dev/null 2>&1 || true
  else
    bytes=$(fetched_since $m)
  fi
  echo "$(echo "$e - $s" | bc) $bytes"
}

MODES=${MODES:-"stratafs stratafs+trace flat pull"}
declare -A title=([stratafs]="stratafs" [stratafs+trace]="stratafs + trace" [flat]="bwrap on .flat"
  [pull]="pull everything first" [stratafs+verify]="stratafs, verify=on"
  [stratafs+trace+verify]="stratafs + trace, verify=on")
head="| delay (each way) |"; rule="|---|"
for mode in $MODES; do head="$head ${title[$mode]} |"; rule="$rule---|"; done
echo "$head"; echo "$rule"
for d in $DELAYS; do
  use_delay $d
  row="| $d ms |"
  for mode in $MODES; do
    out=$(for r in $(seq $RUNS); do run_mode $mode; done)
    mid=$(echo "$out" | median_run)
    t=$(echo "$mid" | awk '{print $1}')
    mb=$(echo "$mid" | awk '{printf "%.0f", $2 / 1e6}')
    row="$row $(printf '%.2f s (%s MB)' $t $mb) |"
    [ $mode = stratafs+trace ] && cp $W/prefetch.log $W/prefetch-$d.log || true
  done
  echo "$row"
done
for d in $DELAYS; do
  [ -f $W/prefetch-$d.log ] || continue
  echo
  echo "stratafs report of the last prefetching run at $d ms:"
  echo '```'
  $BIN report $W/prefetch-$d.log | tail -2
  echo '```'
done
