"""The study loop against a real MariaDB, with the Kubernetes API played by a fake: the wiring of the policies.

Each test provisions a real study database (as the operator's admin, from `.testbed/env`), runs
reconcile passes over it, and plays the trial pods: it tells Optuna what a pod would, then marks
the pod ended the way Kubernetes reports it. The fake records every Job, Secret, status patch and
Event the loop makes, so the tests check what a user would see. What only a cluster can show
(real pods, nodes, Events' rendering) is left to the end-to-end tests.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo_operator import database, kube, reconcile
from hpo_operator.contract import ATTEMPT_ATTR, FAIL_REASON_ATTR
from hpo_operator.outcomes import JobSummary, PodSummary
from hpo_operator.reconcile import StudyLoop, StudyProblem
from hpo_operator.settings import Settings
from hpo_operator.storage import OUTCOMES_ATTR
from tests.mysql import admin, admin_server

pytestmark = pytest.mark.integration
NOW = datetime.datetime.now(datetime.UTC)


def ago(seconds: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds)


@dataclass
class FakeCluster:
    """The API server as the loop uses it (`kube.py`), in memory."""

    namespace: str
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    claims: set[str] = field(default_factory=set)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted_jobs: list[str] = field(default_factory=list)
    pods: dict[str, PodSummary] = field(default_factory=dict)  # by Job name
    status: dict[str, Any] = field(default_factory=dict)
    patches: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    local_queues: set[str] | None = None  # Kueue's LocalQueues; None: no Kueue in this cluster
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)  # Kueue's Workloads, by Job (its uid here)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(kube, "read_secret", lambda ns, name: self.secrets.get(name))
        monkeypatch.setattr(
            kube, "secret_keys", lambda ns, name: frozenset(self.secrets[name]) if name in self.secrets else None
        )
        monkeypatch.setattr(kube, "claim_exists", lambda ns, name: name in self.claims)
        monkeypatch.setattr(
            kube,
            "ensure_secret",
            lambda ns, name, data, owner: self.secrets.__setitem__(name, {**self.secrets.get(name, {}), **data}),
        )
        monkeypatch.setattr(kube, "create_owned", self._create)
        monkeypatch.setattr(kube, "delete_job", self._delete)
        monkeypatch.setattr(kube, "patch_status", self._patch)
        monkeypatch.setattr(
            kube, "create_event", lambda event: self.events.append((event["type"], event["reason"], event["message"]))
        )
        monkeypatch.setattr(kube, "dry_run_job", lambda job: None)
        monkeypatch.setattr(
            kube,
            "local_queue_exists",
            lambda ns, name: None if self.local_queues is None else name in self.local_queues,
        )
        monkeypatch.setattr(
            kube, "workloads", lambda ns, uids: [self.workloads[uid] for uid in uids if uid in self.workloads]
        )

    def _create(self, manifest: dict[str, Any], owner: dict[str, Any]) -> None:
        self.jobs.setdefault(manifest["metadata"]["name"], manifest)

    def _delete(self, namespace: str, name: str) -> None:
        if self.jobs.pop(name, None) is not None:
            self.deleted_jobs.append(name)
            self.pods.pop(name, None)

    def _patch(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)
        self.status = {**self.status, **status}

    # -- what the pods and the Job controller do ---------------------------------------------------

    def summaries(self) -> tuple[list[PodSummary], list[JobSummary]]:
        jobs = []
        for name, job in self.jobs.items():
            labels = job["metadata"]["labels"]
            pod = self.pods.get(name)
            jobs.append(
                JobSummary(
                    name,
                    int(labels.get("hpo.dev/trial", -1)),
                    int(labels["hpo.dev/attempt"]),
                    created=ago(1),
                    failed=pod is not None and pod.phase == "Failed",
                    succeeded=pod is not None and pod.phase == "Succeeded",
                    task=labels.get("hpo.dev/task", ""),
                    suspended=bool(job["spec"].get("suspend")),
                    uid=name,
                    queue=labels.get("kueue.x-k8s.io/queue-name", ""),
                )
            )
        return list(self.pods.values()), jobs

    def start_pods(self) -> None:
        """Every Job without a pod gets a running pod."""
        for name, job in self.jobs.items():
            if name not in self.pods:
                labels = job["metadata"]["labels"]
                self.pods[name] = PodSummary(
                    f"{name}-x",
                    int(labels.get("hpo.dev/trial", -1)),
                    int(labels["hpo.dev/attempt"]),
                    "Running",
                    created=ago(1),
                    started=True,
                    ready=True,
                    started_at=ago(1),
                    task=labels.get("hpo.dev/task", ""),
                )

    def assignment(self, job: str) -> dict[str, Any]:
        env = self.jobs[job]["spec"]["template"]["spec"]["containers"][0]["env"]
        return dict(json.loads(next(e["value"] for e in env if e["name"] == "HPO_ASSIGNMENT")))

    def end(self, job: str, exit_code: int, message: str = "", finished: datetime.datetime | None = None) -> None:
        pod = self.pods[job]
        self.pods[job] = replace(
            pod,
            phase="Succeeded" if exit_code == 0 else "Failed",
            exit_code=exit_code,
            message=message,
            ready=False,
            finished_at=finished or ago(0),
        )

    def running_jobs(self) -> list[str]:
        return [name for name, pod in self.pods.items() if pod.phase == "Running"]


@dataclass
class Harness:
    cluster: FakeCluster
    loop: StudyLoop
    spec: dict[str, Any]
    generation: int = 1
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def run(self) -> dict[str, Any]:
        pods, jobs = self.cluster.summaries()
        body = {
            "metadata": {
                "name": self.loop.name,
                "namespace": self.loop.namespace,
                "generation": self.generation,
                "uid": self.uid,
            },
            "spec": self.spec,
            "status": dict(self.cluster.status),
        }
        self.loop.run(body, pods, jobs)
        return self.cluster.status

    def edit(self, **changes: Any) -> None:
        self.spec = {**self.spec, **changes}
        self.generation += 1

    def study(self) -> optuna.Study:
        return optuna.load_study(
            study_name=self.loop.name,
            storage=self.cluster.secrets[f"{self.loop.name}-storage"]["url"].replace("{", "{{").replace("}", "}}"),
        )

    def tell(self, job: str, value: float | None, state: TrialState = TrialState.COMPLETE) -> None:
        """What a trial pod does at its end: tell Optuna, then exit 0."""
        number = self.cluster.assignment(job)["trial"]["number"]
        self.study().tell(number, value, state=state, skip_if_finished=True)
        self.cluster.end(job, 0)

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.cluster.events]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


@pytest.fixture
def settings(testbed_env: dict[str, str]) -> Settings:
    return Settings(
        mysql_host=testbed_env["HPO_MYSQL_HOST"],
        mysql_port=int(testbed_env["HPO_MYSQL_PORT"]),
        mysql_user=testbed_env["HPO_MYSQL_USER"],
        mysql_password=testbed_env["HPO_MYSQL_PASSWORD"],
        trial_image="trial:1",
    )


@pytest.fixture
def harness(settings: Settings, monkeypatch: pytest.MonkeyPatch, testbed_env: dict[str, str]) -> Iterator[Any]:
    made: list[Harness] = []

    def make(spec: dict[str, Any], name: str = "study", **overrides: Any) -> Harness:
        namespace = f"t-{uuid.uuid4().hex[:8]}"
        cluster = FakeCluster(namespace)
        cluster.install(monkeypatch)
        loop = StudyLoop(namespace, name, replace(settings, **overrides))
        made.append(Harness(cluster, loop, spec))
        return made[-1]

    yield make
    for harness in made:
        harness.loop.close()
        database.drop(admin_server(testbed_env), harness.loop.namespace, harness.loop.name)


SPACE = {"x": {"type": "float", "low": 0, "high": 1}}


def test_a_study_whose_every_trial_fails_ends_failed_and_says_no_trial_completed(harness: Any) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 2, "parallelism": 2, "retriesPerTrial": 0}})
    h.run()
    h.cluster.start_pods()
    for job in list(h.cluster.jobs):
        h.cluster.end(job, 1, "FAIL objective raised ValueError: boom")
    status = h.run()
    assert status["phase"] == "Failed"
    assert condition(status, "Finished")["reason"] == "NoTrialCompleted"
    assert status["message"].startswith("all 2 trials finished, but no trial completed (2 failed, 0 pruned)")
    trial = h.study().trials[0]
    assert "boom" in trial.system_attrs[FAIL_REASON_ATTR] and "failure_reason" not in trial.user_attrs
    assert h.reasons().count("StudyFailed") == 1


def test_a_finished_study_posts_its_end_once_releases_its_connections_and_continues_when_its_budget_grows(
    harness: Any,
) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 2, "parallelism": 2}})
    h.run()
    assert h.reasons().count("DatabaseReady") == 1 and h.reasons().count("TrialStarted") == 2
    h.cluster.start_pods()
    for job in list(h.cluster.jobs):
        h.tell(job, 0.5)
    status = h.run()
    assert status["phase"] == "Succeeded" and condition(status, "Finished")["status"] == "True"
    assert h.loop.store is None, "a finished study holds no database connection"
    patches = len(h.cluster.patches)
    h.run()
    h.run()
    assert len(h.cluster.patches) == patches, "an idle finished study writes nothing"
    assert h.reasons().count("StudyFinished") == 1

    restarted = StudyLoop(h.loop.namespace, h.loop.name, h.loop.settings)
    h.loop = restarted
    h.run()
    assert restarted.store is None and h.reasons().count("DatabaseReady") == 1, "a restart posts nothing again"

    h.edit(budget={"trials": 3, "parallelism": 2})
    status = h.run()
    assert status["phase"] == "Running" and condition(status, "Finished")["status"] == "False"
    assert "StudyContinued" in h.reasons() and len(h.cluster.jobs) == 1
    assert h.reasons().count("DatabaseReady") == 1, "reopening the database of a known study is not news"
    h.cluster.start_pods()
    h.tell(h.cluster.running_jobs()[0], 0.1)
    status = h.run()
    assert status["phase"] == "Succeeded" and status["progress"] == "3/3"
    assert h.reasons().count("StudyFinished") == 2


def test_a_huge_parallelism_is_capped_and_dispatch_waits_for_pods_to_start(harness: Any) -> None:
    h = harness(
        {"searchSpace": SPACE, "budget": {"trials": 10**9, "parallelism": 10**9}},
        max_parallelism=8,
        max_waiting_trials=3,
    )
    status = h.run()
    assert len(h.cluster.jobs) == 3, "no more Jobs than HPO_MAX_WAITING_TRIALS while none has started"
    assert status["parallelism"] == 8
    assert "parallelism capped at 8 by the operator's HPO_MAX_PARALLELISM" in status["message"]
    assert status["trials"]["waiting"] == 3 and status["trials"]["running"] == 0
    waiting = condition(status, "TrialsWaiting")
    assert waiting["status"] == "True" and waiting["reason"] == "Paced"
    h.run()
    assert len(h.cluster.jobs) == 3, "still none started: still three"
    h.cluster.start_pods()
    status = h.run()
    assert len(h.cluster.jobs) == 6 and status["trials"] == {
        "running": 3,
        "waiting": 3,
        "complete": 0,
        "pruned": 0,
        "failed": 0,
        "preemptions": 0,
    }
    h.cluster.start_pods()
    h.run()
    assert len(h.cluster.jobs) == 8, "never more than the capped parallelism"


def test_an_attempt_that_could_not_reach_the_database_is_run_again_without_spending_a_retry(harness: Any) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 1, "parallelism": 1, "retriesPerTrial": 0}})
    h.run()
    h.cluster.start_pods()
    [job] = h.cluster.jobs
    h.cluster.end(job, 3, "FAIL cannot reach the study's database")
    status = h.run()
    assert job in h.cluster.jobs, "it waits a little before running the trial again"
    assert condition(status, "TrialsWaiting")["reason"] == "DatabaseUnavailable"
    h.cluster.end(job, 3, "FAIL cannot reach the study's database", finished=ago(60))
    h.run()
    assert list(h.cluster.jobs) == ["study-0-1"], "attempt 1, although no retry was left"
    trial = h.study().trials[0]
    assert trial.state is TrialState.RUNNING and trial.system_attrs[OUTCOMES_ATTR] == ["database-unavailable"]
    assert trial.system_attrs[ATTEMPT_ATTR] == 1 and "TrialRequeued" in h.reasons()


def test_preemptions_are_free_until_the_bound(harness: Any) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 1, "parallelism": 1, "maxPreemptionsPerTrial": 1}})
    h.run()
    for attempt in range(2):
        h.cluster.start_pods()
        h.cluster.end(f"study-0-{attempt}", 143, "INTERRUPTED by SIGTERM")
        h.run()
    trial = h.study().trials[0]
    assert trial.state is TrialState.FAIL
    assert "preempted 2 times, more than spec.budget.maxPreemptionsPerTrial (1)" in trial.system_attrs[FAIL_REASON_ATTR]
    assert trial.system_attrs[OUTCOMES_ATTR] == ["preempted", "preempted"]
    assert h.run()["trials"]["preemptions"] == 2, "each preemption counted once, however often a pass sees it"


def test_a_queued_trial_waits_says_why_and_counts_each_of_kueues_evictions_once(harness: Any) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 2, "parallelism": 2}, "queueName": "gpus"})
    status = h.run()
    assert condition(status, "Validated")["reason"] == "ReferenceNotFound" and not h.cluster.jobs, "no Kueue"
    h.cluster.local_queues = {"gpus"}
    status = h.run()
    assert sorted(h.cluster.jobs) == ["study-0-0", "study-1-0"]
    assert all(job["spec"]["suspend"] for job in h.cluster.jobs.values()), "created suspended, for Kueue to admit"
    pending = {
        "type": "QuotaReserved",
        "status": "False",
        "reason": "Pending",
        "message": "insufficient unused quota for nvidia.com/gpu in flavor default-flavor, 1 more needed",
    }
    h.cluster.workloads = {
        name: {"metadata": {"labels": {"kueue.x-k8s.io/job-uid": name}}, "status": {"conditions": [pending]}}
        for name in h.cluster.jobs
    }
    status = h.run()
    assert status["trials"]["waiting"] == 2 and status["phase"] == "Running"
    waiting = condition(status, "TrialsWaiting")
    assert waiting["reason"] == "Queued"
    assert (
        "trial 0 not admitted by LocalQueue gpus (Pending: insufficient unused quota for nvidia.com/gpu"
        in (waiting["message"])
    )
    # Kueue preempted trial 0's Job twice over its life (admitted, evicted, admitted, evicted).
    h.cluster.workloads["study-0-0"]["status"]["schedulingStats"] = {
        "evictions": [{"reason": "Preempted", "underlyingCause": "", "count": 2}]
    }
    for _ in range(2):
        status = h.run()
    assert status["trials"]["preemptions"] == 2 and status["trials"]["failed"] == 0
    assert h.reasons().count("TrialPreempted") == 1, "one Event for what one pass saw"
    assert h.study().trials[0].system_attrs[ATTEMPT_ATTR] == 0, "the same attempt: Kueue resumes the same Job"


def test_a_trial_on_a_lost_node_is_requeued_and_its_old_attempt_fenced(harness: Any) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 1, "parallelism": 1}}, trial_lost_seconds=60)
    h.run()
    [job] = h.cluster.jobs
    h.cluster.start_pods()
    h.cluster.pods[job] = replace(h.cluster.pods[job], ready=False, started_at=ago(300))  # never beat, node gone
    status = h.run()
    assert list(h.cluster.jobs) == ["study-0-1"]
    trial = h.study().trials[0]
    assert trial.system_attrs[ATTEMPT_ATTR] == 1, "attempt 0 can no longer report"
    assert trial.system_attrs[OUTCOMES_ATTR] == ["lost"]
    assert status["trials"]["waiting"] == 1


def test_warm_start_sets_beyond_the_budget_are_not_queued_until_the_budget_grows(harness: Any) -> None:
    h = harness(
        {
            "searchSpace": SPACE,
            "budget": {"trials": 2, "parallelism": 1},
            "warmStart": [{"x": 0.1}, {"x": 0.2}, {"x": 0.3}],
        }
    )
    h.run()
    states = [t.state for t in h.study().get_trials(deepcopy=False)]
    assert states == [TrialState.RUNNING, TrialState.WAITING], "two queued, the third is beyond the budget"
    h.edit(budget={"trials": 3, "parallelism": 1})
    h.run()
    waiting = h.study().get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"x": 0.2}, {"x": 0.3}]


def test_a_missing_claim_fails_the_study_naming_the_field_until_it_exists(harness: Any) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 1}, "checkpoints": {"claimName": "ckpt"}})
    status = h.run()
    assert status["phase"] == "Failed" and h.cluster.jobs == {}
    validated = condition(status, "Validated")
    assert validated["reason"] == "ReferenceNotFound"
    assert validated["message"].startswith(
        f"spec.checkpoints.claimName: PersistentVolumeClaim ckpt does not exist in namespace {h.loop.namespace}"
    )
    assert h.reasons() == ["ReferenceNotFound"]
    h.run()
    assert h.reasons() == ["ReferenceNotFound"], "once"
    h.cluster.claims.add("ckpt")
    status = h.run()
    assert status["phase"] == "Running" and len(h.cluster.jobs) == 1 and "SpecValid" in h.reasons()


def test_an_invalid_spec_gets_a_status_and_no_database(harness: Any, testbed_env: dict[str, str]) -> None:
    h = harness({"budget": {"trials": 2}, "trial": {"template": {"spec": {"containers": {"name": "trial"}}}}})
    status = h.run()
    assert status["phase"] == "Failed" and "startedAt" not in status
    assert condition(status, "Validated")["message"].startswith(
        "spec.trial.template.spec.containers: must be a list of objects"
    )
    assert h.reasons() == ["InvalidSpec"] and h.cluster.jobs == {} and h.cluster.secrets == {}


def test_while_the_database_is_down_the_study_says_so_and_recovers(harness: Any, testbed_env: dict[str, str]) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 2, "parallelism": 1}})
    h.run()
    user = h.cluster.secrets["study-storage"]["username"]
    server = admin_server(testbed_env)
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute("ALTER USER %s@'%%' ACCOUNT LOCK", (user,))
        cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (user,))
        for (connection_id,) in cursor.fetchall():
            cursor.execute(f"KILL CONNECTION {int(connection_id)}")
    with pytest.raises(StudyProblem):
        h.run()
    status = h.cluster.status
    ready = condition(status, "DatabaseReady")
    assert ready["status"] == "False" and ready["reason"] == "DatabaseUnavailable"
    assert status["phase"] == "Running" and status["message"].startswith("waiting for the study's database")
    assert h.cluster.secrets["study-storage"]["password"] not in json.dumps(status)
    with pytest.raises(StudyProblem):
        h.run()
    assert h.reasons().count("DatabaseUnavailable") == 1
    with admin(server) as connection, connection.cursor() as cursor:
        cursor.execute("ALTER USER %s@'%%' ACCOUNT UNLOCK", (user,))
    status = h.run()
    assert condition(status, "DatabaseReady")["status"] == "True" and h.reasons().count("DatabaseReady") == 2


def test_the_dry_run_refusal_of_the_first_trial_job_fails_the_study_naming_the_field(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness({"searchSpace": SPACE, "budget": {"trials": 1}})
    monkeypatch.setattr(
        kube,
        "dry_run_job",
        lambda job: {
            "details": {"causes": [{"field": "spec.template.spec.containers[0].image", "message": "Required value"}]}
        },
    )
    status = h.run()
    assert status["phase"] == "Failed" and h.cluster.jobs == {}
    assert (
        condition(status, "Validated")["message"]
        == "spec.trial.template.spec.containers[0].image: the API server refuses it: Required value"
    )


def test_reconcile_declares_every_database_error_it_treats_as_an_outage() -> None:
    assert optuna.exceptions.StorageInternalError in reconcile.DATABASE_ERRORS


def test_a_trial_job_the_api_server_refuses_is_reported_and_tried_again(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.client import ApiException

    h = harness({"searchSpace": SPACE, "budget": {"trials": 2, "parallelism": 2}})
    refusal = ApiException(status=403, reason="Forbidden")
    refusal.body = json.dumps({"message": 'jobs "study-0-0" is forbidden: exceeded quota: compute, requested: cpu=1'})

    def refuse(manifest: dict[str, Any], owner: dict[str, Any]) -> None:
        raise refusal

    monkeypatch.setattr(kube, "create_owned", refuse)
    status = h.run()
    progressing = condition(status, "Progressing")
    assert progressing["reason"] == "JobRefused" and "exceeded quota: compute" in progressing["message"]
    assert len(h.study().trials) == 1, "one trial asked, then dispatch stopped"
    h.run()
    assert h.reasons().count("JobRefused") == 1 and len(h.study().trials) == 1
    monkeypatch.setattr(kube, "create_owned", h.cluster._create)
    status = h.run()
    assert condition(status, "Progressing")["reason"] == "Dispatching" and len(h.cluster.jobs) == 2


def test_a_spec_with_many_problems_lists_the_first_ten(harness: Any) -> None:
    containers = [{"name": f"c{i}", "image": i} for i in range(15)] + [{"name": "trial"}]
    h = harness({"budget": {"trials": 1}, "trial": {"template": {"spec": {"containers": containers}}}})
    status = h.run()
    message = condition(status, "Validated")["message"]
    assert message.count("must be a string") == 10 and message.endswith("; and 5 more")
