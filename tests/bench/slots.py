"""Item 1: how busy the operator keeps M slots, and how fast it refills one, against a job array.

Ours: an HpoStudy of N trials whose objective sleeps 5 s, parallelism M. The baseline, in the same
run on the same testbed: an Indexed Job (completions N, parallelism M) whose pods each run
`study.optimize(objective, n_trials=1)` on one shared MariaDB study, as Slurm arrays do.

The k-th objective to end frees the slot the (M+k)-th trial takes, so refill latencies pair the
sorted objective ends with the sorted Job creations (the operator's share, on its own clock) and
with the sorted objective starts (what the user feels). Utilisation is the trial pods' lifetimes
over M × wall time, both as this machine's watch saw them.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

import optuna
from kubernetes import client

from hpo_operator import database
from tests.bench import harness
from tests.bench.objectives import WINDOW_ATTR
from tests.bench.report import Figure, percentile, progress
from tests.helpers import wait_for
from tests.studies import Studies

PARALLELISM = 8
SLEEP_S = 5.0
STUDY = "slots"
BASELINE = "baseline"


@dataclass(frozen=True)
class Run:
    """One side's timings: seconds since the epoch."""

    submitted: float
    windows: list[tuple[float, float]]  # each trial's objective [start, end]
    pod_lifetimes: list[tuple[float, float]]

    @property
    def wall_s(self) -> float:
        return max(end for _, end in self.pod_lifetimes) - self.submitted

    @property
    def utilisation(self) -> float:
        busy = sum(end - start for start, end in self.pod_lifetimes)
        return busy / (PARALLELISM * self.wall_s)

    @property
    def starts(self) -> list[float]:
        return [start for start, _ in self.windows]

    @property
    def ends(self) -> list[float]:
        return [end for _, end in self.windows]


def gaps(later: list[float], earlier: list[float], skip: int = PARALLELISM) -> list[float]:
    """The k-th of `later` (after the first `skip`) minus the k-th of `earlier`, both sorted.

    With skip=M this pairs each objective's end with the trial that took its slot.
    """
    return [b - a for b, a in zip(sorted(later)[skip:], sorted(earlier), strict=False)]


def windows(study: optuna.Study) -> list[tuple[float, float]]:
    trials = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    return [(t.user_attrs[WINDOW_ATTR][0], t.user_attrs[WINDOW_ATTR][1]) for t in trials]


def lifetimes(timeline: harness.Timeline) -> list[tuple[float, float]]:
    return [(p.seen, p.ended) for p in timeline.ended_pods() if p.ended is not None]


def run_ours(kube: client.ApiClient, namespace: str, trials: int) -> tuple[Run, harness.Timeline]:
    studies = Studies(kube, namespace)
    with harness.Timeline(kube, namespace) as timeline:
        submitted = time.time()
        studies.create(STUDY, harness.study_spec(trials, PARALLELISM, SLEEP_S))
        harness.await_studies(studies, [STUDY], timeout=trials * SLEEP_S + 300)
    return Run(submitted, windows(studies.optuna_study(STUDY)), lifetimes(timeline)), timeline


def run_baseline(kube: client.ApiClient, namespace: str, trials: int) -> Run:
    """N pods, M at a time, each loading the shared study cold and running one trial with stock settings."""
    server = harness.mysql_admin()
    credentials = database.Credentials(database.new_password(), database.new_password())
    names = database.provision(server, namespace, BASELINE, credentials)
    url = database.storage_url(server, names.user, names.database, credentials.password)
    optuna.create_study(study_name=BASELINE, storage=url)
    core, batch = client.CoreV1Api(kube), client.BatchV1Api(kube)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=BASELINE), data={"url": base64.b64encode(url.encode()).decode()}
        ),
    )
    template = harness.objective_template(SLEEP_S)["spec"]
    container = template["containers"][0]
    container.update(image=harness.testbed_env()["HPO_TRIAL_IMAGE"], command=["python", "/objectives/objectives.py"])
    container["env"] += [
        {"name": "BENCH_STUDY", "value": BASELINE},
        {"name": "BENCH_STORAGE_URL", "valueFrom": {"secretKeyRef": {"name": BASELINE, "key": "url"}}},
    ]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": BASELINE},
        "spec": {
            "completionMode": "Indexed",
            "completions": trials,
            "parallelism": PARALLELISM,
            "backoffLimit": trials,
            "template": {"spec": {**template, "restartPolicy": "Never"}},
        },
    }
    try:
        with harness.Timeline(kube, namespace) as timeline:
            submitted = time.time()
            batch.create_namespaced_job(namespace, job)
            wait_for(lambda: _job_complete(batch, namespace), trials * SLEEP_S + 300, "the baseline Job to complete")
            wait_for(lambda: len(timeline.ended_pods()) >= trials, 60, "the watch to see every pod end")
        return Run(submitted, windows(optuna.load_study(study_name=BASELINE, storage=url)), lifetimes(timeline))
    finally:
        database.drop(server, namespace, BASELINE)


def _job_complete(batch: client.BatchV1Api, namespace: str) -> bool:
    conditions = batch.read_namespaced_job_status(BASELINE, namespace).status.conditions or []
    if any(c.type == "Failed" and c.status == "True" for c in conditions):
        raise RuntimeError(f"the baseline Job failed: see kubectl -n {namespace} describe job {BASELINE}")
    return any(c.type == "Complete" and c.status == "True" for c in conditions)


def run(quick: bool) -> list[Figure]:
    trials = 48 if quick else 96
    kube = harness.api()
    with harness.namespace(kube, "slots") as namespace:
        progress(f"item 1: {trials} trials of {SLEEP_S:g} s, parallelism {PARALLELISM}, through the operator")
        ours, timeline = run_ours(kube, namespace, trials)
        progress(f"item 1: the same as an Indexed Job of {trials} pods sharing one study (the baseline)")
        baseline = run_baseline(kube, namespace, trials)
    dispatched = list(timeline.trial_dispatch_times().values())
    refill, to_start = gaps(dispatched, ours.ends), gaps(ours.starts, ours.ends)
    baseline_to_start = gaps(baseline.starts, baseline.ends)
    pods = timeline.ended_pods()
    pod_ends, pod_seen = [p.ended for p in pods if p.ended], [p.seen for p in pods]
    pod_running = [p.running for p in pods if p.running]
    stages = {
        "pod ended": gaps(pod_ends, ours.ends, 0),
        "next Job created": gaps(dispatched, pod_ends),
        "its pod created": gaps(pod_seen, dispatched, 0),
        "pod running": gaps(pod_running, pod_seen, 0),
        "its objective started": gaps(ours.starts, pod_running, 0),
    }
    progress(
        "  where a refill goes (p50): objective end -> "
        + " -> ".join(f"{stage} {percentile(values, 50):.3f}s" for stage, values in stages.items())
    )
    return [
        Figure("refill_p50_s", percentile(refill, 50), "<= 0.5"),
        Figure("refill_p95_s", percentile(refill, 95), "<= 1.5"),
        Figure("refill_max_s", max(refill), "-"),
        Figure(
            "refill_to_start_p50_s",
            percentile(to_start, 50),
            "<= 2",
            baseline=percentile(baseline_to_start, 50),
            baseline_key="baseline_refill_to_start_p50_s",
        ),
        Figure(
            "refill_to_start_p95_s",
            percentile(to_start, 95),
            "-",
            baseline=percentile(baseline_to_start, 95),
            baseline_key="baseline_refill_to_start_p95_s",
        ),
        Figure(
            "utilisation",
            ours.utilisation,
            ">= 0.9",
            baseline=baseline.utilisation,
            baseline_key="baseline_utilisation",
        ),
        Figure(
            "wall_s",
            ours.wall_s,
            "ratio <= 1.0",
            baseline=baseline.wall_s,
            baseline_key="baseline_wall_s",
            ratio_key="wall_ratio_vs_baseline",
        ),
    ]
