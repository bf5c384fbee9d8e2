"""Translate a study's search space, sampler and pruner into Optuna objects.

The operator samples declared parameters with `study.ask(distributions)`; the trial pod builds the
same sampler and pruner (Optuna keeps neither in the database) from the class name and keyword
arguments this module puts into each trial's assignment.

Seeds. A seeded sampler rebuilt with the same seed in every pod draws the same values in every
pod, so a parameter the objective suggests itself (define-by-run) would be the same in every
trial. With `sampler.seed`, each trial therefore gets its own seed, derived from the study's seed
and the trial number (`trial_seed`): the operator asks trial n with the seed derived for (n, ask),
and trial n's pod suggests with the one derived for (n, run) — two streams, so an undeclared
parameter is not a copy of a declared one. The study runs the same again, trial for trial. Grid
and QMC samplers keep the study's seed, which orders the whole grid or sequence; QMC's sampler
for parameters outside its sequence gets the trial's seed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

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
TPE_STARTUP_TRIALS = 10
"""Optuna's default `n_startup_trials`: how many random trials a sequential TPE study begins with."""
STUDY_SEEDED = {SamplerName.GRID, SamplerName.QMC}
"""Samplers whose seed orders the whole study (the grid, the sequence): every process keeps the study's seed."""
SAMPLER_MODULES: dict[SamplerName, tuple[str, ...]] = {
    SamplerName.CMAES: ("cmaes",),
    SamplerName.GP: ("torch", "scipy"),
    SamplerName.QMC: ("scipy",),
}
"""What each sampler imports when it first samples (Optuna imports them late, so a missing one shows up late)."""
ASK, RUN = "ask", "run"
"""The two seed streams of a trial: the operator's ask, and the pod's define-by-run suggestions."""


def distribution(parameter: Parameter) -> BaseDistribution:
    """The Optuna distribution of one declared parameter (assumes validation passed)."""
    if parameter.type is ParameterType.CATEGORICAL:
        return CategoricalDistribution(parameter.choices)
    assert parameter.low is not None and parameter.high is not None
    if parameter.type is ParameterType.INT:
        return IntDistribution(
            int(parameter.low), int(parameter.high), log=parameter.log, step=int(parameter.step or 1)
        )
    return FloatDistribution(parameter.low, parameter.high, log=parameter.log, step=parameter.step)


def distributions(spec: HpoStudySpec) -> dict[str, BaseDistribution]:
    return {name: distribution(parameter) for name, parameter in spec.search_space.items()}


def grid_count(parameter: Parameter) -> int:
    """How many values a parameter has on the grid, by arithmetic (a range is never enumerated to count it)."""
    if parameter.type is ParameterType.CATEGORICAL:
        return len(parameter.choices)
    assert parameter.low is not None and parameter.high is not None
    span = Fraction(repr(parameter.high)) - Fraction(repr(parameter.low))
    return int(span / Fraction(repr(parameter.step or 1))) + 1


def grid_size(spec: HpoStudySpec) -> int:
    """The number of grid points (the product of each parameter's values); 0 without a search space."""
    if not spec.search_space:
        return 0
    size = 1
    for parameter in spec.search_space.values():
        size *= grid_count(parameter)
    return size


def grid(spec: HpoStudySpec) -> dict[str, list[Any]]:
    """GridSampler's search space: categorical choices, and every step of a stepped range.

    Enumerates every value: call it only for a grid whose size (`grid_size`) validation accepted.
    """
    space: dict[str, list[Any]] = {}
    for name, parameter in spec.search_space.items():
        if parameter.type is ParameterType.CATEGORICAL:
            space[name] = list(parameter.choices)
            continue
        assert parameter.low is not None and parameter.high is not None
        step = parameter.step or 1
        values = (parameter.low + i * step for i in range(grid_count(parameter)))
        space[name] = [int(v) if parameter.type is ParameterType.INT else v for v in values]
    return space


def has_continuous_parameter(spec: HpoStudySpec) -> bool:
    """Whether a declared parameter is a float without a step (two samples of it never coincide)."""
    return any(p.type is ParameterType.FLOAT and p.step is None for p in spec.search_space.values())


def tpe_options(spec: HpoStudySpec) -> dict[str, Any]:
    """TPE's settings for a study that keeps `budget.parallelism` (M) trials running; the user's options win.

    Measured by benchmark item 4 (`tests/bench/search_quality.py`: Branin, Hartmann-6 and a 10-d
    function with a categorical, on a simulated clock through this code): at M=8 the former
    settings (Optuna's 10 start-up trials, constant liar) ended with 1.7 times the sequential
    study's median regret over 90 seeds, these with 1.2 times; N stock samplers sharing the
    database (the Slurm recipe) with 2.1 times.

    * ``n_startup_trials``: TPE leaves start-up once that many trials have *finished*, but the
      operator keeps M running, so Optuna's 10 makes the first 10 + M - 1 trials random (17 at
      M=8) and every later ask is a batch behind. Lowering it by M - 1 keeps the random phase at
      about ten trials whatever M (at least one finished trial is needed to model anything).
    * ``constant_liar``: Optuna's liar counts every running trial as a bad result. Once the search
      has found a good region the M - 1 running trials sit in it, so each ask is pushed out of the
      best region; without the liar, concurrent asks still differ through TPE's random candidates
      (forcing more diversity, with a penalty near running trials, measured worse). A space without
      a continuous parameter keeps the liar: there, concurrent asks without it repeat points.
    * ``multivariate``: models the parameters jointly, which finds the optimum of functions whose
      parameters interact in fewer trials (sequential or not).
    """
    parallel = spec.budget.parallelism > 1
    return {
        "multivariate": True,
        "constant_liar": not (parallel and has_continuous_parameter(spec)),
        "n_startup_trials": max(1, TPE_STARTUP_TRIALS - (spec.budget.parallelism - 1)),
    }


def trial_seed(study_seed: int, number: int, stream: str) -> int:
    """Trial ``number``'s seed in ``stream`` (`ASK` or `RUN`): the same in every process, different per trial."""
    digest = hashlib.sha256(f"{study_seed}/{number}/{stream}".encode()).digest()
    return int.from_bytes(digest[:4], "big")  # numpy takes seeds below 2**32


def sampler_config(spec: HpoStudySpec, trial: int | None = None, stream: str = RUN) -> dict[str, Any]:
    """Class name and keyword arguments of the study's sampler, as trial pods rebuild it.

    The operator asks with the sampler built from this same config (`sampler`), so the settings
    that depend on parallelism (`tpe_options`) change, and the sampler is rebuilt, when M is edited.
    With a seed, ``trial`` and ``stream`` give that trial's seed (see the module's docstring);
    without ``trial`` the config carries the study's own seed.
    """
    kwargs = dict(spec.sampler.options)
    seed, name = spec.sampler.seed, spec.sampler.name
    if seed is not None:
        own = seed if trial is None else trial_seed(seed, trial, stream)
        kwargs["seed"] = seed if name in STUDY_SEEDED else own
        if name is SamplerName.QMC and trial is not None:
            kwargs["independent_sampler"] = {"class": "RandomSampler", "kwargs": {"seed": own}}
    if spec.sampler.name is SamplerName.TPE:
        kwargs = {**tpe_options(spec), **kwargs}
    if spec.sampler.name is SamplerName.GRID:
        kwargs["search_space"] = grid(spec)
    return {"class": SAMPLER_CLASSES[spec.sampler.name], "kwargs": kwargs}


def pruner_config(spec: HpoStudySpec) -> dict[str, Any] | None:
    name = PRUNER_CLASSES[spec.pruner.name]
    return None if name is None else {"class": name, "kwargs": dict(spec.pruner.options)}


def _is_component(value: object) -> bool:
    return isinstance(value, dict) and set(value) <= {"class", "kwargs"} and isinstance(value.get("class"), str)


def build(module: Any, config: dict[str, Any] | None) -> Any:
    """``module.<class>(**kwargs)``; a keyword argument written as a config is built the same way (as pods do)."""
    if config is None:
        return None
    kwargs = {
        key: build(module, {"kwargs": {}, **value}) if _is_component(value) else value
        for key, value in config["kwargs"].items()
    }
    return getattr(module, config["class"])(**kwargs)


class TrialSeededSampler(BaseSampler):
    """The study's sampler, built afresh for each trial with that trial's seed (`trial_seed`, stream `ASK`).

    Optuna calls `before_trial` first for every trial, with its number; every later call for the
    trial goes to the sampler built for it. The operator asks one trial at a time, so one sampler
    is kept.
    """

    def __init__(self, make: Callable[[int], BaseSampler]) -> None:
        self._make = make
        self._number: int | None = None
        self._sampler = make(0)

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number != self._number:
            self._sampler, self._number = self._make(trial.number), trial.number
        return self._sampler

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def sampler(spec: HpoStudySpec) -> optuna.samplers.BaseSampler:
    """The sampler the operator asks with: per-trial seeds with `sampler.seed`, else the config's sampler."""
    if spec.sampler.seed is None:
        return build(optuna.samplers, sampler_config(spec))  # type: ignore[no-any-return]
    return TrialSeededSampler(lambda number: build(optuna.samplers, sampler_config(spec, number, ASK)))


def missing_modules(name: SamplerName) -> list[str]:
    """The packages the sampler needs that this process cannot import."""
    return [module for module in SAMPLER_MODULES.get(name, ()) if importlib.util.find_spec(module) is None]


def pruner(spec: HpoStudySpec) -> optuna.pruners.BasePruner:
    built = build(optuna.pruners, pruner_config(spec))
    return built if built is not None else optuna.pruners.NopPruner()


def unknown_options(class_name: str, module: Any, options: dict[str, Any]) -> list[str]:
    """Options that the Optuna class's constructor does not take."""
    parameters = inspect.signature(getattr(module, class_name).__init__).parameters
    return sorted(set(options) - set(parameters) - {"self"})
