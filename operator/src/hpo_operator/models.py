"""The HpoStudy API: pydantic models of the spec, the single source of the CRD schema.

`crd.py` renders these models into `crds/hpostudies.hpo.dev.yaml`; `validation.py` checks what a
schema cannot express (low < high, ...). Field names are camelCase on the wire, snake_case here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "hpo.dev"
VERSION = "v1alpha1"
KIND = "HpoStudy"
PLURAL = "hpostudies"
STUDY_LABEL = f"{GROUP}/study"
TRIAL_LABEL = f"{GROUP}/trial"
ATTEMPT_LABEL = f"{GROUP}/attempt"
# On the study's other Jobs (never labelled with a trial): what they do, `import` or `snapshot`.
TASK_LABEL = f"{GROUP}/task"
# A study's Secrets are `<name>-storage` and `<name>-storage-readonly`, which must stay valid names.
READONLY_SECRET_SUFFIX = "-storage-readonly"
MAX_NAME_LENGTH = 253 - len(READONLY_SECRET_SUFFIX)
# On each trial Job: when the operator created it, to the microsecond (Kubernetes keeps whole seconds).
DISPATCHED_AT_ANNOTATION = f"{GROUP}/dispatched-at"


class Model(BaseModel):
    """Base of every spec model: camelCase aliases, unknown fields refused (the schema prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class Direction(StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class Objective(Model):
    """What the trials optimise: one direction, or several for a multi-objective study."""

    directions: list[Direction] = Field(
        default=[Direction.MINIMIZE],
        min_length=1,
        max_length=8,
        description="One direction per value the objective returns (several make a multi-objective study).",
    )
    metrics: list[str] = Field(
        default=[],
        max_length=8,
        description="Names of the objective's values, one per direction (shown in status and the dashboard).",
    )


class ParameterType(StrEnum):
    FLOAT = "float"
    INT = "int"
    CATEGORICAL = "categorical"


class Parameter(Model):
    """One declared parameter; which fields apply depends on ``type``."""

    type: ParameterType = Field(description="float, int or categorical.")
    low: float | None = Field(default=None, description="Lower bound (float and int).")
    high: float | None = Field(default=None, description="Upper bound, inclusive (float and int).")
    step: float | None = Field(default=None, gt=0, description="Discretisation step (float and int).")
    log: bool = Field(default=False, description="Sample on a log scale (needs low > 0).")
    choices: list[Any] = Field(
        default=[],
        description="Values of a categorical parameter: strings, numbers or booleans (not null).",
        json_schema_extra={"items": {"x-kubernetes-preserve-unknown-fields": True}},
    )


class SamplerName(StrEnum):
    TPE = "tpe"
    RANDOM = "random"
    CMAES = "cmaes"
    GP = "gp"
    NSGA2 = "nsga2"
    QMC = "qmc"
    GRID = "grid"


class Sampler(Model):
    """The Optuna sampler that proposes each trial's parameters (in the operator and, for parameters the
    objective suggests itself, in the trial pod)."""

    name: SamplerName = Field(default=SamplerName.TPE, description="TPE (tuned to the study's parallelism) unless set.")
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Seed for reproducible sampling: each trial's seed is derived from it and the trial number, so "
        "a study runs the same again while parameters the objective suggests itself still vary.",
    )
    options: dict[str, Any] = Field(
        default={},
        description="Keyword arguments of the Optuna sampler, e.g. n_startup_trials for tpe (checked "
        "against the sampler's signature and types; options that take Python objects or "
        "functions cannot be given).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class PrunerName(StrEnum):
    NONE = "none"
    MEDIAN = "median"
    PERCENTILE = "percentile"
    HYPERBAND = "hyperband"
    SUCCESSIVE_HALVING = "successiveHalving"


class Pruner(Model):
    """The Optuna pruner that stops unpromising trials early (single-objective studies)."""

    name: PrunerName = Field(default=PrunerName.NONE, description="Which Optuna pruner stops weak trials early.")
    options: dict[str, Any] = Field(
        default={},
        description="Keyword arguments of the Optuna pruner, e.g. n_warmup_steps for median.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class Budget(Model):
    """How many trials, how many at once, and how much failure and time the study may spend."""

    trials: int = Field(ge=1, description="Total number of trials N (raise it to continue a finished study).")
    parallelism: int = Field(
        default=1,
        ge=1,
        description="At most this many unfinished trials at once (M); capped at trials and at the "
        "operator's HPO_MAX_PARALLELISM (status.parallelism shows the value in force).",
    )
    max_failed_trials: int | None = Field(
        default=None, ge=0, description="The study fails when more trials than this have failed (unset: no limit)."
    )
    retries_per_trial: int = Field(default=1, ge=0, description="Crashed attempts of one trial that are re-run.")
    max_preemptions_per_trial: int = Field(
        default=10,
        ge=0,
        description="Preemptions (deletion, eviction, node loss) of one trial that are run again "
        "for free; one more fails the trial. A queue's suspension is not counted.",
    )
    trial_timeout_seconds: int | None = Field(default=None, ge=1, description="Time limit of one trial attempt.")
    deadline_seconds: int | None = Field(
        default=None, ge=1, description="Wall-clock limit of the whole study, counted from its start."
    )
    start_timeout_seconds: int = Field(
        default=300,
        ge=10,
        description="A trial pod that has not started by then (unschedulable, bad image) fails; under a queue "
        "(spec.queueName) counted from the queue's admission of its Job, never while it waits in the queue.",
    )


class EndPolicy(StrEnum):
    DRAIN = "Drain"
    KILL = "Kill"


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


# A DNS subdomain (RFC 1123), as Kubernetes names most objects; also matches IPv4 addresses.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HOST_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$"


class SecretRef(Model):
    """A Secret of the study's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="A Secret in the study's own namespace."
    )


class SecretKeyRef(Model):
    """One key of a Secret of the study's namespace."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="A Secret in the study's own namespace."
    )
    key: str = Field(
        default="ca.crt",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The key that holds the PEM certificates.",
    )


class TlsMode(StrEnum):
    VERIFY_CA = "VerifyCA"
    VERIFY_IDENTITY = "VerifyIdentity"


class StorageTls(Model):
    """TLS to the server a study names; its users then require TLS, from the operator and trial pods alike."""

    mode: TlsMode = Field(
        default=TlsMode.VERIFY_IDENTITY,
        description="VerifyIdentity checks the server's certificate against the CA and its name against the host; "
        "VerifyCA the certificate only.",
    )
    ca_secret: SecretKeyRef = Field(description="The CA that signed the server's certificate (PEM).")


class Storage(Model):
    """The MySQL server that holds the study; unset fields come from the operator's defaults.

    The operator's own admin is used on the operator's server only: a study that names another
    server must bring that server's admin in `adminSecret`.
    """

    host: str | None = Field(
        default=None,
        max_length=253,
        pattern=HOST_NAME,
        description="MySQL host name or IPv4 address (default: the operator's server).",
    )
    port: int | None = Field(default=None, ge=1, le=65535, description="MySQL port (default: the operator's).")
    admin_secret: SecretRef | None = Field(
        default=None,
        description="Secret with keys username and password of an admin of the server; required "
        "when host or port names another server than the operator's.",
    )
    tls: StorageTls | None = Field(
        default=None,
        description="TLS to the server named in host (the operator's server follows the operator's settings).",
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN, description="Retain keeps the study's database when the study is deleted."
    )


class Checkpoints(Model):
    """Where trial pods keep checkpoints, so a preempted trial resumes instead of starting over."""

    claim_name: str | None = Field(
        default=None,
        description="PVC mounted in every trial pod for checkpoints, where study snapshots are kept too "
        "(unset: no checkpoint volume, no snapshot).",
    )
    mount_path: str = Field(default="/checkpoints", description="Where trial pods see the checkpoint volume.")
    every_trials: int = Field(
        default=5,
        ge=1,
        description="Every this many finished trials, record a study checkpoint in status and, with claimName, "
        "export the study to a snapshot file snapshots/<study>/ on the claim (the last 3 kept; "
        "status.snapshot names the newest, which spec.importFrom of a new study restores).",
    )


class UrlSecretRef(Model):
    """The key of a Secret of the study's namespace that holds a database URL."""

    name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="A Secret in the study's own namespace."
    )
    key: str = Field(
        default="url",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The key that holds the SQLAlchemy URL, e.g. mysql+pymysql://user:password@host/db.",
    )


class ImportFrom(Model):
    """An existing Optuna study to start from: its trials are copied into the study's database before any trial
    runs (immutable once the study has started).

    Give either claimName and path (an SQLite file or an Optuna journal file on a PersistentVolumeClaim), or
    urlSecret (a MySQL or PostgreSQL database); studyName may be left out when the source holds one study.
    """

    claim_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
        description="A PersistentVolumeClaim of the study's namespace holding the file to import (with path).",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="The SQLite database or Optuna journal file, relative to the claim's root (no leading /, no ..).",
    )
    study_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="The Optuna study to import (unset: the only study in the source).",
    )
    url_secret: UrlSecretRef | None = Field(
        default=None,
        description="A Secret key holding the source database's URL (MySQL, PostgreSQL); only the import Job "
        "reads it, the operator never does.",
    )
    rerun_unfinished: bool = Field(
        default=False,
        description="Trials RUNNING or WAITING in the source are imported as FAIL; with true their parameters are "
        "also queued to run again (as new trials, counted in budget.trials).",
    )


class Trial(Model):
    """How a trial pod runs: the objective and a pod template (defaults: the trial image's workload)."""

    objective: str | None = Field(
        default=None,
        description="The objective as module:function, e.g. my_package.train:objective (default: the "
        "trial image's workload).",
    )
    quick_scan: bool = Field(default=False, description="Train the default workload on a small subset.")
    template: dict[str, Any] = Field(
        default={},
        description="A pod template (metadata, spec) for trial pods; the trial container is 'trial'.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class HpoStudySpec(Model):
    """What to optimise, over which parameters, with which budget, and how trial pods run."""

    objective: Objective = Field(
        default_factory=Objective, description="Directions and metric names (immutable once the study has started)."
    )
    search_space: dict[str, Parameter] = Field(
        default={},
        description="Declared parameters by name; the objective may suggest more at run time (immutable "
        "once the study has started).",
    )
    sampler: Sampler = Field(default_factory=Sampler, description="The sampler and its options (TPE by default).")
    pruner: Pruner = Field(default_factory=Pruner, description="The pruner and its options (none by default).")
    budget: Budget = Field(description="Trials, parallelism, retries, preemptions and time limits.")
    end_policy: EndPolicy = Field(
        default=EndPolicy.DRAIN, description="When the study ends: let running trials finish, or stop them."
    )
    warm_start: list[dict[str, Any]] = Field(
        default=[],
        description="Parameter sets to run first, in order (trial 0, 1, ...); at most 1000, and never more "
        "than budget.trials of them.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    trial: Trial = Field(default_factory=Trial, description="The objective and the pod template of trial pods.")
    storage: Storage = Field(
        default_factory=Storage,
        description="The MySQL server of the study's database (immutable once the study has started).",
    )
    checkpoints: Checkpoints = Field(
        default_factory=Checkpoints, description="The checkpoint volume of trial pods, and study snapshots."
    )
    import_from: ImportFrom | None = Field(
        default=None,
        description="An existing Optuna study (a file on a claim, or a database) whose trials are imported before "
        "the first trial; they count in budget.trials (immutable once the study has started).",
    )
    queue_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_SUBDOMAIN,
        description="A Kueue LocalQueue of the study's namespace that admits each trial Job (they wait, suspended, "
        "until it does); wins over the template's kueue.x-k8s.io/queue-name label. Unset: no queue.",
    )
    suspend: bool = Field(
        default=False,
        description="Stop dispatching and stop running trials (checkpoints kept); queued trials leave their queue.",
    )


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class TrialCounts(Model):
    """The study's trials by state."""

    running: int = Field(default=0, description="Unfinished trials whose pod has started.")
    waiting: int = Field(
        default=0,
        description="Unfinished trials whose pod has not started yet (unschedulable, pulling its image, or "
        "not admitted by a queue); the TrialsWaiting condition says why.",
    )
    complete: int = Field(default=0, description="Trials that returned a value.")
    pruned: int = Field(default=0, description="Trials the pruner stopped.")
    failed: int = Field(default=0, description="Trials that failed (the reason is Optuna's fail_reason).")
    preemptions: int = Field(
        default=0,
        description="Times a running trial was stopped from outside (evicted, its node lost, or preempted by its "
        "Kueue queue) and run again as the same trial from its checkpoint; none counts as a failure or a retry.",
    )
    imported: int | None = Field(
        default=None,
        description="Of all the trials counted here, those imported from spec.importFrom (unset: none imported).",
    )
    imported_failed: int | None = Field(
        default=None,
        description="Of the imported trials, those that are FAIL (not counted against spec.budget.maxFailedTrials).",
    )


class BestTrial(Model):
    """A finished trial worth showing: its number, value(s) and parameters."""

    number: int = Field(description="The Optuna trial number.")
    value: float | None = Field(default=None, description="Its value (single-objective studies).")
    values: list[float] | None = Field(default=None, description="Its values (multi-objective studies).")
    params: dict[str, Any] = Field(
        default={},
        description="Its parameters, declared and suggested.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class RunningTrial(Model):
    """An unfinished trial and where it would resume."""

    number: int = Field(description="The Optuna trial number.")
    attempt: int = Field(default=0, description="Its current attempt (0 first; each requeue or retry adds one).")
    checkpoint_path: str | None = Field(default=None, description="Its latest checkpoint file.")
    checkpoint_step: int | None = Field(default=None, description="The step of that checkpoint.")


class StudyCheckpoint(Model):
    """The last point at which the study recorded its progress."""

    time: str = Field(description="When the study last recorded a checkpoint (RFC 3339).")
    finished_trials: int = Field(description="Finished trials at that moment.")


class StudySnapshot(Model):
    """The study's last snapshot: a portable SQLite file on the checkpoint claim that spec.importFrom restores."""

    claim_name: str = Field(description="The claim that holds it (spec.checkpoints.claimName).")
    path: str = Field(description="The file, relative to the claim's root (what spec.importFrom.path takes).")
    time: str = Field(description="When its trials were read (RFC 3339).")
    trials: int = Field(description="Trials it holds.")
    finished_trials: int = Field(description="Finished trials among them.")


class Condition(Model):
    """A standard Kubernetes condition: one aspect of the study, with the reason for its last change."""

    type: str = Field(description="Validated, DatabaseReady, Imported, Progressing, TrialsWaiting or Finished.")
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase reason (status.py lists them).")
    message: str = Field(default="", description="What happened, and what to do about it.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="The spec generation the condition is about.")


class HpoStudyStatus(Model):
    """What the operator observed of the study; only `status.py` builds it, printer columns and users read it."""

    phase: Phase = Field(default=Phase.PENDING, description="Pending, Running, Suspended, Succeeded or Failed.")
    message: str = Field(default="", description="One line on where the study stands, and why.")
    progress: str = Field(default="", description="finished/total trials, for kubectl get.")
    trials: TrialCounts = Field(default_factory=TrialCounts, description="The study's trials by state.")
    parallelism: int | None = Field(
        default=None,
        description="The parallelism in force: spec.budget.parallelism capped at spec.budget.trials "
        "and the operator's HPO_MAX_PARALLELISM.",
    )
    best_trial: BestTrial | None = Field(default=None, description="Single-objective: the best COMPLETE trial.")
    best_value: str | None = Field(
        default=None,
        description="For kubectl get: bestTrial.value to 4 significant digits (the full value is in bestTrial), "
        "or pareto:<n> for a multi-objective study's front of n trials.",
    )
    sampler: str | None = Field(default=None, description="The sampler in force (spec.sampler.name or its default).")
    pareto_front: list[BestTrial] = Field(default=[], description="Multi-objective: the best trials, bounded.")
    running_trials: list[RunningTrial] = Field(default=[], description="Unfinished trials and their checkpoints.")
    checkpoint: StudyCheckpoint | None = Field(default=None, description="The study's last progress record.")
    snapshot: StudySnapshot | None = Field(
        default=None, description="The study's last snapshot (spec.checkpoints with a claimName)."
    )
    optuna_study: str | None = Field(default=None, description="The Optuna study name in the study's database.")
    started_at: str | None = Field(
        default=None,
        description="When the study first ran (RFC 3339); from then on spec.objective, searchSpace "
        "and storage cannot change.",
    )
    observed_generation: int | None = Field(default=None, description="The spec generation this status is about.")
    conditions: list[Condition] = Field(
        default=[],
        description="Validated, DatabaseReady, Imported (with spec.importFrom), Progressing, TrialsWaiting and "
        "Finished.",
    )
