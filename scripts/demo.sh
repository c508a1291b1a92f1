#!/usr/bin/env bash
# The main job on a built-in example: a two-layer image (busybox base, then a layer in the
# OCI form that deletes a file, replaces a directory and adds files), stacked lazily by
# stratafs and used as a container root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --quiet
bin=$PWD/target/release/stratafs

work=$(mktemp -d /tmp/stratafs-demo.XXXXXX)
trap 'fusermount3 -u "$work/merged" 2>/dev/null || true; rm -rf "$work"' EXIT
base=$work/layers/base/layerfs app=$work/layers/app/layerfs
mkdir -p "$base"/{bin,etc,tmp,usr/share/doc/old} "$app"/{etc,tmp,usr/share/doc}
cp /bin/busybox "$base/bin/busybox"
for t in sh ls cat find; do ln -s busybox "$base/bin/$t"; done
echo "base layer" > "$base/etc/motd"
echo "scratch" > "$base/tmp/scratch.txt"
echo "old docs" > "$base/usr/share/doc/old/README"
# Layer 2, as an OCI tar has it: .wh. whiteouts and an opaque marker stay literal files.
echo "hello from the app layer" > "$app/etc/motd"
: > "$app/tmp/.wh.scratch.txt"
: > "$app/usr/share/doc/.wh..wh..opq"
echo "new docs" > "$app/usr/share/doc/NEW"

mkdir "$work/merged"
echo "\$ stratafs -o lowerdir=app/layerfs:base/layerfs merged"
"$bin" -o "lowerdir=$app:$base" "$work/merged"
echo "\$ find merged | sort"
(cd "$work" && find merged | sort)
echo "\$ chroot merged /bin/sh -c 'cat /etc/motd; ls /tmp; cat /usr/share/doc/*'"
if [ "$(id -u)" -eq 0 ]; then
  chroot "$work/merged" /bin/sh -c 'cat /etc/motd; ls /tmp; cat /usr/share/doc/*'
else
  bwrap --ro-bind "$work/merged" / --proc /proc --dev /dev /bin/sh -c 'cat /etc/motd; ls /tmp; cat /usr/share/doc/*'
fi
echo "\$ fusermount3 -u merged"
fusermount3 -u "$work/merged"
echo "demo: ok"
