"""Item 2: the operator's work per trial completion does not grow with the study's history.

A study is seeded with 100, then (another study) 10,000 finished trials through Optuna, then the
operator runs the same E instant trials (E = 50, or 20 quick) to the end of each. Its CPU seconds
(from its own /metrics, minus the CPU of the sampler's ask, which must read the history) and its
SQL statements are counted over those E completions; the ask is timed on its own and reported.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from kubernetes import client

from hpo_operator.status import DATABASE_READY
from tests.bench import harness
from tests.bench.report import Figure, progress
from tests.studies import Studies

SIZES = (100, 10_000)
PARALLELISM = 4
SEED_THREADS = 4
SEED_CHUNK = 250
GOLDEN = 0.6180339887  # spreads the seeded x evenly over the range


def seed(studies: Studies, name: str, count: int) -> None:
    """Add `count` COMPLETE trials through Optuna, in parallel chunks (one storage per thread)."""
    distribution = optuna.distributions.FloatDistribution(-5, 5)

    def add(first: int) -> None:
        study = studies.optuna_study(name)
        xs = [-5 + 10 * (i * GOLDEN % 1) for i in range(first, min(first + SEED_CHUNK, count))]
        study.add_trials(
            [
                optuna.trial.create_trial(params={"x": x}, distributions={"x": distribution}, value=(x - 1) ** 2)
                for x in xs
            ]
        )

    with ThreadPoolExecutor(SEED_THREADS) as pool:
        for done, _ in enumerate(pool.map(add, range(0, count, SEED_CHUNK)), 1):
            if done % 8 == 0 or done * SEED_CHUNK >= count:
                progress(f"  seeded {min(done * SEED_CHUNK, count)} of {count} trials")


def database_ready(study: dict[str, Any]) -> bool:
    conditions = (study.get("status") or {}).get("conditions", [])
    return any(c["type"] == DATABASE_READY and c["status"] == "True" for c in conditions)


def measure(kube: client.ApiClient, namespace: str, seeded: int, events: int) -> dict[str, float]:
    studies = Studies(kube, namespace)
    name = f"grown-{seeded}"
    studies.create(name, harness.study_spec(seeded + events, PARALLELISM, 0, suspend=True))
    studies.wait(name, database_ready, 120, "provision its database")
    seed(studies, name, seeded)
    before = harness.operator_metrics()
    studies.patch(name, {"suspend": False})
    harness.await_studies(studies, [name], timeout=events * 10 + 600)
    after = harness.operator_metrics()
    status = studies.get(name)["status"]

    def delta(metric: str) -> float:
        return after.get(metric, 0.0) - before.get(metric, 0.0)

    cpu = delta("process_cpu_seconds_total") - delta("hpo_sampler_ask_cpu_seconds_total")
    asks = delta("hpo_sampler_ask_seconds_count")
    return {
        "cpu_per_event": cpu / events,
        "sql_per_event": delta("hpo_sql_statements_total") / events,
        "ask_s": delta("hpo_sampler_ask_seconds_sum") / asks if asks else float("nan"),
        "status_bytes": len(json.dumps(status, separators=(",", ":"))),
    }


def run(quick: bool) -> list[Figure]:
    events = 20 if quick else 50
    kube = harness.api()
    results: dict[int, dict[str, float]] = {}
    with harness.namespace(kube, "growth") as namespace:
        for seeded in SIZES:
            progress(f"item 2: {events} completions after {seeded} seeded trials")
            results[seeded] = measure(kube, namespace, seeded, events)
            progress(f"  {results[seeded]}")
    small, large = (results[size] for size in SIZES)
    return [
        Figure(
            "cpu_per_event_10000",
            large["cpu_per_event"],
            "ratio <= 1.2",
            baseline=small["cpu_per_event"],
            baseline_key="cpu_per_event_100",
            ratio_key="event_cost_ratio",
        ),
        Figure(
            "sql_per_event_10000",
            large["sql_per_event"],
            "ratio <= 1.2",
            baseline=small["sql_per_event"],
            baseline_key="sql_per_event_100",
        ),
        Figure("ask_s_10000", large["ask_s"], "(not in the ratio)", baseline=small["ask_s"], baseline_key="ask_s_100"),
        Figure("status_bytes_10000", large["status_bytes"], "<= 8192"),
    ]
