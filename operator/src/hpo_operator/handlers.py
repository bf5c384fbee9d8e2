"""Every Kopf handler of the operator: thin, each parses, delegates and records.

A daemon per HpoStudy runs reconcile passes (reconcile.py) whenever one of its trial pods or Jobs
changes — indexes hold those and the pod/Job event handlers wake the daemon — and every few
seconds regardless, so a missed event only delays a pass. Deleting a study stops its daemon and
drops its database under policy Delete; Jobs, pods and the Secret go with it by ownership.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from hpo_operator import metrics, redaction, validation
from hpo_operator.dispatch import label_value
from hpo_operator.models import GROUP, PLURAL, STUDY_LABEL, VERSION
from hpo_operator.outcomes import JobSummary, PodSummary, summarise, summarise_job
from hpo_operator.reconcile import ProvisioningProblem, StudyLoop, StudyProblem
from hpo_operator.settings import Settings

SETTINGS = Settings.from_env()
_wakeups: dict[tuple[str | None, str], asyncio.Event] = {}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # Kopf holds each object's events for this long to batch them; a trial pod's end should free its
    # slot at once (each pod is its own object, so a short window batches little anyway).
    settings.batching.batch_window = 0.01
    # Each study's passes run in the loop's default executor (database and API calls block):
    # size it for many studies at once rather than asyncio's cpu-count default.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
    logging.getLogger("kopf.objects").addFilter(_QuietWakeups())
    redaction.remember(SETTINGS.mysql_password)
    redaction.install()
    metrics.serve(SETTINGS.metrics_port)


def _wake(key: tuple[str | None, str]) -> None:
    if (event := _wakeups.get(key)) is not None:
        event.set()


class _QuietWakeups(logging.Filter):
    """Drop Kopf's 'Handler succeeded' line for wake_study, which would log every trial pod change."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'wake_study" not in record.getMessage()


@kopf.index("pods", labels={STUDY_LABEL: kopf.PRESENT})
def trial_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, PodSummary]:
    return {(namespace, labels[STUDY_LABEL]): summarise(dict(body))}


@kopf.index("batch", "v1", "jobs", labels={STUDY_LABEL: kopf.PRESENT})
def trial_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, JobSummary]:
    return {(namespace, labels[STUDY_LABEL]): summarise_job(dict(body))}


# Kopf runs event handlers after it has updated the indexes, so the woken pass sees this change.
# A pod being created, scheduled or started needs no pass (each would cost its study a round of
# queries and delay the pass that matters); one that ended or went away frees a slot now.
@kopf.on.event("pods", labels={STUDY_LABEL: kopf.PRESENT})
async def wake_study(type: str, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> None:
    """A trial pod ended or went away: run its study's pass now rather than at the next resync."""
    if type == "DELETED" or summarise(dict(body)).terminal:
        _wake((namespace, labels[STUDY_LABEL]))


@kopf.on.event("batch", "v1", "jobs", labels={STUDY_LABEL: kopf.PRESENT})
async def wake_study_for_job(type: str, namespace: str | None, labels: kopf.Labels, body: kopf.Body,
                             **_: Any) -> None:
    """A trial Job failed (its pod was removed) or went away."""
    if type == "DELETED" or summarise_job(dict(body)).failed:
        _wake((namespace, labels[STUDY_LABEL]))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=30)
async def run_study(name: str, namespace: str | None, body: kopf.Body, memo: kopf.Memo,
                    stopped: kopf.DaemonStopped, logger: kopf.Logger, **kwargs: Any) -> None:
    assert namespace is not None  # HpoStudy is namespaced
    trial_pods: kopf.Index[Any, PodSummary] = kwargs["trial_pods"]  # the indexes above, by their names
    trial_jobs: kopf.Index[Any, JobSummary] = kwargs["trial_jobs"]
    key = (namespace, label_value(name))
    wake = _wakeups.setdefault(key, asyncio.Event())
    memo.loop = loop = StudyLoop(namespace, name, SETTINGS, logger=logger)
    while not stopped:
        wake.clear()
        pods, jobs = list(trial_pods.get(key, [])), list(trial_jobs.get(key, []))
        delay = SETTINGS.resync_seconds
        try:
            await asyncio.to_thread(loop.run, copy.deepcopy(dict(body)), pods, jobs)
        except StudyProblem as problem:
            metrics.RECONCILE_ERRORS.inc()
            logger.warning(f"will retry: {problem}")
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            logger.exception("reconcile pass failed; will retry")
        await _sleep_until(wake, stopped, delay)
    _wakeups.pop(key, None)


async def _sleep_until(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def spec_changed(name: str, namespace: str | None, **_: Any) -> None:
    """Parallelism, budget or suspend changed: apply it now."""
    _wake((namespace, label_value(name)))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def delete_study(name: str, namespace: str | None, spec: kopf.Spec, memo: kopf.Memo, logger: kopf.Logger,
                 **_: Any) -> None:
    assert namespace is not None
    parsed, _problems = validation.parse(dict(spec))
    loop: StudyLoop = memo.get("loop") or StudyLoop(namespace, name, SETTINGS, logger=logger)
    if parsed is None or not SETTINGS.serves(namespace):
        return  # never provisioned
    try:
        loop.deprovision(parsed)
    except ProvisioningProblem as problem:  # a retry cannot fix it: let the study go, keep its database
        logger.error(f"the study's database was not dropped: {problem}")
        return
    kept = "dropped" if parsed.storage.deletion_policy.value == "Delete" else "kept"
    logger.info(f"study {namespace}/{name} deleted; its database was {kept}")
