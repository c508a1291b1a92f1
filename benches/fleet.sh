#!/usr/bin/env bash
# A fleet on CernVM-FS (issue 29): N nodes start the same pod at the same moment (CRI, as kubelet
# does), each with its own CernVM-FS client and cache, containerd and stratafs snapshotter, all
# reading one stratum-1 through one squid proxy; against the same fleet pulling the image from a
# registry with containerd's overlayfs snapshotter.
#
#   N=3 bash benches/fleet.sh                  (as root)
#
# The parts, real and each its own process, port and log, on loopback (every node shares the
# host's network namespace: containerd must see the FUSE mounts the snapshotter makes, and
# loopback needs no addresses outside this machine):
#   stratum-0  unpacked.test of the CernVM-FS kit (apache; clients use its :8000, logged apart)
#   stratum-1  s1.unpacked.test: `cvmfs_server add-replica` + `snapshot`, served by an apache of
#              its own on $S1_PORT (log $F/s1/access.log)
#   proxy      Debian's squid on $PROXY_PORT, configured as CernVM-FS sites run it
#              (collapsed_forwarding on, maximum_object_size 1 GB, a disk cache)
#   registry   docker-registry: manifests and configs for PullImage (every mode); layer blobs only
#              for the registry fleet
#   node i     $F/node-i: cvmfs2 mount of unpacked.test with its own empty cache, servers
#              "stratum-1;stratum-0", proxies "squid;DIRECT"; containerd (own root, state,
#              socket; CRI on, host network); `stratafs snapshotter` on the client's repository
#
# Every fleet start is cold: nodes, squid and their caches are made afresh and the page cache is
# dropped; only the sandbox image is on the nodes already. Modes (MODES):
#   cvmfs         the stratafs snapshotter, no prefetch
#   cvmfs+trace   the stratafs snapshotter, prefetching from the image's published trace
#   registry      containerd's overlayfs snapshotter pulling every layer from the registry
# Faults (FAULTS, each a cvmfs fleet start; the part stops when the stratum-1 has served its first
# data object of the start):
#   s1-stops      the stratum-1's apache stops: clients fail over to the stratum-0
#   proxy-stops   squid is killed: clients go direct
#
# STRATAFS_BIN and CRI_POD (benches/cri_pod.rs) name binaries to use instead of building them.
# Image: IMAGE=small|big (benches/repo_images.sh, default big) with its command, or OCI=DIR:TAG
# with JOB (a shell command) and EXPECT (text the container's log must hold). DELAY=ms puts the
# kit's delay proxy in front of the stratum-1 and the registry. RUNS (odd): starts per row, the
# median row by time is shown.
#
# Counts data objects only (URLs under /data/ of the repository; the manifest every node fetches
# is not data). Prints a table, then one line:
#   fleet: K of N nodes ok, stratum-1 bytes X, working set Y
# K: nodes whose pod ran its command in every start of this run; X: bytes of data objects the
# stratum-1 served in the first cvmfs start; Y: bytes of the distinct data objects the nodes
# asked for in that start. Per-start figures are in $F/results.tsv; logs stay in $F.
set -euo pipefail
shopt -s inherit_errexit
N=${N:-3}
RUNS=${RUNS:-1}
[ $((RUNS % 2)) -eq 1 ] || { echo "fleet.sh: RUNS=$RUNS: give an odd number of runs" >&2; exit 1; }
MODES=${MODES:-"cvmfs cvmfs+trace registry"}
FAULTS=${FAULTS:-"s1-stops proxy-stops"}
DELAY=${DELAY:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
KIT=${STRATAFS_CVMFS_KIT:-$ROOT/../shared/cvmfs}
B=/var/tmp/stratafs-bench
F=${FLEET_DIR:-$B/fleet}
REPO=unpacked.test
S1=s1.$REPO
SUB=fleet
S0_LOG=/var/log/apache2/cvmfs-client-access.log
log() { echo "fleet: $*" >&2; }
die() { echo "fleet.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (CernVM-FS server and clients, containerd)"
for t in cvmfs_server cvmfs2 cvmfs_talk squid apache2 containerd runc ctr docker-registry skopeo \
  umoci bwrap busybox curl python3 bc; do
  command -v $t >/dev/null || die "$t is missing (bash scripts/setup.sh installs it)"
done
[ -f "$KIT/cvmfs-up.sh" ] || die "$KIT/cvmfs-up.sh: the CernVM-FS kit is missing (STRATAFS_CVMFS_KIT)"

if [ -n "${OCI:-}" ]; then
  [ -n "${JOB:-}" ] || die "OCI=$OCI needs JOB, the command the pod runs"
  EXPECT=${EXPECT:-}
else
  IMAGE=${IMAGE:-big}
  bash "$ROOT/benches/repo_images.sh" >/dev/null
  OCI=$B/repo-run/$IMAGE:t
  case $IMAGE in
    small) JOB="/bin/sh /hello.sh"; EXPECT=${EXPECT:-} ;;
    big) JOB="python3 -c 'import numpy, scipy.linalg; print(numpy.__version__)'"; EXPECT=${EXPECT:-} ;;
    *) die "IMAGE=$IMAGE: small or big" ;;
  esac
fi

# The binaries: built here (release), or given (tests/fleet.rs passes its own).
if [ -z "${STRATAFS_BIN:-}" ]; then
  cargo build --release -q --manifest-path "$ROOT/Cargo.toml"
  STRATAFS_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/stratafs
fi
BIN=$STRATAFS_BIN
[ -n "${CRI_POD:-}" ] || CRI_POD=$(cargo bench -q --manifest-path "$ROOT/Cargo.toml" --bench cri_pod --no-run \
  --message-format=json 2>/dev/null | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m["target"]["name"] == "cri_pod":
        print(m["executable"])') || die "could not build benches/cri_pod.rs"
[ -x "$CRI_POD" ] || die "could not build benches/cri_pod.rs"

now() { date +%s.%N; }
wait_for() { # WHAT COMMAND...: up to 20 s
  local what=$1; shift
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "$what did not come up"
}

pids=()
delays=()
cleanup() {
  set +e
  if declare -F node_down >/dev/null; then
    for i in $(seq "$N"); do node_down "$i"; done
  fi
  declare -F squid_down >/dev/null && squid_down
  declare -F s1_down >/dev/null && s1_down
  mountpoint -q "$F/local/mnt" 2>/dev/null && umount -l "$F/local/mnt"
  for p in "${pids[@]}" "${delays[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
}
trap cleanup EXIT
mkdir -p "$F"

# --- stratum-0, registry, the image ---
log "stratum-0"
bash "$KIT/cvmfs-up.sh" >/dev/null
R=127.0.0.1:$(free_port)
rm -rf "$F/registry"
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/registry\nhttp:\n  addr: %s\n' \
  "$F" "$R" > "$F/registry.yml"
docker-registry serve "$F/registry.yml" > "$F/registry.log" 2>&1 & pids+=($!)
wait_for registry curl -fs "http://$R/v2/"
# The registry as the nodes reach it (behind the delay proxy when DELAY is set).
RN=$R
if [ "$DELAY" != 0 ]; then
  p=$(free_port)
  python3 "$KIT/delayproxy.py" "$p" "${R#*:}" "$DELAY" & delays+=($!)
  RN=127.0.0.1:$p
fi
# A sandbox ("pause") image of its own: busybox sleeping.
rm -rf "$F/pause-oci" "$F/pause-bundle"
umoci init --layout "$F/pause-oci"
umoci new --image "$F/pause-oci:t"
umoci unpack --image "$F/pause-oci:t" "$F/pause-bundle" >/dev/null
mkdir -p "$F/pause-bundle/rootfs/bin" && cp "$(command -v busybox)" "$F/pause-bundle/rootfs/bin/"
umoci repack --image "$F/pause-oci:t" "$F/pause-bundle"
umoci config --image "$F/pause-oci:t" --config.entrypoint /bin/busybox --config.cmd sleep --config.cmd 1000000
skopeo copy -q --dest-tls-verify=false "oci:$F/pause-oci:t" "docker://$R/fleet/pause:t"
skopeo copy -q --dest-tls-verify=false "oci:$OCI" "docker://$R/fleet/app:t"
IMG=$R/fleet/app:t
APP_MANIFEST=$(skopeo inspect --raw --tls-verify=false "docker://$IMG")
APP_LAYERS=$(python3 -c 'import json, sys; print(" ".join(l["digest"] for l in json.load(sys.stdin)["layers"]))' <<<"$APP_MANIFEST")
APP_BYTES=$(python3 -c 'import json, sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))' <<<"$APP_MANIFEST")

# --- the image into the stratum-0, with a trace of the job ---
# The same image published once: a marker names what is there.
want="$(echo "$APP_LAYERS $JOB" | sha256sum | cut -c1-16)"
published() {
  [ "$(cat "$F/published" 2>/dev/null)" = "$want" ] || return 1
  (cd "$F/local/repo/.traces" && find . -type f) | while read -r t; do
    [ -f "/cvmfs/$REPO/$SUB/.traces/$t" ] || return 1
  done
}
if ! published; then
  log "publishing the image into the stratum-0 (convert --publish), with a trace of the job"
  rm -rf "$F/local"
  L=$F/publish.log
  "$BIN" convert --repo "$F/local/repo" "http://$IMG" 2>>"$L" || die "convert failed: $(tail -3 "$L")"
  mkdir -p "$F/local/mnt"
  "$BIN" mount --repo "$F/local/repo" --no-prefetch --access-log "$F/local/job.log" "$IMG" "$F/local/mnt" 2>>"$L" || die "mount failed: $(tail -3 "$L")"
  bwrap --bind "$F/local/mnt" / --proc /proc --dev /dev sh -c "$JOB" >/dev/null
  fusermount3 -u "$F/local/mnt"
  sleep 1
  "$BIN" trace --repo "$F/local/repo" "$F/local/job.log" 2>>"$L" || die "trace failed: $(tail -3 "$L")"
  "$BIN" convert --publish "cvmfs:$REPO" --repo "/cvmfs/$REPO/$SUB" "http://$IMG" 2>>"$L" ||
    die "convert --publish failed: $(tail -3 "$L")"
  # The traces of images published before stay (the kit's publish mirrors the directory).
  [ -d "/cvmfs/$REPO/$SUB/.traces" ] && cp -an "/cvmfs/$REPO/$SUB/.traces/." "$F/local/repo/.traces/"
  NESTED_CATALOG=0 bash "$KIT/cvmfs-publish.sh" "$F/local/repo/.traces" "$SUB/.traces" >&2
  echo "$want" > "$F/published"
fi

# --- the stratum-1 ---
if [ ! -f /etc/cvmfs/repositories.d/$S1/replica.conf ] || [ ! -d /var/spool/cvmfs/$S1 ]; then
  log "stratum-1 $S1 (add-replica)"
  [ -d /etc/cvmfs/repositories.d/$S1 ] && cvmfs_server rmfs -f $S1 >&2
  # No GeoIP database here (clients order their servers themselves: CVMFS_USE_GEOAPI=no).
  mkdir -p /var/lib/cvmfs-server/geo
  export CVMFS_GEO_DB_FILE=NONE
  cvmfs_server add-replica -o root -n $S1 -a -p "http://127.0.0.1/cvmfs/$REPO" /etc/cvmfs/keys/$REPO.pub >&2
fi
log "stratum-1 snapshot"
cvmfs_server snapshot $S1 >&2
S1_PORT=$(free_port)
mkdir -p "$F/s1/empty"
mods=/usr/lib/apache2/modules
cat > "$F/s1/httpd.conf" <<EOF
# The stratum-1 of benches/fleet.sh: its own apache, port and log. The <Directory> settings are
# those cvmfs_server writes for a repository it serves.
ServerRoot /etc/apache2
ServerName localhost
Listen 127.0.0.1:$S1_PORT
PidFile $F/s1/httpd.pid
LoadModule mpm_event_module $mods/mod_mpm_event.so
LoadModule authz_core_module $mods/mod_authz_core.so
LoadModule alias_module $mods/mod_alias.so
LoadModule mime_module $mods/mod_mime.so
LoadModule headers_module $mods/mod_headers.so
LoadModule expires_module $mods/mod_expires.so
User www-data
Group www-data
TypesConfig /etc/mime.types
ErrorLog $F/s1/error.log
LogFormat "%h %t \"%r\" %>s %B %D \"%{Via}i\"" fleet
CustomLog $F/s1/access.log fleet
DocumentRoot $F/s1/empty
KeepAlive On
MaxRequestWorkers 125
Alias /cvmfs/$REPO /srv/cvmfs/$S1
<Directory "/srv/cvmfs/$S1">
    Options -MultiViews
    Require all granted
    EnableMMAP Off
    EnableSendFile Off
    <FilesMatch "^\.cvmfs">
        ForceType application/x-cvmfs
    </FilesMatch>
    <FilesMatch "^[^.]*\$">
        ForceType application/octet-stream
    </FilesMatch>
    Header unset Last-Modified
    RequestHeader unset If-Modified-Since
    FileETag None
    ExpiresActive On
    ExpiresDefault "access plus 3 days"
    ExpiresByType application/x-cvmfs "access plus 61 seconds"
    ExpiresByType application/json    "access plus 61 seconds"
</Directory>
EOF
touch "$F/s1/access.log"
s1_up() {
  apache2 -f "$F/s1/httpd.conf" -k start
  wait_for "the stratum-1" curl -fs "http://127.0.0.1:$S1_PORT/cvmfs/$REPO/.cvmfspublished"
}
s1_down() {
  local p
  p=$(cat "$F/s1/httpd.pid" 2>/dev/null) || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  pkill -9 -f "apache2 -f $F/s1/httpd.conf" 2>/dev/null || true
  rm -f "$F/s1/httpd.pid"
}
s1_down || true
s1_up
# The stratum-1 as clients and the proxy name it (behind the delay proxy when DELAY is set).
S1_URL=http://127.0.0.1:$S1_PORT/cvmfs/@fqrn@
if [ "$DELAY" != 0 ]; then
  p=$(free_port)
  python3 "$KIT/delayproxy.py" "$p" "$S1_PORT" "$DELAY" & delays+=($!)
  S1_URL=http://127.0.0.1:$p/cvmfs/@fqrn@
fi

# --- the proxy ---
PROXY_PORT=$(free_port)
squid_pid=""
squid_up() {
  rm -rf "$F/squid" && mkdir -p "$F/squid/cache"
  cat > "$F/squid/squid.conf" <<EOF
# A site proxy for CernVM-FS (benches/fleet.sh).
http_port 127.0.0.1:$PROXY_PORT
visible_hostname fleet-proxy
pid_filename $F/squid/squid.pid
cache_effective_user proxy
coredump_dir $F/squid
# Chunks reach 16 MB and more: keep whole files up to 1 GB on disk.
maximum_object_size 1024 MB
cache_mem 256 MB
maximum_object_size_in_memory 128 KB
cache_dir ufs $F/squid/cache 8000 16 256
# Requests for an object already on its way wait for it instead of going upstream again: the
# fleet-start case.
collapsed_forwarding on
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
access_log stdio:$F/squid/access.log squid
buffered_logs off
cache_log $F/squid/cache.log
cache_store_log none
logfile_rotate 0
shutdown_lifetime 1 seconds
EOF
  chown -R proxy:proxy "$F/squid"
  squid -z -N -f "$F/squid/squid.conf" 2>>"$F/squid/cache.log"
  squid -N -f "$F/squid/squid.conf" 2>>"$F/squid/cache.log" & squid_pid=$!
  wait_for "squid" curl -fs -o /dev/null -x "http://127.0.0.1:$PROXY_PORT" "http://127.0.0.1:$S1_PORT/cvmfs/$REPO/.cvmfspublished"
}
squid_down() { # SIGNAL: TERM writes the log out
  [ -n "$squid_pid" ] || return 0
  kill "-${1:-TERM}" "$squid_pid" 2>/dev/null || true
  wait "$squid_pid" 2>/dev/null || true
  squid_pid=""
}

# --- nodes ---
node_up() { # I MODE
  local i=$1 mode=$2 d=$F/node-$1 snapshotter=stratafs
  rm -rf "$d" && mkdir -p "$d/cache" "$d/cvmfs" "$d/bin" "$d/pods"
  ln -s "$BIN" "$d/bin/stratafs"
  cat > "$d/cvmfs.conf" <<EOF
CVMFS_SERVER_URL="$S1_URL;http://127.0.0.1:8000/cvmfs/@fqrn@"
CVMFS_HTTP_PROXY="http://127.0.0.1:$PROXY_PORT;DIRECT"
CVMFS_PUBLIC_KEY=/etc/cvmfs/keys/$REPO.pub
CVMFS_CACHE_BASE=$d/cache
CVMFS_SHARED_CACHE=no
CVMFS_QUOTA_LIMIT=8000
CVMFS_USE_GEOAPI=no
CVMFS_NFILES=$(ulimit -Hn)
CVMFS_RELOAD_SOCKETS=$d/cache
EOF
  cvmfs2 -o "config=$d/cvmfs.conf,allow_other" $REPO "$d/cvmfs" >"$d/cvmfs2.log" 2>&1 ||
    die "node $i: cvmfs2 mount failed: $(tail -3 "$d/cvmfs2.log")"
  local snap_opts=()
  case $mode in
    cvmfs) snap_opts=(--mount-option prefetch=off) ;;
    cvmfs+trace) ;;
    registry) snapshotter=overlayfs ;;
  esac
  if [ "$snapshotter" = stratafs ]; then
    "$BIN" snapshotter --repo "$d/cvmfs/$SUB" --root "$d/snap-state" --address "$d/snap.sock" \
      "${snap_opts[@]}" 2>"$d/snapshotter.log" & echo $! > "$d/snapshotter.pid"
    wait_for "node $i's snapshotter" test -S "$d/snap.sock"
  fi
  containerd_config "$d" "$d/snap.sock" "$R/fleet/pause:t" "$snapshotter" "$R" "$RN" \
    >"$d/containerd.toml"
  PATH=$d/bin:$PATH containerd --config "$d/containerd.toml" >"$d/containerd.log" 2>&1 &
  echo $! > "$d/containerd.pid"
  wait_for "node $i's containerd" test -S "$d/containerd.sock"
  # The sandbox image, as a node has it before any pod of the image is scheduled (CRI answers
  # a moment after the socket appears: retried).
  local n
  for n in $(seq 20); do
    "$CRI_POD" pull "$d/containerd.sock" "$R/fleet/pause:t" >/dev/null 2>"$d/pause.log" && break
    [ "$n" = 20 ] && die "node $i: pulling the sandbox image failed: $(tail -3 "$d/pause.log")"
    sleep 0.5
  done
}
node_down() { # I
  local d=$F/node-$1 p t
  [ -d "$d" ] || return 0
  # Containers a failed start left (pods are removed by cri_pod when it succeeds).
  if [ -S "$d/containerd.sock" ]; then
    for t in $(ctr -a "$d/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$d/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
  fi
  for p in containerd snapshotter; do
    if [ -f "$d/$p.pid" ]; then
      kill "$(cat "$d/$p.pid")" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$(cat "$d/$p.pid")" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$(cat "$d/$p.pid")" 2>/dev/null || true
      rm -f "$d/$p.pid"
    fi
  done
  pkill -9 -f "containerd-shim.* -address $d/containerd.sock" 2>/dev/null || true
  grep -o " $d/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}

# --- counting ---
mark() { wc -l < "$1"; }
since() { tail -n +$(($2 + 1)) "$1"; } # FILE MARK
# Bytes of data objects in an apache log since MARK (`%h %t "%r" %>s %B ...`: the path is field 5,
# the bytes field 8).
apache_data_bytes() { since "$1" "$2" | awk '$5 ~ "/data/" {s += $8} END {print s + 0}'; }
registry_bytes() { since "$F/registry.log" "$1" | awk '$6 == "\"GET" {s += $10} END {print s + 0}'; }
# The distinct data objects the nodes asked for: through squid (its log) or directly (logs of the
# stratum-1 and the stratum-0 without a Via header), summed by their size in the stratum-0.
working_set() { # S1_MARK S0_MARK
  {
    awk '{print $7}' "$F/squid/access.log" 2>/dev/null
    since "$F/s1/access.log" "$1" | awk '$NF == "\"-\"" {print $5}'
    since "$S0_LOG" "$2" | awk '{print $5}'
  } | grep -o "/cvmfs/$REPO/data/[0-9a-f]*/[0-9a-zA-Z]*" | sort -u |
    sed "s|^/cvmfs/$REPO/|/srv/cvmfs/$REPO/|" | { xargs -r stat -c %s 2>/dev/null || true; } |
    awk '{s += $1} END {print s + 0}'
}
proxy_data_bytes() { awk '$7 ~ "/data/" {s += $5} END {print s + 0}' "$F/squid/access.log" 2>/dev/null || echo 0; }

# One cold fleet start: MODE FAULT LABEL. Appends a row to results.tsv.
fleet_start() {
  local mode=$1 fault=$2 label=$3 i
  log "$label: nodes up"
  for i in $(seq "$N"); do node_down "$i"; done
  squid_down
  sync && echo 3 > /proc/sys/vm/drop_caches
  if ! kill -0 "$(cat "$F/s1/httpd.pid" 2>/dev/null)" 2>/dev/null; then s1_up; fi
  squid_up
  # The stratum-1 and proxy count from the nodes' mounts on (their catalogs are data objects);
  # the registry from the start on (the sandbox image is on the nodes before).
  local m1 m0 mr ms
  m1=$(mark "$F/s1/access.log") m0=$(mark $S0_LOG)
  for i in $(seq "$N"); do node_up "$i" "$mode"; done
  sync && echo 3 > /proc/sys/vm/drop_caches
  log "$label: $N pods at once"
  local start runs=()
  mr=$(mark "$F/registry.log") ms=$(mark "$F/s1/access.log")
  start=$(now)
  for i in $(seq "$N"); do
    timeout 600 "$CRI_POD" "$F/node-$i/containerd.sock" "$IMG" "$F/node-$i/pods" sh -c "$JOB" \
      >"$F/node-$i/run.out" 2>"$F/node-$i/run.log" & runs+=($!)
  done
  local faulted=""
  if [ "$fault" != none ]; then
    # Stop the part when the stratum-1 has served the start's first data object.
    for _ in $(seq 6000); do
      awk -v m="$ms" 'NR > m && $5 ~ "/data/" {f = 1; exit} END {exit !f}' "$F/s1/access.log" && break
      sleep 0.01
    done
    faulted="$(echo "$(now) - $start" | bc)"
    case $fault in
      s1-stops) s1_down ;;
      proxy-stops) squid_down KILL ;;
    esac
    log "$label: $fault at $faulted s"
  fi
  local ok=0 slowest=0 t
  for i in $(seq "$N"); do
    if wait "${runs[$((i - 1))]}" && { [ -z "$EXPECT" ] || grep -qF "$EXPECT" "$F/node-$i/run.log"; }; then
      ok=$((ok + 1))
      t=$(sed -n 's/.*total=//p' "$F/node-$i/run.out")
      slowest=$(echo "if ($t > $slowest) $t else $slowest" | bc)
    else
      log "$label: node $i failed: $(tail -2 "$F/node-$i/run.log" | tr '\n' ' ')"
      echo "$i" >> "$F/failed-nodes"
    fi
    echo "$label" > "$F/node-$i/run.label"
  done
  local wall
  wall=$(echo "$(now) - $start" | bc)
  squid_down
  local s1b s0b pb rb ws
  s1b=$(apache_data_bytes "$F/s1/access.log" "$m1")
  s0b=$(apache_data_bytes $S0_LOG "$m0")
  pb=$(proxy_data_bytes)
  rb=$(registry_bytes "$mr")
  ws=$(working_set "$m1" "$m0")
  cp "$F/squid/access.log" "$F/squid-$label.log" 2>/dev/null || true
  since "$F/s1/access.log" "$m1" > "$F/s1-$label.log"
  since $S0_LOG "$m0" > "$F/s0-$label.log"
  since "$F/registry.log" "$mr" > "$F/registry-$label.log"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$mode" "$fault" "$ok" "$slowest" "$wall" \
    "$s1b" "$pb" "$s0b" "$rb" "$ws" >> "$F/results.tsv"
  for i in $(seq "$N"); do cp "$F/node-$i/run.log" "$F/pod-$label-node-$i.log"; done
}

rows=()
: > "$F/results.tsv"
: > "$F/failed-nodes"
for mode in $MODES; do
  for r in $(seq "$RUNS"); do fleet_start "$mode" none "$mode-$r"; done
  rows+=("$mode")
done
for fault in $FAULTS; do
  [ "$fault" = none ] && continue
  for r in $(seq "$RUNS"); do fleet_start cvmfs "$fault" "$fault-$r"; done
  rows+=("$fault")
done

mb() { echo "scale=1; $1 / 1000000" | bc; }
echo
echo "$N nodes, image $OCI ($(mb "$APP_BYTES") MB of layers), delay ${DELAY} ms each way in front of the stratum-1 and the registry"
echo
echo "| start | nodes ok | until every pod ran (s) | stratum-1 MB | proxy MB | stratum-0 MB | registry MB | working set MB |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  # The median start of the row by time.
  line=$(awk -F'\t' -v r="$row-" 'index($1, r) == 1 && substr($1, length(r) + 1) ~ /^[0-9]+$/' "$F/results.tsv" | sort -t$'\t' -k5,5n |
    awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
  IFS=$'\t' read -r _ mode fault ok slowest wall s1b pb s0b rb ws <<<"$line"
  printf '| %s | %s of %s | %.2f | %s | %s | %s | %s | %s |\n' "$row" "$ok" "$N" "$slowest" \
    "$(mb "$s1b")" "$(mb "$pb")" "$(mb "$s0b")" "$(mb "$rb")" "$(mb "$ws")"
done
echo
k=$((N - $(sort -u "$F/failed-nodes" | wc -l)))
first=$(awk -F'\t' '$2 == "cvmfs" && $3 == "none" {print; exit}' "$F/results.tsv")
[ -n "$first" ] || first=$(head -1 "$F/results.tsv")
IFS=$'\t' read -r _ _ _ _ _ _ s1b _ _ _ ws <<<"$first"
echo "fleet: $k of $N nodes ok, stratum-1 bytes $s1b, working set $ws"
