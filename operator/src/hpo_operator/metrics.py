"""Prometheus metrics of the operator, served on /metrics (HPO_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

TRIALS = Counter("hpo_trials_total", "Trials by what happened to them", ["state"])
STUDY_TRIALS = Gauge("hpo_study_trials", "Trials of each study by state", ["namespace", "study", "state"])
DISPATCH_LATENCY = Histogram("hpo_dispatch_seconds", "Time to ask Optuna and create a trial's Job",
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
RECONCILE_ERRORS = Counter("hpo_reconcile_errors_total", "Study passes that failed and will be retried")
DATABASE_LATENCY = Histogram("hpo_database_seconds", "Time of provisioning calls to MySQL")


def serve(port: int) -> None:
    start_http_server(port, addr="0.0.0.0")
