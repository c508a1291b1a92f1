#!/bin/bash
# The two images of benches/repo_run.sh and benches/containerd.sh, built once under
# /var/tmp/stratafs-bench/repo-run: small (busybox, /hello.sh) and big (the Debian + numpy +
# scipy root of benches/convert.sh plus a 300 MB data layer, > 1 GB), as OCI layouts
# (small:t, big:t) and docker archives (small.tar, big.tar).
set -euo pipefail
shopt -s inherit_errexit
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=/var/tmp/stratafs-bench
W=$B/repo-run
[ -e $B/convert/layout/.done ] || bash "$ROOT/benches/convert.sh" >/dev/null
mkdir -p $W

if [ ! -e $W/.images-done ]; then
  rm -rf $W/small $W/big $W/bundle
  mkdir -p $W/base/bin $W/base/proc $W/base/dev $W/base/etc
  cp "$(command -v busybox)" $W/base/bin/busybox
  for a in sh cat echo; do ln -sf busybox $W/base/bin/$a; done
  echo 'echo hello from the repository' > $W/base/hello.sh
  umoci init --layout $W/small
  umoci new --image $W/small:t
  umoci unpack --image $W/small:t $W/bundle >/dev/null
  cp -a $W/base/. $W/bundle/rootfs/
  umoci repack --image $W/small:t $W/bundle
  rm -rf $W/bundle
  cp -a $B/convert/layout $W/big
  umoci unpack --image $W/big:t $W/bundle >/dev/null
  mkdir -p $W/bundle/rootfs/data
  head -c 300M /dev/urandom > $W/bundle/rootfs/data/blob
  umoci repack --image $W/big:t $W/bundle
  rm -rf $W/bundle
  for i in small big; do skopeo copy -q oci:$W/$i:t docker-archive:$W/$i.tar:bench/$i:t; done
  touch $W/.images-done
fi
