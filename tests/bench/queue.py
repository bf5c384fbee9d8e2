"""Item 6: a study on a 2-GPU Kueue queue shared with a competing, more important workload.

An HpoStudy of N trials (1 GPU each, the objective sleeps 10 s, parallelism 4) goes through a
LocalQueue on the ClusterQueue `testbed-gpus` (`make kueue-up`, installed here if missing and
removed after if it was). A competing submitter puts N/8 Jobs that each want both GPUs at a higher
priority in the same ClusterQueue, one each time another N/(N/8 + 1) trials have finished and
both GPUs are mid-trial, so Kueue preempts running trials for each of them. Figures: how busy the
queue kept its 2 GPUs (the pods' GPU-seconds from running to ending over 2 × the wall time from
the first pod running to the last pod ending), trials lost (N minus the COMPLETE ones: 0 is the
goal), the preemptions the study counted, and the most trial pods that ran at once (<= 2).
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from hpo_operator import queueing
from tests.bench import harness
from tests.bench.report import Figure, progress
from tests.helpers import wait_for
from tests.studies import Studies
from tests.testbed import kueue

GPUS = 2
PARALLELISM = 4
SLEEP_S = 10.0
STUDY = "queued"
COMPETITOR_PRIORITY = "bench-competitor"
KUEUE = (queueing.KUEUE_GROUP, queueing.KUEUE_VERSION)


def _gpu(container: dict[str, Any], gpus: int = 1) -> None:
    container["resources"] = {
        "limits": {"nvidia.com/gpu": str(gpus), "memory": "512Mi"},
        "requests": {"cpu": "100m", "memory": "256Mi"},
    }


def _competitor(index: int, queue: str, image: str) -> dict[str, Any]:
    container = {"name": "work", "image": image, "command": ["python3", "-c", f"import time; time.sleep({SLEEP_S})"]}
    _gpu(container, GPUS)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"competitor-{index}", "labels": {"kueue.x-k8s.io/queue-name": queue}},
        "spec": {
            "suspend": True,
            "template": {
                "spec": {
                    "priorityClassName": COMPETITOR_PRIORITY,
                    "restartPolicy": "Never",
                    "containers": [container],
                }
            },
        },
    }


def _busy_mid_trial(timeline: harness.Timeline) -> bool:
    """Both GPUs hold trial pods that have run a few seconds and have as many to go: preempting now costs."""
    now = time.time()
    running = [
        p for p in timeline.pods.values() if "hpo.dev/trial" in p.labels and p.running is not None and p.ended is None
    ]
    return len(running) == GPUS and all(3 < now - (p.running or now) < SLEEP_S - 3 for p in running)


def run(quick: bool) -> list[Figure]:
    trials = 12 if quick else 24
    competitors = trials // 8
    kube = harness.api()
    installed_before = kueue.RENDERED.exists()
    kueue.up()
    scheduling = client.SchedulingV1Api(kube)
    scheduling.create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=COMPETITOR_PRIORITY), value=1000)
    )
    try:
        with harness.namespace(kube, "queue") as namespace:
            queue = "bench"
            client.CustomObjectsApi(kube).create_namespaced_custom_object(
                *KUEUE,
                namespace,
                "localqueues",
                {
                    "apiVersion": "/".join(KUEUE),
                    "kind": "LocalQueue",
                    "metadata": {"name": queue},
                    "spec": {"clusterQueue": "testbed-gpus"},
                },
            )
            spec = harness.study_spec(trials, PARALLELISM, SLEEP_S, queueName=queue)
            _gpu(spec["trial"]["template"]["spec"]["containers"][0])
            studies = Studies(kube, namespace)
            batch = client.BatchV1Api(kube)
            progress(
                f"item 6: {trials} trials of {SLEEP_S:g} s on a {GPUS}-GPU queue, parallelism {PARALLELISM}, "
                f"{competitors} higher-priority Jobs of {GPUS} GPUs competing"
            )
            with harness.Timeline(kube, namespace) as timeline:
                studies.create(STUDY, spec)
                image = harness.testbed_env()["HPO_TRIAL_IMAGE"]
                for index in range(competitors):
                    finished = (index + 1) * trials // (competitors + 1)
                    studies.wait(
                        STUDY,
                        lambda s, n=finished: (s.get("status") or {}).get("trials", {}).get("complete", 0) >= n,
                        trials * SLEEP_S * 4 + 300,
                        f"finish {finished} trials",
                    )
                    wait_for(lambda: _busy_mid_trial(timeline), 120, "both GPUs to be mid-trial")
                    batch.create_namespaced_job(namespace, _competitor(index, queue, image))
                done = studies.wait_phase(STUDY, "Succeeded", trials * SLEEP_S * 4 + 300)
                wait_for(
                    lambda: all(
                        (batch.read_namespaced_job_status(f"competitor-{i}", namespace).status.succeeded or 0) >= 1
                        for i in range(competitors)
                    ),
                    competitors * SLEEP_S * 4 + 300,
                    "the competing Jobs to complete",
                )
                wait_for(lambda: all(p.ended for p in timeline.pods.values()), 60, "the watch to see every pod end")
            counts = done["status"]["trials"]
            pods = [p for p in timeline.pods.values() if p.running is not None and p.ended is not None]
            first = min(p.running for p in pods if p.running is not None)
            last = max(p.ended for p in pods if p.ended is not None)
            busy = sum(((p.ended or 0) - (p.running or 0)) * (1 if "hpo.dev/trial" in p.labels else GPUS) for p in pods)
            trial_pods = [p for p in pods if "hpo.dev/trial" in p.labels]
            most = max(
                sum(1 for q in trial_pods if (q.running or 0) <= (p.running or 0) < (q.ended or 0)) for p in trial_pods
            )
    finally:
        scheduling.delete_priority_class(COMPETITOR_PRIORITY)
        if not installed_before:
            kueue.down()
    progress(f"  {len(pods)} GPU pods in {last - first:.0f}s; study counts {counts}")
    return [
        Figure("queue_gpu_utilisation", busy / (GPUS * (last - first)), "-"),
        Figure("queue_trials_lost", float(trials - counts["complete"]), "0"),
        Figure("queue_preemptions", float(counts.get("preemptions", 0)), "-"),
        Figure("queue_most_trial_pods_at_once", float(most), f"<= {GPUS}"),
    ]
