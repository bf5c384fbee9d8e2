"""`make testbed-up`, `testbed-down` and `testbed-status`: the testbed's life cycle.

`up` is idempotent: a running testbed is only checked; a dead one is cleaned away and started
fresh. It returns once the API server is ready, every node is Ready and the `default`
ServiceAccount exists, and leaves `.testbed/env` for users and tests to source. `down` also undoes
what the nodes changed on the machine (tests/testbed/host.py).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client, config

from tests.testbed import build, host, images, layout, pki, supervisor
from tests.testbed.nodes import NODES

ENV_FILE = layout.TESTBED / "env"
KUBECONFIG = layout.TESTBED / "kubeconfig"
HOSTPATH_PV_ROOT = Path("/tmp/hostpath_pv")  # where the testbed's provisioner puts volumes


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie (never reaped by this machine's PID 1) is dead."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] not in ("Z", "X")


def _state() -> dict[str, object]:
    try:
        return dict(json.loads(supervisor.STATE.read_text()))
    except (OSError, ValueError):
        return {}


def _supervisor_pid() -> int | None:
    pid = _state().get("pid")
    return pid if isinstance(pid, int) and is_alive(pid) else None


def _wait(check: Callable[[], object], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"testbed-up: {what} did not happen within {timeout:.0f}s; see the logs in {layout.LOGS}")
        time.sleep(0.25)


def _write_env() -> None:
    password = (layout.TESTBED / "mariadb" / "admin-password").read_text().strip()
    image_lines = "".join(
        f"export {variable}={reference}\n"
        for variable, reference in images.references().items()
        if variable != "HPO_TESTBED_PAUSE_IMAGE"
    )
    ENV_FILE.write_text(
        "# Source me: the testbed's kubeconfig, kubectl and helm, the MariaDB admin connection (an address\n"
        "# pods and this host both reach) and the images in the testbed's registry.\n"
        f"export KUBECONFIG={KUBECONFIG}\n"
        f'export PATH="{layout.BIN}:$PATH"\n'
        f"export HPO_MYSQL_HOST={layout.HOST_IP}\n"
        f"export HPO_MYSQL_PORT={layout.MYSQL_PORT}\n"
        f"export HPO_MYSQL_USER={layout.MYSQL_ADMIN_USER}\n"
        f"export HPO_MYSQL_PASSWORD={password}\n"
        f"{image_lines}"
    )
    ENV_FILE.chmod(0o600)


def _start_supervisor() -> None:
    for stem in ("controller-manager", "scheduler", "kube-proxy", "coredns", "provisioner", "netpol"):
        pki.kubeconfig(layout.TESTBED / f"{stem}.kubeconfig", stem)
    pki.kubeconfig(KUBECONFIG, "admin")
    password_file = layout.TESTBED / "mariadb" / "admin-password"
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.write_text(secrets.token_hex(16))
    password_file.chmod(0o600)
    with open(layout.LOGS / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "tests.testbed", "supervise"],
            cwd=layout.ROOT,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    shown = ""
    while (phase := _state().get("phase")) != "ready":
        message = str(_state().get("message", "starting the supervisor"))
        if phase == "failed":
            raise SystemExit(f"testbed-up failed: {message}")
        if message != shown:
            print(f"  {message}", flush=True)
            shown = message
        time.sleep(0.2)


def _node_ready(core: client.CoreV1Api, name: str) -> bool:
    try:
        node = core.read_node(name)
    except client.ApiException:
        return False
    conditions = node.status.conditions if node.status else None
    return any(c.type == "Ready" and c.status == "True" for c in conditions or [])


def _advertise_gpus(core: client.CoreV1Api, name: str) -> None:
    """nvidia.com/gpu as an extended resource in the node's status capacity (the documented way for
    resources no device plugin manages); the kubelet keeps it in capacity and allocatable."""
    patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": layout.NODE_GPUS}]
    core.patch_node_status(name, patch)  # a list body is sent as a JSON patch


def _pull_on_every_node(core: client.CoreV1Api, reference: str) -> None:
    """Have each node's runtime pull ``reference`` now (a pod per node that exits at once), so the
    first trial pods start in seconds rather than after a minute of unpacking the trial image."""
    names = [f"pull-{node.index}" for node in NODES]
    for name, node in zip(names, NODES, strict=True):
        core.create_namespaced_pod(
            "kube-system",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "nodeName": node.name,
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "pull", "image": reference, "command": ["true"]}],
                },
            },
        )

    def pulled() -> bool:
        phases = [core.read_namespaced_pod(name, "kube-system").status.phase for name in names]
        if "Failed" in phases:
            raise SystemExit(
                f"testbed-up: a node could not run {reference}; see `kubectl -n kube-system describe pod pull-1`"
            )
        return all(phase == "Succeeded" for phase in phases)

    _wait(pulled, f"every node to pull {reference}", 600)
    for name in names:
        core.delete_namespaced_pod(name, "kube-system")


def _bootstrap(core: client.CoreV1Api) -> None:
    def default_service_account() -> bool:
        return bool(core.list_namespaced_service_account("default", field_selector="metadata.name=default").items)

    print(f"  waiting for {len(NODES)} nodes to be Ready and the default ServiceAccount", flush=True)
    for node in NODES:
        _wait(functools.partial(_node_ready, core, node.name), f"node {node.name} Ready", 180)
        _advertise_gpus(core, node.name)
    _wait(default_service_account, "the default ServiceAccount", 60)
    trial_image = images.references()["HPO_TRIAL_IMAGE"]
    if not any(
        trial_image in name
        for node in core.list_node().items
        for image in node.status.images or []
        for name in image.names or []
    ):
        print("  pulling the trial image on every node (first start: about a minute)", flush=True)
        _pull_on_every_node(core, trial_image)


def up() -> None:
    started = time.monotonic()
    binaries = build.build_all()
    print(f"stage: binaries ready in {time.monotonic() - started:.0f}s", flush=True)
    if _supervisor_pid() is None and layout.TESTBED.exists():
        print("cleaning away a stopped testbed", flush=True)
        down(quiet=True)
    stage = time.monotonic()
    images.ensure()
    print(f"stage: images ready in {time.monotonic() - stage:.0f}s", flush=True)
    stage = time.monotonic()
    if _supervisor_pid() is None:
        print("starting the testbed", flush=True)
        layout.LOGS.mkdir(parents=True, exist_ok=True)
        build.link_into(binaries, layout.BIN)
        host.prepare()
        pki.ensure()
        _start_supervisor()
    elif _state().get("phase") != "ready":
        raise SystemExit(
            f"testbed is {_state().get('phase')}: {_state().get('message')}. "
            "Run `make testbed-down` then `make testbed-up`."
        )
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(KUBECONFIG)))
    _bootstrap(core)
    _write_env()
    print(f"stage: cluster ready in {time.monotonic() - stage:.0f}s", flush=True)
    print(
        f"testbed up in {time.monotonic() - started:.0f}s: Kubernetes {layout.KUBERNETES_VERSION} on "
        f"{len(NODES)} nodes, MariaDB on {layout.HOST_IP}:{layout.MYSQL_PORT}. Use it with: source .testbed/env",
        flush=True,
    )


def require_running(what: str) -> int:
    """The supervisor's pid; exits with the command to run when the testbed is not up."""
    pid = _supervisor_pid()
    if pid is None:
        raise SystemExit(f"{what}: the testbed is not running; start it with `make testbed-up`")
    if _state().get("phase") != "ready":
        raise SystemExit(
            f"{what}: the testbed is {_state().get('phase')} ({_state().get('message')}); "
            "restart it with `make testbed-down testbed-up`"
        )
    return pid


def start_extra(
    name: str, argv: list[str], env: dict[str, str], ready: Callable[[], bool], timeout: float = 120
) -> int:
    """Have the supervisor run ``argv`` as `name` (idempotent: a live one with the same command and
    environment is kept, a dead one replaced, one with another command or environment restarted)."""
    pid = require_running(name)
    supervisor.EXTRAS.mkdir(exist_ok=True)
    spec = supervisor.EXTRAS / f"{name}.json"
    pid_file = layout.TESTBED / f"{name}.pid"
    wanted = json.dumps({"argv": argv, "env": env})
    changed = not spec.exists() or spec.read_text() != wanted
    previous = int(pid_file.read_text()) if changed and pid_file.exists() else None
    spec.write_text(wanted)
    spec.chmod(0o600)  # the environment may hold credentials
    os.kill(pid, signal.SIGHUP)

    def up_and_ready() -> bool:
        try:
            current = int(pid_file.read_text())
            return current != previous and is_alive(current) and ready()
        except (OSError, ValueError):
            return False

    _wait(up_and_ready, f"{name} ready (see .testbed/logs/{name}.log)", timeout)
    return int(pid_file.read_text())


def stop_extra(name: str) -> None:
    pid_file = layout.TESTBED / f"{name}.pid"
    (supervisor.EXTRAS / f"{name}.json").unlink(missing_ok=True)
    if (pid := _supervisor_pid()) is not None:
        os.kill(pid, signal.SIGHUP)
        _wait(lambda: not pid_file.exists(), f"{name} to stop", 60)


def _extra_pids() -> list[int]:
    """Processes other targets started (operator-up, ...) record themselves as .testbed/*.pid."""
    pids = []
    for pid_file in layout.TESTBED.glob("*.pid"):
        try:
            pids.append(int(pid_file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _terminate(pids: list[int], timeout: float) -> None:
    for pid in pids:
        if is_alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if is_alive(pid):
            os.kill(pid, signal.SIGKILL)


def down(quiet: bool = False) -> None:
    """Stop everything the testbed and the other targets started, and remove .testbed/."""
    if layout.TESTBED.exists():
        _terminate(_extra_pids(), 30)
        if (pid := _supervisor_pid()) is not None:
            _terminate([pid], 120)
        services = _state().get("services", {})
        _terminate([pid for pid in services.values() if isinstance(pid, int)] if isinstance(services, dict) else [], 5)
    host.clean(layout.BIN / "kube-proxy")
    if layout.TESTBED.exists():
        host.unmount_under(layout.TESTBED)
        shutil.rmtree(layout.TESTBED)
    shutil.rmtree(HOSTPATH_PV_ROOT, ignore_errors=True)
    if not quiet:
        print("testbed down: no testbed process left, .testbed/ removed")


def status() -> int:
    """Print each piece's state; exit non-zero unless everything is up."""
    state = _state()
    pid = _supervisor_pid()
    if pid is None:
        print("testbed: down (start it with `make testbed-up`)")
        return 1
    print(f"supervisor  pid {pid}  {state.get('phase')}: {state.get('message')}")
    services = state.get("services", {})
    healthy = state.get("phase") == "ready"
    for name, service_pid in services.items() if isinstance(services, dict) else []:
        alive = is_alive(int(service_pid))
        healthy &= alive
        print(f"{name:<24}pid {service_pid:<8}{'running' if alive else 'DEAD'}")
    if healthy:
        nodes = subprocess.run(
            [str(layout.BIN / "kubectl"), "--kubeconfig", str(KUBECONFIG), "get", "nodes", "-o", "wide"],
            capture_output=True,
            text=True,
        )
        print(nodes.stdout or nodes.stderr, end="")
    return 0 if healthy else 1
