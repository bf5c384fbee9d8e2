"""The names the CLI shares with the operator and the trial runtime: the API, labels and Optuna attributes.

The API group and labels repeat ``hpo_operator.models`` (the CLI does not install the operator;
``tests/unit/test_cli_names.py`` checks they agree); Optuna attribute names come from the trial
runtime's contract itself.
"""

from __future__ import annotations

from hpo_trial.contract import ATTEMPT_ATTR, FAIL_REASON_ATTR, PLACEMENT_ATTR, TRIAL_CONTAINER

__all__ = [
    "ATTEMPT_ATTR",
    "ATTEMPT_LABEL",
    "FAIL_REASON_ATTR",
    "GROUP",
    "OUTCOMES_ATTR",
    "PLACEMENT_ATTR",
    "PLURAL",
    "READONLY_SECRET_SUFFIX",
    "SECRET_SUFFIX",
    "STUDY_LABEL",
    "TLS_CA_KEY",
    "TRIAL_CONTAINER",
    "TRIAL_LABEL",
    "VERSION",
]

GROUP = "hpo.dev"
VERSION = "v1alpha1"
PLURAL = "hpostudies"
STUDY_LABEL = f"{GROUP}/study"
TRIAL_LABEL = f"{GROUP}/trial"
ATTEMPT_LABEL = f"{GROUP}/attempt"
SECRET_SUFFIX = "-storage"
READONLY_SECRET_SUFFIX = "-storage-readonly"
TLS_CA_KEY = "ca.crt"
"""Key of the storage Secret holding the database server's CA, for a study whose storage uses TLS."""
OUTCOMES_ATTR = "hpo:outcomes"
"""Trial system attribute the operator keeps: each attempt's outcome (``succeeded``, ``preempted``, ...)."""
