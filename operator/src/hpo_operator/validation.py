"""What the CRD schema cannot check: the spec's values must make sense together.

Every problem names the field (as a user writes it in YAML) and how to fix it. An invalid study is
not retried: `handlers.py` records these problems in a condition and an Event, and waits for an edit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
import pydantic

from hpo_operator import search
from hpo_operator.contract import TRIAL_CONTAINER
from hpo_operator.models import HpoStudySpec, Parameter, ParameterType, SamplerName


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def parse(raw_spec: dict[str, Any]) -> tuple[HpoStudySpec | None, list[Problem]]:
    """Parse and check a spec; return it with no problems, or None with every problem found."""
    try:
        spec = HpoStudySpec.model_validate(raw_spec)
    except pydantic.ValidationError as error:
        return None, [
            Problem("spec." + ".".join(str(part) for part in issue["loc"]), issue["msg"])
            for issue in error.errors()
        ]
    problems = check(spec)
    return (None, problems) if problems else (spec, [])


def check(spec: HpoStudySpec) -> list[Problem]:
    problems = [p for name, parameter in spec.search_space.items() for p in _parameter(name, parameter)]
    problems += _budget(spec) + _objective(spec) + _sampler(spec) + _pruner(spec)
    if not problems:
        problems += _warm_start(spec)
    problems += _template(spec)
    return problems


def _parameter(name: str, parameter: Parameter) -> list[Problem]:
    where = f"spec.searchSpace.{name}"
    if parameter.type is ParameterType.CATEGORICAL:
        if not parameter.choices:
            return [Problem(f"{where}.choices", "a categorical parameter needs at least one choice")]
        odd = [c for c in parameter.choices if c is not None and not isinstance(c, str | int | float | bool)]
        return [Problem(f"{where}.choices", f"choices must be strings, numbers or booleans, not {odd[0]!r}")] \
            if odd else []
    if parameter.choices:
        return [Problem(f"{where}.choices", "choices apply to categorical parameters; remove them or set "
                                            "type: categorical")]
    if parameter.low is None or parameter.high is None:
        return [Problem(where, f"a {parameter.type.value} parameter needs both low and high")]
    low, high, step = parameter.low, parameter.high, parameter.step
    problems: list[Problem] = []
    if not low < high:
        problems.append(Problem(f"{where}.low", f"low ({low:g}) must be less than high ({high:g})"))
    if parameter.log and low <= 0:
        problems.append(Problem(f"{where}.low", f"log: true needs low > 0 (got {low:g}); raise low or set log: false"))
    if parameter.type is ParameterType.INT and not all(float(v).is_integer() for v in (low, high, step or 1)):
        problems.append(Problem(where, "an int parameter needs whole-number low, high and step"))
    if step is not None:
        if parameter.log:
            problems.append(Problem(f"{where}.step", "step cannot be combined with log: true; remove one"))
        elif low < high and not _fits(low, high, step):
            problems.append(Problem(f"{where}.step",
                                    f"step {step:g} must divide high - low ({high - low:g}); adjust step or high"))
    return problems


def _fits(low: float, high: float, step: float) -> bool:
    count = (high - low) / step
    return count >= 1 and math.isclose(count, round(count), rel_tol=0, abs_tol=1e-8)


def _budget(spec: HpoStudySpec) -> list[Problem]:
    budget = spec.budget
    if budget.parallelism > budget.trials:
        return [Problem("spec.budget.parallelism",
                        f"parallelism ({budget.parallelism}) cannot exceed trials ({budget.trials}); lower it")]
    return []


def _objective(spec: HpoStudySpec) -> list[Problem]:
    metrics, directions = spec.objective.metrics, spec.objective.directions
    if metrics and len(metrics) != len(directions):
        return [Problem("spec.objective.metrics",
                        f"give one metric name per direction ({len(directions)}), or none")]
    return []


def _sampler(spec: HpoStudySpec) -> list[Problem]:
    reserved = sorted(search.RESERVED_SAMPLER_OPTIONS & set(spec.sampler.options))
    if reserved:
        return [Problem(f"spec.sampler.options.{reserved[0]}",
                        "set by the operator (use spec.sampler.seed, spec.searchSpace); remove it")]
    if spec.sampler.name is SamplerName.GRID:
        if not spec.search_space:
            return [Problem("spec.searchSpace", "the grid sampler needs a declared search space")]
        continuous = [n for n, p in spec.search_space.items() if p.type is ParameterType.FLOAT and p.step is None]
        if continuous:
            return [Problem(f"spec.searchSpace.{continuous[0]}.step",
                            "the grid sampler needs a step for every float parameter")]
    return _options("spec.sampler.options", optuna.samplers, search.sampler_config(spec))


def _pruner(spec: HpoStudySpec) -> list[Problem]:
    config = search.pruner_config(spec)
    if config is None:
        return [Problem("spec.pruner.options", "the pruner 'none' takes no options")] if spec.pruner.options else []
    if len(spec.objective.directions) > 1:
        return [Problem("spec.pruner.name", "Optuna cannot prune multi-objective studies; set name: none")]
    return _options("spec.pruner.options", optuna.pruners, config)


def _options(where: str, module: Any, config: dict[str, Any]) -> list[Problem]:
    """Options must be keyword arguments the Optuna class takes, with values it accepts."""
    unknown = search.unknown_options(config["class"], module, config["kwargs"])
    if unknown:
        return [Problem(f"{where}.{unknown[0]}",
                        f"{config['class']} has no option {unknown[0]!r}; see its Optuna documentation")]
    try:
        search.build(module, config)
    except (TypeError, ValueError) as error:
        return [Problem(where, f"{config['class']} refused these options: {error}")]
    return []


def _warm_start(spec: HpoStudySpec) -> list[Problem]:
    declared = search.distributions(spec)
    for index, params in enumerate(spec.warm_start):
        for name, value in params.items():
            dist = declared.get(name)
            if dist is None:
                continue  # a define-by-run parameter: the objective suggests it
            try:
                inside = dist._contains(dist.to_internal_repr(value))
            except (TypeError, ValueError):
                inside = False
            if not inside:
                return [Problem(f"spec.warmStart[{index}].{name}",
                                f"{value!r} is outside the declared search space of {name}")]
    return []


def _template(spec: HpoStudySpec) -> list[Problem]:
    containers = spec.trial.template.get("spec", {}).get("containers", [])
    if len(containers) > 1 and not any(c.get("name") == TRIAL_CONTAINER for c in containers):
        return [Problem("spec.trial.template.spec.containers",
                        "with several containers, name the one that runs the trial 'trial'")]
    return []
