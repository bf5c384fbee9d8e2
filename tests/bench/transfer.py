"""How long importing a 10,000-trial Slurm-era study into MariaDB takes, and snapshotting it back.

``python -m tests.bench.transfer [--trials N]`` (needs only the testbed's MariaDB, not the cluster):
builds an SQLite study of N trials (4 params, 10 intermediate values and 2 user attributes each),
runs ``hpo-transfer import`` on it as an import Job would (a process, end to end) into a throw-away
database, snapshots the result back to SQLite, and times Optuna's own ``add_trials`` on a slice of
the same trials for comparison. The database is dropped afterwards. Tests never time things; this does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import InMemoryStorage, RDBStorage

from hpo_trial.snapshots import snapshot
from tests.bench.harness import testbed_env
from tests.mysql import admin, admin_server
from tests.testbed import layout

BASELINE_TRIALS = 500


def trials(count: int) -> list[optuna.trial.FrozenTrial]:
    space = {
        "x": FloatDistribution(-5, 5),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "layers": IntDistribution(1, 8),
        "activation": CategoricalDistribution(["relu", "tanh", "gelu"]),
    }
    return [
        optuna.trial.create_trial(
            params={
                "x": -5 + 10 * (i * 0.618 % 1),
                "lr": 10 ** (-5 + 4 * (i * 0.414 % 1)),
                "layers": 1 + i % 8,
                "activation": ("relu", "tanh", "gelu")[i % 3],
            },
            distributions=space,
            value=float((i * 0.618 % 1) ** 2),
            intermediate_values={step: 1.0 / (step + 1 + i % 5) for step in range(10)},
            user_attrs={"slurm_job": 1000 + i, "node": f"gpu{i % 16}"},
        )
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    args = parser.parse_args()
    server = admin_server(testbed_env())
    name = f"hpo_bench_transfer_{uuid.uuid4().hex[:8]}"
    url = (
        f"mysql+pymysql://{quote(server.admin_user, safe='')}:{quote(server.admin_password, safe='')}"
        f"@{server.host}:{server.port}/{name}"
    )
    made = trials(args.trials)
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    work = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    try:
        memory = InMemoryStorage()
        optuna.create_study(study_name="slurm", storage=memory).add_trials(made)
        started = time.monotonic()
        source = snapshot(memory, "slurm", work / "source").path
        print(f"source: {args.trials} trials written to SQLite in {time.monotonic() - started:.1f}s ({source.name})")

        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HPO_")},
            "PYTHONPATH": os.pathsep.join(str(layout.ROOT / p) for p in ("trial-image/src", "operator/src", ".")),
            "HPO_STORAGE_URL": url,
            "HPO_TERMINATION_LOG": str(work / "termination-log"),
        }
        command = [sys.executable, "-m", "hpo_trial.transfer", "import", "--file", str(source)]
        command += ["--destination-study", "imported", "--directions", "minimize"]
        started = time.monotonic()
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(f"import failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        print(
            f"import: {args.trials} trials SQLite -> MariaDB in {elapsed:.1f}s (process end to end, one chunk "
            f"of 500 trials per transaction): {(work / 'termination-log').read_text()}"
        )

        storage = RDBStorage(url)
        started = time.monotonic()
        taken = snapshot(storage, "imported", work / "snapshots")
        print(f"snapshot: {taken.trials} trials MariaDB -> SQLite in {time.monotonic() - started:.1f}s")

        study = optuna.create_study(study_name="baseline", storage=storage)
        started = time.monotonic()
        study.add_trials(made[:BASELINE_TRIALS])
        per_trial = (time.monotonic() - started) / BASELINE_TRIALS
        print(
            f"baseline: Optuna's add_trials, {BASELINE_TRIALS} trials into MariaDB: {per_trial * 1000:.1f} ms per "
            f"trial, {per_trial * args.trials:.0f}s for {args.trials} (extrapolated)"
        )
        storage.engine.dispose()
    finally:
        with admin(server) as connection, connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
