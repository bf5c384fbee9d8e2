"""Where the testbed keeps things: pins read from the Go modules, the build cache, `.testbed/`, addresses
and ports.

The pinned releases live only in the go.mod files under tests/testbed/go/; everything else reads
them from there, so bumping a release is one `go get` (or pin_kubernetes.py) and nothing more.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GO_MODULES = Path(__file__).resolve().parent / "go"
TESTBED = ROOT / ".testbed"
PKI = TESTBED / "pki"
LOGS = TESTBED / "logs"
BIN = TESTBED / "bin"
CACHE = Path(os.environ.get("HPO_CACHE_DIR", Path.home() / ".cache" / "hpo-operator"))
VENV_BIN = ROOT / ".venv" / "bin"

# The testbed's addresses live on one bridge without ports (`ADDRESS_DEVICE`): the host's services
# (API server, MariaDB, CoreDNS) on HOST_IP, each node's kubelet on its own IP, and a second MariaDB
# address (OTHER_MYSQL_IP) that tests use as "another server". Pods reach all of them through their
# node's pod bridge, and the host reaches pods directly: every address works from both sides.
ADDRESS_DEVICE = "hpo-testbed"
HOST_IP = "172.30.0.1"
OTHER_MYSQL_IP = "172.30.0.2"
NODE_COUNT = int(os.environ.get("HPO_TESTBED_NODES", "2"))
CLUSTER_CIDR = "10.244.0.0/16"  # pods; node i gets 10.244.i.0/24
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
KUBELET_PORT = 10250  # on each node's own IP
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
KUBE_PROXY_METRICS_PORT = 10249
COREDNS_HEALTH_PORT = 8053
MYSQL_PORT = int(os.environ.get("HPO_TESTBED_MYSQL_PORT", "3306"))
MYSQL_ADMIN_USER = "hpo_admin"
# The image registry (plain HTTP, loopback): images are built here and pushed there (images.py).
REGISTRY_PORT = int(os.environ.get("HPO_TESTBED_REGISTRY_PORT", "5000"))


def required_version(module_dir: str, dependency: str) -> str:
    """The version of ``dependency`` that tests/testbed/go/<module_dir>/go.mod pins."""
    gomod = (GO_MODULES / module_dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(dependency)} (v\S+)", gomod, re.M)
    if not match:
        raise LookupError(f"{dependency} is not pinned in tests/testbed/go/{module_dir}/go.mod")
    return match.group(1)


KUBERNETES_VERSION = required_version("kube", "k8s.io/kubernetes")
ETCD_VERSION = required_version("etcd", "go.etcd.io/etcd/server/v3")
HELM_VERSION = required_version("helm", "helm.sh/helm/v3")
CONTAINERD_VERSION = required_version("containerd", "github.com/containerd/containerd/v2")
CNI_PLUGINS_VERSION = required_version("cni", "github.com/containernetworking/plugins")
COREDNS_VERSION = required_version("coredns", "github.com/coredns/coredns")
REGISTRY_VERSION = required_version("registry", "github.com/distribution/distribution/v3")
NETWORK_POLICIES_VERSION = required_version("netpol", "sigs.k8s.io/kube-network-policies")
KUEUE_VERSION = required_version("kueue", "sigs.k8s.io/kueue")

# GPUs each node advertises as the extended resource nvidia.com/gpu (e.g. HPO_TESTBED_GPUS=8).
NODE_GPUS = os.environ.get("HPO_TESTBED_GPUS", "4")
