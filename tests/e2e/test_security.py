"""Multi-tenant security end to end: what a hostile or careless study author can and cannot get.

The operator runs with the tests' policy (`tests.e2e.conftest.OPERATOR_POLICY`): studies may name
the default server (127.0.0.1) and 127.0.0.2, where these tests run fake MySQL servers that ask for
the password in clear text; trial pods may run as `trainer`; `hpo-operator-home` plays the
operator's own namespace.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pymysql
import pytest
from kubernetes import client

from hpo_operator import database
from tests import mysql
from tests.conftest import ROOT, TESTBED
from tests.e2e.conftest import OBJECTIVES, OPERATOR_NAMESPACE
from tests.fake_mysql import FakeMySQL
from tests.helpers import wait_for
from tests.legacy_names import colliding_studies
from tests.pod_logs import PodLogs
from tests.studies import Studies
from tests.testbed.layout import OTHER_MYSQL_IP

pytestmark = pytest.mark.e2e

OPERATOR_LOG = ROOT / ".testbed" / "logs" / "operator.log"


def study_spec(
    template: dict[str, Any],
    trials: int = 2,
    parallelism: int = 2,
    objective: str = "objectives:quadratic",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}, "y": {"type": "int", "low": 0, "high": 3}},
        "budget": {"trials": trials, "parallelism": min(parallelism, trials)},
        "trial": {"objective": objective, "template": template},
        **extra,
    }


def condition(study: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in (study.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def secret(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, str]:
    data = core.read_namespaced_secret(name, namespace).data or {}
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def add_secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, str]) -> None:
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data))


@pytest.fixture
def hostile_server() -> Iterator[FakeMySQL]:
    server = FakeMySQL("127.0.0.2")
    yield server
    server.close()


# --- 1. the admin credentials go only to the server they belong to -----------------------------


def test_a_study_naming_another_server_without_its_admin_is_refused_and_that_server_hears_nothing(
    studies: Studies, objectives: dict[str, Any], hostile_server: FakeMySQL
) -> None:
    studies.create("steal", study_spec(objectives, storage={"host": hostile_server.host, "port": hostile_server.port}))
    failed = studies.wait_phase("steal", "Failed", 60)
    validated = condition(failed, "Validated")
    assert validated["status"] == "False" and "spec.storage.adminSecret" in validated["message"]
    warning = wait_for(lambda: [e for e in studies.events("steal") if e.reason == "InvalidSpec"], 30, "the Event")
    assert "spec.storage.adminSecret" in warning[0].message
    assert hostile_server.attempts == [], "no connection was made"


def test_with_its_own_admin_secret_a_server_hears_only_that_user_and_never_a_clear_text_password(
    studies: Studies, objectives: dict[str, Any], hostile_server: FakeMySQL, kube: client.ApiClient
) -> None:
    add_secret(
        client.CoreV1Api(kube),
        studies.namespace,
        "my-admin",
        {"username": "tenant-admin", "password": "tenant-password-1"},
    )
    studies.create(
        "own",
        study_spec(
            objectives,
            storage={"host": hostile_server.host, "port": hostile_server.port, "adminSecret": {"name": "my-admin"}},
        ),
    )
    pending = studies.wait(
        "own",
        lambda s: condition(s, "DatabaseReady").get("status") == "False",
        60,
        "report that the database is not ready",
    )
    assert pending["status"]["phase"] == "Pending"
    assert "clear text" in condition(pending, "DatabaseReady")["message"]
    assert set(hostile_server.users()) == {"tenant-admin"} and hostile_server.passwords() == []


def test_a_host_outside_the_operators_allow_list_is_refused(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    add_secret(client.CoreV1Api(kube), studies.namespace, "my-admin", {"username": "u", "password": "p" * 12})
    studies.create(
        "elsewhere",
        study_spec(objectives, storage={"host": "127.0.0.3", "port": 3306, "adminSecret": {"name": "my-admin"}}),
    )
    failed = studies.wait_phase("elsewhere", "Failed", 60)
    assert "spec.storage.host: 127.0.0.3:3306 is not among the storage hosts" in failed["status"]["message"]


def test_a_missing_admin_secret_is_reported_and_provisioning_waits_for_it(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, testbed_env: dict[str, str]
) -> None:
    studies.create(
        "later",
        study_spec(
            objectives,
            trials=1,
            storage={
                "host": testbed_env["HPO_MYSQL_HOST"],
                "port": int(testbed_env["HPO_MYSQL_PORT"]),
                "adminSecret": {"name": "not-yet"},
            },
        ),
    )
    failed = studies.wait(
        "later",
        lambda s: condition(s, "Validated").get("reason") == "ReferenceNotFound",
        60,
        "report the missing Secret",
    )
    assert failed["status"]["phase"] == "Failed"
    assert condition(failed, "Validated")["message"].startswith(
        f"spec.storage.adminSecret: Secret not-yet does not exist in namespace {studies.namespace}"
    )
    add_secret(
        client.CoreV1Api(kube),
        studies.namespace,
        "not-yet",
        {"username": testbed_env["HPO_MYSQL_USER"], "password": testbed_env["HPO_MYSQL_PASSWORD"]},
    )
    studies.wait_phase("later", "Succeeded", 180)
    database.drop(mysql.admin_server(testbed_env), studies.namespace, "later")


def test_a_study_on_a_tls_server_verifies_it_and_its_trial_pods_use_tls(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, testbed_env: dict[str, str]
) -> None:
    core, server = client.CoreV1Api(kube), mysql.admin_server(testbed_env)
    add_secret(
        core,
        studies.namespace,
        "db-admin",
        {"username": testbed_env["HPO_MYSQL_USER"], "password": testbed_env["HPO_MYSQL_PASSWORD"]},
    )
    add_secret(core, studies.namespace, "db-ca", {"ca.crt": (TESTBED / "pki" / "ca.crt").read_text()})
    # The testbed's MariaDB at its second address, which its certificate holds: not the operator's server.
    studies.create(
        "tls",
        study_spec(
            objectives,
            trials=2,
            storage={
                "host": OTHER_MYSQL_IP,
                "port": server.port,
                "adminSecret": {"name": "db-admin"},
                "tls": {"caSecret": {"name": "db-ca"}, "mode": "VerifyIdentity"},
            },
        ),
    )
    try:
        done = studies.wait_phase("tls", "Succeeded")
        assert done["status"]["trials"]["complete"] == 2, "trial pods connected over TLS"
        names = mysql.recorded(server, studies.namespace, "tls")
        assert names is not None
        with mysql.admin(server) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT user, ssl_type FROM mysql.user WHERE user IN (%s, %s)", (names.user, names.reader))
            assert set(cursor.fetchall()) == {(names.user, "ANY"), (names.reader, "ANY")}, "both require TLS"
        stored = secret(core, studies.namespace, "tls-storage")
        assert stored["ca.crt"] == (TESTBED / "pki" / "ca.crt").read_text()
        assert "ssl_check_hostname=true" in stored["url"]
    finally:
        database.drop(server, studies.namespace, "tls")


# --- 2. names no other study can reach -----------------------------------------------------------


@pytest.fixture
def tenants(kube: client.ApiClient) -> Iterator[Callable[[str], Studies]]:
    """Namespaces of our own naming (the collision needs long ones), each with the test objectives."""
    core, made = client.CoreV1Api(kube), []

    def make(name: str) -> Studies:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        made.append(name)
        wait_for(
            lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
            30,
            f"namespace {name} to get its default ServiceAccount",
        )
        core.create_namespaced_config_map(
            name,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="objectives"), data={"objectives.py": OBJECTIVES.read_text()}
            ),
        )
        return Studies(kube, name)

    yield make
    for name in made:
        core.delete_namespace(name)


def test_a_colliding_study_cannot_take_over_another_tenants_database(
    tenants: Callable[[str], Studies],
    objectives: dict[str, Any],
    kube: client.ApiClient,
    operator: int,
    testbed_env: dict[str, str],
) -> None:
    core, server = client.CoreV1Api(kube), mysql.admin_server(testbed_env)
    victim_ns = f"t-{uuid.uuid4().hex[:8]}-victim"
    victims, attackers = tenants(victim_ns), tenants(victim_ns + "-x")
    victim, attacker = colliding_studies(victim_ns, victim_ns + "-x")
    legacy = database.legacy_database(victim_ns, victim)
    # The victim's study as the operator provisioned it before the upgrade: 2 trials, its Secret.
    url, password = mysql.legacy_study(server, victim_ns, victim)
    add_secret(core, victim_ns, f"{victim}-storage", {"url": url, "password": password, "database": legacy})
    try:
        # The attacker's study, under policy Delete, first claims the victim's database in a forged Secret.
        add_secret(
            core,
            attackers.namespace,
            f"{attacker}-storage",
            {"database": legacy, "password": "a-guessed-password", "url": "mysql+pymysql://x"},
        )
        attackers.create(attacker, study_spec(objectives, trials=1, storage={"deletionPolicy": "Delete"}))
        refused = attackers.wait(
            attacker,
            lambda s: condition(s, "DatabaseReady").get("reason") == "DatabaseConflict",
            60,
            "refuse the claim",
        )
        assert legacy in condition(refused, "DatabaseReady")["message"]
        pymysql.connect(host=server.host, port=server.port, user=legacy, password=password).close()
        # Without the forged claim it gets a database of its own, and deleting it leaves the victim's.
        core.delete_namespaced_secret(f"{attacker}-storage", attackers.namespace)
        attackers.wait_phase(attacker, "Succeeded", 120)
        theirs = mysql.recorded(server, attackers.namespace, attacker)
        assert theirs is not None and theirs.database != legacy
        attackers.api.delete_namespaced_custom_object(
            "hpo.dev", "v1alpha1", attackers.namespace, "hpostudies", attacker
        )
        wait_for(lambda: not mysql.exists(server, theirs.database), 60, "the attacker's database to be dropped")
        assert mysql.exists(server, legacy)
        # The victim's study, created again after the upgrade, continues in its own database.
        victims.create(victim, study_spec(objectives, trials=4))
        victims.wait_phase(victim, "Succeeded", 180)
        trials = victims.optuna_study(victim).trials
        assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert mysql.recorded(server, victim_ns, victim) == database.StudyNames(
            legacy, legacy, database.names_for(victim_ns, victim).reader
        )
    finally:
        database.drop(server, victim_ns, victim)
        mysql.drop_legacy(server, victim_ns, victim)


def test_each_study_gets_a_read_only_secret_whose_user_cannot_write(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    studies.create("readable", study_spec(objectives, trials=2))
    studies.wait_phase("readable", "Succeeded")
    core = client.CoreV1Api(kube)
    writer, reader = (secret(core, studies.namespace, f"readable-{kind}") for kind in ("storage", "storage-readonly"))
    assert reader["url"].split("@")[1] == writer["url"].split("@")[1], "same host, port and database"
    assert reader["username"] != writer["username"]
    assert len(optuna.load_study(study_name="readable", storage=reader["url"]).trials) == 2
    host, port = reader["url"].split("@")[1].split("/")[0].split(":")
    with (
        pymysql.connect(
            host=host, port=int(port), user=reader["username"], password=reader["password"], database=reader["database"]
        ) as connection,
        connection.cursor() as cursor,
        pytest.raises(pymysql.err.OperationalError, match="denied"),
    ):
        cursor.execute("DELETE FROM trials")


# --- 4. trial pods cannot escalate ----------------------------------------------------------------


ESCALATIONS = {
    "foreign-account": ({"serviceAccountName": "builder"}, "spec.trial.template.spec.serviceAccountName"),
    "host-path": (
        {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
        "spec.trial.template.spec.volumes[0].hostPath",
    ),
    "host-network": ({"hostNetwork": True}, "spec.trial.template.spec.hostNetwork"),
    "privileged": (
        {"containers": [{"name": "trial", "securityContext": {"privileged": True}}]},
        "spec.trial.template.spec.containers[0].securityContext.privileged",
    ),
    "token": ({"automountServiceAccountToken": True}, "spec.trial.template.spec.automountServiceAccountToken"),
}


def test_templates_that_escalate_are_refused_naming_the_field_and_get_no_job(
    studies: Studies, kube: client.ApiClient
) -> None:
    for name, (pod, _field) in ESCALATIONS.items():
        studies.create(name, study_spec({"spec": pod}))
    for name, (_pod, field) in ESCALATIONS.items():
        failed = studies.wait_phase(name, "Failed", 60)
        validated = condition(failed, "Validated")
        assert validated["status"] == "False" and field in validated["message"], validated
    assert client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items == []


def test_trial_pods_get_an_api_token_only_under_an_allowed_service_account(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient
) -> None:
    client.CoreV1Api(kube).create_namespaced_service_account(
        studies.namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="trainer"))
    )
    allowed = json.loads(json.dumps(objectives))
    allowed["spec"] |= {"serviceAccountName": "trainer", "automountServiceAccountToken": True}
    studies.create("trainer", study_spec(allowed, trials=1, objective="objectives:has_api_token"))
    studies.create("plain", study_spec(objectives, trials=1, objective="objectives:has_api_token"))
    assert studies.wait_phase("trainer", "Succeeded")["status"]["bestTrial"]["value"] == 1.0
    assert studies.wait_phase("plain", "Succeeded")["status"]["bestTrial"]["value"] == 0.0


def test_the_operators_own_namespace_is_not_served(kube: client.ApiClient, operator: int) -> None:
    core = client.CoreV1Api(kube)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE)))
    except client.ApiException as error:
        assert error.status == 409
    studies = Studies(kube, OPERATOR_NAMESPACE)
    name = f"s-{uuid.uuid4().hex[:6]}"
    studies.create(name, {"budget": {"trials": 1}})
    try:
        failed = studies.wait_phase(name, "Failed", 60)
        assert "metadata.namespace" in condition(failed, "Validated")["message"]
        assert client.BatchV1Api(kube).list_namespaced_job(OPERATOR_NAMESPACE).items == []
        with pytest.raises(client.ApiException):
            core.read_namespaced_secret(f"{name}-storage", OPERATOR_NAMESPACE)
    finally:
        studies.api.delete_namespaced_custom_object("hpo.dev", "v1alpha1", OPERATOR_NAMESPACE, "hpostudies", name)


# --- 6. no secret in any output --------------------------------------------------------------------


def _kill_sessions(server: database.Server, user: str) -> None:
    with mysql.admin(server) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT id FROM information_schema.processlist WHERE user = %s", (user,))
        for (session,) in cursor.fetchall():
            with contextlib.suppress(pymysql.err.OperationalError):  # it ended by itself
                cursor.execute(f"KILL CONNECTION {int(session)}")


def test_no_password_appears_in_logs_events_status_jobs_or_pods_after_failures_and_outages(
    studies: Studies, objectives: dict[str, Any], kube: client.ApiClient, testbed_env: dict[str, str]
) -> None:
    core, server = client.CoreV1Api(kube), mysql.admin_server(testbed_env)
    with PodLogs(kube, studies.namespace) as logs:
        run_failures_and_an_outage(studies, objectives, server)
        pod_logs = "".join(logs.all().values())
    passwords = {"the MySQL admin": testbed_env["HPO_MYSQL_PASSWORD"], "the tenant admin": "tenant-password-2"}
    for name in ("flaky", "crashy", "outage"):
        for kind in ("storage", "storage-readonly"):
            passwords[f"{name}-{kind}"] = secret(core, studies.namespace, f"{name}-{kind}")["password"]
    api = client.ApiClient()
    outputs = {
        "the operator's log": OPERATOR_LOG.read_text(),
        "Events": json.dumps(
            [
                api.sanitize_for_serialization(e)  # type: ignore[no-untyped-call]
                for e in core.list_namespaced_event(studies.namespace).items
            ]
        ),
        "studies": json.dumps([studies.get(n) for n in ("flaky", "crashy", "nowhere", "outage")]),
        "Jobs": json.dumps(
            api.sanitize_for_serialization(  # type: ignore[no-untyped-call]
                client.BatchV1Api(kube).list_namespaced_job(studies.namespace).items
            )
        ),
        "pods": json.dumps(
            api.sanitize_for_serialization(  # type: ignore[no-untyped-call]
                core.list_namespaced_pod(studies.namespace).items
            )
        ),
        "pod logs": pod_logs,
    }
    assert "fails on purpose" in pod_logs, "the failures were logged"
    leaks = [
        f"{secret_name} in {where}"
        for secret_name, value in passwords.items()
        for where, text in outputs.items()
        if value in text
    ]
    assert leaks == []


def run_failures_and_an_outage(studies: Studies, objectives: dict[str, Any], server: database.Server) -> None:
    """Failed and crashed trials, a study whose server is unreachable, and one whose database goes away."""
    add_secret(
        client.CoreV1Api(studies.api.api_client),
        studies.namespace,
        "tenant-admin",
        {"username": "tenant", "password": "tenant-password-2"},
    )
    slow = json.loads(json.dumps(objectives))
    slow["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SLEEP", "value": "3"})
    studies.create(
        "flaky",
        study_spec(
            objectives,
            trials=4,
            objective="objectives:flaky",
            budget={"trials": 4, "parallelism": 2, "retriesPerTrial": 0},
        ),
    )
    studies.create("crashy", study_spec(objectives, trials=1, objective="objectives:crash"))
    studies.create(
        "nowhere",
        study_spec(objectives, storage={"host": "127.0.0.2", "port": 9, "adminSecret": {"name": "tenant-admin"}}),
    )
    studies.create("outage", study_spec(slow, trials=3, parallelism=1))
    # An outage of one study's database: its sessions are killed and its user locked until the operator
    # has run into it, then the database comes back.
    running = studies.wait(
        "outage", lambda s: (s.get("status") or {}).get("trials", {}).get("running", 0) == 1, 120, "start a trial"
    )
    names = mysql.recorded(server, studies.namespace, "outage")
    assert names is not None and running
    mark = len(OPERATOR_LOG.read_text())
    with mysql.admin(server) as connection, connection.cursor() as cursor:
        cursor.execute("ALTER USER %s@'%%' ACCOUNT LOCK", (names.user,))
        _kill_sessions(server, names.user)
        wait_for(lambda: "locked" in OPERATOR_LOG.read_text()[mark:], 90, "the operator to run into the outage")
        cursor.execute("ALTER USER %s@'%%' ACCOUNT UNLOCK", (names.user,))
    for name in ("flaky", "crashy", "outage"):
        studies.wait(name, lambda s: (s.get("status") or {}).get("phase") in ("Succeeded", "Failed"), 240, "end")
    studies.wait("nowhere", lambda s: condition(s, "DatabaseReady").get("status") == "False", 60, "fail to connect")
