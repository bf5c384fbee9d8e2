"""The node agent's command line: every path, address and capacity it is started with.

The testbed supervisor starts the agent with a fixed set of flags; this module turns them into one
frozen value that the rest of the agent reads, with paths made absolute so that containers, which
change directory, see the same files as the agent.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class AgentSettings:
    """Everything the agent was started with."""

    kubeconfig: Path
    node_name: str
    state_dir: Path
    pod_log_dir: Path
    serving_cert: Path
    serving_key: Path
    client_ca: Path
    port: int
    cpu: str
    memory: str
    gpus: int
    max_pods: int
    path_prefix: str
    api_host: str
    api_port: int
    host_ip: str = "127.0.0.1"

    @property
    def container_path(self) -> str:
        """The PATH an "image" gives every container: the venv's tools first, then the system's."""
        return f"{self.path_prefix}:{SYSTEM_PATH}" if self.path_prefix else SYSTEM_PATH

    @property
    def allocatable(self) -> dict[str, str]:
        """What the node offers pods; all of its capacity, since nothing else runs on it."""
        return {"cpu": self.cpu, "memory": self.memory, "pods": str(self.max_pods), "nvidia.com/gpu": str(self.gpus)}

    @property
    def pods_dir(self) -> Path:
        """Per-pod state (volumes, container logs, launch specs), one directory per pod UID."""
        return self.state_dir / "pods"


def parse_args(argv: Sequence[str] | None = None) -> AgentSettings:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.node_agent", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, default=Path(".testbed/node-agent.kubeconfig"))
    parser.add_argument("--node-name", default="testbed-node")
    parser.add_argument("--state-dir", type=Path, default=Path(".testbed/node"))
    parser.add_argument("--pod-log-dir", type=Path, default=Path(".testbed/logs/pods"))
    parser.add_argument("--serving-cert", type=Path, default=Path(".testbed/pki/kubelet.crt"))
    parser.add_argument("--serving-key", type=Path, default=Path(".testbed/pki/kubelet.key"))
    parser.add_argument("--client-ca", type=Path, default=Path(".testbed/pki/ca.crt"))
    parser.add_argument("--port", type=int, default=10250, help="kubelet API port (container logs, healthz)")
    parser.add_argument("--cpu", default="2", help="cpu capacity to advertise")
    parser.add_argument("--memory", default="24Gi", help="memory capacity to advertise")
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity to advertise")
    parser.add_argument("--max-pods", type=int, default=110)
    parser.add_argument("--path-prefix", default="", help="directories put before the system PATH in containers")
    parser.add_argument("--api-host", default="127.0.0.1", help="KUBERNETES_SERVICE_HOST given to containers")
    parser.add_argument("--api-port", type=int, default=6443, help="KUBERNETES_SERVICE_PORT given to containers")
    args = parser.parse_args(argv)
    return AgentSettings(
        kubeconfig=args.kubeconfig.resolve(),
        node_name=args.node_name,
        state_dir=args.state_dir.resolve(),
        pod_log_dir=args.pod_log_dir.resolve(),
        serving_cert=args.serving_cert.resolve(),
        serving_key=args.serving_key.resolve(),
        client_ca=args.client_ca.resolve(),
        port=args.port,
        cpu=args.cpu,
        memory=args.memory,
        gpus=args.gpus,
        max_pods=args.max_pods,
        path_prefix=args.path_prefix,
        api_host=args.api_host,
        api_port=args.api_port,
    )
