"""The testbed's nodes: each a real kubelet with a containerd of its own, Debian's runc and a CNI bridge.

Node i (1-based) is `testbed-node-<i>`. Its kubelet serves on 172.30.0.(10+i):10250, its pods get
10.244.<i>.0/24 on the bridge `hpo-pods<i>`, and its containerd keeps root, state and socket under
`.testbed/nodes/<i>/`. Two nodes on one host must not share a runtime or a cgroup root: a kubelet
garbage-collects every container and pod cgroup of its runtime that it does not know. Images come
from the testbed's registry, pause included; nothing is pulled from the Internet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import layout, registry

# Debian's runc: it is built with seccomp, which RuntimeDefault profiles need (a runc built from its
# Go module without cgo and libseccomp fails with "seccomp: config provided but seccomp not supported").
RUNC = Path("/usr/sbin/runc")


@dataclass(frozen=True)
class Node:
    index: int

    @property
    def name(self) -> str:
        return f"testbed-node-{self.index}"

    @property
    def ip(self) -> str:
        return f"172.30.0.{10 + self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def bridge(self) -> str:
        return f"hpo-pods{self.index}"

    @property
    def network(self) -> str:
        """The CNI network's name (it marks the node's firewall rules)."""
        return f"hpo-node{self.index}"

    @property
    def home(self) -> Path:
        return layout.TESTBED / "nodes" / str(self.index)

    @property
    def socket(self) -> Path:
        return self.home / "containerd" / "containerd.sock"

    @property
    def pod_logs(self) -> Path:
        """Where this node's kubelet keeps its pods' logs. Not the shared default /var/log/pods: each
        kubelet's garbage collector deletes log directories of pods it does not know, the other node's."""
        return self.home / "pod-logs"

    @property
    def cgroup_root(self) -> str:
        return f"/hpo-{self.name}"

    @property
    def identity(self) -> str:
        """The stem of its certificates: `<stem>-client` (system:node:<name>) and `<stem>-serving`."""
        return f"node-{self.index}"


NODES = tuple(Node(i) for i in range(1, layout.NODE_COUNT + 1))


def containerd_config(node: Node, cni_bin: Path, sandbox_image: str) -> str:
    """containerd 2.x (config version 3): its own paths, the CRI plugin set up for the testbed.

    - `restrict_oom_score_adj`: processes here lack CAP_SYS_RESOURCE and cannot lower their OOM score;
    - `netns_mounts_under_state_dir`: pod network namespaces live under the node's own folder;
    - `discard_unpacked_layers`: an image's compressed layers are dropped once unpacked (disk);
    - NRI off: the two nodes' containerds would share its one socket, and nothing here uses it;
    - the registry is plain HTTP (certs.d/<address>/hosts.toml), the sandbox image comes from it.
    """
    state = node.home / "containerd"
    return f"""version = 3
root = "{state / "root"}"
state = "{state / "state"}"

[grpc]
  address = "{node.socket}"

[ttrpc]
  address = "{node.socket}.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  discard_unpacked_layers = true
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox_image}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{state / "certs.d"}"

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = "{RUNC}"
    SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{node.home / "cni"}"
"""


def registry_hosts() -> str:
    """containerd's hosts.toml for the testbed's registry: plain HTTP on loopback."""
    url = f"http://{registry.ADDRESS}"
    return f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'


def cni_config(node: Node) -> str:
    """A bridge network per node, NAT for traffic leaving it, host-local addresses from its pod CIDR."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": node.network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": node.bridge,
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": node.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(node.home / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def kubelet_config(node: Node) -> str:
    """The KubeletConfiguration: webhook authn/z, certificates from the testbed CA, cgroup v1 allowed.

    Eviction thresholds are low: the host's disk and memory are shared by both nodes and the build
    caches, and an evicted trial pod would only confuse the tests.
    """
    pki = layout.PKI
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {node.ip}
port: {layout.KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: {node.ip}
healthzPort: {layout.KUBELET_HEALTHZ_PORT}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {pki / "ca.crt"}}}
authorization: {{mode: Webhook}}
tlsCertFile: {pki / f"{node.identity}-serving.crt"}
tlsPrivateKeyFile: {pki / f"{node.identity}-serving.key"}
cgroupDriver: cgroupfs
cgroupRoot: {node.cgroup_root}
failCgroupV1: false
containerRuntimeEndpoint: unix://{node.socket}
clusterDNS: [{layout.DNS_SERVICE_IP}]
clusterDomain: {layout.CLUSTER_DOMAIN}
podCIDR: {node.pod_cidr}
failSwapOn: false
resolvConf: /etc/resolv.conf
podLogsDir: {node.pod_logs}
evictionHard: {{memory.available: "200Mi", nodefs.available: "2%", imagefs.available: "2%"}}
imageGCHighThresholdPercent: 97
imageGCLowThresholdPercent: 95
serializeImagePulls: false
maxPods: 110
"""


def kubelet_argv(node: Node, kubelet: Path) -> list[str]:
    return [
        str(kubelet),
        f"--config={node.home / 'kubelet.yaml'}",
        f"--kubeconfig={node.home / 'kubelet.kubeconfig'}",
        f"--root-dir={node.home / 'kubelet'}",
        f"--hostname-override={node.name}",
        f"--node-ip={node.ip}",
    ]


def write_files(node: Node, cni_bin: Path, sandbox_image: str) -> None:
    """Every file the node's containerd and kubelet read (rewritten on each start)."""
    (node.home / "containerd" / "certs.d" / registry.ADDRESS).mkdir(parents=True, exist_ok=True)
    (node.home / "cni").mkdir(parents=True, exist_ok=True)
    node.pod_logs.mkdir(parents=True, exist_ok=True)
    (node.home / "containerd.toml").write_text(containerd_config(node, cni_bin, sandbox_image))
    (node.home / "containerd" / "certs.d" / registry.ADDRESS / "hosts.toml").write_text(registry_hosts())
    (node.home / "cni" / "10-testbed.conflist").write_text(cni_config(node))
    (node.home / "kubelet.yaml").write_text(kubelet_config(node))
