"""`make operator-up` / `operator-down`: the operator as a supervised process against the testbed.

It runs from .venv as the `hpo-operator` console script with the testbed's admin kubeconfig and
MariaDB as its default server, and the caller's `HPO_*` settings; `.testbed/operator.pid` is that
process itself, and its log is `.testbed/logs/operator.log`. Calling it again with other settings
restarts the operator with them. The chart (`make chart-up`) runs it in-cluster instead.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request

from tests.testbed import cluster, layout

LIVENESS_PORT = 8079
METRICS_PORT = 9079
CRDS = layout.ROOT / "crds"


def _healthy() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{LIVENESS_PORT}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def environment(caller: dict[str, str]) -> dict[str, str]:
    """The operator's environment: the kubeconfig, the default MySQL server, the trial image in the
    testbed's registry, and the caller's `HPO_*`.

    The caller's own `HPO_*` settings (`HPO_STORAGE_HOSTS=... make operator-up`) pass through and win
    over the testbed's defaults, except the metrics port, which benchmarks and tests read here.
    """
    values = {}
    for line in cluster.ENV_FILE.read_text().splitlines():
        if line.startswith(("export HPO_MYSQL_", "export HPO_TRIAL_IMAGE=")):
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = value
    settings = {
        key: value
        for key, value in caller.items()
        if key.startswith("HPO_") and not key.startswith(("HPO_TESTBED_", "HPO_CACHE_"))
    }
    return {
        "PATH": f"{layout.VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(layout.TESTBED),
        "KUBECONFIG": str(cluster.KUBECONFIG),
        "PYTHONUNBUFFERED": "1",
        **values,
        **settings,
        "HPO_METRICS_PORT": str(METRICS_PORT),
    }


def up() -> None:
    cluster.require_running("operator-up")
    subprocess.run(
        [
            str(layout.BIN / "kubectl"),
            "--kubeconfig",
            str(cluster.KUBECONFIG),
            "apply",
            "--server-side",
            "-f",
            str(CRDS),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    argv = [str(layout.VENV_BIN / "hpo-operator"), f"--liveness=http://127.0.0.1:{LIVENESS_PORT}/healthz"]
    pid = cluster.start_extra("operator", argv, environment(dict(os.environ)), _healthy)
    print(
        f"operator running (pid {pid}); log: .testbed/logs/operator.log; metrics: "
        f"http://127.0.0.1:{METRICS_PORT}/metrics"
    )


def down() -> None:
    cluster.stop_extra("operator")
    print("operator stopped")
