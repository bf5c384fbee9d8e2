"""`kubectl hpo` end to end: the plugin as a person runs it, against studies the operator ran, checked against Optuna.

The plugin runs as kubectl finds it (``kubectl hpo ...``, the console script ``kubectl-hpo`` that
``make venv`` installs beside this interpreter), with a kubeconfig of its own: the testbed's admin
for most checks, and a ServiceAccount that may only ``get hpostudies`` for the permission errors.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from kubernetes import client

from tests.e2e.test_operator import spec
from tests.helpers import png_size, png_title, wait_for
from tests.studies import Studies

pytestmark = pytest.mark.e2e

Hpo = Callable[..., "subprocess.CompletedProcess[str]"]


def run_hpo(
    testbed_env: dict[str, str], kubeconfig: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``kubectl hpo ARGS`` with the testbed's kubectl and the plugin that `make venv` installed on PATH."""
    path = f"{testbed_env['PATH']}:{Path(sys.executable).parent}"
    env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": path}
    result = subprocess.run(["kubectl", "hpo", *args], env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl hpo {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


@pytest.fixture
def hpo(testbed_env: dict[str, str]) -> Hpo:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_hpo(testbed_env, testbed_env["KUBECONFIG"], *args, check=check)

    return run


def rows_of_optuna(study: optuna.Study) -> list[tuple[int, str, list[float] | None, dict[str, Any]]]:
    return [(t.number, t.state.name, t.values, t.params) for t in study.trials]


def test_every_subcommand_agrees_with_optuna_on_a_finished_study(
    studies: Studies, objectives: dict[str, Any], hpo: Hpo, kubectl: Any, kube: client.ApiClient, tmp_path: Path
) -> None:
    ns = studies.namespace
    studies.create("seen", spec(objectives, trials=6, parallelism=2, objective="objectives:flaky"))
    done = studies.wait_phase("seen", "Succeeded")
    study = studies.optuna_study("seen")
    nodes = {str(n.metadata and n.metadata.name) for n in client.CoreV1Api(kube).list_node().items}

    # list: phase, progress, the best value rounded, running, age
    listed = hpo("list", "-n", ns).stdout.splitlines()
    assert listed[0].split() == ["NAME", "PHASE", "TRIALS", "RUNNING", "BEST", "AGE"]
    assert listed[1].split()[:5] == ["seen", "Succeeded", "6/6", "0", f"{study.best_value:.4g}"]
    everywhere = hpo("list", "-A").stdout
    assert re.search(rf"^{ns}\s+seen\s+Succeeded", everywhere, re.MULTILINE), everywhere

    # trials: one row per trial, as Optuna has them, with attempts, node and the failure reason
    trials = json.loads(hpo("trials", "seen", "-n", ns, "-o", "json").stdout)
    rows = trials["trials"] if isinstance(trials, dict) else trials
    assert [(r["number"], r["state"], r["values"], r["params"]) for r in rows] == rows_of_optuna(study)
    assert all(r["attempts"] == 1 and r["node"] in nodes and r["pod"] for r in rows), rows
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert failed and all("fails on purpose" in r["reason"] for r in failed)
    table = hpo("trials", "seen", "-n", ns, "--sort", "value").stdout.splitlines()
    assert table[0].split()[:3] == ["NUMBER", "STATE", "VALUE"] and table[1].split()[0] == str(study.best_trial.number)
    assert len(table) == 1 + len(study.trials)
    fails = list(csv.DictReader(io.StringIO(hpo("trials", "seen", "-n", ns, "--state", "fail", "-o", "csv").stdout)))
    assert [int(r["number"]) for r in fails] == [t.number for t in study.trials if t.state.name == "FAIL"]
    wide = hpo("trials", "seen", "-n", ns, "-o", "wide").stdout.splitlines()[0].split()
    assert {"POD", "NODE", "STARTED"} <= set(wide)

    # best: the best trial's parameters at full precision, as JSON and YAML
    best = json.loads(hpo("best", "seen", "-n", ns, "-o", "json").stdout)
    assert best == {"number": study.best_trial.number, "value": study.best_value, "params": study.best_params}
    assert yaml.safe_load(hpo("best", "seen", "-n", ns).stdout) == best

    # plot: a PNG of the size asked with the trial count in its title, and a self-contained HTML file
    png, html = tmp_path / "history.png", tmp_path / "history.html"
    hpo("plot", "seen", "-n", ns, "--kind", "history", "-o", str(png), "--width", "1000", "--height", "600")
    assert png_size(png) == (1000, 600)
    assert png_title(png) == "seen: history (6 trials)"
    hpo("plot", "seen", "-n", ns, "--kind", "slice", "-o", str(html))
    assert "seen: slice (6 trials)" in html.read_text()

    # export: an SQLite file Optuna opens offline, with the same trials
    exported = tmp_path / "seen.db"
    hpo("export", "seen", "-n", ns, "-o", str(exported))
    offline = optuna.load_study(study_name="seen", storage=f"sqlite:///{exported}")
    assert rows_of_optuna(offline) == rows_of_optuna(study)
    assert [t.system_attrs for t in offline.trials] == [t.system_attrs for t in study.trials]

    # logs: a failed trial's pod is kept, and its log has the traceback
    first_failed = failed[0]["number"]
    assert f"trial {first_failed} fails on purpose" in hpo("logs", "seen", str(first_failed), "-n", ns).stdout

    # kubectl get: the best value rounded (full value in status), -o wide with sampler, parallelism, failed,
    # preemptions and the queue (none: the column is blank)
    got = kubectl("get", "hpostudies", "seen", "-n", ns).stdout.splitlines()
    assert got[1].split()[5] == f"{study.best_value:.4g}"
    assert done["status"]["bestTrial"]["value"] == study.best_value
    wide_get = kubectl("get", "hpostudies", "seen", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide_get[0].split()[-5:] == ["SAMPLER", "PARALLELISM", "FAILED", "PREEMPTED", "QUEUE"]
    assert wide_get[1].split()[-4:] == ["tpe", "2", str(len(failed)), "0"]

    # errors a person understands
    missing = hpo("trials", "nosuch", "-n", ns, check=False)
    assert missing.returncode == 1 and f'study "nosuch" not found in namespace "{ns}"' in missing.stderr
    away = hpo("trials", "seen", "-n", ns, "--db-address", "127.0.0.1:1", check=False)
    assert away.returncode == 1 and "cannot reach" in away.stderr and "is your tunnel to" in away.stderr, away.stderr


def test_a_service_account_that_may_only_get_studies_is_told_it_may_not_read_the_secret(
    studies: Studies, objectives: dict[str, Any], testbed_env: dict[str, str], kube: client.ApiClient, tmp_path: Path
) -> None:
    ns = studies.namespace
    studies.create("guarded", spec(objectives, trials=1, parallelism=1))
    studies.wait_phase("guarded", "Succeeded")
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="viewer")))
    rbac.create_namespaced_role(
        ns,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="get-studies"),
            rules=[client.V1PolicyRule(api_groups=["hpo.dev"], resources=["hpostudies"], verbs=["get"])],
        ),
    )
    rbac.create_namespaced_role_binding(
        ns,
        client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="viewer-gets-studies"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="get-studies"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="viewer", namespace=ns)],
        ),
    )
    answer = core.create_namespaced_service_account_token(
        "viewer", ns, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    )
    assert answer.status is not None
    token = answer.status.token
    admin = yaml.safe_load(Path(testbed_env["KUBECONFIG"]).read_text())
    cluster = admin["clusters"][0]
    kubeconfig = tmp_path / "viewer.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "viewer", "user": {"token": token}}],
                "contexts": [
                    {"name": "viewer", "context": {"cluster": cluster["name"], "user": "viewer", "namespace": ns}}
                ],
                "current-context": "viewer",
            }
        )
    )
    refused = run_hpo(testbed_env, str(kubeconfig), "trials", "guarded", check=False)
    assert refused.returncode == 1
    assert f'you may not read Secret "guarded-storage-readonly" in namespace "{ns}"' in refused.stderr
    assert "kubectl auth can-i get secret/guarded-storage-readonly" in refused.stderr
    assert "Traceback" not in refused.stderr
    listing = run_hpo(testbed_env, str(kubeconfig), "list", check=False)
    assert listing.returncode == 1 and "you may not list hpostudies" in listing.stderr


def test_a_running_study_shows_its_running_trials_their_nodes_and_their_logs(
    studies: Studies, objectives: dict[str, Any], hpo: Hpo, kube: client.ApiClient
) -> None:
    ns = studies.namespace
    template = {**objectives}
    # Long enough that the commands below (a few seconds each) all see both trials running.
    template["spec"]["containers"][0]["env"].append({"name": "HPO_TEST_SLEEP", "value": "40"})
    studies.create("busy", spec(template, trials=2, parallelism=2))
    studies.wait("busy", lambda s: (s.get("status") or {}).get("trials", {}).get("running", 0) == 2, 120, "run two")
    assert re.search(r"^busy\s+Running\s+0/2\s+2\s", hpo("list", "-n", ns).stdout, re.MULTILINE)
    rows = json.loads(hpo("trials", "busy", "-n", ns, "--state", "running", "-o", "json").stdout)
    nodes = {str(n.metadata and n.metadata.name) for n in client.CoreV1Api(kube).list_node().items}
    assert len(rows) == 2 and all(r["state"] == "RUNNING" and r["node"] in nodes for r in rows), rows
    followed = hpo("logs", "busy", str(rows[0]["number"]), "-n", ns, "-f").stdout  # ends with the trial's pod
    assert f"trial {rows[0]['number']} (id" in followed and "objectives:quadratic" in followed
    studies.wait_phase("busy", "Succeeded")
    core = client.CoreV1Api(kube)
    selector = f"hpo.dev/study=busy,hpo.dev/trial={rows[0]['number']}"
    wait_for(lambda: not core.list_namespaced_pod(ns, label_selector=selector).items, 60, "the trial's pod to go")
    gone = hpo("logs", "busy", str(rows[0]["number"]), "-n", ns, check=False)
    assert gone.returncode == 1 and "has no pod" in gone.stderr, "a finished trial's pod is deleted: said so"


def test_a_multi_objective_study_gives_its_pareto_front(
    studies: Studies, objectives: dict[str, Any], hpo: Hpo, tmp_path: Path
) -> None:
    ns = studies.namespace
    studies.create(
        "pair",
        {
            "objective": {"directions": ["minimize", "minimize"], "metrics": ["a", "b"]},
            "searchSpace": {"x": {"type": "float", "low": 0, "high": 1}},
            "budget": {"trials": 6, "parallelism": 2},
            "trial": {"objective": "objectives:two_objectives", "template": objectives},
        },
    )
    studies.wait_phase("pair", "Succeeded")
    study = studies.optuna_study("pair")
    front = json.loads(hpo("best", "pair", "-n", ns, "-o", "json").stdout)
    assert front == [
        {"number": t.number, "values": t.values, "params": t.params}
        for t in sorted(study.best_trials, key=lambda t: t.number)
    ]
    pareto = tmp_path / "pareto.png"
    hpo("plot", "pair", "-n", ns, "--kind", "pareto", "-o", str(pareto))
    assert png_size(pareto) == (1200, 700) and png_title(pareto) == "pair: pareto (6 trials)"
    assert re.search(r"^pair\s+Succeeded\s+6/6\s+0\s+pareto:\d", hpo("list", "-n", ns).stdout, re.MULTILINE)


def test_the_dashboard_serves_the_study_on_localhost_through_its_read_only_user(
    studies: Studies, objectives: dict[str, Any], testbed_env: dict[str, str]
) -> None:
    ns = studies.namespace
    studies.create("board", spec(objectives, trials=2, parallelism=2))
    studies.wait_phase("board", "Succeeded")
    env = {
        **os.environ,
        "KUBECONFIG": testbed_env["KUBECONFIG"],
        "PATH": f"{testbed_env['PATH']}:{Path(sys.executable).parent}",
    }
    process = subprocess.Popen(
        ["kubectl", "hpo", "dashboard", "board", "-n", ns], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:\d+/\S*", process.stdout.readline())
        assert url, "the dashboard prints its URL first"
        base = url[0].split("/dashboard")[0]

        def studies_listed() -> list[dict[str, Any]] | None:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as response:
                    return list(json.loads(response.read())["study_summaries"])
            except OSError:
                return None

        listed = wait_for(studies_listed, 60, "optuna-dashboard to answer")
        assert [s["study_name"] for s in listed] == ["board"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_per_study_metrics_name_the_study_and_go_when_it_is_deleted(
    studies: Studies, objectives: dict[str, Any]
) -> None:
    from tests.testbed.operator import METRICS_PORT

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as response:
            return str(response.read().decode())

    studies.create("measured", spec(objectives, trials=2, parallelism=2))
    studies.wait_phase("measured", "Succeeded")
    study = studies.optuna_study("measured")
    labels = f'namespace="{studies.namespace}",study="measured"'
    text = scrape()

    def state(name: str) -> str:
        return f'namespace="{studies.namespace}",state="{name}",study="measured"'

    assert f"hpo_study_trials{{{state('complete')}}} 2.0" in text
    assert f"hpo_study_trials{{{state('waiting')}}} 0.0" in text
    assert f"hpo_study_best_value{{{labels}}} {float(study.best_value)!r}" in text
    assert f"hpo_study_dispatch_seconds_count{{{labels}}} 2.0" in text

    def series_left() -> list[str]:
        mine = (f'namespace="{studies.namespace}"', 'study="measured"')
        return [line for line in scrape().splitlines() if all(label in line for label in mine)]

    assert len(series_left()) > 5, "trials by state, best value and dispatch latency are all there before"
    studies.api.delete_namespaced_custom_object("hpo.dev", "v1alpha1", studies.namespace, "hpostudies", "measured")
    wait_for(lambda: not series_left(), 60, "the deleted study's series to leave /metrics")
