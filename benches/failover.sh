#!/bin/bash
# Failover: the time from SIGKILL of a mount's server to the first request the new server
# answers, with N node ids known to the kernel (find -printf stats every entry of an
# N-file lower layer first); the journal's size; the keeper's and the server's memory.
# The first request is a lookup in a directory the kernel holds, so the new server must
# take up that node from the journal.
# Usage (as root): bash benches/failover.sh     NODES="10 10000 200000" RUNS=5
set -euo pipefail
RUNS=${RUNS:-5}
NODES=${NODES:-10 10000 200000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=${BIN:-$ROOT/target/release/stratafs}
W=/var/tmp/stratafs-bench/failover
mkdir -p $W/m

lower() { # N: N files, 1000 per directory
  local n=$1 d=$W/low-$1
  if [ ! -f $d/.done ]; then
    rm -rf $d && mkdir -p $d
    python3 - "$d" "$n" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%d" % (i // 1000))
    if i % 1000 == 0:
        os.mkdir(d)
    with open(os.path.join(d, "f%d" % i), "w") as f:
        f.write("x")
EOF
    touch $d/.done
  fi
  echo $d
}

field() { $BIN status $W/m | awk -v k="$1" '$1 == k { print $2 }'; }
kib() { awk -v k="$2:" '$1 == k { print $2 }' /proc/$1/status; }

echo "| node ids | journal (bytes) | bytes per node id | SIGKILL -> first answer (ms, median of $RUNS) | keeper RSS (KiB) | keeper PSS (KiB) | server RSS (KiB) |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for n in $NODES; do
  low=$(lower $n)
  $BIN -o lowerdir=$low,io_uring=off $W/m
  find $W/m -printf '%s\n' > /dev/null
  keeper=$(field keeper)
  memfd=$(ls -l /proc/$keeper/fd | awk '/stratafs-journal/ { print $9 }')
  journal=$(( $(stat -L -c %b /proc/$keeper/fd/$memfd) * 512 ))
  times=()
  for r in $(seq 1 $RUNS); do
    server=$(field server)
    t0=$(date +%s%N)
    kill -9 $server
    stat $W/m/d0/not-there-$r >/dev/null 2>&1 || true
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
    while [ "$(field server)" = "$server" ]; do sleep 0.01; done
  done
  med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  server=$(field server)
  pss=$(awk '/^Pss:/ { print $2 }' /proc/$keeper/smaps_rollup)
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$journal" "$(( journal / (n > 0 ? n : 1) ))" \
    "$(echo "scale=1; $med / 1000" | bc)" "$(kib $keeper VmRSS)" "$pss" "$(kib $server VmRSS)"
  fusermount3 -u $W/m
  while pgrep -f "$BIN -o lowerdir=$low" >/dev/null; do sleep 0.05; done
done
