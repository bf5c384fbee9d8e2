"""Trial dispatch: the Job that runs one attempt of one trial, and how many may start now.

Pure functions, tested without a cluster. One Job runs one attempt (`backoffLimit: 0`): the
operator, which sees why a pod ended, decides whether the same Optuna trial runs again — a
preempted pod is requeued for free, a crashed one uses up a retry — and names each attempt's Job
deterministically, so a re-run of the operator finds the Job instead of creating a second one.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from hpo_operator import queueing
from hpo_operator.contract import (
    ASSIGNMENT_ENV,
    NODE_NAME_ENV,
    POD_NAME_ENV,
    PROTOCOL,
    QUICK_SCAN_ENV,
    STORAGE_URL_ENV,
    TRIAL_COMMAND,
    TRIAL_CONTAINER,
)
from hpo_operator.database import TLS_CA_DIR, TLS_CA_KEY
from hpo_operator.models import ATTEMPT_LABEL, STUDY_LABEL, TRIAL_LABEL, HpoStudySpec

CHECKPOINT_VOLUME = "hpo-checkpoints"
STORAGE_TLS_VOLUME = "hpo-storage-tls"
HEARTBEAT_SECONDS = 10


@dataclass(frozen=True)
class TrialRef:
    """What the operator knows of the study a trial belongs to."""

    namespace: str
    study: str
    optuna_study: str
    storage_secret: str
    storage_tls: bool = False  # the storage Secret holds the server's CA (ca.crt), which pods must mount


def label_value(name: str) -> str:
    """A label value (<= 63 characters) for a study name, hashed when the name is longer."""
    if len(name) <= 63:
        return name
    return f"{name[:54].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def job_name(study: str, number: int, attempt: int) -> str:
    """`<study>-<trial>-<attempt>`, shortened with a hash to fit the 63 characters of a label."""
    suffix = f"-{number}-{attempt}"
    if len(study) + len(suffix) <= 63:
        return study + suffix
    digest = hashlib.sha256(study.encode()).hexdigest()[:6]
    return f"{study[: 63 - len(suffix) - 7].rstrip('-.')}-{digest}{suffix}"


def labels(study: str, number: int, attempt: int) -> dict[str, str]:
    return {
        STUDY_LABEL: label_value(study),
        TRIAL_LABEL: str(number),
        ATTEMPT_LABEL: str(attempt),
        "app.kubernetes.io/managed-by": "hpo-operator",
    }


def assignment(
    spec: HpoStudySpec,
    ref: TrialRef,
    number: int,
    trial_id: int,
    sampler: dict[str, Any],
    pruner: dict[str, Any] | None,
    attempt: int = 0,
) -> dict[str, Any]:
    """What the trial pod's runtime needs to attach to its RUNNING trial (HPO_ASSIGNMENT).

    ``attempt`` is the fence: the runtime tells the outcome only while the trial's `ATTEMPT_ATTR`
    still names this attempt. ``deadline_seconds`` (the Job's activeDeadlineSeconds) bounds how long
    the runtime keeps retrying its final write through a database outage.
    """
    return {
        "protocol": PROTOCOL,
        "study": ref.optuna_study,
        "trial": {"number": number, "id": trial_id},
        "attempt": attempt,
        "deadline_seconds": spec.budget.trial_timeout_seconds,
        "sampler": sampler,
        "pruner": pruner,
        "checkpoint_root": spec.checkpoints.mount_path if spec.checkpoints.claim_name else None,
        "objective": spec.trial.objective,
        "heartbeat_seconds": HEARTBEAT_SECONDS,
    }


def _trial_container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec.setdefault("containers", [])
    named = [c for c in containers if c.get("name") == TRIAL_CONTAINER]
    if named:
        return named[0]
    if len(containers) == 1:
        containers[0].setdefault("name", TRIAL_CONTAINER)
        return containers[0]
    containers.append({"name": TRIAL_CONTAINER})
    return containers[-1]


def _quantities_as_strings(pod_spec: dict[str, Any]) -> None:
    """YAML reads `nvidia.com/gpu: 1` as a number; the API takes both, the Python client only strings."""
    for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        for kind in ("limits", "requests"):
            amounts = container.get("resources", {}).get(kind, {})
            for name, amount in amounts.items():
                amounts[name] = str(amount)


def _without_nulls(node: Any) -> Any:
    """The template without null fields: the API reads a null as unset, and the builder then need not."""
    if isinstance(node, dict):
        return {key: _without_nulls(value) for key, value in node.items() if value is not None}
    if isinstance(node, list):
        return [_without_nulls(item) for item in node]
    return node


def build_job(
    spec: HpoStudySpec, ref: TrialRef, number: int, attempt: int, trial_assignment: dict[str, Any], default_image: str
) -> dict[str, Any]:
    """The batch/v1 Job for one attempt of one trial (owner reference added by the caller).

    Under a queue (`queueing`), the Job carries the queue's labels and is created suspended: Kueue
    admits it by unsuspending it, and no pod can start before.
    """
    template = _without_nulls(copy.deepcopy(spec.trial.template))
    metadata = template.setdefault("metadata", {})
    trial_labels = labels(ref.study, number, attempt)
    job_labels = dict(trial_labels)
    queue = queueing.queue_of(spec.queue_name, spec.trial.template)
    if queue is not None:
        job_labels |= queueing.job_labels(queue, metadata.get("labels", {}))
    metadata["labels"] = {  # Kueue's labels go on the Job only: a pod with them would be a second workload
        k: v for k, v in metadata.get("labels", {}).items() if k not in (queueing.QUEUE_LABEL, queueing.PRIORITY_LABEL)
    }
    metadata["labels"] = {**metadata.get("labels", {}), **trial_labels}
    pod_spec = template.setdefault("spec", {})
    pod_spec["restartPolicy"] = "Never"
    # No API token unless the template asks for one (the operator's policy has allowed it).
    pod_spec["automountServiceAccountToken"] = pod_spec.get("automountServiceAccountToken") is True
    if spec.budget.trial_timeout_seconds:
        pod_spec["activeDeadlineSeconds"] = spec.budget.trial_timeout_seconds

    _quantities_as_strings(pod_spec)
    container = _trial_container(pod_spec)
    container.setdefault("image", default_image)
    container.setdefault("command", list(TRIAL_COMMAND))
    ours: list[dict[str, Any]] = [
        {"name": ASSIGNMENT_ENV, "value": json.dumps(trial_assignment, separators=(",", ":"))},
        {"name": STORAGE_URL_ENV, "valueFrom": {"secretKeyRef": {"name": ref.storage_secret, "key": "url"}}},
        {"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": NODE_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    if spec.trial.quick_scan:
        ours.append({"name": QUICK_SCAN_ENV, "value": "1"})
    names = {e["name"] for e in ours}
    container["env"] = [e for e in container.get("env", []) if e.get("name") not in names] + ours

    if ref.storage_tls:
        pod_spec.setdefault("volumes", []).append(
            {
                "name": STORAGE_TLS_VOLUME,
                "secret": {"secretName": ref.storage_secret, "items": [{"key": TLS_CA_KEY, "path": TLS_CA_KEY}]},
            }
        )
        container.setdefault("volumeMounts", []).append(
            {"name": STORAGE_TLS_VOLUME, "mountPath": TLS_CA_DIR, "readOnly": True}
        )
    if spec.checkpoints.claim_name:
        pod_spec.setdefault("volumes", []).append(
            {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": spec.checkpoints.claim_name}}
        )
        container.setdefault("volumeMounts", []).append(
            {"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoints.mount_path}
        )
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,  # one attempt per Job: the operator decides about the next one
        "podReplacementPolicy": "Failed",  # never two live pods for one trial
        "template": template,
    }
    if queue is not None:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(ref.study, number, attempt), "namespace": ref.namespace, "labels": job_labels},
        "spec": job_spec,
    }


def free_slots(parallelism: int, occupied: int, created: int, total: int) -> int:
    """How many new trials may start: never more than M unfinished, never more than N in all."""
    return max(0, min(parallelism - occupied, total - created))


@dataclass(frozen=True)
class Parallelism:
    """The parallelism in force, and why it is below the spec's (empty when the operator did not cap it)."""

    value: int
    capped: str = ""


def parallelism(requested: int, trials: int, operator_max: int) -> Parallelism:
    """``spec.budget.parallelism`` capped at the budget's trials and the operator's `HPO_MAX_PARALLELISM`."""
    value = min(requested, trials, operator_max)
    if value < min(requested, trials):
        return Parallelism(
            value,
            f"parallelism capped at {operator_max} by the operator's HPO_MAX_PARALLELISM "
            f"(spec.budget.parallelism is {requested})",
        )
    return Parallelism(value)


@dataclass(frozen=True)
class Plan:
    """How many trials to start now; ``paced`` when pods that have not started held some back."""

    count: int
    paced: bool = False


def plan(parallelism: int, occupied: int, created: int, total: int, waiting: int, max_waiting: int) -> Plan:
    """Start what the free slots allow, but never let more than ``max_waiting`` of the study's pods wait to start.

    Waiting pods (unschedulable, pulling, queued) say the cluster cannot run more now: creating more
    Jobs would only pile up pods, as fast as the API server accepts them.
    """
    slots = free_slots(parallelism, occupied, created, total)
    count = max(0, min(slots, max_waiting - waiting))
    return Plan(count, paced=count < slots)
