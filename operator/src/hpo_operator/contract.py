"""The operator's side of its contract with the trial runtime: every name both sides must agree on.

Where a trial's life crosses from the operator to its pod: the Job's container and environment,
the assignment's protocol, the Optuna attributes both sides read or write, and the runtime's exit
codes. The operator and the runtime share no code; `hpo_trial.contract` defines the same names on
the runtime's side, and `tests/unit/test_contract.py` checks that the two agree. Change a value
here only together with the runtime (and, for anything an older runtime would misread, the
protocol number).
"""

from __future__ import annotations

PROTOCOL = 1
"""The assignment format (`HPO_ASSIGNMENT`) the runtime understands."""

TRIAL_CONTAINER = "trial"
"""The container of a trial pod that runs `hpo-trial`; the operator reads its exit code and message."""
TRIAL_COMMAND = ("hpo-trial",)

ASSIGNMENT_ENV = "HPO_ASSIGNMENT"
STORAGE_URL_ENV = "HPO_STORAGE_URL"
QUICK_SCAN_ENV = "HPO_QUICK_SCAN"

FAIL_REASON_ATTR = "fail_reason"
"""Trial system attribute: why a trial failed (Optuna's own name; optuna-dashboard shows it)."""
ATTEMPT_ATTR = "hpo:attempt"
"""Trial system attribute: the attempt that may report the trial's outcome (the fence; see `storage.fence`)."""
CHECKPOINT_ATTR = "checkpoint"
"""Trial user attribute the runtime sets at every checkpoint: ``{"path": ..., "step": ...}``."""
PLACEMENT_ATTR = "hpo:placement"
"""Trial system attribute the runtime sets as an attempt starts: ``{"attempt": n, "pod": ..., "node": ...}``
(a trial's pods are deleted once it ends; this says where it ran, for ``kubectl hpo trials``)."""
POD_NAME_ENV = "HPO_POD_NAME"
NODE_NAME_ENV = "HPO_NODE_NAME"
"""The trial pod's name and node, from the Downward API, for :data:`PLACEMENT_ATTR`."""

EXIT_FINISHED = 0
EXIT_OBJECTIVE_FAILED = 1
EXIT_CONFIGURATION = 2
EXIT_DATABASE_UNAVAILABLE = 3
"""The runtime could not reach the study's database; the trial is still RUNNING and the attempt cost nothing."""
EXIT_SUPERSEDED = 4
"""The attempt was fenced: a later attempt of the same trial owns it, so this one ran or told nothing."""
EXIT_INTERRUPTED = 143
"""SIGTERM (128 + 15): the trial was stopped from outside and stays RUNNING."""

TRANSFER_CONTAINER = "transfer"
"""The container of an import or snapshot Job's pod, which runs `hpo-transfer`."""
TRANSFER_COMMAND = ("hpo-transfer",)
IMPORT_URL_ENV = "HPO_IMPORT_URL"
"""The source database's URL for `hpo-transfer import`, from the user's Secret (the operator never reads it)."""
IMPORTED_ATTR = "hpo:imported"
"""Trial system attribute of an imported trial: ``{"source": <fingerprint>, "number": <its number there>}``."""
IMPORTED_WORD = "IMPORTED"
"""First word of a successful import's termination message: ``IMPORTED copied=<n> skipped=<n> ...``."""
SNAPSHOT_WORD = "SNAPSHOT"
"""First word of a successful snapshot's termination message: ``SNAPSHOT path=<file> trials=<n> ...``."""
FAIL_WORD = "FAIL"
"""First word of a failed transfer's termination message: ``FAIL <spec field>: <what is wrong>``."""
