"""Every spec the API server accepts gets a verdict: the field (camelCase) and the fix, never an exception.

The table holds invalid and extreme specs as a new user writes them; the fuzz test puts odd values
into every field of a valid spec and checks that neither validation nor what follows it (the
operator's policy, the trial Job builder) raises.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from hpo_operator import dispatch, importing, search, snapshots
from hpo_operator.policy import Policy
from hpo_operator.validation import Limits, Problem, Reference, api_problems, missing_reference, parse, references
from tests.unit.test_operator_spec import study

pytestmark = pytest.mark.unit


def container(**fields: Any) -> dict[str, Any]:
    return {"trial": {"template": {"spec": {"containers": [{"name": "trial", **fields}]}}}}


def space(**parameter: Any) -> dict[str, Any]:
    return {"searchSpace": {"x": parameter}}


def sampler(name: str = "tpe", **options: Any) -> dict[str, Any]:
    return {"sampler": {"name": name, "options": options}}


def pruner(name: str = "median", **options: Any) -> dict[str, Any]:
    return {"pruner": {"name": name, "options": options}}


GRID = {"sampler": {"name": "grid"}}
HUGE = 10**9

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("trials-not-a-number", {"budget": {"trials": "many"}}, "spec.budget.trials: Input should be a valid integer"),
    ("no-budget", {"budget": None}, "spec.budget: Input should be a valid dictionary"),
    ("unknown-field", {"budgets": {"trials": 2}}, "spec.budgets: unknown field"),
    ("low-above-high", space(type="float", low=1, high=0.5), "spec.searchSpace.x.low: low (1) must be less than"),
    ("log-from-zero", space(type="float", low=0, high=1, log=True), "spec.searchSpace.x.low: log: true needs low > 0"),
    ("step-not-dividing", space(type="float", low=0, high=1, step=0.3), "spec.searchSpace.x.step: step 0.3 must"),
    ("no-choices", space(type="categorical", choices=[]), "spec.searchSpace.x.choices: a categorical parameter"),
    ("null-choice", space(type="categorical", choices=["a", None]), "spec.searchSpace.x.choices[1]: null is not a"),
    ("object-choice", space(type="categorical", choices=[{"a": 1}]), "spec.searchSpace.x.choices[0]: choices must"),
    ("duplicate-choice", space(type="categorical", choices=["a", "a"]), "spec.searchSpace.x.choices[1]: 'a' is "),
    ("categorical-with-low", space(type="categorical", choices=["a"], low=1), "spec.searchSpace.x.low: applies to"),
    ("int-not-whole", space(type="int", low=0.5, high=3), "spec.searchSpace.x: an int parameter needs whole"),
    ("int-beyond-2^53", space(type="int", low=0, high=1e20), "spec.searchSpace.x: an int parameter's low and high"),
    ("infinite-span", space(type="float", low=-1.7e308, high=1.7e308), "spec.searchSpace.x: low, high and step must"),
    ("no-high", space(type="float", low=0), "spec.searchSpace.x: a float parameter needs both low and high"),
    ("choices-on-float", space(type="float", low=0, high=1, choices=[1]), "spec.searchSpace.x.choices: choices apply"),
    (
        "odd-parameter-name",
        {"searchSpace": {"a b": {"type": "float", "low": 2, "high": 1}}},
        "spec.searchSpace['a b'].low: low (2)",
    ),
    (
        "metrics-per-direction",
        {"objective": {"directions": ["minimize"], "metrics": ["a", "b"]}},
        "spec.objective.metrics: give one metric name per direction (1)",
    ),
    ("no-directions", {"objective": {"directions": []}}, "spec.objective.directions: List should have at least 1"),
    ("objective-a-file", {"trial": {"objective": "train.py"}}, "spec.trial.objective: 'train.py' is not module:func"),
    ("objective-two-colons", {"trial": {"objective": "pkg:fn:x"}}, "spec.trial.objective: 'pkg:fn:x' is not"),
    ("template-a-list", {"trial": {"template": []}}, "spec.trial.template: Input should be a valid dictionary"),
    ("pod-spec-a-list", {"trial": {"template": {"spec": []}}}, "spec.trial.template.spec: must be a pod spec"),
    (
        "containers-not-a-list",
        {"trial": {"template": {"spec": {"containers": {"name": "trial"}}}}},
        "spec.trial.template.spec.containers: must be a list of objects",
    ),
    (
        "containers-of-strings",
        {"trial": {"template": {"spec": {"containers": ["trial"]}}}},
        "spec.trial.template.spec.containers: must be a list of objects",
    ),
    (
        "label-a-number",
        {"trial": {"template": {"metadata": {"labels": {"team": 7}}}}},
        "spec.trial.template.metadata.labels.team: must be a string (quote it)",
    ),
    (
        "node-selector-a-bool",
        {"trial": {"template": {"spec": {"nodeSelector": {"gpu": True}}}}},
        "spec.trial.template.spec.nodeSelector.gpu: must be a string",
    ),
    (
        "deadline-a-string",
        {"trial": {"template": {"spec": {"activeDeadlineSeconds": "10"}}}},
        "spec.trial.template.spec.activeDeadlineSeconds: must be an integer",
    ),
    (
        "cpu-lots",
        container(resources={"limits": {"cpu": "lots"}}),
        "spec.trial.template.spec.containers[0].resources.limits.cpu: 'lots' is not a Kubernetes quantity",
    ),
    (
        "memory-negative",
        container(resources={"requests": {"memory": "-1Gi"}}),
        "spec.trial.template.spec.containers[0].resources.requests.memory: '-1Gi' is negative",
    ),
    (
        "memory-exabytes",
        container(resources={"limits": {"memory": "9999999Ei"}}),
        "spec.trial.template.spec.containers[0].resources.limits.memory: '9999999Ei' is too large",
    ),
    (
        "half-a-gpu",
        container(resources={"limits": {"nvidia.com/gpu": 0.5}}),
        "spec.trial.template.spec.containers[0].resources.limits[nvidia.com/gpu]: 0.5: nvidia.com/gpu is counted",
    ),
    (
        "request-above-limit",
        container(resources={"limits": {"cpu": "1"}, "requests": {"cpu": "1500m"}}),
        "spec.trial.template.spec.containers[0].resources.requests.cpu: the request is more than the limit",
    ),
    (
        "gpu-overcommitted",
        container(resources={"limits": {"nvidia.com/gpu": 2}, "requests": {"nvidia.com/gpu": 1}}),
        "spec.trial.template.spec.containers[0].resources.requests[nvidia.com/gpu]: nvidia.com/gpu cannot be",
    ),
    (
        "resources-a-list",
        container(resources=[{"cpu": 1}]),
        "spec.trial.template.spec.containers[0].resources: must be an object",
    ),
    (
        "env-value-a-number",
        container(env=[{"name": "EPOCHS", "value": 5}]),
        "spec.trial.template.spec.containers[0].env[0].value: must be a string (quote it)",
    ),
    (
        "env-without-name",
        container(env=[{"value": "1"}]),
        "spec.trial.template.spec.containers[0].env[0].name: every variable needs a name",
    ),
    (
        "command-a-string",
        container(command="python train.py"),
        "spec.trial.template.spec.containers[0].command: must be a list of strings",
    ),
    ("image-a-number", container(image=3), "spec.trial.template.spec.containers[0].image: must be a string"),
    (
        "mount-without-path",
        container(volumeMounts=[{"name": "data"}]),
        "spec.trial.template.spec.containers[0].volumeMounts[0].mountPath: must be a non-empty string",
    ),
    (
        "no-container-named-trial",
        {"trial": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}}},
        "spec.trial.template.spec.containers: with several containers, name the one that runs the trial 'trial'",
    ),
    (
        "volume-without-name",
        {"trial": {"template": {"spec": {"volumes": [{"emptyDir": {}}]}}}},
        "spec.trial.template.spec.volumes[0].name: every volume needs a name",
    ),
    ("unknown-sampler", {"sampler": {"name": "bayes"}}, "spec.sampler.name: Input should be 'tpe', 'random'"),
    ("unknown-sampler-option", sampler(n_startup=3), "spec.sampler.options.n_startup: TPESampler has no option"),
    (
        "startup-trials-ten",
        sampler(n_startup_trials="ten"),
        "spec.sampler.options.n_startup_trials: TPESampler's n_startup_trials expects an integer, not 'ten' (str)",
    ),
    (
        "gamma-a-number",
        sampler(gamma=5),
        "spec.sampler.options.gamma: TPESampler's gamma expects a Python function, which a spec cannot hold",
    ),
    (
        "prior-weight-true",
        sampler(prior_weight=True),
        "spec.sampler.options.prior_weight: TPESampler's prior_weight expects a number or null, not True (bool)",
    ),
    (
        "independent-sampler",
        sampler("cmaes", independent_sampler={"class": "RandomSampler"}),
        "spec.sampler.options.independent_sampler: CmaEsSampler's independent_sampler expects a Python object",
    ),
    (
        "source-trials",
        sampler("cmaes", source_trials=[{"number": 1}]),
        "spec.sampler.options.source_trials: CmaEsSampler's source_trials expects a list of Python object",
    ),
    ("seed-in-options", sampler(seed=3), "spec.sampler.options.seed: set by the operator"),
    (
        "population-of-one",
        sampler("nsga2", population_size=1),
        "spec.sampler.options: NSGAIISampler refused these options: ValueError: `population_size` must be",
    ),
    ("qmc-type", sampler("qmc", qmc_type="bogus"), "spec.sampler.options: QMCSampler refused these options"),
    (
        "cmaes-two-directions",
        {"objective": {"directions": ["minimize", "maximize"]}, "sampler": {"name": "cmaes"}},
        "spec.sampler.name: cmaes cannot optimise several directions",
    ),
    ("grid-without-space", {"searchSpace": {}, **GRID}, "spec.searchSpace: the grid sampler needs a declared search"),
    (
        "grid-float-without-step",
        {**space(type="float", low=0, high=1), **GRID},
        "spec.searchSpace.x.step: the grid sampler needs a step for every float parameter",
    ),
    (
        "grid-of-10^8",
        {**space(type="int", low=0, high=10**8), **GRID},
        "spec.searchSpace: the grid has 100,000,001 points, more than the operator's limit of 100,000",
    ),
    (
        "grid-of-10^60",
        {"searchSpace": {f"p{i}": {"type": "int", "low": 0, "high": 100} for i in range(30)}, **GRID},
        "spec.searchSpace: the grid has about 10^60 points",
    ),
    (
        "step-too-fine",
        space(type="float", low=0, high=1, step=1e-300),
        "spec.searchSpace.x.step: the step is too small for this range",
    ),
    ("unknown-pruner-option", pruner(warmup=1), "spec.pruner.options.warmup: MedianPruner has no option"),
    (
        "pruner-option-a-string",
        pruner(n_warmup_steps="2"),
        "spec.pruner.options.n_warmup_steps: MedianPruner's n_warmup_steps expects an integer, not '2' (str)",
    ),
    (
        "percentile-150",
        pruner("percentile", percentile=150),
        "spec.pruner.options: PercentilePruner refused these options: ValueError",
    ),
    ("no-pruner-options", pruner("none", n_warmup_steps=1), "spec.pruner.options: the pruner 'none' takes no options"),
    (
        "pruning-two-directions",
        {"objective": {"directions": ["minimize", "minimize"]}, "pruner": {"name": "median"}},
        "spec.pruner.name: Optuna cannot prune multi-objective studies",
    ),
    ("warm-start-outside", {"warmStart": [{"lr": 5.0}]}, "spec.warmStart[0].lr: 5.0 is outside the declared"),
    ("warm-start-wrong-type", {"warmStart": [{"layers": {"n": 1}}]}, "spec.warmStart[0].layers: {'n': 1} is outside"),
    ("warm-start-a-number", {"warmStart": [3]}, "spec.warmStart[0]: Input should be a valid dictionary"),
    ("warm-start-thousands", {"warmStart": [{"lr": 0.01}] * 1001}, "spec.warmStart: 1001 parameter sets; at most"),
    (
        "preemptions-negative",
        {"budget": {"trials": 1, "maxPreemptionsPerTrial": -1}},
        "spec.budget.maxPreemptionsPerTrial: Input should be greater than or equal to 0",
    ),
    ("import-nothing", {"importFrom": {}}, "spec.importFrom: name the study to import: claimName and path"),
    (
        "import-both",
        {"importFrom": {"claimName": "c", "path": "a.db", "urlSecret": {"name": "s"}}},
        "spec.importFrom.urlSecret: give either urlSecret (a database) or claimName and path",
    ),
    ("import-claim-no-path", {"importFrom": {"claimName": "c"}}, "spec.importFrom.path: required with claimName"),
    ("import-path-no-claim", {"importFrom": {"path": "a.db"}}, "spec.importFrom.claimName: required with path"),
    (
        "import-absolute-path",
        {"importFrom": {"claimName": "c", "path": "/etc/passwd"}},
        "spec.importFrom.path: '/etc/passwd' must be relative to the claim's root",
    ),
    (
        "import-path-escapes",
        {"importFrom": {"claimName": "c", "path": "a/../../b.db"}},
        "spec.importFrom.path: 'a/../../b.db' must stay inside the claim",
    ),
    ("import-path-dot", {"importFrom": {"claimName": "c", "path": "./"}}, "spec.importFrom.path: './' must name a"),
    (
        "import-path-control",
        {"importFrom": {"claimName": "c", "path": "a\nb.db"}},
        "spec.importFrom.path: 'a\\nb.db' must not contain control characters",
    ),
    ("import-path-empty", {"importFrom": {"claimName": "c", "path": ""}}, "spec.importFrom.path: String should have"),
    (
        "import-claim-too-long",
        {"importFrom": {"claimName": "c" * 254, "path": "a.db"}},
        "spec.importFrom.claimName: String should have at most 253 characters",
    ),
    (
        "import-claim-not-a-name",
        {"importFrom": {"claimName": "My_Claim", "path": "a.db"}},
        "spec.importFrom.claimName: String should match pattern",
    ),
    (
        "import-rerun-not-bool",
        {"importFrom": {"urlSecret": {"name": "s"}, "rerunUnfinished": "yes please"}},
        "spec.importFrom.rerunUnfinished: Input should be a valid boolean",
    ),
    (
        "import-url-secret-a-string",
        {"importFrom": {"urlSecret": "mysql://u:p@h/db"}},
        "spec.importFrom.urlSecret: Input should be a valid dictionary",
    ),
    (
        "import-study-name-number",
        {"importFrom": {"urlSecret": {"name": "s"}, "studyName": 7}},
        "spec.importFrom.studyName: Input should be a valid string",
    ),
    (
        "import-unknown-field",
        {"importFrom": {"urlSecret": {"name": "s"}, "file": "x"}},
        "spec.importFrom.file: unknown field",
    ),
]


@pytest.mark.parametrize(("case", "overrides", "expected"), INVALID, ids=[case for case, _, _ in INVALID])
def test_an_invalid_spec_names_the_field_and_the_fix(case: str, overrides: dict[str, Any], expected: str) -> None:
    spec, found = parse(study(**overrides))
    assert spec is None
    assert any(str(p).startswith(expected) for p in found), [str(p) for p in found]


def test_the_table_covers_at_least_forty_cases_with_distinct_names() -> None:
    assert len(INVALID) >= 40 and len({case for case, _, _ in INVALID}) == len(INVALID)


VALID: list[tuple[str, dict[str, Any]]] = [
    ("huge-budget", {"budget": {"trials": HUGE, "parallelism": HUGE}}),
    ("parallelism-above-trials", {"budget": {"trials": 2, "parallelism": 10}}),
    (
        "quantities-of-every-form",
        container(
            resources={
                "limits": {"cpu": "1.5", "memory": "4Gi", "nvidia.com/gpu": 1, "ephemeral-storage": "1e9"},
                "requests": {"cpu": "500m", "memory": 1073741824, "nvidia.com/gpu": "1"},
            }
        ),
    ),
    ("hyperband-auto", pruner("hyperband", max_resource="auto")),
    ("tpe-options", sampler(n_startup_trials=5, multivariate=False, consider_endpoints=None, prior_weight=1)),
    ("cmaes-x0", sampler("cmaes", x0={"lr": 0.01}, sigma0=0.1, restart_strategy=None)),
    ("grid-of-100000", {**space(type="int", low=1, high=100_000), **GRID}),
    ("dotted-objective", {"trial": {"objective": "pkg.sub.mod:Class.method"}}),
    ("single-unnamed-container", {"trial": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
    ("mixed-choices", space(type="categorical", choices=["a", 1, 2.5, True])),
]


@pytest.mark.parametrize(("case", "overrides"), VALID, ids=[case for case, _ in VALID])
def test_an_extreme_but_sensible_spec_is_valid(case: str, overrides: dict[str, Any]) -> None:
    spec, found = parse(study(**overrides))
    assert found == [] and spec is not None


def test_the_grid_bound_is_the_operators_setting() -> None:
    hundred, hundred_and_one = (study(**space(type="int", low=low, high=100), **GRID) for low in (1, 0))
    assert parse(hundred, Limits(max_grid_points=100))[0] is not None
    assert str(parse(hundred_and_one, Limits(max_grid_points=100))[1][0]).startswith(
        "spec.searchSpace: the grid has 101 points, more than the operator's limit of 100 (HPO_MAX_GRID_POINTS)"
    )


def test_the_grid_is_sized_without_being_enumerated() -> None:
    spec, _ = parse(study(**space(type="float", low=0, high=1, step=0.25), sampler={"name": "tpe"}))
    assert spec is not None and search.grid_size(spec) == 5
    spec, _ = parse(study(searchSpace={"a": {"type": "int", "low": 0, "high": 10**12}}))
    assert spec is not None and search.grid_size(spec) == 10**12 + 1  # arithmetic: instant, no memory


ODD_VALUES: list[Any] = [None, "x", "", [], {}, [None], {"a": None}, True, -1, 0, 10**30, 1e308, -1e308, 0.5]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [path] + [leaf for key, value in node.items() for leaf in _leaves(value, (*path, key))]
    if isinstance(node, list):
        return [path] + [leaf for index, value in enumerate(node) for leaf in _leaves(value, (*path, index))]
    return [path]


RICH = study(
    **sampler("tpe", n_startup_trials=3),
    pruner={"name": "median", "options": {"n_warmup_steps": 1}},
    warmStart=[{"lr": 0.01}],
    checkpoints={"claimName": "ckpt"},
    importFrom={"claimName": "old", "path": "slurm/study.db", "studyName": "s", "rerunUnfinished": True},
    trial={
        "objective": "m:f",
        "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {
                "nodeSelector": {"k": "v"},
                "volumes": [{"name": "d", "emptyDir": {}}],
                "containers": [
                    {
                        "name": "trial",
                        "image": "i",
                        "command": ["c"],
                        "env": [{"name": "E", "value": "1"}],
                        "volumeMounts": [{"name": "d", "mountPath": "/d"}],
                        "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}},
                    }
                ],
            },
        },
    },
)


def _replace(spec: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(spec)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return changed


@pytest.mark.parametrize("path", _leaves(RICH)[1:], ids=lambda p: ".".join(map(str, p)))
def test_no_value_anywhere_makes_validation_or_the_job_builder_raise(path: tuple[Any, ...]) -> None:
    for value in ODD_VALUES:
        raw = _replace(RICH, path, value)
        spec, found = parse(raw)
        assert all(isinstance(p, Problem) and p.field.startswith("spec") for p in found)
        assert "could not check this spec" not in " ".join(map(str, found)), (path, value, found)
        if spec is None:
            continue
        Policy("mysql", 3306).check(spec)
        references(spec)
        ref = dispatch.TrialRef("ns", "s", "s", "s-storage")
        assignment = dispatch.assignment(spec, ref, 0, 0, search.sampler_config(spec, 0), search.pruner_config(spec))
        json.dumps(dispatch.build_job(spec, ref, 0, 0, assignment, "image"))
        if spec.import_from is not None:
            json.dumps(importing.build_import_job(spec, ref, 0, "image"))
        if spec.checkpoints.claim_name:
            json.dumps(snapshots.build_snapshot_job(spec, ref, "s-storage-readonly", 5, "image"))


def test_a_spec_that_is_not_an_object_is_a_problem_not_an_exception() -> None:
    assert parse(None)[1] == [Problem("spec", "must be an object")]
    assert parse([1, 2])[1] == [Problem("spec", "must be an object")]


def test_the_references_a_study_needs_are_listed_with_their_fields() -> None:
    spec, _ = parse(
        study(
            storage={
                "host": "db.example",
                "adminSecret": {"name": "db-admin"},
                "tls": {"caSecret": {"name": "db-ca", "key": "ca.pem"}},
            },
            checkpoints={"claimName": "ckpt"},
            trial={
                "template": {
                    "spec": {
                        "volumes": [
                            {"name": "a", "secret": {"secretName": "tokens"}},
                            {"name": "b", "secret": {"secretName": "maybe", "optional": True}},
                            {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                        ]
                    }
                }
            },
        )
    )
    assert spec is not None
    assert references(spec) == [
        Reference("spec.storage.adminSecret", "Secret", "db-admin"),
        Reference("spec.storage.tls.caSecret", "Secret", "db-ca", "ca.pem"),
        Reference("spec.checkpoints.claimName", "PersistentVolumeClaim", "ckpt"),
        Reference("spec.trial.template.spec.volumes[0].secret.secretName", "Secret", "tokens"),
        Reference(
            "spec.trial.template.spec.volumes[2].persistentVolumeClaim.claimName", "PersistentVolumeClaim", "data"
        ),
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {"claimName": "slurm", "path": "study.db"},
            Reference("spec.importFrom.claimName", "PersistentVolumeClaim", "slurm"),
        ),
        ({"urlSecret": {"name": "old-db"}}, Reference("spec.importFrom.urlSecret", "Secret", "old-db", "url")),
        (
            {"urlSecret": {"name": "old-db", "key": "dsn"}, "studyName": "x"},
            Reference("spec.importFrom.urlSecret", "Secret", "old-db", "dsn"),
        ),
    ],
)
def test_the_import_source_is_a_reference_that_must_exist(source: dict[str, Any], expected: Reference) -> None:
    spec, problems = parse(study(importFrom=source))
    assert spec is not None, problems
    assert references(spec) == [expected]


@pytest.mark.parametrize(
    ("reference", "exists", "keys", "expected"),
    [
        (
            Reference("spec.checkpoints.claimName", "PersistentVolumeClaim", "ckpt"),
            False,
            frozenset(),
            "spec.checkpoints.claimName: PersistentVolumeClaim ckpt does not exist in namespace team; create it",
        ),
        (
            Reference("spec.storage.tls.caSecret", "Secret", "ca", "ca.crt"),
            True,
            frozenset({"tls.crt"}),
            "spec.storage.tls.caSecret: Secret ca has no key ca.crt; add it",
        ),
        (
            Reference("spec.storage.adminSecret", "Secret", "admin"),
            True,
            frozenset({"username"}),
            "spec.storage.adminSecret: Secret admin lacks the key username or password",
        ),
        (Reference("spec.storage.adminSecret", "Secret", "admin"), True, frozenset({"username", "password"}), None),
        (Reference("spec.checkpoints.claimName", "PersistentVolumeClaim", "ckpt"), True, frozenset(), None),
        (
            Reference("spec.importFrom.claimName", "PersistentVolumeClaim", "slurm"),
            False,
            frozenset(),
            "spec.importFrom.claimName: PersistentVolumeClaim slurm does not exist in namespace team; create it",
        ),
        (
            Reference("spec.importFrom.urlSecret", "Secret", "old-db", "url"),
            False,
            frozenset(),
            "spec.importFrom.urlSecret: Secret old-db does not exist in namespace team",
        ),
        (
            Reference("spec.importFrom.urlSecret", "Secret", "old-db", "url"),
            True,
            frozenset({"dsn"}),
            "spec.importFrom.urlSecret: Secret old-db has no key url; add it",
        ),
    ],
)
def test_a_missing_reference_names_its_field(
    reference: Reference, exists: bool, keys: frozenset[str], expected: str | None
) -> None:
    problem = missing_reference(reference, "team", exists, keys)
    if expected is None:
        assert problem is None
    else:
        assert str(problem).startswith(expected)


def test_the_api_servers_refusal_of_the_dry_run_job_names_the_template_fields() -> None:
    status = {
        "kind": "Status",
        "code": 422,
        "reason": "Invalid",
        "message": 'Job.batch "s-0-0" is invalid: ...',
        "details": {
            "causes": [
                {
                    "reason": "FieldValueInvalid",
                    "message": 'Invalid value: "-1": must be greater than or equal to 0',
                    "field": "spec.template.spec.containers[0].resources.limits[cpu]",
                },
                {"reason": "FieldValueRequired", "message": "Required value", "field": "metadata.name"},
            ]
        },
    }
    assert [str(p) for p in api_problems(status)] == [
        "spec.trial.template.spec.containers[0].resources.limits[cpu]: the API server refuses it: Invalid value: "
        '"-1": must be greater than or equal to 0',
        "spec.trial.template (trial Job metadata.name): the API server refuses it: Required value",
    ]
    assert [str(p) for p in api_problems({"message": "the body is not a Job"})] == [
        "spec.trial.template: the body is not a Job"
    ]
    assert api_problems("garbage")[0].field == "spec.trial.template"
