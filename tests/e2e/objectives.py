"""Objectives the end-to-end tests run in trial pods (shipped to them as a ConfigMap, as users may)."""

from __future__ import annotations

import os
import time

import optuna

import hpo_trial


def quadratic(trial: optuna.Trial) -> float:
    """(x - 2)^2 + y, reported over a few steps; sleeps HPO_TEST_SLEEP seconds in all."""
    x = trial.suggest_float("x", -5, 5)
    y = trial.suggest_int("y", 0, 3)
    steps = 3
    for step in range(steps):
        time.sleep(float(os.environ.get("HPO_TEST_SLEEP", "0.5")) / steps)
        trial.report((x - 2) ** 2 + y + (steps - step), step)
    return (x - 2) ** 2 + y


def two_objectives(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0, 1)
    return x, (1 - x) ** 2


def slow_with_checkpoints(trial: optuna.Trial) -> float:
    """Ten 1-second steps, checkpointed after each, so a deleted pod's successor resumes mid-way."""
    x = trial.suggest_float("x", -5, 5)
    checkpoint = hpo_trial.checkpoint(trial)
    resumed = checkpoint.load()
    start = resumed[0] + 1 if resumed else 0
    for step in range(start, 10):
        time.sleep(1)
        checkpoint.save(step, {"x": x})
    return (x - 2) ** 2


def crash(trial: optuna.Trial) -> float:
    """Dies like a segfault or OOM kill would: no result is told, the process just ends."""
    trial.suggest_float("x", -5, 5)
    os._exit(5)


def has_api_token(trial: optuna.Trial) -> float:
    """1 when the pod has a ServiceAccount token mounted, else 0 (trial pods get none unless allowed)."""
    trial.suggest_float("x", -5, 5)
    return float(os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"))


def flaky(trial: optuna.Trial) -> float:
    """Raises on odd-numbered trials (a failed trial with a traceback in its log), else (x - 2)^2."""
    x = trial.suggest_float("x", -5, 5)
    if trial.number % 2:
        raise RuntimeError(f"trial {trial.number} fails on purpose")
    return (x - 2) ** 2
