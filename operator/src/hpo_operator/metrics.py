"""Prometheus metrics of the operator, served on /metrics (HPO_METRICS_PORT).

Operator-wide series (trials started and failed, reconcile errors, database and sampler latency)
and per-study series labelled ``namespace`` and ``study``: trials by state (``running`` and
``waiting`` among them, as ``status.trials`` counts them), the best value of a single-objective
study, and dispatch latency. A study's series are written by its pass (:func:`record_study`,
:func:`dispatch_timer`) and removed when the study is deleted (:func:`forget_study`), so a
deleted study leaves no stale series behind.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_DISPATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

TRIALS = Counter("hpo_trials_total", "Trials by what happened to them", ["state"])
STUDY_TRIALS = Gauge("hpo_study_trials", "Trials of each study by state", ["namespace", "study", "state"])
STUDY_STATES = ("complete", "pruned", "failed", "running", "waiting")
"""The states of ``hpo_study_trials``: ``running`` trials' pods have started, ``waiting`` ones' have not."""
STUDY_BEST_VALUE = Gauge(
    "hpo_study_best_value",
    "The best value of each single-objective study (status.bestTrial.value)",
    ["namespace", "study"],
)
STUDY_DISPATCH_LATENCY = Histogram(
    "hpo_study_dispatch_seconds",
    "Time to ask Optuna and create a trial's Job, per study",
    ["namespace", "study"],
    buckets=_DISPATCH_BUCKETS,
)
DISPATCH_LATENCY = Histogram(
    "hpo_dispatch_seconds", "Time to ask Optuna and create a trial's Job", buckets=_DISPATCH_BUCKETS
)
RECONCILE_ERRORS = Counter("hpo_reconcile_errors_total", "Study passes that failed and will be retried")
DATABASE_LATENCY = Histogram("hpo_database_seconds", "Time of provisioning calls to MySQL")
SQL_STATEMENTS = Counter("hpo_sql_statements_total", "SQL statements sent to the studies' Optuna storage")
# The sampler's ask reads the study's history, so its cost grows with finished trials (TPE's does);
# timed apart from everything else the operator does per event, which must not grow.
ASK_LATENCY = Histogram(
    "hpo_sampler_ask_seconds",
    "Time of the sampler's ask for one new trial",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ASK_CPU = Counter("hpo_sampler_ask_cpu_seconds_total", "CPU time the operator spent in the sampler's ask")


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0")


def record_study(namespace: str, study: str, trials: Mapping[str, int], best: float | None) -> None:
    """Set a study's per-study gauges: ``trials`` by state (keys of :data:`STUDY_STATES`) and its best value.

    ``best`` is None for a multi-objective study or one without a COMPLETE trial: no best-value series
    then (one written before is removed, e.g. after a study's trials were all lost).
    """
    for state in STUDY_STATES:
        STUDY_TRIALS.labels(namespace, study, state).set(trials.get(state, 0))
    if best is None or not math.isfinite(best):
        STUDY_BEST_VALUE.remove(namespace, study)
    else:
        STUDY_BEST_VALUE.labels(namespace, study).set(best)


@contextlib.contextmanager
def dispatch_timer(namespace: str, study: str) -> Iterator[None]:
    """Time one dispatch (ask and create the Job) into the operator-wide and the study's histograms."""
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        DISPATCH_LATENCY.observe(elapsed)
        STUDY_DISPATCH_LATENCY.labels(namespace, study).observe(elapsed)


def forget_study(namespace: str, study: str) -> None:
    """Remove every series of a deleted study (harmless for a study that has none)."""
    for state in STUDY_STATES:
        STUDY_TRIALS.remove(namespace, study, state)
    STUDY_BEST_VALUE.remove(namespace, study)
    STUDY_DISPATCH_LATENCY.remove(namespace, study)
