"""Translate a study's search space, sampler and pruner into Optuna objects.

The operator samples declared parameters with `study.ask(distributions)`; the trial pod builds the
same sampler and pruner (Optuna keeps neither in the database) from the class name and keyword
arguments this module puts into each trial's assignment.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hpo_operator.models import HpoStudySpec, Parameter, ParameterType, PrunerName, SamplerName

SAMPLER_CLASSES: dict[SamplerName, str] = {
    SamplerName.TPE: "TPESampler",
    SamplerName.RANDOM: "RandomSampler",
    SamplerName.CMAES: "CmaEsSampler",
    SamplerName.GP: "GPSampler",
    SamplerName.NSGA2: "NSGAIISampler",
    SamplerName.QMC: "QMCSampler",
    SamplerName.GRID: "GridSampler",
}
PRUNER_CLASSES: dict[PrunerName, str | None] = {
    PrunerName.NONE: None,
    PrunerName.MEDIAN: "MedianPruner",
    PrunerName.PERCENTILE: "PercentilePruner",
    PrunerName.HYPERBAND: "HyperbandPruner",
    PrunerName.SUCCESSIVE_HALVING: "SuccessiveHalvingPruner",
}
# Options the operator sets itself; users may not override them through `options`.
RESERVED_SAMPLER_OPTIONS = {"seed", "search_space"}


def distribution(parameter: Parameter) -> BaseDistribution:
    """The Optuna distribution of one declared parameter (assumes validation passed)."""
    if parameter.type is ParameterType.CATEGORICAL:
        return CategoricalDistribution(parameter.choices)
    assert parameter.low is not None and parameter.high is not None
    if parameter.type is ParameterType.INT:
        return IntDistribution(int(parameter.low), int(parameter.high), log=parameter.log,
                               step=int(parameter.step or 1))
    return FloatDistribution(parameter.low, parameter.high, log=parameter.log, step=parameter.step)


def distributions(spec: HpoStudySpec) -> dict[str, BaseDistribution]:
    return {name: distribution(parameter) for name, parameter in spec.search_space.items()}


def grid(spec: HpoStudySpec) -> dict[str, list[Any]]:
    """GridSampler's search space: categorical choices, and every step of a stepped range."""
    space: dict[str, list[Any]] = {}
    for name, parameter in spec.search_space.items():
        if parameter.type is ParameterType.CATEGORICAL:
            space[name] = list(parameter.choices)
            continue
        assert parameter.low is not None and parameter.high is not None
        step = parameter.step or 1
        count = round((parameter.high - parameter.low) / step) + 1
        values = (parameter.low + i * step for i in range(count))
        space[name] = [int(v) if parameter.type is ParameterType.INT else v for v in values]
    return space


def grid_size(spec: HpoStudySpec) -> int:
    return len(list(itertools.product(*grid(spec).values()))) if spec.search_space else 0


def sampler_config(spec: HpoStudySpec) -> dict[str, Any]:
    """Class name and keyword arguments of the study's sampler, as trial pods rebuild it."""
    kwargs = dict(spec.sampler.options)
    if spec.sampler.seed is not None:
        kwargs["seed"] = spec.sampler.seed
    if spec.sampler.name is SamplerName.TPE:
        # Trials run in parallel: make TPE aware of the running ones (Optuna 5's default too).
        kwargs.setdefault("constant_liar", True)
        kwargs.setdefault("multivariate", True)
    if spec.sampler.name is SamplerName.GRID:
        kwargs["search_space"] = grid(spec)
    return {"class": SAMPLER_CLASSES[spec.sampler.name], "kwargs": kwargs}


def pruner_config(spec: HpoStudySpec) -> dict[str, Any] | None:
    name = PRUNER_CLASSES[spec.pruner.name]
    return None if name is None else {"class": name, "kwargs": dict(spec.pruner.options)}


def build(module: Any, config: dict[str, Any] | None) -> Any:
    return None if config is None else getattr(module, config["class"])(**config["kwargs"])


def sampler(spec: HpoStudySpec) -> optuna.samplers.BaseSampler:
    return build(optuna.samplers, sampler_config(spec))  # type: ignore[no-any-return]


def pruner(spec: HpoStudySpec) -> optuna.pruners.BasePruner:
    built = build(optuna.pruners, pruner_config(spec))
    return built if built is not None else optuna.pruners.NopPruner()


def unknown_options(class_name: str, module: Any, options: dict[str, Any]) -> list[str]:
    """Options that the Optuna class's constructor does not take."""
    parameters = inspect.signature(getattr(module, class_name).__init__).parameters
    return sorted(set(options) - set(parameters) - {"self"})
