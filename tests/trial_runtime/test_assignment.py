"""Parsing the operator's assignment, choosing and importing the objective, building sampler and pruner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo_trial.assignment import Assignment, ComponentSpec, TrialRef, identify_trial, parse_assignment
from hpo_trial.attach import build_pruner, build_sampler
from hpo_trial.errors import ConfigurationError
from hpo_trial.objective import DEFAULT_OBJECTIVE, choose_objective, load_objective

pytestmark = pytest.mark.unit

FULL = {
    "protocol": 1,
    "study": "ns.quickstart",
    "trial": {"number": 7, "id": 123},
    "sampler": {"class": "TPESampler", "kwargs": {"seed": 1}},
    "pruner": {"class": "MedianPruner", "kwargs": {"n_warmup_steps": 2}},
    "checkpoint_root": "/checkpoints",
    "objective": "train:objective",
    "heartbeat_seconds": 5,
    "attempt": 2,
    "deadline_seconds": 3600,
}


def text(**changes: Any) -> str:
    raw = {**FULL, **changes}
    return json.dumps({key: value for key, value in raw.items() if value is not ...})


def test_a_full_assignment_parses() -> None:
    assert parse_assignment(text()) == Assignment(
        trial=TrialRef(study="ns.quickstart", number=7, id=123),
        sampler=ComponentSpec("TPESampler", {"seed": 1}),
        pruner=ComponentSpec("MedianPruner", {"n_warmup_steps": 2}),
        checkpoint_root="/checkpoints",
        objective="train:objective",
        heartbeat_seconds=5,
        attempt=2,
        deadline_seconds=3600,
    )


def test_optional_fields_default_and_unknown_fields_are_ignored() -> None:
    assignment = parse_assignment(
        text(
            pruner=...,
            checkpoint_root=...,
            objective=...,
            heartbeat_seconds=...,
            attempt=...,
            deadline_seconds=...,
            added_later="x",
        )
    )
    assert (assignment.pruner, assignment.checkpoint_root, assignment.objective) == (None, None, None)
    assert (assignment.attempt, assignment.deadline_seconds) == (None, None), "no fence, no deadline"
    assert assignment.heartbeat_seconds == 10


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocol": 2}, "the assignment uses protocol 2 but this trial runtime speaks protocol 1"),
        ({"protocol": ...}, "no valid protocol version (got None); this trial runtime speaks protocol 1"),
        ({"protocol": "1"}, "no valid protocol version (got '1')"),
        ({"study": ""}, "'study' must be a non-empty string"),
        ({"trial": {"number": 7}}, "'trial.id' must be a non-negative integer, got None"),
        ({"trial": {"number": True, "id": 1}}, "'trial.number' must be a non-negative integer, got True"),
        ({"sampler": "tpe"}, "'sampler' must be null or"),
        ({"pruner": {"class": "MedianPruner", "kwargs": [1]}}, "'pruner.kwargs' must be an object"),
        ({"heartbeat_seconds": 0}, "'heartbeat_seconds' must be a positive integer"),
        ({"attempt": -1}, "'attempt' must be null or a non-negative integer, got -1"),
        ({"deadline_seconds": "1h"}, "'deadline_seconds' must be null or a positive integer, got '1h'"),
    ],
)
def test_a_bad_assignment_is_a_configuration_error_saying_what_is_wrong(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_assignment(text(**changes))


def test_not_json_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="HPO_ASSIGNMENT is not valid JSON"):
        parse_assignment("{protocol: 1")


def test_the_trial_of_an_assignment_of_another_protocol_can_still_be_identified() -> None:
    assert identify_trial(text(protocol=2, sampler="whatever")) == TrialRef("ns.quickstart", 7, 123)
    assert identify_trial(json.dumps({"protocol": 2, "trial_id": 5})) is None


def test_objective_precedence_is_flag_then_environment_then_assignment_then_default() -> None:
    assert choose_objective("a:f", "b:f", "c:f") == "a:f"
    assert choose_objective(None, "b:f", "c:f") == "b:f"
    assert choose_objective(None, "", "c:f") == "c:f"
    assert choose_objective(None, None, None) == DEFAULT_OBJECTIVE


def test_an_objective_path_resolves_dotted_attributes() -> None:
    decode: object = json.JSONDecoder.decode
    assert load_objective("json:JSONDecoder.decode") is decode


def test_an_import_error_inside_the_objective_module_names_the_missing_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_missing_dep.py").write_text("import surely_not_installed_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match="because it imports 'surely_not_installed_xyz'"):
        load_objective("needs_missing_dep:objective")


def test_samplers_and_pruners_are_built_from_their_optuna_names() -> None:
    sampler = build_sampler(ComponentSpec("TPESampler", {"seed": 3, "n_startup_trials": 4}))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert build_sampler(None) is None
    assert isinstance(build_pruner(None), optuna.pruners.NopPruner)
    median = {"class": "MedianPruner", "kwargs": {"n_startup_trials": 2}}
    wrapped = build_pruner(ComponentSpec("PatientPruner", {"wrapped_pruner": median, "patience": 1}))
    assert isinstance(wrapped, optuna.pruners.PatientPruner)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ComponentSpec("NoSuchSampler", {}), "'NoSuchSampler' is not a class in optuna.samplers"),
        (ComponentSpec("BaseSampler", {}), "cannot build optuna.samplers.BaseSampler"),
        (ComponentSpec("TPESampler", {"no_such_option": 1}), "cannot build optuna.samplers.TPESampler"),
    ],
)
def test_an_unknown_sampler_or_bad_arguments_are_configuration_errors(spec: ComponentSpec, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_sampler(spec)
