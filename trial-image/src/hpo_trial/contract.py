"""The runtime's side of its contract with the operator: every name both sides must agree on.

Where a trial pod's life begins and ends: the environment the operator sets, the Optuna attributes
both sides read or write, and the exit codes the operator reads. The runtime and the operator
share no code; ``hpo_operator.contract`` defines the same names on the operator's side and
``tests/unit/test_contract.py`` checks that the two agree. The meaning of each is documented in
:mod:`hpo_trial.assignment`.
"""

from __future__ import annotations

__all__ = [
    "ASSIGNMENT_ENV",
    "ATTEMPT_ATTR",
    "CHECKPOINT_ATTR",
    "CHECKPOINT_ROOT_ENV",
    "EXIT_CONFIGURATION",
    "EXIT_FINISHED",
    "EXIT_INTERRUPTED",
    "EXIT_OBJECTIVE_FAILED",
    "EXIT_STORAGE_UNAVAILABLE",
    "EXIT_SUPERSEDED",
    "FAIL_REASON_ATTR",
    "IMPORTED_ATTR",
    "IMPORT_URL_ENV",
    "NODE_NAME_ENV",
    "OBJECTIVE_ENV",
    "PLACEMENT_ATTR",
    "POD_NAME_ENV",
    "PROTOCOL_VERSION",
    "QUICK_SCAN_ENV",
    "RERUN_OF_ATTR",
    "STORAGE_URL_ENV",
    "TERMINATION_LOG_ENV",
    "TRIAL_CONTAINER",
]

PROTOCOL_VERSION = 1
"""The assignment protocol this runtime speaks (the only one so far)."""

TRIAL_CONTAINER = "trial"
"""The name of the container the operator runs ``hpo-trial`` in (it reads that container's exit code)."""

STORAGE_URL_ENV = "HPO_STORAGE_URL"
ASSIGNMENT_ENV = "HPO_ASSIGNMENT"
QUICK_SCAN_ENV = "HPO_QUICK_SCAN"
OBJECTIVE_ENV = "HPO_OBJECTIVE"
TERMINATION_LOG_ENV = "HPO_TERMINATION_LOG"
CHECKPOINT_ROOT_ENV = "HPO_CHECKPOINT_ROOT"
IMPORT_URL_ENV = "HPO_IMPORT_URL"
"""The database URL of a study to import (``hpo-transfer import``), from a Secret the import Job mounts as env."""

FAIL_REASON_ATTR = "fail_reason"
"""The trial system attribute Optuna itself uses for why a trial failed (shown by optuna-dashboard)."""
ATTEMPT_ATTR = "hpo:attempt"
"""The trial system attribute naming the attempt that may still report; the operator moves it on (fences)."""
IMPORTED_ATTR = "hpo:imported"
"""The trial system attribute of an imported trial: ``{"source": <source's fingerprint>, "number": <its number>}``."""
RERUN_OF_ATTR = "hpo:rerun_of"
"""The system attribute of a trial queued to re-run an imported unfinished one: the same JSON as ``hpo:imported``."""
CHECKPOINT_ATTR = "checkpoint"
"""The trial user attribute holding ``{"path": <latest checkpoint file>, "step": <its step>}``."""
PLACEMENT_ATTR = "hpo:placement"
"""The trial system attribute the runtime sets as an attempt starts: ``{"attempt": n, "pod": ..., "node": ...}``."""
POD_NAME_ENV = "HPO_POD_NAME"
NODE_NAME_ENV = "HPO_NODE_NAME"
"""The pod's name and node, which the operator passes through the Downward API."""

EXIT_FINISHED = 0
EXIT_OBJECTIVE_FAILED = 1
EXIT_CONFIGURATION = 2
EXIT_STORAGE_UNAVAILABLE = 3
EXIT_SUPERSEDED = 4
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM
