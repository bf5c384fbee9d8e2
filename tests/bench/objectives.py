"""The benchmarks' objective, shipped to trial pods as a ConfigMap (as users may ship theirs).

Run as a script it is the Slurm-style baseline's pod: load the shared study with Optuna's stock
settings and `study.optimize(sleep, n_trials=1)`, as each job of a job array does.
"""

from __future__ import annotations

import os
import time

import optuna

WINDOW_ATTR = "bench:window"  # [start, end] of the objective's work, in seconds since the epoch


def sleep(trial: optuna.Trial) -> float:
    """Sleeps BENCH_SLEEP_S seconds (a stand-in for training) and records when it ran, to the microsecond.

    The window opens after the parameter is suggested, so a baseline pod's own sampling (inside
    `suggest_float` there, in the operator for ours) counts as overhead, not as work.
    """
    x = trial.suggest_float("x", -5, 5)
    start = time.time()
    time.sleep(float(os.environ.get("BENCH_SLEEP_S", "5")))
    trial.set_user_attr(WINDOW_ATTR, [start, time.time()])
    return (x - 1) ** 2


def baseline() -> None:
    study = optuna.load_study(study_name=os.environ["BENCH_STUDY"], storage=os.environ["BENCH_STORAGE_URL"])
    study.optimize(sleep, n_trials=1)


if __name__ == "__main__":
    baseline()
