"""Every Kopf handler of the operator: thin, each parses, delegates and records.

A daemon per HpoStudy runs reconcile passes (reconcile.py) whenever one of its trial pods or Jobs
changes — indexes hold those and the pod/Job event handlers wake the daemon — and every few
seconds regardless, so a missed event only delays a pass. A finished study's daemon stays, idle
and holding no database connection, so that an edit continues the study at once. Deleting a study
stops its daemon and drops its database under policy Delete, retrying for a bounded time; Jobs,
pods and the Secrets go with it by ownership.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from hpo_operator import database, events, kube, metrics, provisioning, redaction, validation
from hpo_operator.dispatch import label_value
from hpo_operator.models import GROUP, PLURAL, STUDY_LABEL, VERSION, DeletionPolicy
from hpo_operator.outcomes import JobSummary, PodSummary, summarise, summarise_job
from hpo_operator.reconcile import StudyLoop, StudyProblem
from hpo_operator.settings import Settings

SETTINGS = Settings.from_env()
_wakeups: dict[tuple[str | None, str], asyncio.Event] = {}
_waiting: set[tuple[str | None, str]] = set()  # studies whose last pass left trial pods waiting to start


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    # The operator posts its own Events (events.py); should Kopf post one (a handler's failure), it too
    # comes from hpo-operator.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = events.COMPONENT
    settings.posting.reporting_instance = events.instance()
    settings.posting.event_name_prefix = f"{events.COMPONENT}-"
    settings.watching.server_timeout = 300
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
# A pod being created or scheduled needs no pass (each would cost its study a round of queries and
# delay the pass that matters); one that ended or went away frees a slot now, and one that started
# lets a study whose dispatch waits on pods that have not started (HPO_MAX_WAITING_TRIALS) go on.
@kopf.on.event("pods", labels={STUDY_LABEL: kopf.PRESENT})
async def wake_study(type: str, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> None:
    """A trial pod ended, went away, or started while its study waited: run its study's pass now."""
    key = (namespace, labels[STUDY_LABEL])
    pod = summarise(dict(body))
    if type == "DELETED" or pod.terminal or (key in _waiting and pod.started):
        _wake(key)


@kopf.on.event("batch", "v1", "jobs", labels={STUDY_LABEL: kopf.PRESENT})
async def wake_study_for_job(type: str, namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> None:
    """A trial Job failed (its pod was removed) or went away."""
    if type == "DELETED" or summarise_job(dict(body)).failed:
        _wake((namespace, labels[STUDY_LABEL]))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=30)
async def run_study(
    name: str,
    namespace: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    assert namespace is not None  # HpoStudy is namespaced
    trial_pods: kopf.Index[Any, PodSummary] = kwargs["trial_pods"]  # the indexes above, by their names
    trial_jobs: kopf.Index[Any, JobSummary] = kwargs["trial_jobs"]
    key = (namespace, label_value(name))
    wake = _wakeups.setdefault(key, asyncio.Event())
    memo.loop = loop = StudyLoop(namespace, name, SETTINGS, logger=logger)
    try:
        while not stopped:
            wake.clear()
            pods, jobs = list(trial_pods.get(key, [])), list(trial_jobs.get(key, []))
            try:
                await asyncio.to_thread(loop.run, copy.deepcopy(dict(body)), pods, jobs)
            except StudyProblem as problem:
                metrics.RECONCILE_ERRORS.inc()
                logger.warning(f"will retry: {problem}")
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                logger.exception("reconcile pass failed; will retry")
            waiting = ((loop.written or {}).get("trials") or {}).get("waiting", 0)
            (_waiting.add if waiting else _waiting.discard)(key)
            await _sleep_until(wake, stopped, SETTINGS.resync_seconds)
    finally:
        _wakeups.pop(key, None)
        _waiting.discard(key)
        loop.close()


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
def delete_study(
    name: str,
    namespace: str | None,
    spec: kopf.Spec,
    memo: kopf.Memo,
    logger: kopf.Logger,
    body: kopf.Body,
    runtime: datetime.timedelta,
    **_: Any,
) -> None:
    """Drop the study's database under policy Delete; retry for HPO_DELETE_TIMEOUT_SECONDS, then let the study go."""
    assert namespace is not None
    if (loop := memo.get("loop")) is not None:
        loop.close()
    metrics.forget_study(namespace, name)
    parsed, _problems = validation.parse(dict(spec))
    if parsed is None or not SETTINGS.serves(namespace) or parsed.storage.deletion_policy is not DeletionPolicy.DELETE:
        logger.info(f"study {namespace}/{name} deleted; its database, if any, was kept")
        return
    if SETTINGS.policy.storage_problems(parsed.storage):
        logger.warning("the study's spec.storage breaks the operator's policy: its database is not dropped")
        return
    try:
        remaining = SETTINGS.delete_timeout_seconds - runtime.total_seconds()
        dropped = provisioning.drop(SETTINGS, namespace, name, parsed, timeout=max(1.0, remaining))
    except provisioning.ProvisioningProblem as problem:
        if runtime.total_seconds() < SETTINGS.delete_timeout_seconds:
            raise kopf.TemporaryError(
                f"the study's database is not dropped yet ({problem}); retrying", delay=min(10, max(1, remaining))
            ) from problem
        message = _left_behind(namespace, name, parsed.storage.host, parsed.storage.port, problem, runtime)
        logger.error(message)
        metadata = body.get("metadata") or {}
        events.Recorder(events.StudyRef(namespace, name, str(metadata.get("uid") or "")), kube.create_event, logger)(
            "DatabaseNotDropped", message, warning=True
        )
        return
    logger.info(
        f"study {namespace}/{name} deleted; dropped database {dropped.database}"
        if dropped
        else f"study {namespace}/{name} deleted; no database was recorded for it"
    )


def _left_behind(
    namespace: str, name: str, host: str | None, port: int | None, problem: Exception, runtime: datetime.timedelta
) -> str:
    """What to clean by hand when the drop was given up (names as the server records them)."""
    names = database.names_for(namespace, name)
    server = f"{host or SETTINGS.mysql_host}:{port or SETTINGS.mysql_port}"
    return (
        f"gave up dropping the study's database after {runtime.total_seconds():.0f}s ({problem}); the study is "
        f"deleted, its database is not. Drop by hand on {server}: the database and users recorded for "
        f"{namespace}/{name} in {database.REGISTRY}.studies (normally database {names.database}, users "
        f"{names.user} and {names.reader}), then that row"
    )
