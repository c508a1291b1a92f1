#!/bin/bash
# Density (issue 32): one node runs 1, 10 and 100 containers of the small image of
# benches/repo_images.sh through containerd (`ctr run -d`, one after the other), with the
# stratafs snapshotter (layers from the repository) and with the overlayfs snapshotter (image
# pulled from a loopback registry). For each count: the time to start the last container, and
# for stratafs the memory of every stratafs process together (RSS, and PSS, which splits
# shared pages between the processes that map them: the honest sum), the processes, the
# mounts the snapshotter handed out (from its /metrics) and what one mount and unmount of the
# image costs by itself (containerd makes a short-lived one per container to read
# /etc/passwd). Ends with one line per count.
# Usage (as root): bash benches/density.sh        COUNTS="1 10" for fewer.
set -euo pipefail
shopt -s inherit_errexit
COUNTS=${COUNTS:-1 10 100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
B=/var/tmp/stratafs-bench
I=$B/repo-run
W=$B/density
bash "$ROOT/benches/repo_images.sh"
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/stratafs

pids=()
cleanup() {
  for s in overlayfs stratafs; do
    a=$W/ctrd-$s/containerd.sock
    [ -S $a ] || continue
    for c in $(ctr -a $a tasks ls -q 2>/dev/null); do ctr -a $a tasks kill -s 9 $c >/dev/null 2>&1 || true; done
  done
  sleep 1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  grep -o " $W[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT
rm -rf $W && mkdir -p $W/bin
R=127.0.0.1:$(free_port)
M=127.0.0.1:$(free_port)
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\nhttp:\n  addr: %s\n' $W $R > $W/registry.yml
docker-registry serve $W/registry.yml > $W/registry.log 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -fs http://$R/v2/ >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false oci:$I/small:t docker://$R/bench/small:t
$BIN convert --repo $W/repo http://$R/bench/small:t 2>/dev/null
ln -sf $BIN $W/bin/stratafs
$BIN snapshotter --repo $W/repo --root $W/snap-state --address $W/snap.sock --metrics-address $M 2> $W/snapshotter.log & pids+=($!)
for _ in $(seq 100); do [ -S $W/snap.sock ] && break; sleep 0.1; done

start_containerd() { # SNAPSHOTTER
  local d=$W/ctrd-$1
  mkdir -p $d
  cat > $d/config.toml <<TOML
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[proxy_plugins.stratafs]
  type = "snapshot"
  address = "$W/snap.sock"
TOML
  PATH=$W/bin:$PATH containerd --config $d/config.toml > $d/containerd.log 2>&1 & pids+=($!)
  for _ in $(seq 100); do [ -S $d/containerd.sock ] && break; sleep 0.1; done
}
now() { date +%s.%N; }
# Every process running our binary (keepers and servers), one pid per line.
ours() { for p in /proc/[0-9]*; do [ "$(readlink $p/exe 2>/dev/null)" = "$BIN" ] && echo ${p#/proc/}; done; true; }
# KiB of RSS and PSS over the pids on stdin; servers' anonymous KiB.
memory() { xargs -r -I{} cat /proc/{}/smaps_rollup 2>/dev/null | awk '/^Rss:/{r+=$2} /^Pss:/{p+=$2} END {printf "%d %d\n", r, p}'; }
mounts_handed() { curl -fs http://$M/metrics | awk '/^stratafs_snapshotter_mounts_total\{type="bind"\}/{print $2}'; }

img=$R/bench/small:t
declare -A last med rss pss procs handed
for s in overlayfs stratafs; do
  start_containerd $s
  a=$W/ctrd-$s/containerd.sock
  if [ $s = stratafs ]; then
    ctr-remote -a $a images rpull --plain-http --snapshotter stratafs $img >/dev/null
  else
    ctr -a $a images pull --plain-http $img >/dev/null
  fi
  for n in $COUNTS; do
    h0=$(mounts_handed)
    starts=()
    for i in $(seq $n); do
      t0=$(now)
      PATH=$W/bin:$PATH ctr -a $a run -d --snapshotter $s $img d$n-$i /bin/busybox sleep 100000 >/dev/null
      t1=$(now)
      starts+=("$(echo "$t1 - $t0" | bc)")
    done
    last[$s-$n]=$(echo "$t1 - $t0" | bc)
    med[$s-$n]=$(printf '%s\n' "${starts[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    if [ $s = stratafs ]; then
      sleep 2 # the last container's short-lived mounts are gone
      read -r r p < <(ours | memory)
      rss[$n]=$r pss[$n]=$p procs[$n]=$(ours | wc -l)
      handed[$n]=$(( $(mounts_handed) - h0 ))
    fi
    for i in $(seq $n); do ctr -a $a tasks kill -s 9 d$n-$i >/dev/null 2>&1 || true; done
    sleep 1
    for i in $(seq $n); do
      ctr -a $a tasks rm -f d$n-$i >/dev/null 2>&1 || true
      ctr -a $a containers rm d$n-$i >/dev/null 2>&1 || true
    done
  done
done

# One mount of the image and its unmount, alone (what a short-lived mount costs), 50 times.
mkdir -p $W/mnt
t0=$(now)
for _ in $(seq 50); do
  $BIN mount --repo $W/repo $img $W/mnt
  cat $W/mnt/etc/passwd >/dev/null 2>&1 || true
  umount $W/mnt
done
cycle=$(echo "($(now) - $t0) * 1000 / 50" | bc -l)

echo "| containers | start of the last: overlayfs | stratafs | median start: overlayfs | stratafs | stratafs processes | RSS, all together | PSS, all together | PSS per container | mounts handed out |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in $COUNTS; do
  printf "| %d | %.2f s | %.2f s | %.3f s | %.3f s | %d | %.1f MB | %.1f MB | %.2f MB | %d |\n" $n ${last[overlayfs-$n]} ${last[stratafs-$n]} \
    ${med[overlayfs-$n]} ${med[stratafs-$n]} \
    ${procs[$n]} $(echo "${rss[$n]} / 1024" | bc -l) $(echo "${pss[$n]} / 1024" | bc -l) \
    $(echo "${pss[$n]} / 1024 / $n" | bc -l) ${handed[$n]}
done
printf "\none mount + unmount of the image alone: %.1f ms\n" $cycle
for n in $COUNTS; do
  printf "density: %d containers, stratafs PSS %.1f MB, last start %.2f s (overlayfs %.2f s)\n" $n \
    $(echo "${pss[$n]} / 1024" | bc -l) ${last[stratafs-$n]} ${last[overlayfs-$n]}
done
