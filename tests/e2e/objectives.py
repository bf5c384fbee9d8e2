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
    """Ten steps of HPO_TEST_STEP_SECONDS (1 s), checkpointed after each, so a stopped pod's successor resumes
    mid-way."""
    x = trial.suggest_float("x", -5, 5)
    checkpoint = hpo_trial.checkpoint(trial)
    resumed = checkpoint.load()
    start = resumed[0] + 1 if resumed else 0
    for step in range(start, 10):
        time.sleep(float(os.environ.get("HPO_TEST_STEP_SECONDS", "1")))
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


def find_secret(trial: optuna.Trial) -> float:
    """How many places in this pod hold the secret whose SHA-256 is HPO_TEST_SECRET_SHA256.

    The secret is 32 hexadecimal characters (the testbed's MySQL admin password); the pod is not
    given it, only its hash. Looked at: the environment, every readable file under 1 MiB (but the
    image's own programs in /usr and /opt/venv, built before the password existed, and /proc, /sys,
    /dev) and, with a ServiceAccount token, every Secret the pod's account may read through the API.
    """
    import hashlib
    import re
    import ssl
    import urllib.request

    trial.suggest_float("x", 0, 1)
    wanted = os.environ["HPO_TEST_SECRET_SHA256"]
    tokens = re.compile(rb"[0-9a-f]{32}")

    def holds(data: bytes) -> bool:
        return any(hashlib.sha256(token).hexdigest() == wanted for token in tokens.findall(data))

    found = int(holds("\n".join(f"{k}={v}" for k, v in os.environ.items()).encode()))
    for root, folders, files in os.walk("/"):
        if root == "/":
            folders[:] = [f for f in folders if f not in ("proc", "sys", "dev", "usr")]
        if root == "/opt":
            folders[:] = [f for f in folders if f != "venv"]
        for name in files:
            path = os.path.join(root, name)
            try:
                if os.path.isfile(path) and os.path.getsize(path) < 2**20:
                    with open(path, "rb") as file:
                        found += holds(file.read())
            except OSError:
                continue
    account = "/var/run/secrets/kubernetes.io/serviceaccount"
    if os.path.exists(f"{account}/token"):
        with open(f"{account}/token") as token, open(f"{account}/namespace") as namespace:
            request = urllib.request.Request(
                f"https://kubernetes.default.svc/api/v1/namespaces/{namespace.read()}/secrets",
                headers={"Authorization": f"Bearer {token.read()}"},
            )
        try:
            with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=f"{account}/ca.crt")) as r:
                found += holds(r.read())
        except OSError:
            pass  # forbidden: nothing readable
    return float(found)


def over_memory(trial: optuna.Trial) -> float:
    """Allocates 1 GiB and touches it: over the pod's memory limit, the kernel kills it (OOMKilled)."""
    trial.suggest_float("x", 0, 1)
    block = bytearray(2**30)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    return 0.0


def prunable(trial: optuna.Trial) -> float:
    """(x - 2)^2 reported at each of 4 steps, asking the study's pruner after each one."""
    x = trial.suggest_float("x", -5, 5)
    value = (x - 2) ** 2
    for step in range(4):
        trial.report(value + 4 - step, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")
    return value


def slurm_like(trial: optuna.Trial) -> float:
    """The objective of the Slurm-era study the import tests bring (tests/trial_runtime/slurm_job.py), continued."""
    x = trial.suggest_float("x", -5.0, 5.0)
    layers = trial.suggest_int("layers", 1, 4)
    activation = trial.suggest_categorical("activation", ["relu", "tanh"])
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    return (x - 1) ** 2 + layers * lr + (0.5 if activation == "tanh" else 0.0)
