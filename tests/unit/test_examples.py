"""Every HpoStudy in examples/ is valid as written and within the operator's default policy
(what a user applies first must work)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpo_operator.policy import Policy
from hpo_operator.validation import parse

pytestmark = pytest.mark.unit
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
STUDIES = [
    (path.name, doc)
    for path in EXAMPLES
    for doc in yaml.safe_load_all(path.read_text())
    if doc and doc.get("kind") == "HpoStudy"
]


@pytest.mark.parametrize(("example", "study"), STUDIES, ids=[name for name, _ in STUDIES])
def test_example_study_is_valid_and_names_no_namespace(example: str, study: dict) -> None:
    assert "namespace" not in study["metadata"], f"{example} should apply to the current namespace"
    spec, problems = parse(study["spec"])
    assert problems == [], f"{example}: {problems}"
    assert spec is not None and Policy("mysql", 3306).check(spec) == [], "it passes the operator's default policy"


def test_the_quickstart_states_its_budget_explicitly() -> None:
    quickstart = dict(STUDIES)["quickstart.yaml"]
    assert {"trials", "parallelism"} <= set(quickstart["spec"]["budget"])
    assert quickstart["spec"]["checkpoints"]["claimName"]
