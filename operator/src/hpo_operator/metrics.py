"""Prometheus metrics of the operator, served on /metrics (HPO_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRIALS = Counter("hpo_trials_total", "Trials by what happened to them", ["state"])
STUDY_TRIALS = Gauge("hpo_study_trials", "Trials of each study by state", ["namespace", "study", "state"])
DISPATCH_LATENCY = Histogram(
    "hpo_dispatch_seconds",
    "Time to ask Optuna and create a trial's Job",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
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
