"""Trials under a queue (Kueue): which LocalQueue admits a study's trial Jobs, and what the queue says of them.

Kueue is optional: a study without `spec.queueName` (or the template's queue label) never touches
it. With one, every trial Job is created suspended and labelled with the queue; Kueue admits it
(unsuspends it) when the ClusterQueue's quota holds it, so the study's effective parallelism is
`min(spec.budget.parallelism, what the queue admits)` without the operator knowing any quota. A
Job the queue has not admitted is waiting, not failing (`outcomes`), and a Job Kueue suspends again
(preempted by a higher-priority workload) resumes, as the same attempt of the same Optuna trial, when
it is admitted again.

What the queue says comes from each Job's Workload (Kueue's object, owned by the Job): why it is
not admitted (its QuotaReserved condition) and how many times it was evicted (its scheduling
statistics, kept for the Workload's life, that is the Job's). Pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"
QUEUE_LABEL = f"{KUEUE_GROUP}/queue-name"
PRIORITY_LABEL = f"{KUEUE_GROUP}/priority-class"
JOB_UID_LABEL = f"{KUEUE_GROUP}/job-uid"
QUEUE_FIELD = "spec.queueName"
TEMPLATE_QUEUE_FIELD = f"spec.trial.template.metadata.labels[{QUEUE_LABEL}]"


@dataclass(frozen=True)
class Queue:
    """The LocalQueue a study's trials go through, and the spec field that named it."""

    name: str
    field: str


def queue_of(queue_name: str | None, template: dict[str, Any]) -> Queue | None:
    """``spec.queueName``, else the template's `kueue.x-k8s.io/queue-name` label; None: no queue."""
    if queue_name:
        return Queue(queue_name, QUEUE_FIELD)
    metadata = template.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    label = labels.get(QUEUE_LABEL) if isinstance(labels, dict) else None
    return Queue(label, TEMPLATE_QUEUE_FIELD) if isinstance(label, str) and label else None


def job_labels(queue: Queue, template_labels: dict[str, str]) -> dict[str, str]:
    """The labels Kueue reads on a trial Job: the queue, and the template's workload priority class if any.

    Kueue reads them on the Job, not on its pods; the pod template keeps none of them (a pod with a
    queue label would be a second workload).
    """
    labels = {QUEUE_LABEL: queue.name}
    if PRIORITY_LABEL in template_labels:
        labels[PRIORITY_LABEL] = template_labels[PRIORITY_LABEL]
    return labels


def _condition(workload: dict[str, Any], kind: str) -> dict[str, Any]:
    conditions = (workload.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == kind), {})


def pending_message(workload: dict[str, Any] | None, queue: str) -> str:
    """Why Kueue has not admitted a Job, in its own words (quota, priority, a missing queue)."""
    if workload is None:
        return f"waiting for Kueue to admit it from LocalQueue {queue} (no Workload yet)"
    reserved = _condition(workload, "QuotaReserved")
    if reserved.get("status") == "True":
        return f"admitted by LocalQueue {queue}, waiting for its admission checks"
    message = str(reserved.get("message") or "").strip()
    reason = str(reserved.get("reason") or "Pending")
    return f"not admitted by LocalQueue {queue} ({reason}: {message or 'waiting for quota'})"


def evictions(workload: dict[str, Any] | None) -> int:
    """How many times Kueue evicted the Job's workload (preempted, deactivated, ...) over the Job's life."""
    if workload is None:
        return 0
    stats = (workload.get("status") or {}).get("schedulingStats") or {}
    total = 0
    for entry in stats.get("evictions") or []:
        count = entry.get("count") if isinstance(entry, dict) else None
        if isinstance(count, int) and not isinstance(count, bool):
            total += count
    return total


def eviction_reason(workload: dict[str, Any] | None) -> str:
    """The last eviction's reason and message (its Evicted condition), for the study's Event."""
    evicted = _condition(workload or {}, "Evicted")
    reason, message = str(evicted.get("reason") or "").strip(), str(evicted.get("message") or "").strip()
    return f"{reason}: {message}" if reason and message else reason or message or "evicted by Kueue"


def job_uid(workload: dict[str, Any]) -> str:
    """The uid of the Job a Workload belongs to (its label, else its controller owner reference)."""
    metadata = workload.get("metadata") or {}
    label = (metadata.get("labels") or {}).get(JOB_UID_LABEL)
    if label:
        return str(label)
    owners = metadata.get("ownerReferences") or []
    return next((str(o.get("uid")) for o in owners if o.get("kind") == "Job" and o.get("controller")), "")
