"""The Helm chart on the testbed: lint, every option rendered and dry-run by the real API server,
install, least-privilege RBAC, a study run by the chart's operator in-cluster (from the operator
image), upgrade, failover between two peered operators, a database-only release with the in-chart
MySQL, a cluster-scoped release serving a study from its own MySQL with the dashboard, uninstall.

The tests run in file order and share one release (fixture `chart`): namespace-scoped RBAC serving
one study namespace, the testbed's MariaDB as the external server, in a release namespace that
enforces (and warns about) the `restricted` Pod Security level. The dev operator (`make
operator-up`, every namespace) would fight the chart's over studies, so the fixture stops it and
starts it again afterwards.

The ServiceMonitor is rendered with `--api-versions monitoring.coreos.com/v1/ServiceMonitor` and
checked against the metrics Service; the testbed has no Prometheus Operator CRDs, so that one object
is left out of the server-side dry-run (every other rendered object goes through it).
"""

from __future__ import annotations

import base64
import filecmp
import json
import os
import signal
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import optuna
import pymysql
import pytest
import yaml
from kubernetes import client

from hpo_operator import database
from tests import mysql
from tests.conftest import ROOT
from tests.e2e.conftest import OBJECTIVES, start_operator
from tests.helpers import wait_for
from tests.mysql import admin_server
from tests.studies import Studies

pytestmark = pytest.mark.e2e

CHART = ROOT / "charts" / "hpo-operator"
PYTHON = ROOT / ".venv" / "bin" / "python"
STANDARD_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
PSS_LABELS = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
Case = tuple[str, str, "str | None"]  # verb, resource (may carry flags), namespace (None: cluster-wide)


def image_values(env: dict[str, str]) -> dict[str, Any]:
    """Chart values naming the images the testbed built and pushed to its registry."""

    def split(variable: str) -> dict[str, str]:
        repository, tag = env[variable].rsplit(":", 1)
        return {"repository": repository, "tag": tag}

    return {
        "image": split("HPO_OPERATOR_IMAGE"),
        "operator": {"trialImage": split("HPO_TRIAL_IMAGE")},
        "mysql": {"image": split("HPO_MYSQL_IMAGE")},
        "dashboard": {"image": split("HPO_DASHBOARD_IMAGE")},
    }


def free_port() -> int:
    """A port nothing on this host listens on now (for operators run as host processes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def plain(obj: Any) -> dict[str, Any]:
    """A client model as the JSON the API server sent (camelCase keys), for plain dict access."""
    return cast(dict[str, Any], client.ApiClient().sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]


@dataclass
class Chart:
    """The shared release and the commands that drive it."""

    kube: client.ApiClient
    env: dict[str, str]
    release: str
    namespace: str  # the release namespace (restricted Pod Security)
    studies_namespace: str  # the one namespace the release serves
    values: Path
    template: dict[str, Any] = field(default_factory=dict)  # trial pod template mounting the objectives

    @property
    def fullname(self) -> str:
        return f"{self.release}-hpo-operator"

    @property
    def account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def run(self, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(list(argv), input=input, env=self.env, capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
        return result

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, input=input, check=check)

    def render(self, *args: str) -> list[dict[str, Any]]:
        out = self.helm("template", "render", str(CHART), "-n", self.namespace, *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def operator_pods(self) -> list[dict[str, Any]]:
        """The release's operator pods that are not on their way out."""
        selector = f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=operator"
        pods = client.CoreV1Api(self.kube).list_namespaced_pod(self.namespace, label_selector=selector).items
        return [plain(p) for p in pods if p.metadata is None or p.metadata.deletion_timestamp is None]

    def can_i(self, verb: str, resource: str, namespace: str | None, account: str = "") -> bool:
        """`kubectl auth can-i --as` the operator's ServiceAccount.

        Kinds the cluster may not serve (Kueue's, when it is not installed) are asked with a
        SubjectAccessReview naming their group: kubectl, finding no such resource type, would ask
        about a resource named `plural.group` in the core group instead.
        """
        plural, _, group = resource.partition(".")
        if group in OPTIONAL_GROUPS:
            return self.reviewed(verb, plural, group, namespace, account or self.account)
        scope = ["-n", namespace] if namespace else []
        result = self.kubectl(
            "auth", "can-i", verb, *resource.split(), *scope, f"--as={account or self.account}", check=False
        )
        assert result.stdout.strip() in ("yes", "no"), result.stderr
        return result.stdout.strip() == "yes"

    def reviewed(self, verb: str, plural: str, group: str, namespace: str | None, account: str) -> bool:
        """What the API server's authorizer answers for ``account`` (a ServiceAccount's user name)."""
        account_namespace = account.split(":")[2]
        review = client.AuthorizationV1Api(self.kube).create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=account,
                    groups=[
                        "system:serviceaccounts",
                        f"system:serviceaccounts:{account_namespace}",
                        "system:authenticated",
                    ],
                    resource_attributes=client.V1ResourceAttributes(
                        verb=verb, group=group, resource=plural, namespace=namespace
                    ),
                )
            )
        )
        return bool(review.status.allowed)

    def can_all(self, cases: list[Case], account: str = "") -> dict[Case, bool]:
        with ThreadPoolExecutor(8) as pool:
            answers = pool.map(lambda case: self.can_i(case[0], case[1], case[2], account), cases)
            return dict(zip(cases, answers, strict=True))

    def secret(self, name: str) -> dict[str, str]:
        data = client.CoreV1Api(self.kube).read_namespaced_secret(name, self.namespace).data or {}
        return {key: base64.b64decode(value).decode() for key, value in data.items()}


def _create_namespace(core: client.CoreV1Api, name: str, labels: dict[str, str] | None = None) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    wait_for(
        lambda: (
            core.list_namespaced_service_account(name, field_selector="metadata.name=default").items
            and core.list_namespaced_config_map(name, field_selector="metadata.name=kube-root-ca.crt").items
        ),
        30,
        f"namespace {name} to get its default ServiceAccount and root CA",
    )


@pytest.fixture(scope="module")
def chart(
    kube: client.ApiClient, testbed_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chart]:
    env = {**os.environ, "KUBECONFIG": testbed_env["KUBECONFIG"], "PATH": testbed_env["PATH"]}
    dev_operator = (ROOT / ".testbed" / "operator.pid").exists()
    subprocess.run([str(PYTHON), "-m", "tests.testbed", "operator-down"], cwd=ROOT, check=True, capture_output=True)
    suffix = uuid.uuid4().hex[:6]
    core = client.CoreV1Api(kube)
    values = tmp_path_factory.mktemp("chart") / "values.yaml"
    setup = Chart(kube, env, f"c{suffix}", f"hpo-{suffix}", f"t-chart-{suffix}", values)
    setup.template = {
        "spec": {
            "containers": [
                {
                    "name": "trial",
                    "env": [{"name": "PYTHONPATH", "value": "/objectives"}],
                    "volumeMounts": [{"name": "objectives", "mountPath": "/objectives"}],
                }
            ],
            "volumes": [{"name": "objectives", "configMap": {"name": "objectives"}}],
        }
    }
    values.write_text(
        yaml.safe_dump(
            {
                **image_values(testbed_env),
                "rbac": {"scope": "namespaced"},
                "watchNamespaces": [setup.studies_namespace],
                "mysql": {
                    "enabled": False,
                    "external": {
                        "host": testbed_env["HPO_MYSQL_HOST"],
                        "port": int(testbed_env["HPO_MYSQL_PORT"]),
                        "adminSecret": {"name": "mysql-admin"},
                    },
                },
                "operator": {
                    **image_values(testbed_env)["operator"],
                    "probes": {"initialDelaySeconds": 1, "periodSeconds": 2},
                },
            }
        )
    )
    try:
        setup.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        _create_namespace(core, setup.namespace, PSS_LABELS)
        _create_namespace(core, setup.studies_namespace)
        core.create_namespaced_secret(
            setup.namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="mysql-admin"),
                string_data={"username": testbed_env["HPO_MYSQL_USER"], "password": testbed_env["HPO_MYSQL_PASSWORD"]},
            ),
        )
        core.create_namespaced_config_map(
            setup.studies_namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name="objectives"), data={"objectives.py": OBJECTIVES.read_text()}
            ),
        )
        yield setup
    finally:
        setup.helm("uninstall", setup.release, "-n", setup.namespace, "--wait", check=False)
        api = client.CustomObjectsApi(kube)
        found = cast(
            dict[str, Any],
            api.list_namespaced_custom_object("hpo.dev", "v1alpha1", setup.studies_namespace, "hpostudies"),
        )
        for study in found["items"]:  # no operator is left to remove their finalizers
            name = study["metadata"]["name"]
            api.patch_namespaced_custom_object(
                "hpo.dev", "v1alpha1", setup.studies_namespace, "hpostudies", name, {"metadata": {"finalizers": None}}
            )
            database.drop(admin_server(testbed_env), setup.studies_namespace, name)
        for namespace in (setup.studies_namespace, setup.namespace):
            core.delete_namespace(namespace)
        if dev_operator:
            start_operator()


# --- lint and renders --------------------------------------------------------------------------


def test_lint_and_the_chart_crds_are_exactly_the_top_level_crds(chart: Chart) -> None:
    chart.helm("lint", "--strict", str(CHART))
    chart.helm("lint", "--strict", str(CHART), "-f", str(chart.values))
    comparison = filecmp.dircmp(ROOT / "crds", CHART / "crds")
    assert not (comparison.left_only or comparison.right_only), "charts/hpo-operator/crds must hold crds/'s files"
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "crds", CHART / "crds", comparison.common_files, shallow=False)
    assert not (mismatch or errors), f"copy crds/ into the chart again: {mismatch + errors} differ"


OPTIONS = [
    "defaults (in-chart MySQL, cluster RBAC)",
    "external MySQL",
    "namespaced RBAC",
    "dashboard",
    "ServiceMonitor",
    "NetworkPolicy",
    "namespace with Pod Security labels",
    "two replicas",
]


def _option_args(chart: Chart, option: str) -> list[str]:
    external = [
        "--set",
        "mysql.enabled=false",
        "--set",
        "mysql.external.host=mysql.example",
        "--set",
        "mysql.external.adminSecret.name=mysql-admin",
    ]
    return {
        OPTIONS[0]: [],
        OPTIONS[1]: external,
        OPTIONS[2]: [
            *external,
            "--set",
            "rbac.scope=namespaced",
            "--set",
            f"watchNamespaces={{{chart.studies_namespace}}}",
        ],
        OPTIONS[3]: ["--set", "dashboard.enabled=true", "--set", f"dashboard.study={chart.studies_namespace}/s"],
        OPTIONS[4]: [
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
        ],
        OPTIONS[5]: [
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "dashboard.enabled=true",
            "--set",
            f"dashboard.study={chart.studies_namespace}/s",
        ],
        OPTIONS[6]: ["--set", "namespace.create=true"],
        OPTIONS[7]: ["--set", "operator.replicas=2"],
    }[option]


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_renders_and_passes_a_server_side_dry_run(chart: Chart, option: str) -> None:
    objects = chart.render(*_option_args(chart, option))
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert all(key in labels for key in STANDARD_LABELS), f"{obj['kind']} {obj['metadata']['name']}: {labels}"
    operator = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "render-hpo-operator")
    assert operator["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    for container in (c for spec in _pod_specs(objects) for c in spec["containers"]):
        assert container.get("command"), f"{container['name']} names no command"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    if option == "ServiceMonitor":
        (monitor,) = monitors
        service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics"))
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    else:
        assert not monitors
    if option == "dashboard":  # in the study's namespace, as the study's read-only user, never the admin
        (dashboard,) = [o for o in objects if o["kind"] == "Deployment" and "dashboard" in o["metadata"]["name"]]
        assert dashboard["metadata"]["namespace"] == chart.studies_namespace
        container = dashboard["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][0] == "$(DB_URL)"
        assert {
            "name": "DB_URL",
            "valueFrom": {"secretKeyRef": {"name": "s-storage-readonly", "key": "url"}},
        } in container["env"]
        assert "admin" not in json.dumps(dashboard)
    manifest = yaml.safe_dump_all([o for o in objects if o["kind"] != "ServiceMonitor"])
    result = chart.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
    assert "would violate PodSecurity" not in result.stderr, result.stderr


def test_the_service_monitor_is_left_out_where_its_crd_is_missing(chart: Chart) -> None:
    objects = chart.render("--set", "metrics.serviceMonitor.enabled=true")
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"]
    notes = chart.helm(
        "install",
        "render",
        str(CHART),
        "-n",
        chart.namespace,
        "--dry-run",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ).stdout
    assert "no ServiceMonitor was created" in notes


def test_a_wrong_value_fails_with_a_message_naming_it(chart: Chart) -> None:
    for args, message in [
        (["--set", "rbac.scope=everywhere"], "/rbac/scope"),
        (["--set", "operator.metricsPort=70000"], "/operator/metricsPort"),
        (["--set", "mysql.enabled=false"], "/mysql/external"),
        (["--set", "dashboard.enabled=true"], "/dashboard"),
        (["--set", "rbac.scope=namespaced"], "/watchNamespaces"),
        (["--set", "mysql.tls.mode=verify-ca"], "/mysql/tls"),
        (["--set", "policy.storageHosts={db/x}"], "/policy/storageHosts/0"),
    ]:
        result = chart.helm("template", "bad", str(CHART), *args, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr


# --- the release on the testbed ------------------------------------------------------------------


def test_install_makes_the_operator_available_under_restricted_pod_security(chart: Chart) -> None:
    chart.helm(
        "install",
        chart.release,
        str(CHART),
        "-n",
        chart.namespace,
        "-f",
        str(chart.values),
        "--wait",
        "--timeout",
        "3m",
    )
    chart.kubectl(
        "-n", chart.namespace, "wait", "--for=condition=Available", f"deployment/{chart.fullname}", "--timeout=120s"
    )
    (pod,) = chart.operator_pods()
    assert pod["spec"]["serviceAccountName"] == chart.fullname
    assert pod["spec"]["containers"][0]["command"] == ["hpo-operator"]
    manifest = chart.helm("get", "manifest", chart.release, "-n", chart.namespace).stdout
    for obj in filter(None, yaml.safe_load_all(manifest)):
        assert all(key in obj["metadata"].get("labels", {}) for key in STANDARD_LABELS), obj["metadata"]["name"]
    # The namespace really enforces `restricted`: a pod that breaks it is refused.
    rogue = client.V1Pod(
        metadata=client.V1ObjectMeta(name="rogue"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="c", image="x", command=["true"], security_context=client.V1SecurityContext(privileged=True)
                )
            ]
        ),
    )
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(chart.kube).create_namespaced_pod(chart.namespace, rogue, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)


# What the operator does in a namespace it serves (kube.py, reconcile.py, Kopf's watches and patches).
OPTIONAL_GROUPS = ("kueue.x-k8s.io",)  # API groups the testbed serves only after `make kueue-up`
ALLOWED_IN_SERVED = [
    ("list", "hpostudies.hpo.dev"),
    ("watch", "hpostudies.hpo.dev"),
    ("patch", "hpostudies.hpo.dev"),
    ("patch", "hpostudies.hpo.dev --subresource=status"),
    ("list", "pods"),
    ("watch", "pods"),
    ("list", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("get", "secrets"),
    ("create", "secrets"),
    ("patch", "secrets"),
    ("get", "persistentvolumeclaims"),
    ("create", "events"),
    ("list", "kopfpeerings.kopf.dev"),
    ("watch", "kopfpeerings.kopf.dev"),
    ("get", "localqueues.kueue.x-k8s.io"),
    ("list", "workloads.kueue.x-k8s.io"),
]
DENIED_IN_SERVED = [
    ("delete", "hpostudies.hpo.dev"),
    ("update", "hpostudies.hpo.dev"),
    ("create", "hpostudies.hpo.dev"),
    ("create", "pods"),
    ("delete", "pods"),
    ("update", "jobs.batch"),
    ("list", "secrets"),
    ("delete", "secrets"),
    ("update", "secrets"),
    ("delete", "events"),
    ("create", "configmaps"),
    ("patch", "kopfpeerings.kopf.dev/other"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "pods/exec"),
    ("create", "localqueues.kueue.x-k8s.io"),
    ("update", "workloads.kueue.x-k8s.io"),
]


def test_the_service_account_may_do_what_the_operator_does_and_nothing_more(chart: Chart) -> None:
    served, own = chart.studies_namespace, chart.namespace
    allowed: list[Case] = [(v, r, served) for v, r in ALLOWED_IN_SERVED]
    allowed += [
        ("patch", f"kopfpeerings.kopf.dev/{chart.fullname}", served),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("list", "namespaces", None),
        ("watch", "namespaces", None),
    ]
    denied: list[Case] = [(v, r, served) for v, r in DENIED_IN_SERVED]
    denied += [
        ("get", "secrets", own),
        ("get", "secrets", "default"),
        ("list", "hpostudies.hpo.dev", "default"),
        ("create", "jobs.batch", own),
        ("create", "jobs.batch", "default"),
        ("list", "pods", "kube-system"),
        ("list", "nodes", None),
        ("get", "clusterroles.rbac.authorization.k8s.io", None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("list", "secrets", None),
        ("list", "clusterkopfpeerings.kopf.dev", None),
        ("delete", "namespaces", None),
    ]
    answers = chart.can_all(allowed + denied)
    assert [case for case in allowed if not answers[case]] == [], "the operator needs these"
    assert [case for case in denied if answers[case]] == [], "the operator does not need these"


def test_study_authors_get_studies_through_the_built_in_edit_and_view_roles(chart: Chart) -> None:
    rbac = client.RbacAuthorizationV1Api(chart.kube)
    for user, role in (("alice", "edit"), ("bob", "view")):
        rbac.create_namespaced_role_binding(
            chart.studies_namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name=f"{user}-{role}"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
                subjects=[client.RbacV1Subject(kind="User", name=user, api_group="rbac.authorization.k8s.io")],
            ),
        )
    served = chart.studies_namespace
    expected: dict[Case, bool] = {
        ("create", "hpostudies.hpo.dev", served): True,
        ("delete", "hpostudies.hpo.dev", served): True,
        ("patch", "hpostudies.hpo.dev --subresource=status", served): False,
    }
    # The aggregation controller copies the chart's rules into edit and view shortly after install.
    wait_for(lambda: chart.can_i("create", "hpostudies.hpo.dev", served, "alice"), 60, "edit to include hpostudies")
    assert chart.can_all(list(expected), "alice") == expected
    viewer: dict[Case, bool] = {
        ("get", "hpostudies.hpo.dev", served): True,
        ("watch", "hpostudies.hpo.dev", served): True,
        ("create", "hpostudies.hpo.dev", served): False,
    }
    wait_for(lambda: chart.can_i("get", "hpostudies.hpo.dev", served, "bob"), 60, "view to include hpostudies")
    assert chart.can_all(list(viewer), "bob") == viewer


def test_without_rbac_create_the_chart_makes_no_cluster_wide_role(chart: Chart) -> None:
    kinds = {o["kind"] for o in chart.render("--set", "rbac.create=false")}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    names = [o["metadata"]["name"] for o in chart.render() if o["kind"].startswith("Cluster")]
    assert names and all(name.startswith("render-") for name in names), "cluster-wide objects carry the release"


def _study_spec(chart: Chart, trials: int, parallelism: int, sleep: float) -> dict[str, Any]:
    template = json.loads(json.dumps(chart.template))
    template["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SLEEP", "value": str(sleep)})
    return {
        "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}, "y": {"type": "int", "low": 0, "high": 3}},
        "budget": {"trials": trials, "parallelism": parallelism},
        "trial": {"objective": "objectives:quadratic", "template": template},
    }


def _all_complete(studies: Studies, name: str) -> int:
    states = [t.state for t in studies.optuna_study(name).get_trials(deepcopy=False)]
    assert len(states) == states.count(optuna.trial.TrialState.COMPLETE), states
    return len(states)


def test_the_operator_in_cluster_with_the_chart_account_completes_a_study(chart: Chart) -> None:
    studies = Studies(chart.kube, chart.studies_namespace)
    studies.create("incluster", _study_spec(chart, trials=4, parallelism=2, sleep=0.5))
    batch = client.BatchV1Api(chart.kube)
    jobs = wait_for(lambda: batch.list_namespaced_job(chart.studies_namespace).items, 60, "a trial Job")
    trial_pod = json.dumps(plain(jobs[0])["spec"]["template"])
    assert "mysql-admin" not in trial_pod and "HPO_MYSQL_PASSWORD" not in trial_pod, "trial pods get no admin Secret"
    studies.wait_phase("incluster", "Succeeded", 120)
    assert _all_complete(studies, "incluster") == 4
    assert {"DatabaseReady", "TrialStarted", "StudyFinished"} <= {e.reason for e in studies.events("incluster")}
    (pod,) = chart.operator_pods()
    log = client.CoreV1Api(chart.kube).read_namespaced_pod_log(pod["metadata"]["name"], chart.namespace)
    assert f"[{chart.studies_namespace}/incluster] trial 0 attempt 0: created Job" in log, log
    assert "Forbidden" not in log, f"the chart's RBAC lacks something the operator does:\n{log}"


def test_upgrade_changes_a_value_while_a_study_keeps_running(chart: Chart) -> None:
    studies = Studies(chart.kube, chart.studies_namespace)
    studies.create("upgrade", _study_spec(chart, trials=6, parallelism=2, sleep=3))
    running = studies.wait(
        "upgrade", lambda s: (s.get("status") or {}).get("trials", {}).get("complete", 0) >= 1, 120, "finish a trial"
    )
    assert running["status"]["phase"] == "Running"
    (before,) = chart.operator_pods()
    chart.helm(
        "upgrade",
        chart.release,
        str(CHART),
        "-n",
        chart.namespace,
        "--reuse-values",
        "--set",
        "operator.logLevel=verbose",
        "--set",
        "operator.resources.limits.memory=768Mi",
        "--wait",
        "--timeout",
        "3m",
    )
    (after,) = wait_for(
        lambda: [p for p in chart.operator_pods() if p["metadata"]["name"] != before["metadata"]["name"]],
        60,
        "the upgraded pod",
    )
    container = after["spec"]["containers"][0]
    assert "--verbose" in container["args"] and container["resources"]["limits"]["memory"] == "768Mi"
    done = studies.wait_phase("upgrade", "Succeeded", 180)
    assert done["status"]["progress"] == "6/6" and _all_complete(studies, "upgrade") == 6


SAMPLERS = ("tpe", "random", "cmaes", "gp", "nsga2", "qmc", "grid")
PRUNERS = {
    "median": {"n_startup_trials": 2},
    "percentile": {"percentile": 50.0, "n_startup_trials": 2},
    "hyperband": {"min_resource": 1, "max_resource": 4, "reduction_factor": 2},
    "successiveHalving": {"min_resource": 1, "reduction_factor": 2},
}


def test_every_sampler_and_pruner_works_with_the_operator_image(chart: Chart) -> None:
    """The chart's operator (the operator image) asks every sampler the README lists; each study
    completes every trial, the model-based ones past their random start-up. Each pruner stops the
    bad trial of a study whose good trials ran first (warm start, one trial at a time)."""
    studies = Studies(chart.kube, chart.studies_namespace)
    space = {"x": {"type": "float", "low": -5, "high": 5, "step": 0.5}, "y": {"type": "int", "low": 0, "high": 3}}
    for sampler in SAMPLERS:
        options = {"n_startup_trials": 2} if sampler in ("tpe", "gp") else {}
        studies.create(
            f"sampler-{sampler.lower()}",
            {
                "searchSpace": space,
                "sampler": {"name": sampler, "seed": 3, "options": options},
                "budget": {"trials": 6, "parallelism": 2},
                "trial": {"objective": "objectives:quadratic", "template": chart.template},
            },
        )
    for pruner, options in PRUNERS.items():
        studies.create(
            f"pruner-{pruner.lower()}",
            {
                "searchSpace": {"x": {"type": "float", "low": -5, "high": 5}},
                "pruner": {"name": pruner, "options": options},
                "warmStart": [{"x": 2.0}, {"x": 2.1}, {"x": 1.9}, {"x": 1.8}, {"x": -5.0}],
                "budget": {"trials": 5, "parallelism": 1},
                "trial": {"objective": "objectives:prunable", "template": chart.template},
            },
        )
    for sampler in SAMPLERS:
        done = studies.wait_phase(f"sampler-{sampler.lower()}", "Succeeded", 600)
        expected = {"running": 0, "waiting": 0, "complete": 6, "pruned": 0, "failed": 0, "preemptions": 0}
        assert done["status"]["trials"] == expected, (sampler, done["status"])
    for pruner in PRUNERS:
        done = studies.wait_phase(f"pruner-{pruner.lower()}", "Succeeded", 600)
        assert done["status"]["trials"]["pruned"] >= 1, (pruner, done["status"])
        assert done["status"]["trials"]["failed"] == 0, (pruner, done["status"])


def _token_kubeconfig(chart: Chart, path: Path) -> Path:
    """A kubeconfig holding the chart ServiceAccount's own token, from the TokenRequest API."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    answer = client.CoreV1Api(chart.kube).create_namespaced_service_account_token(
        chart.fullname, chart.namespace, request
    )
    admin = yaml.safe_load(Path(chart.env["KUBECONFIG"]).read_text())
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": admin["clusters"],
                "users": [{"name": "operator", "user": {"token": plain(answer)["status"]["token"]}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"}}
                ],
                "current-context": "operator",
            }
        )
    )
    return path


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass
class Peer:
    """One operator process of the failover test and its log."""

    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text()


def test_failover_between_two_peered_operators(chart: Chart, testbed_env: dict[str, str], tmp_path: Path) -> None:
    """Two operators with the chart's account, peering and distinct priorities: one works; SIGKILL it and
    the other takes over once the dead one's keep-alive expires (Kopf's peering lifetime, 60 s)."""
    chart.helm(
        "upgrade",
        chart.release,
        str(CHART),
        "-n",
        chart.namespace,
        "--reuse-values",
        "--set",
        "operator.replicas=0",
        "--wait",
        "--timeout",
        "3m",
    )
    wait_for(lambda: not chart.operator_pods(), 90, "the chart's operator pod to go")
    kubeconfig = _token_kubeconfig(chart, tmp_path / "kubeconfig")
    peers: list[Peer] = []

    def start(name: str, priority: int) -> Peer:
        health, log = free_port(), tmp_path / f"{name}.log"
        env = {
            "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "KUBECONFIG": str(kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "HPO_NAMESPACES": chart.studies_namespace,
            "HPO_PEERING": chart.fullname,
            "HPO_PRIORITY": str(priority),
            "HPO_METRICS_PORT": str(free_port()),
            "HPO_TRIAL_IMAGE": testbed_env["HPO_TRIAL_IMAGE"],
            **{k: v for k, v in testbed_env.items() if k.startswith("HPO_MYSQL_")},
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "hpo-operator"), f"--liveness=http://127.0.0.1:{health}/healthz"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        peers.append(Peer(process, log))
        wait_for(lambda: _healthy(health) or process.poll() is not None, 60, f"operator {name} to serve /healthz")
        assert process.poll() is None, log.read_text()
        return peers[-1]

    peering = client.CustomObjectsApi(chart.kube)

    def priorities() -> list[int]:
        body = cast(
            dict[str, Any],
            peering.get_namespaced_custom_object(
                "kopf.dev", "v1", chart.studies_namespace, "kopfpeerings", chart.fullname
            ),
        )
        return sorted(int(peer["priority"]) for peer in (body.get("status") or {}).values())

    try:
        first = start("first", 200)
        wait_for(lambda: "Resuming operations" in first.text(), 60, "the first operator to take the peering")
        second = start("second", 100)
        wait_for(lambda: priorities() == [100, 200], 60, "both operators in the peering object")
        studies = Studies(chart.kube, chart.studies_namespace)
        studies.create("failover", _study_spec(chart, trials=6, parallelism=2, sleep=2))
        tag = f"[{chart.studies_namespace}/failover]"
        wait_for(lambda: f"{tag} trial 0 attempt 0" in first.text(), 60, "the first operator to start trials")
        assert tag not in second.text(), "the lower-priority operator must stay paused"
        first.process.kill()  # no goodbye in the peering object: the second waits out the first's lifetime
        first.process.wait()
        wait_for(lambda: "Resuming operations" in second.text(), 120, "the second operator to take over")
        done = studies.wait_phase("failover", "Succeeded", 180)
        assert done["status"]["progress"] == "6/6" and _all_complete(studies, "failover") == 6
        assert f"{tag} trial" in second.text(), "the second operator dispatched the rest"
    finally:
        for peer in peers:
            if peer.process.poll() is None:
                peer.process.send_signal(signal.SIGTERM)
                try:
                    peer.process.wait(60)
                except subprocess.TimeoutExpired:
                    peer.process.kill()
                    peer.process.wait()


def _mysql_answers(chart: Chart, namespace: str, release: str, password: str) -> bool:
    """The in-chart MySQL takes the admin password over its Service's pod address, from this host."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=mysql"
    pods = client.CoreV1Api(chart.kube).list_namespaced_pod(namespace, label_selector=selector).items
    if not pods or not pods[0].status.pod_ip:
        return False
    try:
        pymysql.connect(
            host=pods[0].status.pod_ip, port=3306, user="root", password=password, connect_timeout=5
        ).close()
    except pymysql.MySQLError:
        return False
    return True


def test_a_second_release_gets_a_ready_in_chart_mysql_that_keeps_its_password(
    chart: Chart, testbed_env: dict[str, str]
) -> None:
    """Beside the first release, in another namespace, exactly as a user would add a database-only
    release: the MySQL pod (Debian's MariaDB image from the testbed's registry) becomes Ready on its
    volume with the generated admin password, which an upgrade keeps and uninstall leaves behind."""
    namespace, release = f"{chart.namespace}-db", f"{chart.release}db"
    secret = f"{release}-hpo-operator-mysql-admin"
    _create_namespace(client.CoreV1Api(chart.kube), namespace, PSS_LABELS)
    repository, tag = testbed_env["HPO_MYSQL_IMAGE"].rsplit(":", 1)
    args = [
        "-n",
        namespace,
        "--set",
        "operator.replicas=0",
        "--set",
        "rbac.create=false",
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        "mysql.enabled=true",
        "--set",
        f"mysql.image.repository={repository}",
        "--set",
        f"mysql.image.tag={tag}",
    ]
    try:
        chart.helm("install", release, str(CHART), *args, "--wait", "--timeout", "5m")
        chart.kubectl(
            "-n",
            namespace,
            "wait",
            "--for=condition=Ready",
            "pod",
            "--timeout=180s",
            "-l",
            f"app.kubernetes.io/instance={release},app.kubernetes.io/component=mysql",
        )
        core = client.CoreV1Api(chart.kube)
        data = core.read_namespaced_secret(secret, namespace).data or {}
        password = base64.b64decode(data["password"]).decode()
        assert len(password) == 32
        wait_for(lambda: _mysql_answers(chart, namespace, release, password), 60, "MySQL to take the password")
        chart.helm("upgrade", release, str(CHART), *args, "--set", "mysql.maxConnections=500", "--wait")
        assert (
            base64.b64decode((core.read_namespaced_secret(secret, namespace).data or {})["password"]).decode()
            == password
        )
        chart.helm("uninstall", release, "-n", namespace, "--wait")
        assert core.read_namespaced_secret(secret, namespace).data, "the admin Secret is kept on uninstall"
        claims = core.list_namespaced_persistent_volume_claim(namespace).items
        assert [c.metadata.name for c in claims] == [f"data-{release}-hpo-operator-mysql-0"], "the data is kept"
    finally:
        chart.helm("uninstall", release, "-n", namespace, "--wait", check=False)
        client.CoreV1Api(chart.kube).delete_namespace(namespace)


def test_a_cluster_scoped_release_serves_a_study_from_its_own_mysql_behind_its_network_policy(
    chart: Chart, testbed_env: dict[str, str]
) -> None:
    """Cluster RBAC (the default), the in-chart MySQL as the default server, the dashboard of one
    study and the NetworkPolicies, run for real: the study reaches Succeeded on the in-chart MySQL,
    the dashboard, reading as the study's read-only user, answers over `kubectl port-forward` with
    that study's trials, and MySQL refuses a pod that is neither a trial pod nor the operator."""
    namespace, release = f"{chart.namespace}-all", f"{chart.release}all"
    fullname = f"{release}-hpo-operator"
    studies_namespace = f"{chart.studies_namespace}-all"
    core = client.CoreV1Api(chart.kube)
    _create_namespace(core, namespace, PSS_LABELS)
    _create_namespace(core, studies_namespace)
    core.create_namespaced_config_map(
        studies_namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="objectives"), data={"objectives.py": OBJECTIVES.read_text()}
        ),
    )
    values = chart.values.with_name("all.yaml")
    values.write_text(
        yaml.safe_dump(
            {
                **image_values(testbed_env),
                "watchNamespaces": [studies_namespace],
                "networkPolicy": {"enabled": True},
                "dashboard": {
                    **image_values(testbed_env)["dashboard"],
                    "enabled": True,
                    "study": f"{studies_namespace}/shown",
                },
            }
        )
    )
    try:
        chart.helm("install", release, str(CHART), "-n", namespace, "-f", str(values))
        chart.kubectl("-n", namespace, "wait", "--for=condition=Available", f"deployment/{fullname}", "--timeout=300s")
        studies = Studies(chart.kube, studies_namespace)
        studies.create("shown", _study_spec(chart, trials=3, parallelism=3, sleep=0.5))
        done = studies.wait_phase("shown", "Succeeded", 240)
        assert done["status"]["trials"] == {
            "running": 0,
            "waiting": 0,
            "complete": 3,
            "pruned": 0,
            "failed": 0,
            "preemptions": 0,
        }
        writer = base64.b64decode(
            (core.read_namespaced_secret("shown-storage", studies_namespace).data or {})["url"]
        ).decode()
        assert f"@{fullname}-mysql.{namespace}.svc:3306/" in writer, "the in-chart MySQL is the default server"
        chart.kubectl(
            "-n",
            studies_namespace,
            "wait",
            "--for=condition=Available",
            f"deployment/{fullname}-dashboard",
            "--timeout=180s",
        )
        assert _dashboard_trials(chart, studies_namespace, f"{fullname}-dashboard") == {"shown": 3}
        # NetworkPolicy (enforced on the testbed's nodes): MySQL answers trial pods, not other pods.
        mysql_address = (f"{fullname}-mysql.{namespace}.svc", 3306)
        assert _reaches(chart, studies_namespace, "trial-like", {"hpo.dev/study": "x"}, mysql_address, testbed_env)
        assert not _reaches(chart, studies_namespace, "rogue", {}, mysql_address, testbed_env)
        account = f"system:serviceaccount:{namespace}:{fullname}"
        # Cluster RBAC: the rules hold in every namespace (a ClusterRole), here checked in the served one.
        allowed: list[Case] = [(v, r, studies_namespace) for v, r in ALLOWED_IN_SERVED]
        allowed += [(v, r, None) for v, r in ALLOWED_IN_SERVED if "kopfpeerings" not in r and v in ("list", "watch")]
        allowed += [
            ("patch", f"kopfpeerings.kopf.dev/{fullname}", studies_namespace),
            ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
            ("list", "namespaces", None),
        ]
        denied: list[Case] = [(v, r, studies_namespace) for v, r in DENIED_IN_SERVED]
        denied += [
            ("list", "nodes", None),
            ("list", "secrets", None),
            ("get", "clusterroles.rbac.authorization.k8s.io", None),
        ]
        answers = chart.can_all(allowed + denied, account)
        assert [case for case in allowed if not answers[case]] == [], "the operator needs these"
        assert [case for case in denied if answers[case]] == [], "the operator does not need these"
    finally:
        chart.helm("uninstall", release, "-n", namespace, "--wait", check=False)
        for name in (studies_namespace, namespace):
            core.delete_namespace(name)


def _reaches(
    chart: Chart,
    namespace: str,
    name: str,
    labels: dict[str, str],
    address: tuple[str, int],
    testbed_env: dict[str, str],
) -> bool:
    """Whether a pod with ``labels`` opens a TCP connection to ``address`` (within 5 s)."""
    probe = f"import socket; socket.create_connection({address!r}, timeout=5); print('reached')"
    core = client.CoreV1Api(chart.kube)
    core.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [
                    {"name": "probe", "image": testbed_env["HPO_TRIAL_IMAGE"], "command": ["python3", "-c", probe]}
                ],
            },
        },
    )
    wait_for(
        lambda: core.read_namespaced_pod(name, namespace).status.phase in ("Succeeded", "Failed"),
        120,
        f"pod {name} to try {address}",
    )
    return bool(core.read_namespaced_pod(name, namespace).status.phase == "Succeeded")


def _dashboard_trials(chart: Chart, namespace: str, service: str) -> dict[str, int]:
    """Each study's trial count, as optuna-dashboard's API reports it through `kubectl port-forward`."""
    port = free_port()
    forward = subprocess.Popen(
        ["kubectl", "port-forward", "-n", namespace, f"service/{service}", f"{port}:8081"],
        env=chart.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert forward.stdout is not None and "Forwarding from" in forward.stdout.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as response:
            listed = json.load(response)["study_summaries"]
        counts = {}
        for study in listed:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30
            ) as response:
                counts[study["study_name"]] = len(json.load(response)["trials"])
        return counts
    finally:
        forward.terminate()
        forward.wait()


def test_uninstall_removes_the_release_and_keeps_the_crd_and_the_studies_data(
    chart: Chart, testbed_env: dict[str, str]
) -> None:
    chart.helm("uninstall", chart.release, "-n", chart.namespace, "--wait")
    assert chart.helm("status", chart.release, "-n", chart.namespace, check=False).returncode != 0
    rbac, custom = client.RbacAuthorizationV1Api(chart.kube), client.CustomObjectsApi(chart.kube)
    gone: list[Callable[[], Any]] = [
        lambda: client.AppsV1Api(chart.kube).read_namespaced_deployment(chart.fullname, chart.namespace),
        lambda: client.CoreV1Api(chart.kube).read_namespaced_service_account(chart.fullname, chart.namespace),
        lambda: rbac.read_namespaced_role(chart.fullname, chart.studies_namespace),
        lambda: rbac.read_cluster_role(f"{chart.fullname}-discovery"),
        lambda: custom.get_namespaced_custom_object(
            "kopf.dev", "v1", chart.studies_namespace, "kopfpeerings", chart.fullname
        ),
    ]
    for read in gone:
        with pytest.raises(client.ApiException) as missing:
            read()
        assert missing.value.status == 404
    client.ApiextensionsV1Api(chart.kube).read_custom_resource_definition("hpostudies.hpo.dev")
    studies = Studies(chart.kube, chart.studies_namespace)
    for name, trials in (("incluster", 4), ("upgrade", 6), ("failover", 6)):
        names = mysql.recorded(admin_server(testbed_env), chart.studies_namespace, name)
        assert names is not None and mysql.exists(admin_server(testbed_env), names.database)
        assert len(studies.optuna_study(name).trials) == trials
