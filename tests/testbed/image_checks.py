"""Each testbed image run once without a cluster, the way the chart and the operator run its pods.

A check runs commands in the image as the image's own user (which must be numeric and not root, as
`runAsNonRoot` requires), on a read-only root filesystem, with no capabilities, no privilege
escalation, a writable /tmp (the chart's emptyDir) and fresh, world-writable directories where its
pod mounts volumes. runc (Debian's) runs the root filesystem that buildah mounts from the image.
It proves what a rendered chart cannot: that the requirements are complete (every sampler the README
lists samples in the operator and trial images), that the programs start, and that MariaDB
initialises its volume and serves as a non-root user.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed import images

RUNC_ROOT = Path("/run/hpo-operator/runc")  # runc's state for these checks, apart from any other runc

# Every sampler the README lists, a few trials each: Optuna imports cmaes, scipy and torch only when
# such a sampler first samples, so a missing package would otherwise show up as failed trials.
SAMPLERS = """
import optuna, torch
from optuna import samplers
optuna.logging.set_verbosity(optuna.logging.WARNING)
def objective(trial):
    return (trial.suggest_float("x", -1, 1) - 0.3) ** 2 + trial.suggest_float("y", -1, 1) ** 2
for name, sampler in {
    "tpe": samplers.TPESampler(seed=0, n_startup_trials=3),
    "random": samplers.RandomSampler(seed=0),
    "cmaes": samplers.CmaEsSampler(seed=0, n_startup_trials=3),
    "gp": samplers.GPSampler(seed=0, n_startup_trials=3),
    "nsga2": samplers.NSGAIISampler(seed=0, population_size=4),
    "qmc": samplers.QMCSampler(seed=0),
    "grid": samplers.GridSampler({"x": [0.0, 0.5], "y": [0.0, 1.0]}, seed=0),
}.items():
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=8)
    print(f"{name}: {len(study.trials)} trials, best {study.best_value:.4f}")
print(f"optuna {optuna.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
"""

# The trial image's default workload (PyTorch on scikit-learn's digits) for one short trial, as a
# trial pod runs it on a CPU, checkpoints (in a temporary folder, without a volume) included.
WORKLOAD = """
import optuna
from hpo_trial.workloads import digits
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study()
study.enqueue_trial({"epochs": 5, "n_layers": 1, "width": 64, "batch_size": 128})
study.optimize(digits.objective, n_trials=1)
trial = study.trials[0]
assert trial.state == optuna.trial.TrialState.COMPLETE, trial
print(f"default workload: validation loss {trial.value:.3f}, accuracy {trial.user_attrs['val_accuracy']:.3f}")
"""

# The dashboard's WSGI application answering its API for a study, without a server or a port.
DASHBOARD = """
import optuna, optuna_dashboard, pymysql, wsgiref.util
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = optuna.storages.RDBStorage("sqlite:////tmp/check.db")
optuna.create_study(storage=storage, study_name="check").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
environ = {}
wsgiref.util.setup_testing_defaults(environ)
environ["PATH_INFO"] = "/api/studies"
status = []
body = b"".join(optuna_dashboard.wsgi(storage)(environ, lambda s, headers, exc_info=None: status.append(s)))
assert status == ["200 OK"] and b'"check"' in body, (status, body[:200])
print(f"optuna-dashboard {optuna_dashboard.__version__}: /api/studies lists the study")
"""

# The chart's MySQL arguments (charts/hpo-operator/templates/mysql.yaml), started twice on one data
# volume: the first start initialises it, the second finds it. `mariadb-admin --wait` retries the
# connection itself until the server answers.
MYSQL = """
set -eu
serve() {
  docker-entrypoint.sh mysqld --port="$PORT" --loose-mysqlx=OFF --skip-name-resolve \
    --character-set-server=utf8mb4 --max-connections=2000 &
  mariadb-admin --wait=60 --silent ping >/dev/null 2>&1 || true
  mariadb --protocol=tcp -h127.0.0.1 -P"$PORT" -uroot -p"$MYSQL_ROOT_PASSWORD" \
    -e "SELECT CURRENT_USER() AS user, @@version AS version, @@datadir AS datadir\\G"
  mariadb-admin --protocol=tcp -h127.0.0.1 -P"$PORT" -uroot -p"$MYSQL_ROOT_PASSWORD" shutdown
  wait
}
serve
echo "data directory owned by $(stat -c %u /var/lib/mysql/mysql), restarting on it"
serve
"""


@dataclass(frozen=True)
class Check:
    """Commands to run in one image, each in a fresh container."""

    image: str  # a name in images.IMAGES
    commands: tuple[tuple[str, ...], ...]
    user: str  # the image's USER, as the chart's securityContext expects it
    volumes: tuple[str, ...] = ()  # container paths that get one fresh directory each, for all commands
    env: tuple[tuple[str, str], ...] = ()
    host_network: bool = False  # only for a server that must be reached over TCP (on a free port)


CHECKS = (
    Check(
        "trial",
        (("hpo-trial", "--help"), ("tar", "--version"), ("python", "-c", SAMPLERS), ("python", "-c", WORKLOAD)),
        "10001:10001",
        env=(("HPO_QUICK_SCAN", "1"),),
    ),
    Check("operator", (("hpo-operator", "--help"), ("python", "-c", SAMPLERS)), "10001:10001"),
    Check(
        "mysql",
        (("sh", "-c", MYSQL),),
        "999:999",
        volumes=("/var/lib/mysql", "/var/run/mysqld"),
        env=(("MYSQL_ROOT_PASSWORD", "a 'quoted' \\ password"),),
        host_network=True,
    ),
    Check("dashboard", (("optuna-dashboard", "--help"), ("python", "-c", DASHBOARD)), "65532:65532"),
)


def runtime_config(
    template: dict[str, Any],
    rootfs: Path,
    args: Sequence[str],
    image_config: dict[str, Any],
    env: Sequence[tuple[str, str]],
    binds: Sequence[tuple[Path, str]],
    host_network: bool,
) -> dict[str, Any]:
    """runc's config.json for one command: ``template`` (`runc spec`'s) made to run as a restricted pod.

    The image's user, environment and working directory; a read-only root; no capabilities; a
    tmpfs on /tmp; ``binds`` (host folder, container path) read-write.
    """
    config = json.loads(json.dumps(template))
    user = str(image_config.get("User") or "")
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or int(uid) == 0 or (gid and not gid.isdigit()):
        raise ValueError(f"the image's USER is {user!r}: pods need a numeric, non-root user (uid:gid)")
    image_env = [str(item) for item in image_config.get("Env") or []]
    process = config["process"]
    process.update(
        terminal=False,
        user={"uid": int(uid), "gid": int(gid or uid)},
        args=list(args),
        env=[*image_env, *(f"{name}={value}" for name, value in env)],
        cwd=str(image_config.get("WorkingDir") or "/"),
        capabilities={},
        noNewPrivileges=True,
    )
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["mounts"] = [
        *config["mounts"],
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        *(
            {"destination": target, "type": "bind", "source": str(source), "options": ["rbind", "rw"]}
            for source, target in binds
        ),
    ]
    if host_network:
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]
    return dict(config)


def _runc_template(folder: Path) -> dict[str, Any]:
    subprocess.run(["runc", "spec", "--bundle", str(folder)], check=True)
    template = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    return dict(template)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_check(check: Check, ref: str) -> None:
    """Run every command of ``check`` in ``ref``; raise with the output if one fails."""
    image_config = images.image_config(ref)
    if image_config.get("User") != check.user:
        raise AssertionError(f"{check.image}: USER is {image_config.get('User')!r}, the chart expects {check.user}")
    images.TMP.mkdir(parents=True, exist_ok=True)
    RUNC_ROOT.mkdir(parents=True, exist_ok=True)
    env = [*check.env, *((("PORT", str(_free_port())),) if check.host_network else ())]
    with images.mounted_rootfs(ref) as rootfs, tempfile.TemporaryDirectory(dir=images.TMP) as scratch:
        bundle = Path(scratch)
        template = _runc_template(bundle)
        binds = []
        for number, target in enumerate(check.volumes):
            folder = bundle / f"volume-{number}"
            folder.mkdir()
            folder.chmod(0o777)  # as the testbed's volumes will be: writable by any pod's user
            binds.append((folder, target))
        for number, args in enumerate(check.commands):
            config = runtime_config(template, rootfs, args, image_config, env, binds, check.host_network)
            (bundle / "config.json").write_text(json.dumps(config))
            name = f"hpo-check-{check.image}-{number}"
            started = time.monotonic()
            try:
                result = subprocess.run(
                    ["runc", "--root", str(RUNC_ROOT), "run", "--bundle", str(bundle), name],
                    capture_output=True,
                    text=True,
                    timeout=600,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                subprocess.run(["runc", "--root", str(RUNC_ROOT), "delete", "--force", name], capture_output=True)
            output = (result.stdout + result.stderr).strip()
            shown = " ".join(args) if args[0] not in ("python", "sh") else f"{args[0]} -c <script>"
            if result.returncode != 0:
                raise AssertionError(f"{check.image}: `{shown}` exited {result.returncode}:\n{output}")
            scripted = args[0] in ("python", "sh")
            details = [] if "--help" in args else output.splitlines()[-12:] if scripted else output.splitlines()[:1]
            print(
                f"  {check.image}: `{shown}` ok in {time.monotonic() - started:.1f}s"
                + "".join(f"\n    {line}" for line in details),
                flush=True,
            )


def check_all(refs: dict[str, str]) -> None:
    """Run every check against the images ``refs`` names (variable -> reference)."""
    by_name = {image.name: refs[image.variable] for image in images.IMAGES}
    for check in CHECKS:
        print(f"checking {check.image} ({by_name[check.image]}) as {check.user}, read-only root", flush=True)
        run_check(check, by_name[check.image])
    print("every image passed its checks", flush=True)
