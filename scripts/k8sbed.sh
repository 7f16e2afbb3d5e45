#!/usr/bin/env bash
# The Kubernetes test bed: a real single-node cluster on this machine (see
# test/k8sbed/README.md).
#
#   scripts/k8sbed.sh up          build what is missing (cached by version set), start, wait until ready
#   scripts/k8sbed.sh down        stop and remove everything, also after a crash
#   scripts/k8sbed.sh status      what runs
#   scripts/k8sbed.sh kubeconfig  print the admin kubeconfig's path
#   scripts/k8sbed.sh bin         print the directory of the running bed's binaries (kubectl among them)
#   scripts/k8sbed.sh build       only build
#   scripts/k8sbed.sh import A.tar load image archives into the node (trellis images build --load-into-k8sbed does)
#
# Needs root. K8SBED_DIR (default /var/lib/trellis-k8sbed) holds the running
# cluster, K8SBED_CACHE (default /var/cache/trellis-k8sbed) the binaries.
set -euo pipefail
cd "$(dirname "$0")/../test/k8sbed"

if [ "$(id -u)" -ne 0 ]; then
  echo "k8sbed: needs root: it creates a network namespace, mounts and cgroups; run it with sudo" >&2
  exit 1
fi

# Debian packages the node runs: runc, the CNI plugins, what kube-proxy's
# nftables mode execs, and the tools that set up the node's network.
missing=()
[ -x /usr/sbin/runc ] || missing+=(runc)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
[ -x /usr/sbin/nft ] || missing+=(nftables)
[ -x /usr/sbin/conntrack ] || missing+=(conntrack)
command -v ip >/dev/null || missing+=(iproute2)
command -v nsenter >/dev/null || missing+=(util-linux)
command -v pgrep >/dev/null || missing+=(procps)
command -v tcpdump >/dev/null || missing+=(tcpdump) # the tests look at the wire between pods
if [ ${#missing[@]} -gt 0 ]; then
  echo "k8sbed: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

exec go run . "$@"
