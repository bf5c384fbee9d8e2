"""Objectives the trial runtime's tests run inside a real ``hpo-trial`` process.

The tests put this directory on the subprocess's ``PYTHONPATH`` and name these as
``objectives:<function>``. Each one makes one behaviour of the runtime observable from outside:
what the objective saw goes to a file named by ``TEST_RECORD``, progress goes to the log.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path

import optuna

import hpo_trial

NOT_CALLABLE = 42
"""Named by a test as an objective that is not a function."""

PRUNED_CURVE = [0.5, 0.4, 0.3, 2.0, 0.1]
"""Intermediate values; a ThresholdPruner(upper=1.0) prunes at step 3."""


def record_params(trial: optuna.Trial) -> float:
    """Suggest the declared parameters plus one define-by-run parameter, record them, return a value."""
    x = trial.suggest_float("x", -10.0, 10.0)
    n = trial.suggest_int("n", 1, 100)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    extra = trial.suggest_float("extra", 0.0, 1.0)
    Path(os.environ["TEST_RECORD"]).write_text(json.dumps({"x": x, "n": n, "kind": kind, "extra": extra}))
    return x * n + extra


def flush_at_exit(trial: optuna.Trial) -> float:
    """Leave a buffered file open and an atexit handler, as experiment trackers do; both must reach disk."""
    record = Path(os.environ["TEST_RECORD"])
    buffered = record.with_suffix(".buffered").open("w")  # never closed: the interpreter's exit flushes it
    buffered.write("written by the objective")
    atexit.register(record.write_text, f"atexit handler ran after trial {trial.number}")
    return 1.0


def report_a_curve(trial: optuna.Trial) -> float:
    """Report :data:`PRUNED_CURVE` step by step, asking the study's pruner after each report."""
    for step, value in enumerate(PRUNED_CURVE):
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")
    return PRUNED_CURVE[-1]


def count_with_checkpoints(trial: optuna.Trial) -> float:
    """Five steps adding up 1..5, checkpointed after each; returns 15 however often it was resumed.

    With ``TEST_HOLD_AT_STEP=k`` step k takes very long (until the test stops the process there).
    Prints ``ran step <k>`` for every step it runs, so a test can see which steps a run repeated.
    """
    ckpt = hpo_trial.checkpoint(trial)
    step, total = 0, 0
    restored = ckpt.load()
    if restored is not None:
        step, state = restored
        total = state["total"]
    hold = int(os.environ.get("TEST_HOLD_AT_STEP", "-1"))
    while step < 5:
        step += 1
        total += step
        print(f"ran step {step}")
        ckpt.save(step, {"total": total})
        if step == hold:
            time.sleep(600)  # not a wait: the trial hangs here until the test stops or kills it
    return float(total)


def report_until_released(trial: optuna.Trial) -> float:
    """Report once, wait until the file ``TEST_RELEASE`` exists, then report again (needs the database)."""
    trial.report(1.0, 0)
    print("waiting for release")
    release = Path(os.environ["TEST_RELEASE"])
    while not release.exists():
        time.sleep(0.05)
    trial.report(0.5, 1)
    return 0.5


def raise_error(trial: optuna.Trial) -> float:
    """Fail the way user code fails."""
    raise ValueError("the training data is empty\n(a second line that must not reach the message)")


def exit_early(trial: optuna.Trial) -> float:
    """Leave the way scripts do."""
    sys.exit(0)


def return_nan(trial: optuna.Trial) -> float:
    """Diverge."""
    return float("nan")


def return_when_released(trial: optuna.Trial) -> float:
    """Wait until the file ``TEST_RELEASE`` exists, then return 0.25 without touching the database."""
    print("waiting for release")
    release = Path(os.environ["TEST_RELEASE"])
    while not release.exists():
        time.sleep(0.05)
    return 0.25


def record_declared(trial: optuna.Trial) -> float:
    """Suggest only the declared parameters (as a grid's objective must), record them, return a value."""
    x = trial.suggest_float("x", -10.0, 10.0)
    n = trial.suggest_int("n", 1, 100)
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    Path(os.environ["TEST_RECORD"]).write_text(json.dumps({"x": x, "n": n, "kind": kind}))
    return x * n
