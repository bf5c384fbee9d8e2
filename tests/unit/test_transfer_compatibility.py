"""Which source studies an import accepts: directions, and source params inside the declared space."""

from __future__ import annotations

from typing import Any, Literal

import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import InMemoryStorage

from hpo_trial.compatibility import check_compatible, declared_distributions
from hpo_trial.errors import SpecError
from hpo_trial.sources import PATH_FIELD, SourceStudy

pytestmark = pytest.mark.unit


def source_with(
    distribution: BaseDistribution, value: Any, direction: Literal["minimize", "maximize"] = "minimize"
) -> SourceStudy:
    storage = InMemoryStorage()
    study = optuna.create_study(study_name="slurm", storage=storage, direction=direction)
    study.add_trial(optuna.trial.create_trial(params={"p": value}, distributions={"p": distribution}, value=1.0))
    return SourceStudy(storage, study._study_id, "slurm", tuple(study.directions), "slurm.db", PATH_FIELD)


@pytest.mark.parametrize(
    ("source", "value", "declared"),
    [
        (FloatDistribution(0, 1), 0.5, {"type": "float", "low": 0, "high": 1}),
        (FloatDistribution(0.2, 0.8, log=True), 0.5, {"type": "float", "low": 0, "high": 1}),  # log: how, not what
        (FloatDistribution(0.2, 0.8, step=0.2), 0.4, {"type": "float", "low": 0, "high": 1, "step": 0.1}),
        (IntDistribution(2, 6, step=2), 4, {"type": "int", "low": 0, "high": 8, "step": 2}),
        (CategoricalDistribution(["relu"]), "relu", {"type": "categorical", "choices": ["relu", "tanh"]}),
    ],
)
def test_a_source_param_inside_the_declared_space_is_accepted(
    source: BaseDistribution, value: Any, declared: dict[str, Any]
) -> None:
    check_compatible(source_with(source, value), ["minimize"], declared_distributions({"p": declared}))


@pytest.mark.parametrize(
    ("source", "value", "declared", "words"),
    [
        (FloatDistribution(0, 2), 0.5, {"type": "float", "low": 0, "high": 1}, "outside the declared [0.0, 1.0]"),
        (
            IntDistribution(0, 4),
            1,
            {"type": "float", "low": 0, "high": 4},
            "sampled it as int, the spec declares float",
        ),
        (FloatDistribution(0, 1), 0.5, {"type": "float", "low": 0, "high": 1, "step": 0.5}, "off the declared grid"),
        (IntDistribution(1, 7, step=2), 3, {"type": "int", "low": 0, "high": 8, "step": 2}, "off the declared grid"),
        (CategoricalDistribution([True, 2]), True, {"type": "categorical", "choices": [1, 2]}, "has choices [True]"),
    ],
)
def test_a_source_param_outside_the_declared_space_is_refused_naming_it(
    source: BaseDistribution, value: Any, declared: dict[str, Any], words: str
) -> None:
    with pytest.raises(SpecError, match=r"^spec\.searchSpace\.p: the study to import ") as raised:
        check_compatible(source_with(source, value), ["minimize"], declared_distributions({"p": declared}))
    assert words in str(raised.value)


def test_other_directions_are_refused_naming_the_field() -> None:
    source = source_with(FloatDistribution(0, 1), 0.5, direction="maximize")
    with pytest.raises(SpecError, match=r"^spec.objective.directions: .* has directions \[maximize\], this study"):
        check_compatible(source, ["minimize"], {})


def test_params_the_spec_does_not_declare_are_not_checked() -> None:
    check_compatible(source_with(FloatDistribution(-100, 100), 50.0), ["minimize"], {})
