"""Importing an existing study: the Job that copies it into the study's database, and what its end means.

Before a study with `spec.importFrom` dispatches its first trial, one Job from the trial image runs
`hpo-transfer import` (it mounts the user's claim, or reads the source URL from the user's Secret: the
operator itself never mounts a user's volume nor reads the source's password). Pure functions, tested
without a cluster: `build_import_job` (and `transfer_job`, shared with the snapshot Jobs) makes the
manifest, `decide` says from the import Jobs and pods what to do next, `parse_imported` reads the
Job's one-line termination message. The import is idempotent, so running it again (an operator
restart, a lost pod, a database outage: exit 3) never duplicates a trial.
"""

from __future__ import annotations

import copy
import datetime
import enum
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from hpo_operator.contract import (
    EXIT_CONFIGURATION,
    EXIT_DATABASE_UNAVAILABLE,
    EXIT_FINISHED,
    EXIT_OBJECTIVE_FAILED,
    FAIL_WORD,
    IMPORT_URL_ENV,
    IMPORTED_WORD,
    STORAGE_URL_ENV,
    TRANSFER_COMMAND,
    TRANSFER_CONTAINER,
    TRIAL_CONTAINER,
)
from hpo_operator.database import TLS_CA_DIR, TLS_CA_KEY
from hpo_operator.dispatch import STORAGE_TLS_VOLUME, TrialRef, label_value
from hpo_operator.models import ATTEMPT_LABEL, STUDY_LABEL, TASK_LABEL, HpoStudySpec
from hpo_operator.outcomes import JobSummary, Outcome, PodSummary, classify

IMPORT_TASK = "import"
SNAPSHOT_TASK = "snapshot"
IMPORT_VOLUME = "hpo-import"
IMPORT_MOUNT = "/import"
BACKOFF_LIMIT = 3
"""Pods one import Job runs before it fails (a database outage, a lost pod); exit 1 and 2 fail it at once."""
MAX_RUNS = 5
"""Import Jobs run before the import is given up (each resumes where the last stopped)."""
IMPORT_DEADLINE_SECONDS = 3600
"""An import Job that runs longer than this fails (and runs again): a 10,000-trial source takes seconds."""
PATH_FIELD = "spec.importFrom.path"
CLAIM_FIELD = "spec.importFrom.claimName"
URL_FIELD = "spec.importFrom.urlSecret"
_POD_FIELDS = ("securityContext", "nodeSelector", "tolerations", "affinity", "imagePullSecrets", "priorityClassName")
"""What the import and snapshot pods take from the trial template: where trial pods may run, and as whom."""
_DEFAULT_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
_IMPORTED = re.compile(
    rf"^{IMPORTED_WORD} copied=(\d+) skipped=(\d+) failed_unfinished=(\d+) enqueued=(\d+) total=(\d+) best=(\S+)"
)


def describe(spec: HpoStudySpec) -> str:
    """The source, as status messages and Events name it (never its URL)."""
    source = spec.import_from
    if source is None:
        return "nothing"
    study = f"study {source.study_name!r} of " if source.study_name else ""
    if source.url_secret is not None:
        return f"{study}the database in Secret {source.url_secret.name} (key {source.url_secret.key})"
    return f"{study}{source.path} on claim {source.claim_name}"


def job_name(study: str, task: str, run: int | None) -> str:
    """`<study>-<task>[-<run>]`, shortened with a hash to fit 63 characters (a label value)."""
    suffix = f"-{task}" + (f"-{run}" if run is not None else "")
    if len(study) + len(suffix) <= 63:
        return study + suffix
    digest = hashlib.sha256(study.encode()).hexdigest()[:6]
    return f"{study[: 63 - len(suffix) - 7].rstrip('-.')}-{digest}{suffix}"


def import_job_name(study: str, run: int) -> str:
    """`<study>-import`, then `<study>-import-1`, ... for the runs after a failed one."""
    return job_name(study, IMPORT_TASK, run or None)


def task_labels(study: str, task: str, run: int) -> dict[str, str]:
    """The study's label and the task's, never `hpo.dev/trial`: these Jobs hold no trial slot."""
    return {
        STUDY_LABEL: label_value(study),
        TASK_LABEL: task,
        ATTEMPT_LABEL: str(run),
        "app.kubernetes.io/managed-by": "hpo-operator",
    }


def _template_container(spec: HpoStudySpec) -> dict[str, Any]:
    pod = spec.trial.template.get("spec")
    containers = pod.get("containers") if isinstance(pod, dict) else None
    found = [c for c in containers or [] if isinstance(c, dict)]
    named = [c for c in found if c.get("name") == TRIAL_CONTAINER]
    return named[0] if named else (found[0] if len(found) == 1 else {})


def transfer_job(
    spec: HpoStudySpec,
    ref: TrialRef,
    name: str,
    labels: dict[str, str],
    args: list[str],
    storage_secret: str,
    image: str,
    deadline_seconds: int,
) -> dict[str, Any]:
    """A Job that runs `hpo-transfer` from the trial image once (retrying a lost pod or a database outage).

    Its pod takes from the trial template only what decides where and as whom it runs (the pod's
    securityContext, nodeSelector, tolerations, affinity, imagePullSecrets, priorityClassName, and the
    trial container's securityContext); no ServiceAccount token; the study's database URL from
    ``storage_secret`` (key ``url``), as trial pods get it. Volumes are added by the caller.
    """
    pod = spec.trial.template.get("spec")
    pod = pod if isinstance(pod, dict) else {}
    pod_spec: dict[str, Any] = {
        key: copy.deepcopy(pod[key]) for key in _POD_FIELDS if key in pod and pod[key] is not None
    }
    pod_spec["restartPolicy"] = "Never"
    pod_spec["automountServiceAccountToken"] = False
    trial = _template_container(spec)
    security = trial.get("securityContext")
    container: dict[str, Any] = {
        "name": TRANSFER_CONTAINER,
        "image": image,
        "command": list(TRANSFER_COMMAND),
        "args": args,
        "env": [{"name": STORAGE_URL_ENV, "valueFrom": {"secretKeyRef": {"name": storage_secret, "key": "url"}}}],
        "securityContext": copy.deepcopy(security) if isinstance(security, dict) else dict(_DEFAULT_CONTAINER_SECURITY),
    }
    pod_spec["containers"] = [container]
    if ref.storage_tls:
        pod_spec["volumes"] = [
            {
                "name": STORAGE_TLS_VOLUME,
                "secret": {"secretName": storage_secret, "items": [{"key": TLS_CA_KEY, "path": TLS_CA_KEY}]},
            }
        ]
        container["volumeMounts"] = [{"name": STORAGE_TLS_VOLUME, "mountPath": TLS_CA_DIR, "readOnly": True}]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ref.namespace, "labels": dict(labels)},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "activeDeadlineSeconds": deadline_seconds,
            "podFailurePolicy": {
                "rules": [
                    # A bug or a wrong spec fails the same way again: end the Job at once.
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": TRANSFER_CONTAINER,
                            "operator": "In",
                            "values": [EXIT_OBJECTIVE_FAILED, EXIT_CONFIGURATION],
                        },
                    },
                    # A pod evicted or preempted costs nothing.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def import_args(spec: HpoStudySpec, ref: TrialRef) -> list[str]:
    """`hpo-transfer import`'s arguments for the study's spec (the source URL comes through the environment)."""
    source = spec.import_from
    assert source is not None
    args = ["import", "--destination-study", ref.optuna_study]
    if source.claim_name and source.path:
        args += ["--file", posixpath.join(IMPORT_MOUNT, posixpath.normpath(source.path))]
    if source.study_name:
        args += ["--study-name", source.study_name]
    args += ["--directions", *(d.value for d in spec.objective.directions)]
    space = {
        name: parameter.model_dump(by_alias=True, mode="json", exclude_none=True)
        for name, parameter in spec.search_space.items()
    }
    args += ["--search-space-json", json.dumps(space, separators=(",", ":"), sort_keys=True)]
    if source.rerun_unfinished:
        args.append("--rerun-unfinished")
    return args


def build_import_job(spec: HpoStudySpec, ref: TrialRef, run: int, image: str) -> dict[str, Any]:
    """The Job of the import's ``run``-th run (owner reference added by the caller)."""
    source = spec.import_from
    assert source is not None
    job = transfer_job(
        spec,
        ref,
        import_job_name(ref.study, run),
        task_labels(ref.study, IMPORT_TASK, run),
        import_args(spec, ref),
        ref.storage_secret,
        image,
        IMPORT_DEADLINE_SECONDS,
    )
    pod_spec = job["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    if source.claim_name:
        pod_spec.setdefault("volumes", []).append(
            {"name": IMPORT_VOLUME, "persistentVolumeClaim": {"claimName": source.claim_name, "readOnly": True}}
        )
        container.setdefault("volumeMounts", []).append(
            {"name": IMPORT_VOLUME, "mountPath": IMPORT_MOUNT, "readOnly": True}
        )
    if source.url_secret is not None:
        container["env"].append(
            {
                "name": IMPORT_URL_ENV,
                "valueFrom": {"secretKeyRef": {"name": source.url_secret.name, "key": source.url_secret.key}},
            }
        )
    return job


@dataclass(frozen=True)
class Imported:
    """What a successful import run reported (its termination message)."""

    copied: int
    skipped: int
    failed_unfinished: int
    enqueued: int
    total: int
    best: float | None


def parse_imported(message: str) -> Imported | None:
    """``IMPORTED copied=3 skipped=0 failed_unfinished=1 enqueued=0 total=3 best=0.25`` (None: not that)."""
    match = _IMPORTED.match(message.strip())
    if match is None:
        return None
    copied, skipped, failed, enqueued, total = (int(match.group(i)) for i in range(1, 6))
    try:
        best: float | None = float(match.group(6))
    except ValueError:  # best=None: no COMPLETE trial, or several objectives
        best = None
    return Imported(copied, skipped, failed, enqueued, total, best)


def failure(message: str, default_field: str) -> tuple[str, str]:
    """The spec field a failed transfer names and its message, from ``FAIL <field>: <what>``."""
    text = message.strip()
    if text.startswith(FAIL_WORD + " "):
        text = text[len(FAIL_WORD) + 1 :]
    field, sep, rest = text.partition(": ")
    if sep and field.startswith("spec.") and " " not in field:
        return field, rest
    return default_field, text


class Action(enum.Enum):
    CREATE = "create"  # no import Job: create the run's Job
    WAIT = "wait"  # the Job runs (or its pod is starting)
    DONE = "done"  # it succeeded: record it, delete the Jobs, dispatch trials
    RERUN = "rerun"  # it failed in a way another run can mend (an outage, a lost pod): a new Job
    FAIL = "fail"  # it failed in a way no run can mend (the spec, the source): the study fails


@dataclass(frozen=True)
class Decision:
    action: Action
    run: int  # CREATE and RERUN: the run to start; else the latest run
    message: str = ""
    field: str = ""  # FAIL: the spec field to fix
    result: Imported | None = None  # DONE: what it reported (None: its pod is gone)
    jobs: tuple[str, ...] = ()  # the import Jobs that exist (deleted once DONE, the older ones on RERUN)


def _latest_pod(pods: list[PodSummary], run: int) -> PodSummary | None:
    mine = [p for p in pods if p.task == IMPORT_TASK and p.attempt == run]
    return max(mine, key=lambda p: p.created) if mine else None


def decide(spec: HpoStudySpec, jobs: list[JobSummary], pods: list[PodSummary], now: datetime.datetime) -> Decision:
    """What to do about the study's import, from its import Jobs and their pods. Pure."""
    source = spec.import_from
    default_field = URL_FIELD if source is not None and source.url_secret is not None else PATH_FIELD
    mine = [j for j in jobs if j.task == IMPORT_TASK]
    names = tuple(sorted(j.name for j in mine))
    if not mine:
        return Decision(Action.CREATE, 0, "importing: creating the import Job")
    job = max(mine, key=lambda j: j.attempt)
    run, pod = job.attempt, _latest_pod(pods, job.attempt)
    if job.succeeded:
        result = parse_imported(pod.message) if pod is not None and pod.exit_code == EXIT_FINISHED else None
        return Decision(Action.DONE, run, "imported", result=result, jobs=names)
    if pod is not None and not pod.terminal and not job.failed:
        verdict = classify(pod, now, spec.budget.start_timeout_seconds)
        if verdict.outcome is Outcome.NEVER_STARTED:
            field = CLAIM_FIELD if source is not None and source.claim_name else default_field
            return Decision(Action.FAIL, run, f"the import pod did not start: {verdict.reason}", field, jobs=names)
        if not pod.started:
            why = f": {pod.waiting}" if pod.waiting else ""
            return Decision(Action.WAIT, run, f"importing: the import pod is starting{why}", jobs=names)
        return Decision(Action.WAIT, run, "importing: copying the source's trials", jobs=names)
    if not job.failed:
        if pod is None and (now - job.created).total_seconds() > spec.budget.start_timeout_seconds:
            why = job.message or "see the Job's events"
            return Decision(Action.FAIL, run, f"the import Job made no pod: {why}", default_field, jobs=names)
        return Decision(Action.WAIT, run, "importing: waiting for the import pod", jobs=names)
    if pod is not None and not pod.terminal:
        return Decision(Action.WAIT, run, "importing: the import pod is stopping", jobs=names)
    code = pod.exit_code if pod is not None else None
    said = pod.message if pod is not None and pod.message else (job.message or "its pod was lost")
    if code in (EXIT_CONFIGURATION, EXIT_OBJECTIVE_FAILED):
        field, message = failure(said, default_field)
        if code == EXIT_OBJECTIVE_FAILED:
            message = f"the import failed: {message}"
        return Decision(Action.FAIL, run, message, field, jobs=names)
    if run + 1 >= MAX_RUNS:
        return Decision(
            Action.FAIL,
            run,
            f"the import failed {MAX_RUNS} times, the last: {failure(said, default_field)[1]}",
            default_field,
            jobs=names,
        )
    why = "a database was unavailable" if code == EXIT_DATABASE_UNAVAILABLE else failure(said, default_field)[1]
    return Decision(Action.RERUN, run + 1, f"importing again (run {run + 1}, resuming): {why}", jobs=names)
