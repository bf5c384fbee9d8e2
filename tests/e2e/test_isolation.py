"""What only real nodes can show: trial pods are isolated from the admin credentials, and a trial
over its memory limit is OOMKilled and handled as a crash (retried, then failed), not a preemption."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
import pytest
from kubernetes import client

from tests.studies import Studies

pytestmark = pytest.mark.e2e


def test_a_trial_pod_cannot_find_the_mysql_admin_password_in_its_env_files_or_api(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, testbed_env: dict[str, str]
) -> None:
    digest = hashlib.sha256(testbed_env["HPO_MYSQL_PASSWORD"].encode()).hexdigest()
    # The admin Secret sits in the study's own namespace, where a careless install might put it.
    client.CoreV1Api(kube).create_namespaced_secret(
        studies.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="mysql-admin"),
            string_data={"password": testbed_env["HPO_MYSQL_PASSWORD"]},
        ),
    )
    client.CoreV1Api(kube).create_namespaced_service_account(
        studies.namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="trainer"))
    )
    template = json.loads(json.dumps(objectives))
    template["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SECRET_SHA256", "value": digest})
    with_token = json.loads(json.dumps(template))
    with_token["spec"] |= {"serviceAccountName": "trainer", "automountServiceAccountToken": True}
    for name, pod in (("plain", template), ("token", with_token)):
        studies.create(
            name,
            {
                "searchSpace": {"x": {"type": "float", "low": 0, "high": 1}},
                "budget": {"trials": 1},
                "trial": {"objective": "objectives:find_secret", "template": pod},
            },
        )
    for name in ("plain", "token"):
        done = studies.wait_phase(name, "Succeeded", 300)
        assert done["status"]["trials"]["complete"] == 1, done["status"]
        assert done["status"]["bestTrial"]["value"] == 0.0, f"the {name} trial pod found the admin password"


def test_a_trial_over_its_memory_limit_is_oom_killed_retried_then_failed(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    template = json.loads(json.dumps(objectives))
    template["spec"]["containers"][0]["resources"] = {"limits": {"memory": "256Mi"}}
    studies.create(
        "hungry",
        {
            "searchSpace": {"x": {"type": "float", "low": 0, "high": 1}},
            "budget": {"trials": 1, "retriesPerTrial": 1},
            "trial": {"objective": "objectives:over_memory", "template": template},
        },
    )
    studies.wait(
        "hungry", lambda s: (s.get("status") or {}).get("trials", {}).get("failed") == 1, 300, "fail its trial"
    )
    (trial,) = studies.optuna_study("hungry").trials
    assert trial.state == optuna.trial.TrialState.FAIL
    events = studies.events("hungry")
    retried = [e.message for e in events if e.reason == "TrialRetried"]
    assert len(retried) == 1 and "OOMKilled" in retried[0], retried
    assert not [e for e in events if e.reason == "TrialRequeued"], "an OOM kill is a crash, not a preemption"
