#!/bin/bash
# containerd (issue 10): from "the image is in the repository" to "the container has run its
# command", containerd's default overlayfs snapshotter pulling the image from a loopback
# docker-registry against the stratafs snapshotter taking its layers from the repository; for
# the small and the big image of benches/repo_images.sh, through `ctr` (pull + `ctr run`;
# ctr-remote rpull for stratafs, since plain ctr sends no layer digests) and through the CRI
# plugin as kubelet drives it (benches/cri_pod.rs: PullImage, RunPodSandbox, CreateContainer,
# StartContainer until the command exits). A private containerd per snapshotter; images removed
# (containerd's GC removes their content and snapshots) and the page cache dropped before each
# run; the sandbox image stays pulled, as on a node. Medians; the access report of a stratafs
# run (of the container's root, which the snapshotter mounts with an access log) says how
# much of each image the command read.
# Usage (as root): bash benches/containerd.sh      RUNS=5 for more.
set -euo pipefail
shopt -s inherit_errexit
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
B=/var/tmp/stratafs-bench
I=$B/repo-run
W=$B/containerd
bash "$ROOT/benches/repo_images.sh"
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
cargo bench -q --manifest-path "$ROOT/Cargo.toml" --bench cri_pod --no-run 2>/dev/null
BIN=$ROOT/target/release/stratafs
cri_pod() { cargo bench -q --manifest-path "$ROOT/Cargo.toml" --bench cri_pod -- "$@"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  grep -o " $W[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT
rm -rf $W && mkdir -p $W/bin $W/pause

# A loopback registry with the two images and a sandbox ("pause") image of its own layer.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
R=127.0.0.1:$port
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\nhttp:\n  addr: %s\n' $W $R > $W/registry.yml
docker-registry serve $W/registry.yml > $W/registry.log 2>&1 & pids+=($!)
umoci init --layout $W/pause-oci
umoci new --image $W/pause-oci:t
umoci unpack --image $W/pause-oci:t $W/pause-bundle >/dev/null
mkdir -p $W/pause-bundle/rootfs/bin && cp "$(command -v busybox)" $W/pause-bundle/rootfs/bin/
umoci repack --image $W/pause-oci:t $W/pause-bundle
umoci config --image $W/pause-oci:t --config.entrypoint /bin/busybox --config.cmd sleep --config.cmd 1000000
for _ in $(seq 50); do curl -fs http://$R/v2/ >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false oci:$W/pause-oci:t docker://$R/bench/pause:t
for i in small big; do
  skopeo copy -q --dest-tls-verify=false oci:$I/$i:t docker://$R/bench/$i:t
  $BIN convert --repo $W/repo http://$R/bench/$i:t 2>/dev/null
done

# Every container root the snapshotter mounts keeps an access log.
$BIN snapshotter --repo $W/repo --root $W/snap-state --address $W/snap.sock \
  --mount-option "access_log=$W/access-{id}.log" 2> $W/snapshotter.log & pids+=($!)

start_containerd() { # NAME SNAPSHOTTER
  local d=$W/ctrd-$1
  mkdir -p $d
  containerd_config $d $W/snap.sock $R/bench/pause:t $2 $R $R > $d/config.toml
  PATH=$W/bin:$PATH containerd --config $d/config.toml > $d/containerd.log 2>&1 & pids+=($!)
  for _ in $(seq 100); do [ -S $d/containerd.sock ] && break; sleep 0.1; done
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
declare -A cmd=(
  [small]="/bin/sh /hello.sh"
  [big]="python3 -c 'import numpy, scipy.linalg; print(numpy.__version__)'"
)

run_ctr() { # NAME SNAPSHOTTER IMAGE
  local a=$W/ctrd-$1/containerd.sock img=$R/bench/$3:t
  local pull=(ctr -a $a images pull --plain-http)
  [ $2 != stratafs ] || pull=(ctr-remote -a $a images rpull --plain-http --snapshotter stratafs)
  for r in $(seq $RUNS); do
    ctr -a $a images rm --sync $img >/dev/null 2>&1 || true
    rm -f $W/access-*.log
    drop
    s=$(now)
    "${pull[@]}" $img >/dev/null
    PATH=$W/bin:$PATH ctr -a $a run --rm --snapshotter $2 $img bench-$r sh -c "${cmd[$3]}" >/dev/null
    e=$(now)
    echo "$e - $s" | bc
    if [ $2 = stratafs ]; then
      # The log is written out when the root is unmounted: at the snapshot's removal, which
      # containerd's garbage collector does shortly after `ctr run --rm` returns.
      for _ in $(seq 100); do grep -q " $W/snap-state/snapshots/[0-9]*/mnt " /proc/mounts || break; sleep 0.1; done
      cp "$(ls $W/access-*.log | head -1)" $W/report-$3.log
    fi
  done | median
}
# CRI keeps three references per image (tag, repo@digest, config id); all must go for the
# image's content and snapshots to be collected.
rm_cri_image() { # SOCKET IMAGE
  local d
  d=$(ctr -a $1 -n k8s.io images ls | awk -v r="$2" '$1 == r {print $3}')
  [ -n "$d" ] || return 0
  ctr -a $1 -n k8s.io images ls | awk -v d="$d" '$3 == d {print $1}' |
    xargs -r ctr -a $1 -n k8s.io images rm --sync >/dev/null
}
run_cri() { # NAME IMAGE
  local a=$W/ctrd-$1/containerd.sock img=$R/bench/$2:t
  for r in $(seq $RUNS); do
    rm_cri_image $a $img
    drop
    cri_pod $a $img $W/pods-$1 sh -c "${cmd[$2]}" 2>/dev/null | sed 's/.*total=//'
  done | median
}

declare -A t
for s in overlayfs stratafs; do
  start_containerd $s $s
  # Warm-up: the sandbox image is pulled once, as a node has it.
  cri_pod $W/ctrd-$s/containerd.sock $R/bench/small:t $W/pods-$s /bin/sh -c : >/dev/null
  rm_cri_image $W/ctrd-$s/containerd.sock $R/bench/small:t
  for i in small big; do
    t[ctr-$s-$i]=$(run_ctr $s $s $i)
    t[cri-$s-$i]=$(run_cri $s $i)
  done
done

echo "| image | path | overlayfs snapshotter, pull from registry | stratafs snapshotter, layers from the repository | ratio |"
echo "|---|---|---|---|---|"
for i in small big; do
  size=$(du -sh --apparent-size $I/$i.tar | cut -f1)
  for p in ctr cri; do
    o=${t[$p-overlayfs-$i]} n=${t[$p-stratafs-$i]}
    printf "| %s (%s) | %s | %.2f s | %.2f s | %.2fx |\n" $i $size $p $o $n $(echo "$o / $n" | bc -l)
  done
done
for i in small big; do
  echo
  echo "access report, $i image, ctr run with the stratafs snapshotter:"
  echo '```'
  $BIN report $W/report-$i.log
  echo '```'
done
