#!/usr/bin/env bash
# The main job on a built-in example: a three-layer image (a busybox base, then RUN steps that
# delete a file and replace a directory) is built with podman, converted by `stratafs convert`
# into a CernVM-FS style repository (one directory per layer, the merged root, metadata, a
# public link), and mounted by name: read-only, then writable, with a report of what was read.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --quiet
bin=$PWD/target/release/stratafs

work=$(mktemp -d /tmp/stratafs-demo.XXXXXX)
trap 'fusermount3 -u "$work/merged" 2>/dev/null || true; rm -rf "$work"' EXIT
export CONTAINERS_STORAGE_CONF=$work/storage.conf CONTAINERS_CONF=$work/containers.conf
printf '[storage]\ndriver = "vfs"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n' "$work" "$work" > "$CONTAINERS_STORAGE_CONF"
printf '[containers]\ndefault_ulimits = ["nofile=4096:4096"]\nnetns = "none"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > "$CONTAINERS_CONF"

# The example image, made here (nothing is pulled).
mkdir -p "$work/base/bin" "$work/base/etc" "$work/base/tmp"
cp "$(command -v busybox)" "$work/base/bin/busybox"
for t in sh ls cat find rm mkdir echo; do ln -s busybox "$work/base/bin/$t"; done
echo "base layer" > "$work/base/etc/motd"
tar -C "$work/base" -cf "$work/base.tar" .
podman import -q "$work/base.tar" localhost/demo-base >/dev/null
cat > "$work/Containerfile" <<'EOF'
FROM localhost/demo-base
RUN mkdir -p /usr/share/doc/old && echo "old docs" > /usr/share/doc/old/README && echo scratch > /tmp/scratch.txt
RUN rm /tmp/scratch.txt && rm -rf /usr/share/doc && mkdir -p /usr/share/doc && echo "new docs" > /usr/share/doc/NEW && \
    echo "hello from the app layer" > /etc/motd
CMD ["/bin/sh", "-c", "cat /etc/motd"]
EOF
podman build -q --network=none -t localhost/demo-app -f "$work/Containerfile" "$work" >/dev/null
skopeo copy -q containers-storage:localhost/demo-app "oci:$work/oci:demo"

cd "$work"
echo "\$ stratafs convert --repo repo oci:oci:demo --name example.org/demo/app:1"
"$bin" convert --repo repo oci:oci:demo --name example.org/demo/app:1 2>&1 | sed 's/^.*INFO //' | grep -v "layer unpacked"
echo "\$ ls -l repo/example.org/demo/    # the public link to the merged root"
ls -l repo/example.org/demo/ | sed 1d
echo "\$ ls repo/.layers/*/              # one unpacked directory per layer"
ls -d repo/.layers/*/*/layerfs
mkdir merged upper work
run() { # the container: chroot as root, bwrap as an ordinary user
  if [ "$(id -u)" -eq 0 ]; then chroot merged /bin/sh -c "$1"
  else bwrap --bind merged / --proc /proc --dev /dev /bin/sh -c "$1"; fi
}
echo "\$ stratafs mount --repo repo example.org/demo/app:1 merged    # read-only, by name"
"$bin" mount --repo repo example.org/demo/app:1 merged 2>&1 | sed 's/^.*INFO //'
echo "\$ chroot merged /bin/sh -c 'cat /etc/motd; ls /tmp; cat /usr/share/doc/*'"
run 'cat /etc/motd; ls /tmp; cat /usr/share/doc/*'
echo "\$ fusermount3 -u merged"
fusermount3 -u merged
echo "\$ stratafs mount --repo repo example.org/demo/app:1 merged --upper upper --work work --access-log access.json"
"$bin" mount --repo repo example.org/demo/app:1 merged --upper upper --work work \
  --access-log access.json 2>&1 | sed 's/^.*INFO //'
echo "\$ chroot merged /bin/sh -c 'echo written > /tmp/out; rm /etc/motd; ls /etc'"
run 'echo written > /tmp/out; rm /etc/motd; ls /etc'
echo "\$ fusermount3 -u merged; ls -l upper/etc upper/tmp    # the writable layer: a whiteout, a new file"
fusermount3 -u merged
sleep 0.5
ls -l upper/etc upper/tmp | grep -v '^total'
echo "\$ stratafs report access.json    # what the container read of the image"
"$bin" report access.json
echo "demo: ok"
