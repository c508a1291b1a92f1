#!/usr/bin/env bash
# The whole test suite, as CI runs it: set-up, formatting and lints, the mount-only build, then
# every test, then the library's unit tests again as an ordinary user (they need no root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A clean clone builds once: incremental state would only take disk (CI once ran out of it while
# linking). The build and the suites together need about 5 GB on a fresh machine.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
df -h . /var/tmp /tmp | sed 's/^/test.sh: /'
if [ "$free_kb" -lt $((5 * 1024 * 1024)) ]; then
  echo "test.sh: $(pwd): $((free_kb / 1024)) MB free, the build and the suites need 5 GB" >&2
  exit 1
fi
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo check --quiet --no-default-features --bin stratafs
# Every suite over /dev/fuse: the kernel's io_uring switch off, whatever this machine had (a
# mount asks for io_uring by default, and tests/common checks that none serves through rings
# unless asked); then the differential and podman suites again, with every stratafs mount
# served through FUSE over io_uring. The switch is put back afterwards.
uring=/sys/module/fuse/parameters/enable_uring
[ -f $uring ] || { echo "test.sh: $uring missing: this kernel has no FUSE over io_uring" >&2; exit 1; }
was=$(cat $uring)
echo N > $uring
cargo test --all-targets --no-fail-fast 2>&1 || { echo "$was" > $uring; exit 1; }
echo Y > $uring
STRATAFS_TEST_TRANSPORT=io_uring cargo test --test write_differential --test posix --test atime \
  --test differential --test whiteout_rules --test reads --test readdir --test podman \
  --test podman_store --test verify 2>&1 || { echo "$was" > $uring; exit 1; }
echo "$was" > $uring
# The unit tests work on temporary directories only: run the same binary as stratafs-test,
# from a copy it can reach wherever this checkout lives.
unit=$(cargo test --lib --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')
[ -n "$unit" ] || { echo "test.sh: could not find the library's unit-test binary" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$unit" "$dir/unit-tests"
chmod 755 "$dir" "$dir/unit-tests"
echo "test.sh: unit tests as the ordinary user stratafs-test"
(cd "$dir" && runuser -u stratafs-test -- ./unit-tests -q)
