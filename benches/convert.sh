#!/bin/bash
# Convert benchmark (issue 4): a multi-layer image of tens of thousands of files (the Debian +
# numpy + scipy root of benches/images.sh, in three layers, plus a fourth that deletes
# /usr/share/doc and changes a file) as an OCI layout made by umoci; `stratafs convert` (writes
# every layer AND the merged root) against `umoci unpack` (writes only the merged root), caches
# dropped before each run; then disk used by the repository against the layers' unique content.
# Usage (as root): bash benches/convert.sh      RUNS=5 for more runs.
set -euo pipefail
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=/var/tmp/stratafs-bench
W=$B/convert
[ -e $B/py/.done ] || bash "$ROOT/benches/images.sh"
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/stratafs
mkdir -p $W
if [ ! -e $W/layout/.done ]; then
  rm -rf $W/layout $W/bundle
  umoci init --layout $W/layout
  umoci new --image $W/layout:t
  umoci unpack --image $W/layout:t $W/bundle >/dev/null
  # umoci repack diffs against the bundle's unpack: unpack again after each repack, or the
  # next layer would hold everything.
  for l in base numpy scipy; do
    cp -a $B/py/$l/. $W/bundle/rootfs/
    umoci repack --image $W/layout:t $W/bundle
    rm -rf $W/bundle && umoci unpack --image $W/layout:t $W/bundle >/dev/null
  done
  rm -rf $W/bundle/rootfs/usr/share/doc
  echo changed >> $W/bundle/rootfs/etc/hostname
  umoci repack --image $W/layout:t $W/bundle
  rm -rf $W/bundle
  touch $W/layout/.done
fi
files=$(find $B/py/base $B/py/numpy $B/py/scipy | wc -l)
layers=$(grep -o '"digest"' $W/layout/blobs/sha256/$(grep -o 'sha256:[0-9a-f]*' $W/layout/index.json | head -1 | cut -d: -f2) | wc -l)
layers=$((layers - 1))
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
u=$(for i in $(seq $RUNS); do
  rm -rf $W/umoci; sync; echo 3 > /proc/sys/vm/drop_caches
  s=$(now); umoci unpack --image $W/layout:t $W/umoci >/dev/null; e=$(now); echo "$e - $s" | bc
done | median)
s=$(for i in $(seq $RUNS); do
  rm -rf $W/repo; sync; echo 3 > /proc/sys/vm/drop_caches
  s=$(now); $BIN convert --repo $W/repo "oci:$W/layout:t" 2>/dev/null; e=$(now); echo "$e - $s" | bc
done | median)
disk=$(du -s --block-size=1 $W/repo/.layers $W/repo/.flat | awk '{t+=$1} END {print t}')
content=$(du -s --apparent-size --block-size=1 $W/repo/.layers | awk '{print $1}')
umoci_disk=$(du -s --block-size=1 $W/umoci/rootfs | awk '{print $1}')
echo "image: $layers layers, $files entries in the first three; medians of $RUNS cold runs"
echo
echo "| | umoci unpack (merged root only) | stratafs convert (layers + merged root) | stratafs / umoci |"
echo "|---|---|---|---|"
printf "| time | %.2f s | %.2f s | %.2fx |\n" $u $s $(echo "$s / $u" | bc -l)
printf "| disk | %.0f MB | %.0f MB | |\n" $(echo "$umoci_disk / 1000000" | bc -l) $(echo "$disk / 1000000" | bc -l)
echo
printf "stratafs disk (.layers + .flat, each inode once) / unique content of the layers (apparent size): %.0f MB / %.0f MB = %.2fx\n" \
  $(echo "$disk / 1000000" | bc -l) $(echo "$content / 1000000" | bc -l) $(echo "$disk / $content" | bc -l)
