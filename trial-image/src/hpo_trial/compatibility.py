"""Whether a study to import fits the new study: the same directions, and params inside the declared space.

Second step of an import (``hpo-transfer import``), after the source is open (:mod:`hpo_trial.sources`)
and before any trial is copied (:mod:`hpo_trial.transfer`): a source whose trials the new study could
not take as its own history is refused, naming the spec's field and what differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection

from hpo_trial.errors import SpecError
from hpo_trial.sources import SourceStudy

__all__ = ["DIRECTIONS_FIELD", "SEARCH_SPACE_FIELD", "check_compatible", "declared_distributions", "direction"]

DIRECTIONS_FIELD = "spec.objective.directions"
SEARCH_SPACE_FIELD = "spec.searchSpace"


def declared_distributions(space: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """The Optuna distributions of a spec's ``searchSpace`` (the CRD's JSON), as the operator builds them.

    Raises:
        SpecError: A parameter that is not a valid float, int or categorical declaration.
    """
    built: dict[str, BaseDistribution] = {}
    for name, raw in space.items():
        field = f"{SEARCH_SPACE_FIELD}.{name}"
        try:
            kind = raw["type"]
            if kind == "categorical":
                built[name] = CategoricalDistribution(raw["choices"])
            elif kind == "int":
                step = int(raw.get("step") or 1)
                built[name] = IntDistribution(int(raw["low"]), int(raw["high"]), log=bool(raw.get("log")), step=step)
            elif kind == "float":
                built[name] = FloatDistribution(
                    float(raw["low"]), float(raw["high"]), log=bool(raw.get("log")), step=raw.get("step")
                )
            else:
                raise SpecError(field, f"unknown type {kind!r}; use float, int or categorical")
        except (KeyError, TypeError, ValueError) as error:
            raise SpecError(field, f"not a valid parameter declaration: {error}") from None
    return built


def check_compatible(
    source: SourceStudy, directions: Sequence[str | StudyDirection], declared: Mapping[str, BaseDistribution]
) -> None:
    """Refuse a source study whose trials the new study cannot take as its own history.

    The directions must be the same. A parameter the spec declares must, in every source trial that has
    it, have a distribution whose values are all values of the declared one: the same type, a range
    inside the declared range (on its step's grid when the declaration has a step), categorical choices
    among the declared ones. A ``log`` that differs is accepted (it changes how values are drawn, not
    which are valid). Parameters the spec does not declare (suggested by the objective) are not checked.

    Raises:
        SpecError: The first difference, naming ``spec.objective.directions`` or ``spec.searchSpace.<param>``.
    """
    wanted = [direction(d) for d in directions]
    if list(source.directions) != wanted:
        raise SpecError(
            DIRECTIONS_FIELD,
            f"the study to import ({source.name!r} in {source.where}) has directions {_names(source.directions)}, "
            f"this study {_names(wanted)}; they must be the same",
        )
    seen: dict[str, set[BaseDistribution]] = {}
    for trial in source.trials:
        for name, distribution in trial.distributions.items():
            if name in declared:
                seen.setdefault(name, set()).add(distribution)
    for name in sorted(seen):
        for distribution in sorted(seen[name], key=repr):
            problem = _incompatibility(distribution, declared[name])
            if problem is not None:
                raise SpecError(f"{SEARCH_SPACE_FIELD}.{name}", f"the study to import {problem}")


def direction(direction: str | StudyDirection) -> StudyDirection:
    return direction if isinstance(direction, StudyDirection) else StudyDirection[direction.upper()]


def _names(directions: Sequence[StudyDirection]) -> str:
    return "[" + ", ".join(direction.name.lower() for direction in directions) + "]"


def _incompatibility(source: BaseDistribution, declared: BaseDistribution) -> str | None:
    """Why values of ``source`` may not be values of ``declared``, or None when they all are."""
    if type(source) is not type(declared):
        return f"sampled it as {_kind(source)}, the spec declares {_kind(declared)}"
    if isinstance(source, CategoricalDistribution):
        assert isinstance(declared, CategoricalDistribution)
        extra = [choice for choice in source.choices if not any(_same(choice, d) for d in declared.choices)]
        return f"has choices {extra} that the spec does not declare {list(declared.choices)}" if extra else None
    assert isinstance(source, (FloatDistribution, IntDistribution))
    assert isinstance(declared, (FloatDistribution, IntDistribution))
    if source.low < declared.low or source.high > declared.high:
        return f"sampled it in [{source.low}, {source.high}], outside the declared [{declared.low}, {declared.high}]"
    step = declared.step if isinstance(declared, FloatDistribution) else (declared.step if declared.step != 1 else None)
    if step is not None:
        grid = Fraction(str(step))
        if (
            source.step is None
            or Fraction(str(source.step)) % grid
            or (Fraction(str(source.low)) - Fraction(str(declared.low))) % grid
        ):
            return (
                f"sampled it with step {source.step} from {source.low}, off the declared grid "
                f"(step {step} from {declared.low})"
            )
    return None


def _kind(distribution: BaseDistribution) -> str:
    return {FloatDistribution: "float", IntDistribution: "int", CategoricalDistribution: "categorical"}.get(
        type(distribution), type(distribution).__name__
    )


def _same(a: object, b: object) -> bool:
    """Choices are equal as JSON sees them: ``True`` is not ``1``."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)
