"""One job of a Slurm-era array, as users ran them before hpo-operator: one trial of a shared study.

``python slurm_job.py <storage> <study> <index>``: opens the shared Optuna storage (``sqlite:///...``,
or a journal file path ending in ``.log``), runs ``study.optimize(objective, n_trials=1)`` with TPE.
The index picks what the trial does, so one array holds every state: index 1 raises (FAIL), index 2
is pruned, ``HANG=1`` prints ``sleeping`` and sleeps (the test kills it: a RUNNING trial remains), the
others complete.
"""

from __future__ import annotations

import os
import sys
import time

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage


def objective(trial: optuna.Trial) -> float:
    index = int(os.environ["JOB_INDEX"])
    x = trial.suggest_float("x", -5.0, 5.0)
    layers = trial.suggest_int("layers", 1, 4)
    activation = trial.suggest_categorical("activation", ["relu", "tanh"])
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr("job", index)
    trial.set_user_attr("host", {"name": f"node{index % 3}", "gpus": [0, 1]})
    for step in range(3):
        trial.report((x - 1) ** 2 + 1 / (step + 1), step)
    if os.environ.get("HANG") == "1":
        print("sleeping", flush=True)
        time.sleep(600)  # not a wait: this job hangs mid-trial until the test kills it, as Slurm kills a job
    if index == 1:
        raise ValueError("diverged")
    if index == 2:
        raise optuna.TrialPruned()
    return (x - 1) ** 2 + layers * lr + (0.5 if activation == "tanh" else 0.0)


def main() -> None:
    where, study_name = sys.argv[1], sys.argv[2]
    os.environ["JOB_INDEX"] = sys.argv[3]
    storage: str | JournalStorage = where if "://" in where else JournalStorage(JournalFileBackend(where))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.TPESampler())
    study.optimize(objective, n_trials=1, catch=(ValueError,))


if __name__ == "__main__":
    main()
