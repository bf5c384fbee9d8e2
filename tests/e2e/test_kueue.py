"""Trials under a real Kueue (v0.17, built from its Go module, `make kueue-up`), end to end.

Every study here asks 1 nvidia.com/gpu per trial (the testbed's nodes advertise GPUs as an
extended resource) from a LocalQueue of the test's namespace that points at the ClusterQueue
`testbed-gpus` (2 GPUs): Kueue, not the operator, decides how many trials run. The module installs
Kueue first and removes it after, so the rest of the suite runs without its webhooks, as clusters
without Kueue do.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from hpo_operator import queueing
from tests.e2e.test_lifecycle import condition, trials_of
from tests.helpers import wait_for
from tests.pod_logs import PodLogs
from tests.studies import Studies
from tests.testbed import kueue

pytestmark = pytest.mark.e2e

KUEUE = (queueing.KUEUE_GROUP, queueing.KUEUE_VERSION)
CLUSTER_QUEUE = "testbed-gpus"
HIGH_PRIORITY = "hpo-test-high"


def _objects(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


@pytest.fixture(scope="module")
def installed_kueue(kube: client.ApiClient) -> Iterator[None]:
    """`make kueue-up` (builds what is missing), then `make kueue-down` after the module."""
    kueue.up()
    scheduling = client.SchedulingV1Api(kube)
    scheduling.create_priority_class(
        client.V1PriorityClass(metadata=client.V1ObjectMeta(name=HIGH_PRIORITY), value=1000)
    )
    yield
    scheduling.delete_priority_class(HIGH_PRIORITY)
    kueue.down()


@pytest.fixture
def local_queue(kube: client.ApiClient, namespace: str, installed_kueue: None) -> str:
    """A LocalQueue of the test's own namespace on the ClusterQueue testbed-gpus."""
    return create_local_queue(kube, namespace, "trials", CLUSTER_QUEUE)


def create_local_queue(kube: client.ApiClient, namespace: str, name: str, cluster_queue: str) -> str:
    body = {
        "apiVersion": "/".join(KUEUE),
        "kind": "LocalQueue",
        "metadata": {"name": name},
        "spec": {"clusterQueue": cluster_queue},
    }
    _objects(kube).create_namespaced_custom_object(*KUEUE, namespace, "localqueues", body)
    return name


def gpu_trials(
    objectives: dict[str, Any], queue: str | None, trials: int, parallelism: int, env: dict[str, str], **extra: Any
) -> dict[str, Any]:
    """A study whose trial pods each ask 1 GPU (and a little CPU and memory, which the queue also covers)."""
    template = copy.deepcopy(objectives)
    container = template["spec"]["containers"][0]
    container["env"] += [{"name": name, "value": value} for name, value in env.items()]
    container["resources"] = {
        "limits": {"nvidia.com/gpu": 1, "memory": "512Mi"},
        "requests": {"cpu": "100m", "memory": "256Mi"},
    }
    spec: dict[str, Any] = {
        "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}, "y": {"type": "int", "low": 0, "high": 3}},
        "budget": {"trials": trials, "parallelism": parallelism, **extra.pop("budget", {})},
        "trial": {"objective": extra.pop("objective", "objectives:quadratic"), "template": template},
        **extra,
    }
    if queue is not None:
        spec["queueName"] = queue
    return spec


def jobs_of(kube: client.ApiClient, namespace: str, study: str) -> list[client.V1Job]:
    return list(client.BatchV1Api(kube).list_namespaced_job(namespace, label_selector=f"hpo.dev/study={study}").items)


def workloads_in(kube: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return list(_objects(kube).list_namespaced_custom_object(*KUEUE, namespace, "workloads").get("items", []))


def test_without_kueue_a_queued_study_is_held_naming_the_field_and_creates_no_job(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    """Runs first, before the module installs Kueue (and removes one a developer left installed)."""
    kueue.down()
    studies.create("unqueued", gpu_trials(objectives, "user-queue", 1, 1, {}))
    held = studies.wait(
        "unqueued", lambda s: condition(s, "Validated").get("status") == "False", 60, "be held for its queue"
    )
    message = condition(held, "Validated")["message"]
    assert message.startswith("spec.queueName: this cluster has no Kueue"), message
    assert not jobs_of(kube, studies.namespace, "unqueued")
    studies.wait_events("unqueued", lambda e: "spec.queueName" in (e.message or ""), "the Event naming the field")


def test_a_study_on_two_gpus_runs_two_trials_at_a_time_and_the_rest_wait_without_failing(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, local_queue: str, live_pods: Any
) -> None:
    pods = live_pods("shared")
    studies.create(
        "shared",
        gpu_trials(objectives, local_queue, 8, 6, {"HPO_TEST_SLEEP": "6"}, budget={"startTimeoutSeconds": 10}),
    )
    queued = studies.wait(
        "shared",
        lambda s: trials_of(s).get("waiting") == 4 and condition(s, "TrialsWaiting").get("reason") == "Queued",
        180,
        "have 4 trials waiting in the queue",
    )
    assert f"not admitted by LocalQueue {local_queue}" in condition(queued, "TrialsWaiting")["message"]
    jobs = jobs_of(kube, studies.namespace, "shared")
    assert all(j.metadata.labels["kueue.x-k8s.io/queue-name"] == local_queue for j in jobs)
    suspended = [j.metadata.name for j in jobs if j.spec.suspend]
    assert len(suspended) >= 4, "the Jobs the queue has not admitted are suspended"
    done = studies.wait_phase("shared", "Succeeded", 420)
    pods.stop()
    assert pods.most <= 2, f"never more than the queue's 2 GPUs of trial pods; at most: {pods.peak}"
    assert trials_of(done) == {
        "running": 0,
        "waiting": 0,
        "complete": 8,
        "pruned": 0,
        "failed": 0,
        "preemptions": 0,
    }, "waiting far past startTimeoutSeconds failed nothing"
    assert len(studies.optuna_study("shared").trials) == 8


def test_a_higher_priority_workload_preempts_a_trial_which_resumes_from_its_checkpoint_as_the_same_trial(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, local_queue: str, testbed_env: dict[str, str]
) -> None:
    size = client.V1VolumeResourceRequirements(requests={"storage": "1Gi"})
    claim = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="ckpt"),
        spec=client.V1PersistentVolumeClaimSpec(access_modes=["ReadWriteMany"], resources=size),
    )
    client.CoreV1Api(kube).create_namespaced_persistent_volume_claim(studies.namespace, claim)
    with PodLogs(kube, studies.namespace, "hpo.dev/study=preempted") as logs:
        studies.create(
            "preempted",
            gpu_trials(
                objectives,
                local_queue,
                1,
                1,
                {"HPO_TEST_STEP_SECONDS": "3"},
                objective="objectives:slow_with_checkpoints",
                checkpoints={"claimName": "ckpt"},
                budget={"maxPreemptionsPerTrial": 0, "startTimeoutSeconds": 10},
            ),
        )
        wait_for(
            lambda: any("checkpoint saved at step 2" in text for text in logs.all().values()),
            180,
            "the trial to save its step-2 checkpoint",
        )
        # Both GPUs for a more important Job in the same ClusterQueue: Kueue must preempt the trial.
        client.BatchV1Api(kube).create_namespaced_job(
            studies.namespace,
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "urgent", "labels": {"kueue.x-k8s.io/queue-name": local_queue}},
                "spec": {
                    "suspend": True,
                    "template": {
                        "spec": {
                            "priorityClassName": HIGH_PRIORITY,
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "urgent",
                                    "image": testbed_env["HPO_TRIAL_IMAGE"],
                                    "command": ["python3", "-c", "import time; time.sleep(5)"],
                                    "resources": {
                                        "limits": {"nvidia.com/gpu": "2"},
                                        "requests": {"cpu": "100m", "memory": "64Mi"},
                                    },
                                }
                            ],
                        }
                    },
                },
            },
        )
        preempted = studies.wait(
            "preempted", lambda s: trials_of(s).get("preemptions") == 1, 120, "count the queue's preemption"
        )
        assert trials_of(preempted)["failed"] == 0
        (event,) = studies.wait_events("preempted", lambda e: e.reason == "TrialPreempted", "the preemption's Event")
        assert "trial 0:" in event.message and "resumes from its checkpoint" in event.message
        done = studies.wait_phase("preempted", "Succeeded", 300)
        runs = sorted(logs.all().items())
    assert trials_of(done)["complete"] == 1 and trials_of(done)["failed"] == 0
    assert trials_of(done)["preemptions"] == 1, "maxPreemptionsPerTrial 0 held: a queue's preemption is not spent"
    (trial,) = studies.optuna_study("preempted").trials
    assert trial.system_attrs["hpo:attempt"] == 0, "the same attempt of the same Optuna trial, not a requeue"
    assert [pod.rsplit("-", 1)[0] for pod, _ in runs] == ["preempted-0-0"] * 2, "one Job, run twice by the queue"
    resumed = next(text for _, text in runs if "resumed from step" in text)
    assert "checkpoint saved at step 0" not in resumed
    urgent = client.BatchV1Api(kube).read_namespaced_job("urgent", studies.namespace)
    assert urgent.status.succeeded == 1, "the urgent Job ran while the trial waited"


def cluster_queue_spec(gpus: int) -> dict[str, Any]:
    """A ClusterQueue's spec with ``gpus`` GPUs and room for the trial pods' CPU and memory."""
    quotas = {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": gpus}
    return {
        "namespaceSelector": {},
        "resourceGroups": [
            {
                "coveredResources": list(quotas),
                "flavors": [
                    {
                        "name": "default-flavor",
                        "resources": [{"name": name, "nominalQuota": quota} for name, quota in quotas.items()],
                    }
                ],
            }
        ],
    }


def test_a_queue_without_quota_holds_trials_past_the_start_timeout_and_says_why(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, installed_kueue: None
) -> None:
    name = f"empty-{studies.namespace}"
    objects = _objects(kube)
    objects.create_cluster_custom_object(
        *KUEUE,
        "clusterqueues",
        {
            "apiVersion": "/".join(KUEUE),
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": cluster_queue_spec(0),
        },
    )
    try:
        queue = create_local_queue(kube, studies.namespace, "no-gpus", name)
        studies.create("starved", gpu_trials(objectives, queue, 2, 2, {}, budget={"startTimeoutSeconds": 10}))
        timeout = datetime.timedelta(seconds=10)

        def held_past_three_timeouts() -> bool:
            jobs = jobs_of(kube, studies.namespace, "starved")
            now = datetime.datetime.now(datetime.UTC)
            return len(jobs) == 2 and all(now - j.metadata.creation_timestamp > 3 * timeout for j in jobs)

        wait_for(held_past_three_timeouts, 120, "the trials to wait three start timeouts")
        starved = studies.get("starved")
        assert starved["status"]["phase"] == "Running"
        assert trials_of(starved)["failed"] == 0 and trials_of(starved)["waiting"] == 2
        waiting = condition(starved, "TrialsWaiting")
        assert waiting["reason"] == "Queued" and "nvidia.com/gpu" in waiting["message"], waiting
        assert not [e for e in studies.events("starved") if e.reason == "TrialFailed"]
        # The queue gets quota: the same trials run, none lost.
        objects.patch_cluster_custom_object(*KUEUE, "clusterqueues", name, {"spec": cluster_queue_spec(2)})
        done = studies.wait_phase("starved", "Succeeded", 240)
        assert trials_of(done)["complete"] == 2 and len(studies.optuna_study("starved").trials) == 2
    finally:
        objects.delete_cluster_custom_object(*KUEUE, "clusterqueues", name)


def test_suspending_a_study_takes_its_queued_trials_out_of_the_queue_and_resume_finishes_exactly_n(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, local_queue: str
) -> None:
    studies.create("paused", gpu_trials(objectives, local_queue, 5, 4, {"HPO_TEST_SLEEP": "20"}))
    studies.wait("paused", lambda s: trials_of(s).get("waiting") == 2, 180, "have 2 trials waiting in the queue")
    studies.patch("paused", {"suspend": True})
    studies.wait_phase("paused", "Suspended", 120)
    wait_for(
        lambda: not jobs_of(kube, studies.namespace, "paused") and not workloads_in(kube, studies.namespace),
        120,
        "the study's Jobs and their Workloads to go",
    )
    studies.patch("paused", {"suspend": False})
    done = studies.wait_phase("paused", "Succeeded", 420)
    assert trials_of(done)["complete"] == 5 and trials_of(done)["failed"] == 0
    assert len(studies.optuna_study("paused").trials) == 5, "the suspended trials ran again, none duplicated"


def test_deleting_a_study_removes_its_queued_workloads(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, local_queue: str
) -> None:
    studies.create("gone", gpu_trials(objectives, local_queue, 4, 4, {"HPO_TEST_SLEEP": "60"}))
    studies.wait("gone", lambda s: trials_of(s).get("waiting") == 2, 180, "have 2 trials waiting in the queue")
    assert len(workloads_in(kube, studies.namespace)) == 4
    _objects(kube).delete_namespaced_custom_object("hpo.dev", "v1alpha1", studies.namespace, "hpostudies", "gone")
    wait_for(
        lambda: not workloads_in(kube, studies.namespace) and not jobs_of(kube, studies.namespace, "gone"),
        120,
        "the deleted study's Jobs and Workloads to go",
    )


def test_a_missing_local_queue_holds_the_study_naming_the_field_until_it_exists(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, installed_kueue: None
) -> None:
    studies.create("early", gpu_trials(objectives, "later", 1, 1, {}))
    held = studies.wait(
        "early", lambda s: condition(s, "Validated").get("reason") == "ReferenceNotFound", 60, "wait for its queue"
    )
    assert "spec.queueName" in condition(held, "Validated")["message"]
    assert "LocalQueue later does not exist" in condition(held, "Validated")["message"]
    assert not jobs_of(kube, studies.namespace, "early")
    create_local_queue(kube, studies.namespace, "later", CLUSTER_QUEUE)
    studies.wait_phase("early", "Succeeded", 240)
