"""What the testbed changes on the machine itself, and how `testbed-down` undoes it.

Real nodes need root-level state outside `.testbed/`: the testbed's addresses on a bridge without
ports, IP forwarding, a cgroup root per node in every cgroup v1 hierarchy, pod network namespaces,
bridges and firewall rules. `prepare` makes what is missing (idempotent); `clean` removes all of it
(also after a crash, when nothing is running any more), so a machine is left as it was found.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.testbed import layout
from tests.testbed.nodes import NODES, Node

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Every v1 hierarchy a kubelet with the cgroupfs driver writes to (it checks each for its cgroupRoot).
CGROUP_HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "systemd")
ADDRESSES = (layout.HOST_IP, layout.OTHER_MYSQL_IP, *(node.ip for node in NODES))
SHARED_CNI_CHAINS = ("CNI-FORWARD", "CNI-ADMIN", "CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the testbed runs real nodes (containers, bridges, cgroups) and needs root")


def prepare() -> None:
    """Addresses, forwarding and the nodes' cgroup roots (idempotent)."""
    _require_root()
    if _ip("link", "show", layout.ADDRESS_DEVICE, check=False).returncode != 0:
        _ip("link", "add", layout.ADDRESS_DEVICE, "type", "bridge")
    _ip("link", "set", layout.ADDRESS_DEVICE, "up")
    present = _ip("-o", "addr", "show", "dev", layout.ADDRESS_DEVICE).stdout
    for address in ADDRESSES:
        if f" {address}/" not in present:
            _ip("addr", "add", f"{address}/32", "dev", layout.ADDRESS_DEVICE)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    bridged = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")  # Services between pods of one bridge
    if bridged.exists():
        bridged.write_text("1\n")
    for node in NODES:
        _make_cgroup_root(node)


def _make_cgroup_root(node: Node) -> None:
    for hierarchy in CGROUP_HIERARCHIES:
        folder = CGROUP_ROOT / hierarchy / node.cgroup_root.lstrip("/")
        folder.mkdir(exist_ok=True)
        if hierarchy == "cpuset":  # a new cpuset has no CPUs or memory nodes until given its parent's
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (folder / name).read_text().strip():
                    (folder / name).write_text((folder.parent / name).read_text())


def _cgroup_folders(node: Node) -> list[Path]:
    """The node's cgroups in every hierarchy, deepest first."""
    folders = []
    for hierarchy in CGROUP_HIERARCHIES:
        top = CGROUP_ROOT / hierarchy / node.cgroup_root.lstrip("/")
        if top.exists():
            folders += [*sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), top]
    return folders


def _kill_cgroup_processes(node: Node) -> None:
    """SIGKILL every process left in the node's cgroups (containers outlive a stopped containerd)."""
    for _ in range(50):
        pids = {
            int(pid)
            for folder in _cgroup_folders(node)
            if (folder / "cgroup.procs").exists()
            for pid in (folder / "cgroup.procs").read_text().split()
        }
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:  # we may be the subreaper that must reap them
                pass
        time.sleep(0.1)  # SIGKILL is asynchronous: look again


def _mounts_under(folders: Iterable[Path]) -> list[str]:
    """Mount points at or below any of ``folders``, deepest first (from /proc/self/mountinfo)."""
    roots = [str(folder) for folder in folders]
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == root or point.startswith(root + "/") for root in roots):
            points.append(point)
    return sorted(set(points), key=lambda p: -p.count("/"))


def unmount_under(*folders: Path) -> None:
    for point in _mounts_under(folders):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)


def _remove_firewall_rules() -> None:
    """Drop the CNI rules of the testbed's pod networks, their per-pod chains included, and the
    testbed's own rules (the NetworkPolicy queue).

    The CNI plugins remove a pod's rules when its sandbox is torn down, the NetworkPolicy enforcement
    its rules when it stops; this sweeps up after a killed testbed. Each rule says whose it is in a
    comment.
    """
    networks = (*(f'name: "{node.network}"' for node in NODES), "hpo-testbed:")
    for table in ("nat", "filter", "mangle"):
        saved = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=False).stdout
        chains = set()
        for line in saved.splitlines():
            rule = shlex.split(line) if line.startswith("-A ") else []
            comment = rule[rule.index("--comment") + 1] if "--comment" in rule else ""
            if not comment.startswith(networks):
                continue
            subprocess.run(["iptables", "-t", table, "-D", *rule[1:]], check=False, capture_output=True)
            target = rule[rule.index("-j") + 1] if "-j" in rule else ""
            if target.startswith("CNI-") and target not in SHARED_CNI_CHAINS:
                chains.add(target)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], check=False, capture_output=True)
            subprocess.run(["iptables", "-t", table, "-X", chain], check=False, capture_output=True)


def _remove_kube_chains() -> None:
    """The kubelets' and kube-proxy's own chains (KUBE-FIREWALL, canaries, hints), IPv4 and IPv6, and
    the jumps to them from the built-in chains."""
    for command in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            saved = subprocess.run([f"{command}-save", "-t", table], capture_output=True, text=True, check=False).stdout
            for line in saved.splitlines():
                rule = shlex.split(line) if line.startswith("-A ") else []
                if "-j" in rule and rule[rule.index("-j") + 1].startswith("KUBE-") and not rule[1].startswith("KUBE-"):
                    subprocess.run([command, "-t", table, "-D", *rule[1:]], check=False, capture_output=True)
            chains = [line[1:].split()[0] for line in saved.splitlines() if line.startswith(":KUBE-")]
            for action in ("-F", "-X"):
                for chain in chains:
                    subprocess.run([command, "-t", table, action, chain], check=False, capture_output=True)


def clean(kube_proxy: Path | None) -> None:
    """Remove what `prepare` and the nodes made on the machine; safe to run when nothing is there."""
    if os.geteuid() != 0:
        return
    for node in NODES:
        _kill_cgroup_processes(node)
    unmount_under(*(node.home for node in NODES))
    if kube_proxy is not None and kube_proxy.exists():
        subprocess.run([str(kube_proxy), "--cleanup"], check=False, capture_output=True)
    _remove_firewall_rules()
    _remove_kube_chains()
    for node in NODES:
        _ip("link", "delete", node.bridge, check=False)
        for folder in _cgroup_folders(node):
            with contextlib.suppress(OSError):
                folder.rmdir()
    _ip("link", "delete", layout.ADDRESS_DEVICE, check=False)
