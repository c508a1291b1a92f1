#!/bin/bash
# From "the image is in the repository" to "the container has run its command" (issue 5):
# podman reading the repository's podmanStore with stratafs as mount_program, against
# `podman load` of the image archive into podman's own storage followed by `podman run`; for a
# small image (busybox) and a large one (the Debian + numpy + scipy root of benches/convert.sh
# plus a 300 MB data layer, > 1 GB). Page cache dropped before each run; medians. The access
# report of the stratafs runs says how much of each image the command read.
# Usage (as root): bash benches/repo_run.sh      RUNS=5 for more.
set -euo pipefail
shopt -s inherit_errexit
RUNS=${RUNS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=/var/tmp/stratafs-bench
W=$B/repo-run
bash "$ROOT/benches/repo_images.sh"
cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
BIN=$ROOT/target/release/stratafs
rm -rf $W/repo
$BIN convert --repo $W/repo oci:$W/small:t --name bench.local/small:t 2>/dev/null
$BIN convert --repo $W/repo oci:$W/big:t --name bench.local/big:t 2>/dev/null

# Podman with the repository's store; stratafs through a wrapper that keeps an access log.
conf() { # dir, extra storage lines
  mkdir -p $1
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/graph"\nrunroot = "%s/run"\n%s\n' $1 $1 "$2" > $1/storage.conf
  printf '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\nnetns = "none"\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n' > $1/containers.conf
}
cat > $W/strata-logged <<EOF
#!/bin/sh
exec $BIN -o access_log=$W/access-\$(date +%s%N).log "\$@"
EOF
chmod +x $W/strata-logged
p() { local d=$1; shift; CONTAINERS_STORAGE_CONF=$d/storage.conf CONTAINERS_CONF=$d/containers.conf podman "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

declare -A cmd=(
  [small]="/bin/sh /hello.sh"
  [big]="python3 -c 'import numpy, scipy.linalg; print(numpy.__version__)'"
)
echo "| image | podman + repository store + stratafs | podman load + podman run | ratio |"
echo "|---|---|---|---|"
for i in small big; do
  repo_t=$(for r in $(seq $RUNS); do
    rm -rf $W/store && conf $W/store "$(printf '[storage.options]\nadditionalimagestores = ["%s/repo/podmanStore"]\n[storage.options.overlay]\nmount_program = "%s/strata-logged"' $W $W)"
    rm -f $W/access-*.log
    drop
    s=$(now); p $W/store run --rm bench.local/$i:t sh -c "${cmd[$i]}" >/dev/null; e=$(now)
    echo "$e - $s" | bc
  done | median)
  cp "$(ls $W/access-*.log | head -1)" $W/report-$i.log
  load_t=$(for r in $(seq $RUNS); do
    p $W/native rmi -af >/dev/null 2>&1 || true
    rm -rf $W/native && conf $W/native ""
    drop
    s=$(now); p $W/native load -q -i $W/$i.tar >/dev/null; p $W/native run --rm bench/$i:t sh -c "${cmd[$i]}" >/dev/null; e=$(now)
    echo "$e - $s" | bc
  done | median)
  size=$(du -sh --apparent-size $W/$i.tar | cut -f1)
  printf "| %s (%s) | %.2f s | %.2f s | %.2fx |\n" "$i" "$size" $repo_t $load_t $(echo "$load_t / $repo_t" | bc -l)
done
p $W/native rmi -af >/dev/null 2>&1 || true
for i in small big; do
  echo
  echo "access report, $i image (stratafs report $W/report-$i.log):"
  echo '```'
  $BIN report $W/report-$i.log
  echo '```'
done
