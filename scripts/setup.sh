#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine for stratafs: packages, /dev/fuse, fuse.conf, a test user.
# Idempotent: running it again changes nothing that is already in place.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then exec sudo -E bash "$0" "$@"; fi
  echo "setup.sh: must run as root (installs packages, sets /dev/fuse mode)" >&2
  exit 1
fi

packages=(
  fuse3 attr acl strace e2fsprogs  # fusermount3, getfattr/setfattr, laziness checks, ext4 uppers
  podman runc uidmap skopeo umoci busybox-static   # real images for the OCI tests
  fuse-overlayfs hyperfine bubblewrap              # benchmarks and the demo
  docker-registry apache2-utils openssl            # a real registry (htpasswd, token signing) for convert
  man-db                                           # the packaged man pages render
  containerd stargz-snapshotter protobuf-compiler  # the containerd snapshotter: engine, ctr-remote, gRPC build
  prometheus                                       # scrapes the metrics in tests (promtool checks them)
  squid libapache2-mod-wsgi-py3                    # the fleet on CernVM-FS: site proxy, stratum-1 (benches/fleet.sh)
  qemu-utils xfsprogs                              # power cuts replayed: a logged block device, xfs uppers
  bc                                               # arithmetic in the benchmark scripts
  # CernVM-FS 2.12's runtime (the build itself comes from the kit below) and its stratum-0's web server
  libfuse3-3 libfuse2 libssl3 uuid libcap2 zlib1g libsqlite3-0 sqlite3 gawk psmisc lsof curl rsync jq
  libcap2-bin apache2 iproute2 kmod python3 usbutils
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# qemu-storage-daemon is in qemu-utils from QEMU 8 on, in qemu-system-common in Debian 12's 7.2
# (installed only where it is missing: the two would ship the same file).
if ! command -v qemu-storage-daemon >/dev/null; then
  echo "setup.sh: installing qemu-system-common (qemu-storage-daemon)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-common >/dev/null
fi

# Unprivileged mounts go through fusermount3 and need to open /dev/fuse.
[ -e /dev/fuse ] || { echo "setup.sh: /dev/fuse does not exist (no FUSE in this kernel?)" >&2; exit 1; }
chmod 0666 /dev/fuse
grep -qx 'user_allow_other' /etc/fuse.conf 2>/dev/null || echo 'user_allow_other' >> /etc/fuse.conf

# CernVM-FS 2.12 (client and stratum-0) for tests/cvmfs/: no registry has it, so it comes
# from the kit beside the checkout (../shared/cvmfs) or $STRATAFS_CVMFS_KIT.
here=$(cd "$(dirname "$0")/.." && pwd)
kit=""
for k in "${STRATAFS_CVMFS_KIT:-}" "$here/../shared/cvmfs" /work/shared/cvmfs; do
  if [ -n "$k" ] && [ -f "$k/cvmfs-up.sh" ]; then kit=$(cd "$k" && pwd); break; fi
done
if [ -z "$kit" ] && ! command -v cvmfs2 >/dev/null; then
  # The demo does not need it; tests/cvmfs/ fails saying the same.
  echo "setup.sh: warning: the CernVM-FS kit is missing (../shared/cvmfs beside the checkout, or STRATAFS_CVMFS_KIT): tests/cvmfs/ will fail" >&2
fi
# A plain tar -x of the kit would turn the /sbin symlink of a merged-/usr system into a
# directory (and mount(8) would then miss /usr/sbin/mount.fuse): mend that, keep symlinks.
if [ -L /bin ] && [ -d /sbin ] && [ ! -L /sbin ]; then
  mv /sbin/* /usr/sbin/ 2>/dev/null || true
  rmdir /sbin && ln -s usr/sbin /sbin
fi
if [ -n "$kit" ] && { ! command -v cvmfs2 >/dev/null || ! command -v cvmfs_server >/dev/null; }; then
  echo "setup.sh: installing CernVM-FS from $kit"
  tar --keep-directory-symlink -C / -xJf "$kit"/cvmfs-*.tar.xz
  ldconfig
fi
# cvmfs-publish.sh frees a stratum-0 mount that another mount namespace holds through here.
mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections

# An ordinary user for the unprivileged tests (useradd -m also gives subuid/subgid ranges).
id stratafs-test >/dev/null 2>&1 || useradd -m -s /bin/bash stratafs-test

if ! command -v cargo >/dev/null; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "setup.sh: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
echo "setup.sh: ready"
