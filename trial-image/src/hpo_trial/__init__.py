"""Trial runtime of hpo-operator: runs the user's objective for the trial the operator assigned.

A trial pod runs ``hpo-trial``, which attaches to the trial the operator asked the study for, runs the
objective with a real ``optuna.Trial`` and tells the study the outcome (:mod:`hpo_trial.runtime`).
The objective needs nothing from this package except, optionally, :func:`checkpoint`, which lets a
trial resume from its last saved step when its pod is lost.
"""

from __future__ import annotations

from hpo_trial.checkpoint import Checkpoint, checkpoint
from hpo_trial.errors import (
    ConfigurationError,
    HpoTrialError,
    ObjectiveError,
    StorageUnavailableError,
    SupersededError,
)

__all__ = [
    "Checkpoint",
    "ConfigurationError",
    "HpoTrialError",
    "ObjectiveError",
    "StorageUnavailableError",
    "SupersededError",
    "checkpoint",
]
