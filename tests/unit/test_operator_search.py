"""The sampler the operator asks with, and the config trial pods rebuild it from."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest

from hpo_operator import search
from hpo_operator.models import HpoStudySpec
from hpo_operator.validation import parse

pytestmark = pytest.mark.unit

MIXED = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "layers": {"type": "int", "low": 1, "high": 4},
    "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
}
DISCRETE = {
    "layers": {"type": "int", "low": 1, "high": 4},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    "activation": {"type": "categorical", "choices": ["relu", "tanh"]},
}


def spec(parallelism: int, space: dict[str, Any] | None = None, **sampler: Any) -> HpoStudySpec:
    parsed, problems = parse(
        {
            "budget": {"trials": 100, "parallelism": parallelism},
            "searchSpace": MIXED if space is None else space,
            "sampler": {"name": "tpe", **sampler},
        }
    )
    assert parsed is not None, problems
    return parsed


def kwargs(study: HpoStudySpec) -> dict[str, Any]:
    config = search.sampler_config(study)
    assert config["class"] == "TPESampler"
    return dict(config["kwargs"])


def test_a_sequential_study_keeps_optunas_tpe_defaults() -> None:
    assert kwargs(spec(1)) == {"multivariate": True, "constant_liar": True, "n_startup_trials": 10}


def test_the_random_start_up_stays_about_ten_trials_whatever_the_parallelism() -> None:
    # TPE counts finished trials: with M running, n_startup_trials + M - 1 trials are random.
    for parallelism in (2, 4, 8):
        assert kwargs(spec(parallelism))["n_startup_trials"] + parallelism - 1 == search.TPE_STARTUP_TRIALS
    assert kwargs(spec(10))["n_startup_trials"] == 1
    assert kwargs(spec(64))["n_startup_trials"] == 1, "TPE needs one finished trial to model anything"


def test_parallel_asks_over_a_continuous_space_do_not_lie_about_running_trials() -> None:
    assert kwargs(spec(8))["constant_liar"] is False
    assert kwargs(spec(8, {"x": {"type": "float", "low": 0, "high": 1}}))["constant_liar"] is False


def test_a_space_without_a_continuous_parameter_keeps_the_liar() -> None:
    # Without it, concurrent asks over a finite space would pick the same point again.
    assert kwargs(spec(8, DISCRETE))["constant_liar"] is True
    assert kwargs(spec(8, {}))["constant_liar"] is True, "an all define-by-run space is unknown: stock settings"
    assert not search.has_continuous_parameter(spec(8, DISCRETE))
    assert search.has_continuous_parameter(spec(8))


def test_the_users_options_and_seed_win_over_the_policy() -> None:
    options = {"constant_liar": True, "n_startup_trials": 20, "multivariate": False}
    assert kwargs(spec(8, options=options, seed=7)) == {**options, "seed": 7}


def test_other_samplers_get_no_tpe_settings() -> None:
    parsed, _ = parse({"budget": {"trials": 10, "parallelism": 8}, "searchSpace": MIXED, "sampler": {"name": "gp"}})
    assert parsed is not None
    assert search.sampler_config(parsed) == {"class": "GPSampler", "kwargs": {}}


def test_pods_rebuild_the_sampler_the_operator_asks_with_from_json() -> None:
    study = spec(8, seed=3)
    config = json.loads(json.dumps(search.sampler_config(study)))  # what reaches the pod
    rebuilt = getattr(optuna.samplers, config["class"])(**config["kwargs"])
    seeded = search.sampler(study)
    assert isinstance(seeded, search.TrialSeededSampler), "a seeded study asks with per-trial seeds"
    asking = seeded._sampler
    assert type(rebuilt) is type(asking) is optuna.samplers.TPESampler
    assert vars(rebuilt).keys() == vars(asking).keys()
    for name in ("_constant_liar", "_n_startup_trials", "_multivariate"):
        assert getattr(rebuilt, name) == getattr(asking, name)
    assert (asking._constant_liar, asking._n_startup_trials) == (False, 3)


def _asks_after_three_finished(study: HpoStudySpec) -> list[float]:
    """Eight trials asked at once, three of them told, then 20 more asked: their sorted values of x."""
    optuna_study = optuna.create_study(sampler=search.sampler(study))
    declared = search.distributions(study)
    first = [optuna_study.ask(declared) for _ in range(8)]
    for rank, trial in enumerate(first[:3]):
        optuna_study.tell(trial, float(rank))
    return sorted(optuna_study.ask(declared).params["x"] for _ in range(20))


def test_a_parallel_study_models_the_search_once_its_first_trials_finish() -> None:
    # With Optuna's 10 start-up trials these 20 asks would still be uniform over [0, 100]; the
    # policy's 3 at M=8 makes TPE model the three finished trials and concentrate its asks. TPE's
    # draws have a tail (a broad prior component), so the claim is about most seeds, not each.
    space = {"x": {"type": "float", "low": 0, "high": 100}}
    concentrated = wide = 0
    for seed in range(10):
        modelled = _asks_after_three_finished(spec(8, space, seed=seed))
        random = _asks_after_three_finished(spec(8, space, seed=seed, options={"n_startup_trials": 10}))
        concentrated += modelled[17] - modelled[2] < 25
        wide += random[17] - random[2] > 25
    assert concentrated >= 8 and wide == 10, (concentrated, wide)
