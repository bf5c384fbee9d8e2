"""Spec validation and the generated CRD: what a user who writes a study sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hpo_operator import crd, search
from hpo_operator.validation import parse

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def study(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "budget": {"trials": 10, "parallelism": 2},
        "searchSpace": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "layers": {"type": "int", "low": 1, "high": 4},
            "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
        },
    }
    spec.update(overrides)
    return spec


def problems(spec: dict[str, Any]) -> list[str]:
    return [str(p) for p in parse(spec)[1]]


def test_a_valid_study_parses_with_defaults() -> None:
    spec, found = parse(study())
    assert found == [] and spec is not None
    assert spec.sampler.name.value == "tpe" and spec.budget.retries_per_trial == 1


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"x": {"type": "float", "low": 1, "high": 0.5}}, "spec.searchSpace.x.low: low (1) must be less than high"),
        ({"x": {"type": "float", "low": 0, "high": 1, "log": True}}, "spec.searchSpace.x.low: log: true needs low > 0"),
        ({"x": {"type": "float", "low": 0, "high": 1, "step": 0.3}}, "spec.searchSpace.x.step: step 0.3 must divide"),
        ({"x": {"type": "categorical", "choices": []}}, "spec.searchSpace.x.choices: a categorical parameter needs"),
        ({"x": {"type": "int", "low": 0.5, "high": 3}}, "spec.searchSpace.x: an int parameter needs whole-number"),
        ({"x": {"type": "float", "low": 0}}, "spec.searchSpace.x: a float parameter needs both low and high"),
    ],
)
def test_search_space_mistakes_name_the_field_and_the_fix(space: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(study(searchSpace=space))), problems(study(searchSpace=space))


def test_options_and_pruner_mistakes_are_named() -> None:
    assert problems(study(sampler={"name": "tpe", "options": {"n_startup": 3}}))[0].startswith(
        "spec.sampler.options.n_startup: TPESampler has no option 'n_startup'"
    )
    assert problems(study(pruner={"name": "median", "options": {"warmup": 1}}))[0].startswith(
        "spec.pruner.options.warmup: MedianPruner has no option"
    )
    multi = study(objective={"directions": ["minimize", "maximize"]}, pruner={"name": "median"})
    assert problems(multi) == ["spec.pruner.name: Optuna cannot prune multi-objective studies; set name: none"]
    assert problems(study(warmStart=[{"lr": 5.0}])) == [
        "spec.warmStart[0].lr: 5.0 is outside the declared search space of lr"
    ]


def test_type_errors_name_the_field() -> None:
    assert problems({"budget": {"trials": "many"}})[0].startswith("spec.budget.trials:")


def test_grid_gets_its_points() -> None:
    grid, _ = parse(
        study(
            sampler={"name": "grid"},
            searchSpace={
                "n": {"type": "int", "low": 0, "high": 4, "step": 2},
                "c": {"type": "categorical", "choices": ["a", "b"]},
            },
        )
    )
    assert grid is not None
    assert search.sampler_config(grid)["kwargs"]["search_space"] == {"n": [0, 2, 4], "c": ["a", "b"]}


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node] + [n for value in node.values() for n in _walk(value)]
    if isinstance(node, list):
        return [n for item in node for n in _walk(item)]
    return []


def test_crd_schema_is_structural_and_the_committed_files_match_the_models() -> None:
    rendered = crd.render()
    schema = rendered["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in _walk(schema):
        assert not {"$ref", "anyOf", "allOf", "title"} & set(node), node
    committed = yaml.safe_load((ROOT / "crds" / "hpostudies.hpo.dev.yaml").read_text())
    assert committed == rendered, "crds/ is stale: run `make crds`"
    columns = rendered["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Phase",
        "Trials",
        "Running",
        "Waiting",
        "Best",
        "Age",
    ]
    assert [c["name"] for c in columns if c.get("priority") == 1] == [
        "Sampler",
        "Parallelism",
        "Failed",
        "Preempted",
        "Queue",
    ], "-o wide"
    assert next(c for c in columns if c["name"] == "Best")["jsonPath"] == ".status.bestValue", "rounded, a string"


def _undescribed(node: Any, path: str) -> list[str]:
    missing: list[str] = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            missing += [] if prop.get("description") else [f"{path}.{name}"]
            missing += _undescribed(prop, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                missing += _undescribed(node[key], f"{path}[]" if key == "items" else f"{path}.*")
    return missing


def test_kubectl_explain_describes_every_field_of_spec_and_status() -> None:
    schema = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [part for part in ("spec", "status") if not schema["properties"][part].get("description")]
    for part in ("spec", "status"):
        missing += _undescribed(schema["properties"][part], part)
    assert missing == []


def test_immutability_holds_once_the_study_has_started_whatever_its_conditions_say() -> None:
    rules = crd.render()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    immutable = [r for r in rules if "cannot change once the study has started" in r["message"]]
    assert [r["message"].split()[0] for r in immutable] == [
        "spec.objective",
        "spec.searchSpace",
        "spec.storage",
        "spec.importFrom",
    ]
    for rule in immutable:
        assert rule["rule"].startswith("!has(oldSelf.status) || !has(oldSelf.status.startedAt) || ")
        assert "Validated" not in rule["rule"], "an invalid edit of a started study must not unlock it"
