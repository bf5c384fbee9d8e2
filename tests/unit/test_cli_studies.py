"""How kubectl hpo reaches a study's database from outside the cluster, decided without a cluster."""

from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from hpo_cli import studies

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("host", "service"),
    [
        ("mysql.hpo-system.svc", ("hpo-system", "mysql")),
        ("hpo-mysql.db.svc.cluster.local", ("db", "hpo-mysql")),
        ("hpo-mysql.db.svc.cluster.local.", ("db", "hpo-mysql")),
        ("10.0.0.12", None),
        ("db.example.com", None),
        ("mysql.svc", None),
    ],
)
def test_a_cluster_service_name_is_recognised_for_a_port_forward(host: str, service: tuple[str, str] | None) -> None:
    assert studies.service_of(host) == service


def test_an_unreachable_service_says_the_port_forward_to_run() -> None:
    study = studies.Study("team", "mnist", {})
    message = studies._unreachable(study, "hpo-mysql.db.svc:3306", "timed out")
    assert "kubectl port-forward -n db svc/hpo-mysql 3306:3306 and add --db-address 127.0.0.1:3306" in message
    elsewhere = studies._unreachable(study, "10.1.2.3:3306", "timed out")
    assert 'cannot reach study "mnist"\'s database at 10.1.2.3:3306' in elsewhere and "--db-address" in elsewhere


@pytest.mark.parametrize(
    ("status", "namespace", "said"),
    [
        (
            403,
            "team",
            'you may not list hpostudies in namespace "team" (check with: kubectl auth can-i list hpostudies -n team)',
        ),
        (
            403,
            None,
            "you may not list hpostudies in all namespaces (check with: kubectl auth can-i list hpostudies -A)",
        ),
        (401, "team", "did not accept your credentials"),
        (500, "team", "refused list hpostudies"),
    ],
)
def test_api_refusals_read_as_what_to_do(status: int, namespace: str | None, said: str) -> None:
    assert said in str(studies._refused(ApiException(status=status, reason="x"), "list hpostudies", namespace))
