"""The operator's policy: which server a study may use with whose admin, and what its trial pods may do."""

from __future__ import annotations

from typing import Any

import pytest

from hpo_operator.models import Storage
from hpo_operator.policy import Policy
from hpo_operator.settings import Settings, SettingsError, tls_from

pytestmark = pytest.mark.unit
POLICY = Policy("mysql.hpo-system.svc", 3306)


@pytest.mark.parametrize(
    ("storage", "policy", "fields"),
    [
        ({}, POLICY, []),
        ({"host": "MYSQL.hpo-system.svc."}, POLICY, []),  # the default server, spelled differently
        ({"port": 3306}, POLICY, []),
        ({"host": "db.team-a.svc"}, POLICY, ["spec.storage.adminSecret"]),
        ({"port": 3307}, POLICY, ["spec.storage.adminSecret"]),  # the default host on another port is another server
        ({"host": "db.team-a.svc", "adminSecret": {"name": "admin"}}, POLICY, []),
        (
            {"host": "evil.example", "adminSecret": {"name": "admin"}},
            Policy("mysql", 3306, ("db.internal", "*.rds.example:3306")),
            ["spec.storage.host"],
        ),
        (
            {"host": "a.rds.example", "adminSecret": {"name": "admin"}},
            Policy("mysql", 3306, ("db.internal", "*.rds.example:3306")),
            [],
        ),
        (
            {"host": "a.rds.example", "port": 3307, "adminSecret": {"name": "admin"}},
            Policy("mysql", 3306, ("*.rds.example:3306",)),
            ["spec.storage.host"],
        ),
        (
            {"host": "evil.example"},
            Policy("mysql", 3306, ("db.internal",)),
            ["spec.storage.adminSecret", "spec.storage.host"],
        ),
        ({"tls": {"caSecret": {"name": "ca"}}}, POLICY, ["spec.storage.tls"]),
        ({"host": "db.team-a.svc", "adminSecret": {"name": "admin"}, "tls": {"caSecret": {"name": "ca"}}}, POLICY, []),
    ],
)
def test_the_operators_admin_goes_only_to_the_operators_server(
    storage: dict[str, Any], policy: Policy, fields: list[str]
) -> None:
    problems = policy.storage_problems(Storage.model_validate(storage))
    assert [p.field for p in problems] == fields
    assert all(str(p).startswith(p.field) and len(p.message) > 30 for p in problems), "each says what to do"


ALLOWING = Policy("mysql", 3306, trial_service_accounts=("trainer",))
T = "spec.trial.template.spec"


@pytest.mark.parametrize(
    ("pod", "policy", "fields"),
    [
        ({}, POLICY, []),
        ({"containers": [{"name": "trial", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}, POLICY, []),
        ({"serviceAccountName": "default"}, POLICY, []),
        ({"serviceAccountName": "cluster-admin-sa"}, POLICY, [f"{T}.serviceAccountName"]),
        ({"serviceAccount": "cluster-admin-sa"}, POLICY, [f"{T}.serviceAccount"]),
        ({"serviceAccountName": "trainer"}, ALLOWING, []),
        ({"serviceAccountName": "trainer", "automountServiceAccountToken": True}, ALLOWING, []),
        ({"automountServiceAccountToken": True}, POLICY, [f"{T}.automountServiceAccountToken"]),
        ({"automountServiceAccountToken": False}, POLICY, []),
        (
            {"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]},
            POLICY,
            [f"{T}.volumes[0].projected.sources[0].serviceAccountToken"],
        ),
        (
            {
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "d"}},
                    {"name": "root", "hostPath": {"path": "/"}},
                ]
            },
            POLICY,
            [f"{T}.volumes[1].hostPath"],
        ),
        ({"hostNetwork": True}, POLICY, [f"{T}.hostNetwork"]),
        ({"hostPID": True, "hostIPC": True}, POLICY, [f"{T}.hostPID", f"{T}.hostIPC"]),
        ({"hostNetwork": False}, POLICY, []),
        (
            {"containers": [{"name": "trial", "securityContext": {"privileged": True}}]},
            POLICY,
            [f"{T}.containers[0].securityContext.privileged"],
        ),
        (
            {"initContainers": [{"name": "i", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
            POLICY,
            [f"{T}.initContainers[0].securityContext.capabilities.add"],
        ),
        ({"containers": [{"name": "trial", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}, POLICY, []),
        (
            {"containers": [{"name": "trial", "ports": [{"containerPort": 80, "hostPort": 80}]}]},
            POLICY,
            [f"{T}.containers[0].ports[0].hostPort"],
        ),
        # Every violation is listed, not only the first.
        (
            {
                "serviceAccountName": "x",
                "hostPID": True,
                "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}],
                "containers": [{"name": "trial", "securityContext": {"privileged": True}}],
            },
            POLICY,
            [
                f"{T}.serviceAccountName",
                f"{T}.hostPID",
                f"{T}.volumes[0].hostPath",
                f"{T}.containers[0].securityContext.privileged",
            ],
        ),
        # Fields of the wrong shape are reported, never a crash.
        ({"containers": "trial"}, POLICY, [f"{T}.containers"]),
        ({"volumes": [1, 2]}, POLICY, [f"{T}.volumes"]),
        (
            {"containers": [{"name": "trial", "securityContext": "privileged"}]},
            POLICY,
            [f"{T}.containers[0].securityContext"],
        ),
    ],
)
def test_trial_pods_cannot_escalate_beyond_the_namespaces_default_rights(
    pod: dict[str, Any], policy: Policy, fields: list[str]
) -> None:
    assert [p.field for p in policy.trial_pod_problems({"spec": pod})] == fields


def test_a_template_whose_spec_is_not_an_object_is_reported() -> None:
    assert [p.field for p in POLICY.trial_pod_problems({"spec": ["containers"]})] == [T]


def test_the_operators_own_namespace_is_served_only_when_listed() -> None:
    assert not Settings(operator_namespace="hpo-system").serves("hpo-system")
    assert Settings(operator_namespace="hpo-system").serves("team-a")
    assert Settings(operator_namespace="hpo-system", namespaces=("hpo-system",)).serves("hpo-system")


def test_operator_tls_settings_name_the_variable_to_fix(tmp_path: Any) -> None:
    assert not tls_from("", "").enabled
    with pytest.raises(SettingsError, match="HPO_MYSQL_TLS='sometimes'"):
        tls_from("sometimes", "")
    with pytest.raises(SettingsError, match="needs HPO_MYSQL_TLS_CA"):
        tls_from("verify-identity", "")
    with pytest.raises(SettingsError, match="HPO_MYSQL_TLS_CA=/nope"):
        tls_from("verify-ca", "/nope")
    (tmp_path / "ca.pem").write_text("PEM")
    tls = tls_from("Verify-CA", str(tmp_path / "ca.pem"))
    assert tls.enabled and not tls.verify_identity
