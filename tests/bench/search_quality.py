"""Benchmark item 4: search quality under parallelism, on a simulated clock with no pods.

Where it sits: before any pod runs, the operator decides when to ask (`dispatch.free_slots`) and
asks through `StudyStore.ask`, whose sampler `search.sampler_config` configures. This item drives
exactly that code against an in-memory Optuna storage: a study of N trials is run with M trials
in flight, each trial "runs" for a duration drawn per seed (uniform 0.5-1.5 time units), and when
the earliest one ends its value is told (as the trial pod does) and the freed slots are refilled
(as the operator does). No database, no cluster, no sleeping: the clock jumps from event to event.

Three configurations per function and seed, all minimising, all seeded by the seed:

* ``m1``: sequential TPE through the operator's policy (M=1);
* ``m8``: M=8 through the operator's policy;
* ``naive``: M=8 asynchronous workers, each with a fresh stock ``TPESampler(seed=...)`` asking the
  shared storage for itself when its trial ends: what N Slurm jobs sharing one database do.

Functions (shipped here, known optimum, regret = best value found − optimum): Branin (2-d, 100
trials), Hartmann-6 (200 trials) and ``levy10cat`` (100 trials): 9-d Levy on [-10, 10] whose optimum
moves with a categorical ``variant`` that also adds 0, 1, 2 or 3. The figures are the median final
regret per function and configuration, and ``regret_ratio_m8_vs_m1`` / ``regret_ratio_naive_vs_m1``,
the geometric means over the functions of median(M=8) / median(M=1). The full run uses 90 seeds,
not the issue's minimum of 30, because 30 are too few: Hartmann-6's regret is bimodal (its local
optimum at -3.2032 is regret 0.119), so its median depends on how many runs escape, and the same
policy measured 1.21, 1.18 and 1.74 on seeds 0-29, 30-59 and 60-89. A progress line gives a
bootstrap 90% interval of the ratio; the quick run's 10 seeds are indicative only.

What was tried. Ratio at M=8 (geometric mean; Branin / Hartmann-6 / levy10cat in brackets):

==============================================  =========================  =========================
settings                                        seeds 0-29 (screening)     seeds 0-89
==============================================  =========================  =========================
former: multivariate, liar, 10 start-up trials  2.48 (3.3 / 4.2 / 1.1)     1.72 (2.0 / 2.1 / 1.3)
naive: 8 workers, stock TPE (univariate, liar)  2.33 (2.7 / 3.7 / 1.3)     2.09 (1.7 / 4.3 / 1.3)
univariate, liar                                2.35 (3.4 / 3.1 / 1.3)
no liar                                         2.15 (2.0 / 3.9 / 1.3)     1.29 on seeds 30-89 [1]
no liar, univariate                             3.92 (6.2 / 6.1 / 1.6)
n_ei_candidates=64, liar                        2.56 (2.3 / 4.7 / 1.6)
n_startup_trials=20, liar                       2.81 (3.2 / 4.8 / 1.5)
n_startup_trials=3, liar                        1.98 (3.0 / 2.1 / 1.3)     1.58 (1.9 / 1.9 / 1.1)
Sobol (scrambled QMC) start-up, liar            2.29 (2.6 / 4.2 / 1.1)
no liar + local penalty near running trials     3.04 (3.9 / 4.7 / 1.6)
ADOPTED: n_startup_trials=3, no liar            1.21 (1.2 / 1.3 / 1.1)     1.21 (1.05 / 1.56 / 1.07)
adopted, n_startup_trials 1 / 5                 1.75 / 1.94
adopted, n_startup_trials 2 / 4                 1.65 / 1.44 (seeds 0-59)
adopted, n_ei_candidates 8 / 12 / 48            1.95 / 1.25 / 1.38 (0-59)
adopted, Sobol start-up                         1.28 (seeds 0-59)
==============================================  =========================  =========================

[1] On seeds 30-89 alone: former settings 1.38, no liar 1.29, n_startup_trials=3 with liar 1.44,
adopted 1.27, naive 1.98. Per set of 30 seeds the adopted policy measured 1.21 / 1.18 / 1.74 and
the former settings 2.48 / 1.37 / 1.49 (seeds 0-29 / 30-59 / 60-89): the adopted policy is better
on 90 seeds (bootstrap 90% intervals 1.04-1.50 against 1.41-2.21) but not on every set of 30.

The profile behind it, from the regret curves (`simulate_all` keeps every run's values in order):
the lag alone costs little (sequential regret after N-8 trials is 1.28 / 1.02 / 1.03 times its
final one), yet the former settings were already 2 times worse by mid-run. TPE's start-up counts
*finished* trials, so at M=8 the first 10 + M - 1 = 17 trials were random; and the constant liar
counts each running trial as a bad result, so once the search converges the 7 running trials,
which sit in the best region, push each ask out of it (more diversity, as the local penalty adds,
made it worse still). `search.tpe_options` now keeps the random phase at about ten trials
(``n_startup_trials = max(1, 10 - (M - 1))``) and drops the liar when the space has a continuous
parameter. The same rule also helps at other M (30 seeds): M=4 0.96 against 1.16, M=16 2.74
against 3.77. What is left is Hartmann-6: M=8 runs that reach its global basin end as close as
sequential ones (median regret 0.030 against 0.031), but fewer reach it (54 of 90 against 69; the
former settings 48, naive 38): eight asks drawn from one model commit to a basin before the next
result arrives. A profile of one study puts 94% of its time in the sampler's ask.
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage, InMemoryStorage

from hpo_operator import dispatch, search
from hpo_operator.models import HpoStudySpec
from hpo_operator.storage import StudyStore
from hpo_operator.validation import parse
from tests.bench.report import Figure, progress

PARALLELISM = 8
SEEDS_FULL = 90
SEEDS_QUICK = 10
CONFIGS = ("m1", "m8", "naive")
"""Sequential through our policy, M=8 through our policy, M=8 as N jobs sharing one database."""


# --- the test functions, each with its declared search space and known optimum -----------------------------


def branin(p: Mapping[str, Any]) -> float:
    x1, x2 = float(p["x1"]), float(p["x2"])
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def hartmann6(p: Mapping[str, Any]) -> float:
    x = np.array([float(p[f"x{i}"]) for i in range(6)])
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


# Levy in 9 dimensions whose optimum moves with a categorical "variant"; the variants also differ by
# a constant, so only variant "a" reaches 0 and choosing the variant matters as much as the rest.
_LEVY_VARIANTS = {"a": (0.0, 0.0), "b": (1.0, 2.0), "c": (2.0, -3.0), "d": (3.0, 4.0)}  # (offset, shift)


def levy(x: np.ndarray) -> float:
    w = 1 + (x - 1) / 4
    head = math.sin(math.pi * w[0]) ** 2
    body = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2))
    tail = (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    return float(head + body + tail)


def levy_variant(p: Mapping[str, Any]) -> float:
    offset, shift = _LEVY_VARIANTS[str(p["variant"])]
    x = np.array([float(p[f"x{i}"]) for i in range(9)])
    return offset + levy(x - shift)


@dataclass(frozen=True)
class Function:
    name: str
    space: dict[str, dict[str, Any]]  # the study's searchSpace, as a user would write it
    evaluate: Callable[[Mapping[str, Any]], float]
    optimum: float
    trials: int


def _floats(names: list[str], low: float, high: float) -> dict[str, dict[str, Any]]:
    return {name: {"type": "float", "low": low, "high": high} for name in names}


FUNCTIONS = (
    Function(
        "branin",
        {"x1": {"type": "float", "low": -5, "high": 10}, "x2": {"type": "float", "low": 0, "high": 15}},
        branin,
        0.397887357729739,
        100,
    ),
    Function("hartmann6", _floats([f"x{i}" for i in range(6)], 0, 1), hartmann6, -3.32236801141551, 200),
    Function(
        "levy10cat",
        {
            **_floats([f"x{i}" for i in range(9)], -10, 10),
            "variant": {"type": "categorical", "choices": list(_LEVY_VARIANTS)},
        },
        levy_variant,
        0.0,
        100,
    ),
)


# --- the simulation ----------------------------------------------------------------------------------------


class SimulatedStore(StudyStore):
    """The operator's StudyStore over an in-memory storage: `study` and `ask` are the production code."""

    def __init__(self, storage: BaseStorage, study_name: str) -> None:  # no database to open
        self.storage = storage  # type: ignore[assignment]
        self.study_name = study_name
        self.study_id = storage.get_study_id_from_name(study_name)
        self._study = None
        self._sampler_config = None


def study_spec(function: Function, parallelism: int, seed: int, options: Mapping[str, Any]) -> HpoStudySpec:
    spec, problems = parse(
        {
            "searchSpace": function.space,
            "budget": {"trials": function.trials, "parallelism": parallelism},
            "sampler": {"name": "tpe", "seed": seed, "options": dict(options)},
        }
    )
    assert spec is not None, problems
    return spec


@dataclass(order=True)
class _Running:
    ends: float
    number: int
    worker: int = field(compare=False)
    trial: optuna.Trial = field(compare=False)


def simulate(function: Function, config: str, seed: int, options: Mapping[str, Any] | None = None) -> list[float]:
    """Run one study to its last trial on a simulated clock; the values in the order the trials ended."""
    storage = InMemoryStorage()
    name = "bench"
    optuna.create_study(storage=storage, study_name=name, direction="minimize")
    pod_view = optuna.load_study(study_name=name, storage=storage)  # how trial pods tell
    durations = np.random.default_rng(seed).uniform(0.5, 1.5, size=function.trials)
    parallelism = 1 if config == "m1" else PARALLELISM
    spec = study_spec(function, parallelism, seed, options or {})
    declared: dict[str, BaseDistribution] = search.distributions(spec)
    store = SimulatedStore(storage, name)
    workers = (
        [
            optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=seed * 100 + w))
            for w in range(parallelism)
        ]
        if config == "naive"
        else []
    )
    running: list[_Running] = []
    values: list[float] = []
    created, now = 0, 0.0

    def start(worker: int) -> None:
        nonlocal created
        trial = workers[worker].ask(declared) if workers else store.ask(spec, declared)
        heapq.heappush(running, _Running(now + float(durations[created]), trial.number, worker, trial))
        created += 1

    if workers:  # every job starts at once and asks for itself
        for worker in range(parallelism):
            start(worker)
    else:
        for _ in range(dispatch.free_slots(parallelism, 0, created, function.trials)):
            start(0)
    while running:
        done = heapq.heappop(running)
        now = done.ends
        values.append(function.evaluate(done.trial.params))
        pod_view.tell(done.trial, values[-1])
        if workers:  # the job that finished asks again while the budget lasts
            if created < function.trials:
                start(done.worker)
            continue
        for _ in range(dispatch.free_slots(parallelism, len(running), created, function.trials)):
            start(0)
    return values


# --- running it all ----------------------------------------------------------------------------------------


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _one(task: tuple[Function, str, int, dict[str, Any]]) -> tuple[str, str, int, list[float], float]:
    function, config, seed, options = task
    _quiet()
    started = time.perf_counter()
    values = simulate(function, config, seed, options)
    return function.name, config, seed, values, time.perf_counter() - started


def simulate_all(
    seeds: int,
    configs: tuple[str, ...] = CONFIGS,
    options: Mapping[str, Any] | None = None,
    functions: tuple[Function, ...] = FUNCTIONS,
    processes: int | None = None,
) -> dict[tuple[str, str], list[list[float]]]:
    """Each (function, config)'s values in the order trials ended, for seeds 0..seeds-1, in a process pool."""
    tasks = [(f, c, s, dict(options or {})) for f in functions for c in configs for s in range(seeds)]
    tasks.sort(key=lambda t: -t[0].trials)  # long ones first
    found: dict[tuple[str, str], list[list[float]]] = {}
    took: dict[str, float] = dict.fromkeys(configs, 0.0)
    started, step = time.perf_counter(), max(1, len(tasks) // 10)
    with multiprocessing.get_context("spawn").Pool(processes or os.cpu_count() or 1) as pool:
        for i, (name, config, _seed, values, seconds) in enumerate(pool.imap_unordered(_one, tasks), 1):
            found.setdefault((name, config), []).append(values)
            took[config] += seconds
            if i % step == 0 or i == len(tasks):
                progress(f"search quality: {i}/{len(tasks)} studies simulated ({time.perf_counter() - started:.0f}s)")
    per_study = ", ".join(f"{c} {took[c] / (len(tasks) / len(configs)):.2f}s" for c in configs)
    progress(f"search quality: seconds per simulated study (nearly all of it the samplers' asks): {per_study}")
    return found


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def final_regrets(found: dict[tuple[str, str], list[list[float]]]) -> dict[tuple[str, str], list[float]]:
    optimum = {f.name: f.optimum for f in FUNCTIONS}
    return {(name, config): [min(values) - optimum[name] for values in runs] for (name, config), runs in found.items()}


def ratio(final: Mapping[tuple[str, str], list[float]], config: str) -> float:
    """Geometric mean over the functions of median regret(config) / median regret(m1)."""
    names = sorted({name for name, _ in final})
    return geometric_mean([statistics.median(final[n, config]) / statistics.median(final[n, "m1"]) for n in names])


def bootstrap(final: Mapping[tuple[str, str], list[float]], config: str, draws: int = 400) -> tuple[float, float]:
    """A 90% interval of `ratio` when the seeds are resampled: how much of it is the seed set."""
    rng = np.random.default_rng(0)
    ratios = sorted(ratio({k: list(rng.choice(v, len(v))) for k, v in final.items()}, config) for _ in range(draws))
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws) - 1]


def run(quick: bool) -> list[Figure]:
    seeds = SEEDS_QUICK if quick else SEEDS_FULL
    progress(
        f"search quality: {len(FUNCTIONS)} functions × {len(CONFIGS)} configurations × {seeds} seeds, "
        f"M={PARALLELISM}, simulated clock"
    )
    final = final_regrets(simulate_all(seeds))
    ours, naive = ratio(final, "m8"), ratio(final, "naive")
    low, high = bootstrap(final, "m8")
    progress(
        f"search quality: regret ratio M=8/M=1 {ours:.2f} (90% over resampled seeds: {low:.2f}-{high:.2f}), "
        f"naive/M=1 {naive:.2f}"
    )
    figures = [
        Figure("regret_ratio_m8_vs_m1", ours, goal="<= 2 (aim 1.25)"),
        Figure("regret_ratio_naive_vs_m1", naive, goal="ours <= naive"),
    ]
    figures += [
        Figure(f"regret_median_{f.name}_{c}", statistics.median(final[f.name, c])) for f in FUNCTIONS for c in CONFIGS
    ]
    return figures
