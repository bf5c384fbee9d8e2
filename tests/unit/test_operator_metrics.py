"""Per-study metrics: what a study's pass writes, and that deleting the study leaves no series behind."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from hpo_operator import metrics

pytestmark = pytest.mark.unit


def series(study: str, namespace: str = "team") -> dict[str, float]:
    """Every sample of the registry labelled with this study, by metric name (and state)."""
    found = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace and sample.labels.get("study") == study:
                key = sample.name + (f"[{sample.labels['state']}]" if "state" in sample.labels else "")
                if "le" not in sample.labels:
                    found[key] = sample.value
    return found


def test_a_study_pass_writes_trials_by_state_best_value_and_dispatch_latency() -> None:
    counts = {"complete": 5, "pruned": 1, "failed": 2, "running": 3, "waiting": 1}
    metrics.record_study("team", "written", counts, 0.125)
    with metrics.dispatch_timer("team", "written"):
        pass
    found = series("written")
    assert {state: found[f"hpo_study_trials[{state}]"] for state in metrics.STUDY_STATES} == counts
    assert found["hpo_study_best_value"] == 0.125
    assert found["hpo_study_dispatch_seconds_count"] == 1


@pytest.mark.parametrize("best", [None, float("inf"), float("nan")])
def test_no_best_value_series_without_a_finite_single_objective_best(best: float | None) -> None:
    metrics.record_study("team", "nobest", {"complete": 1}, 0.5)
    metrics.record_study("team", "nobest", {"complete": 1}, best)
    found = series("nobest")
    assert "hpo_study_best_value" not in found and found["hpo_study_trials[complete]"] == 1


def test_deleting_a_study_removes_every_series_of_that_study_and_only_those() -> None:
    for study in ("gone", "kept"):
        metrics.record_study("team", study, {"complete": 2, "running": 1}, 1.5)
        with metrics.dispatch_timer("team", study):
            pass
    metrics.record_study("other", "gone", {"complete": 7}, 2.5)  # same name, another namespace
    metrics.forget_study("team", "gone")
    assert series("gone") == {}
    assert series("kept")["hpo_study_best_value"] == 1.5
    assert series("gone", namespace="other")["hpo_study_trials[complete]"] == 7
    metrics.forget_study("team", "never-seen")  # a study that never ran a pass: nothing to remove, no error


def test_the_charts_grafana_dashboard_queries_only_the_per_study_metrics_the_operator_serves() -> None:
    import json
    import re

    from tests.conftest import ROOT

    dashboard = json.loads((ROOT / "charts" / "hpo-operator" / "dashboards" / "hpo-studies.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for q in queries for name in re.findall(r"\bhpo_\w+", q)}
    served = {
        metrics.STUDY_TRIALS._name,
        metrics.STUDY_BEST_VALUE._name,
        metrics.STUDY_DISPATCH_LATENCY._name,
    }
    assert used == served, "every per-study metric on a panel, and nothing the operator does not serve"
    assert all('namespace=~"$namespace"' in q for q in queries if "label_values(hpo_study_trials," not in q)
