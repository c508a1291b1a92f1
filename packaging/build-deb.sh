#!/usr/bin/env bash
# Build the Debian package: the binary, the man pages of man/, examples: storage.conf for
# podman, a containerd config.toml, the snapshotter's config and systemd unit, a tmpfiles.d
# entry that turns on FUSE over io_uring at boot; a postinst that hands live mounts to the new
# binary on upgrade.
# One command: `bash packaging/build-deb.sh [OUTDIR]` (default target/debian).
# STRATAFS_BIN=path uses an already built binary instead of `cargo build --release`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/target/debian}
if [ -n "${STRATAFS_BIN:-}" ]; then
  bin=$STRATAFS_BIN
else
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  bin=$root/target/release/stratafs
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$bin" "$stage/usr/bin/stratafs"
strip --strip-debug "$stage/usr/bin/stratafs" 2>/dev/null || true
for m in "$root"/man/*.1; do
  install -d "$stage/usr/share/man/man1"
  gzip -9n -c "$m" > "$stage/usr/share/man/man1/$(basename "$m").gz"
done
ex="$stage/usr/share/doc/stratafs/examples"
install -D -m 0644 "$root/packaging/storage.conf" "$ex/storage.conf"
install -D -m 0644 "$root/packaging/containerd-config.toml" "$ex/containerd-config.toml"
install -D -m 0644 "$root/packaging/snapshotter.toml" "$ex/snapshotter.toml"
install -D -m 0644 "$root/packaging/stratafs-snapshotter.service" "$ex/stratafs-snapshotter.service"
install -D -m 0644 "$root/packaging/stratafs-metrics.service" "$ex/stratafs-metrics.service"
install -D -m 0644 "$root/packaging/fuse-io-uring.conf" "$ex/fuse-io-uring.conf"
cat > "$stage/usr/share/doc/stratafs/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: stratafs
Files: *
License: Apache-2.0
COPY
install -d "$stage/DEBIAN"
# An upgrade hands live mounts to the new binary (stratafs upgrade).
install -m 0755 "$root/packaging/postinst" "$stage/DEBIAN/postinst"
size=$(du -sk "$stage/usr" | cut -f1)
cat > "$stage/DEBIAN/control" <<CTRL
Package: stratafs
Version: $version
Architecture: $arch
Maintainer: stratafs developers <stratafs@example.org>
Depends: fuse3, libc6
Recommends: podman, bubblewrap
Suggests: containerd
Section: admin
Priority: optional
Installed-Size: $size
Description: lazy layered filesystem for unpacked container images (CernVM-FS)
 Stacks unpacked image layer directories on demand as one FUSE mount, with whiteouts and a
 writable upper layer: a drop-in mount_program for podman (rootful and rootless) and a merged
 root for apptainer or bubblewrap, and a containerd (Kubernetes) snapshotter that runs images
 straight from the repository. stratafs convert writes images from registries, OCI layouts
 and archives into the CernVM-FS repository layout used by DUCC.
CTRL
mkdir -p "$out"
deb="$out/stratafs_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
