# Sourced by the benchmarks (containerd.sh, density.sh, fleet.sh): what several of them need.

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A private containerd 1.6's configuration, CRI and the stratafs proxy snapshotter included.
# containerd_config DIR SNAPSHOTTER_SOCKET SANDBOX_IMAGE SNAPSHOTTER REGISTRY ENDPOINT
#   prints the config.toml of a containerd whose root, state, socket and CNI directories are
#   under DIR, which pulls REGISTRY's images from http://ENDPOINT.
containerd_config() {
  local d=$1 sock=$2 sandbox=$3 snapshotter=$4 reg=$5 endpoint=$6
  cat <<TOML
version = 2
root = "$d/root"
state = "$d/state"
[grpc]
  address = "$d/containerd.sock"
[proxy_plugins.stratafs]
  type = "snapshot"
  address = "$sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$sandbox"
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "$snapshotter"
  disable_snapshot_annotations = false
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "$d/cni-bin"
  conf_dir = "$d/cni-conf"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."$reg"]
  endpoint = ["http://$endpoint"]
TOML
}
