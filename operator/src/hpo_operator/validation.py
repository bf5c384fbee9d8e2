"""What the CRD schema cannot check: the spec's values must make sense together, and Optuna must accept them.

The first step of every pass over a study, before anything is provisioned or any Job exists.
Every problem names the field (its camelCase path, as a user writes it in YAML) and how to fix it.
Validation never raises and never loads more than it must: whatever the API server accepted
(wrong types inside the free-form fields, absurd numbers, a grid of 10^8 points) becomes a list
of problems, so every study gets a status. An invalid study is not retried: `reconcile.py` records
the problems in a condition and an Event, and waits for an edit. Pure functions (`references`
lists what the loop must look up in the API; `api_problems` reads what the API server said of a
dry-run trial Job).
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import optuna
import pydantic

from hpo_operator import queueing, search, templates
from hpo_operator.models import HpoStudySpec, Parameter, ParameterType, SamplerName

MAX_WARM_START = 1000
"""Parameter sets a study may queue (each is a row Optuna checks the others against)."""
MAX_INT_PARAMETER = 2**53
"""Int parameters are kept as JSON numbers (floats): beyond this they lose whole numbers."""
_OBJECTIVE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Problem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class Limits:
    """The operator's limits on what a study may ask for (from its settings)."""

    max_grid_points: int = 100_000


@dataclass(frozen=True)
class Reference:
    """An object of the study's namespace the spec names, which must exist before the study can run."""

    field: str
    kind: str  # "Secret", "PersistentVolumeClaim" or "LocalQueue" (Kueue's)
    name: str
    key: str | None = None  # a Secret key that must be there


def parse(raw_spec: object, limits: Limits = Limits()) -> tuple[HpoStudySpec | None, list[Problem]]:
    """Parse and check a spec; return it with no problems, or None with every problem found. Never raises."""
    try:
        return _parse(raw_spec, limits)
    except Exception as error:  # a bug here must show in the study's status, not stall the operator
        return None, [
            Problem(
                "spec",
                f"the operator could not check this spec ({type(error).__name__}: {error}); "
                "please report it with the spec",
            )
        ]


def _parse(raw_spec: object, limits: Limits) -> tuple[HpoStudySpec | None, list[Problem]]:
    if not isinstance(raw_spec, dict):
        return None, [Problem("spec", "must be an object")]
    try:
        spec = HpoStudySpec.model_validate(raw_spec)
    except pydantic.ValidationError as error:
        return None, [Problem(field_path(issue["loc"]), _pydantic_message(issue)) for issue in error.errors()]
    problems = check(spec, limits)
    return (None, problems) if problems else (spec, [])


def field_path(location: tuple[int | str, ...], root: str = "spec") -> str:
    """``("searchSpace", "x", "choices", 1)`` -> ``spec.searchSpace.x.choices[1]``."""
    path = root
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path += f".{part}"
        else:
            path += f"[{part!r}]"
    return path


def _pydantic_message(issue: Any) -> str:
    message = str(issue["msg"])
    if issue["type"] == "extra_forbidden":
        return "unknown field; remove it or check its spelling (kubectl explain hpostudy.spec)"
    if issue["type"] == "missing":
        return "required; set it"
    return message


def check(spec: HpoStudySpec, limits: Limits = Limits()) -> list[Problem]:
    """What a parsed spec gets wrong (empty: it may run)."""
    problems = [p for name, parameter in spec.search_space.items() for p in _parameter(name, parameter)]
    problems += _objective(spec) + _trial(spec) + _import_from(spec)
    if not problems:  # the sampler, pruner and warm start read the search space
        problems += _sampler(spec, limits) + _pruner(spec) + _warm_start(spec)
    return problems


def _parameter(name: str, parameter: Parameter) -> list[Problem]:
    where = field_path(("searchSpace", name))
    if parameter.type is ParameterType.CATEGORICAL:
        return _choices(where, parameter)
    if parameter.choices:
        return [
            Problem(f"{where}.choices", "choices apply to categorical parameters; remove them or set type: categorical")
        ]
    if parameter.low is None or parameter.high is None:
        return [Problem(where, f"a {parameter.type.value} parameter needs both low and high")]
    low, high, step = parameter.low, parameter.high, parameter.step
    if not all(math.isfinite(v) for v in (low, high, step or 1)) or not math.isfinite(high - low):
        return [Problem(where, "low, high and step must be finite numbers whose difference is finite")]
    problems: list[Problem] = []
    if parameter.type is ParameterType.INT:
        if not all(float(v).is_integer() for v in (low, high, step or 1)):
            return [Problem(where, "an int parameter needs whole-number low, high and step")]
        if max(abs(low), abs(high)) > MAX_INT_PARAMETER:
            return [
                Problem(
                    where,
                    f"an int parameter's low and high must lie within ±2^53 ({MAX_INT_PARAMETER}); "
                    "use a float parameter with log: true for wider ranges",
                )
            ]
    if not low < high:
        problems.append(Problem(f"{where}.low", f"low ({low:g}) must be less than high ({high:g})"))
    if parameter.log and low <= 0:
        problems.append(Problem(f"{where}.low", f"log: true needs low > 0 (got {low:g}); raise low or set log: false"))
    if step is not None:
        if parameter.log:
            problems.append(Problem(f"{where}.step", "step cannot be combined with log: true; remove one"))
        elif low < high and not _divides(low, high, step):
            problems.append(
                Problem(f"{where}.step", f"step {step:g} must divide high - low ({high - low:g}); adjust step or high")
            )
    if not problems:
        try:
            search.distribution(parameter)
        except ArithmeticError:  # Optuna counts the steps in decimals of limited precision
            problems.append(
                Problem(
                    f"{where}.step",
                    "the step is too small for this range (more steps than "
                    "Optuna can count); use a larger step or none",
                )
            )
        except Exception as error:
            problems.append(
                Problem(
                    where,
                    f"Optuna refuses this distribution ({type(error).__name__}: {error}); check low, high and step",
                )
            )
    return problems


def _choices(where: str, parameter: Parameter) -> list[Problem]:
    odd = [field for field in ("low", "high", "step") if getattr(parameter, field) is not None]
    if odd or parameter.log:
        return [
            Problem(
                f"{where}.{odd[0] if odd else 'log'}",
                "applies to float and int parameters; remove it from a categorical parameter",
            )
        ]
    if not parameter.choices:
        return [Problem(f"{where}.choices", "a categorical parameter needs at least one choice")]
    for index, choice in enumerate(parameter.choices):
        if choice is None:
            return [
                Problem(
                    f"{where}.choices[{index}]",
                    "null is not a choice; choices must be strings, numbers or "
                    'booleans (quote it as "null" if you mean the word)',
                )
            ]
        if not isinstance(choice, str | int | float | bool):
            return [
                Problem(
                    f"{where}.choices[{index}]",
                    f"choices must be strings, numbers or booleans, not {type(choice).__name__} {choice!r}",
                )
            ]
    seen: list[Any] = []
    for index, choice in enumerate(parameter.choices):
        if any(type(choice) is type(other) and choice == other for other in seen):
            return [Problem(f"{where}.choices[{index}]", f"{choice!r} is listed twice; choices must be distinct")]
        seen.append(choice)
    return []


def _divides(low: float, high: float, step: float) -> bool:
    """Exactly, in decimals as written (0.1 divides 0.3), whatever the number of steps."""
    steps = (Fraction(repr(high)) - Fraction(repr(low))) / Fraction(repr(step))
    return steps >= 1 and steps.denominator == 1


def _objective(spec: HpoStudySpec) -> list[Problem]:
    metrics, directions = spec.objective.metrics, spec.objective.directions
    if metrics and len(metrics) != len(directions):
        return [Problem("spec.objective.metrics", f"give one metric name per direction ({len(directions)}), or none")]
    return []


def _import_from(spec: HpoStudySpec) -> list[Problem]:
    """Exactly one source: a file (claimName and path, inside the claim) or a database (urlSecret)."""
    source = spec.import_from
    if source is None:
        return []
    where = "spec.importFrom"
    on_claim = source.claim_name is not None or source.path is not None
    if source.url_secret is not None and on_claim:
        return [
            Problem(
                f"{where}.urlSecret",
                "give either urlSecret (a database) or claimName and path (a file on a claim), not both",
            )
        ]
    if source.url_secret is None and not on_claim:
        return [
            Problem(
                where,
                "name the study to import: claimName and path (an SQLite or Optuna journal file on a "
                "PersistentVolumeClaim), or urlSecret (a Secret key holding a MySQL or PostgreSQL URL)",
            )
        ]
    if source.url_secret is not None:
        return []
    if source.claim_name is None:
        return [Problem(f"{where}.claimName", "required with path: the PersistentVolumeClaim that holds the file")]
    if source.path is None:
        return [Problem(f"{where}.path", "required with claimName: the file to import, relative to the claim's root")]
    why = importing_path_problem(source.path)
    return [Problem(f"{where}.path", f"{source.path!r} {why}")] if why else []


def importing_path_problem(path: str) -> str | None:
    """Why ``spec.importFrom.path`` cannot name a file inside its claim (None: it can)."""
    if path.startswith("/"):
        return "must be relative to the claim's root (no leading /), e.g. studies/slurm.db"
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        return "must not contain control characters"
    if ".." in path.split("/"):
        return "must stay inside the claim: remove the .. segments"
    if path.strip("/.") == "" or path.endswith("/"):
        return "must name a file, not a directory"
    return None


def _trial(spec: HpoStudySpec) -> list[Problem]:
    problems: list[Problem] = []
    objective = spec.trial.objective
    if objective is not None and not _OBJECTIVE.match(objective):
        problems.append(
            Problem(
                "spec.trial.objective",
                f"{objective!r} is not module:function; write it as the "
                "importable module, a colon and the function, e.g. "
                "my_package.train:objective",
            )
        )
    problems += [Problem(issue.field, issue.message) for issue in templates.check(spec.trial.template)]
    return problems


def _sampler(spec: HpoStudySpec, limits: Limits) -> list[Problem]:
    reserved = sorted(search.RESERVED_SAMPLER_OPTIONS & set(spec.sampler.options))
    if reserved:
        return [
            Problem(
                f"spec.sampler.options.{reserved[0]}",
                "set by the operator (use spec.sampler.seed, spec.searchSpace); remove it",
            )
        ]
    name = spec.sampler.name
    missing = search.missing_modules(name)
    if missing:
        return [
            Problem(
                "spec.sampler.name",
                f"the operator cannot run the {name.value} sampler: its image lacks "
                f"{', '.join(missing)}; choose another sampler or ask your cluster "
                "admin for an operator image with them",
            )
        ]
    if name is SamplerName.CMAES and len(spec.objective.directions) > 1:
        return [
            Problem("spec.sampler.name", "cmaes cannot optimise several directions; use tpe, nsga2, gp, random or qmc")
        ]
    if name is SamplerName.GRID:
        problems = _grid(spec, limits)
        if problems:
            return problems
    problems = _option_types(
        "spec.sampler.options", optuna.samplers, search.SAMPLER_CLASSES[name], spec.sampler.options
    )
    return problems or _instantiate("spec.sampler.options", optuna.samplers, search.sampler_config(spec, 0))


def _grid(spec: HpoStudySpec, limits: Limits) -> list[Problem]:
    if not spec.search_space:
        return [Problem("spec.searchSpace", "the grid sampler needs a declared search space")]
    continuous = [n for n, p in spec.search_space.items() if p.type is ParameterType.FLOAT and p.step is None]
    if continuous:
        return [
            Problem(
                f"{field_path(('searchSpace', continuous[0]))}.step",
                "the grid sampler needs a step for every float parameter",
            )
        ]
    size = search.grid_size(spec)
    if size > limits.max_grid_points:
        shown = f"{size:,}" if size < 10**15 else f"about 10^{len(str(size)) - 1}"
        return [
            Problem(
                "spec.searchSpace",
                f"the grid has {shown} points, more than the operator's limit of "
                f"{limits.max_grid_points:,} (HPO_MAX_GRID_POINTS); use larger steps, "
                "fewer choices, or another sampler such as tpe or qmc",
            )
        ]
    return []


def _pruner(spec: HpoStudySpec) -> list[Problem]:
    config = search.pruner_config(spec)
    if config is None:
        return [Problem("spec.pruner.options", "the pruner 'none' takes no options")] if spec.pruner.options else []
    if len(spec.objective.directions) > 1:
        return [Problem("spec.pruner.name", "Optuna cannot prune multi-objective studies; set name: none")]
    problems = _option_types("spec.pruner.options", optuna.pruners, config["class"], spec.pruner.options)
    return problems or _instantiate("spec.pruner.options", optuna.pruners, config)


def _option_types(where: str, module: Any, class_name: str, options: dict[str, Any]) -> list[Problem]:
    """Each option must be a keyword of the Optuna class, of a type its annotation admits and a spec can hold."""
    parameters = inspect.signature(getattr(module, class_name).__init__).parameters
    problems = []
    for option, value in options.items():
        parameter = parameters.get(option)
        if parameter is None or option == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            problems.append(
                Problem(f"{where}.{option}", f"{class_name} has no option {option!r}; see its Optuna documentation")
            )
            continue
        refusal = option_refusal(parameter.annotation, value)
        if refusal:
            problems.append(Problem(f"{where}.{option}", f"{class_name}'s {option} {refusal}"))
    return problems


def option_refusal(annotation: object, value: object) -> str | None:
    """Why ``value`` cannot be given for a constructor parameter annotated ``annotation`` (None: it can).

    Optuna's annotations are strings (``"int"``, ``"float | None"``, ``"Callable[[int], int] | None"``);
    JSON gives strings, numbers, booleans, null, lists and objects. A parameter that takes a Python
    function or an Optuna object cannot be expressed in a spec and is refused, naming what it takes.
    """
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if _accepts(text, value):
        return None
    described = [_describe(alternative) for alternative in _split(text)]
    expressible = [name for name, json in described if json]
    if expressible in ([], ["null"]):
        python = " or ".join(name for name, json in described if not json)
        return f"expects {python}, which a spec cannot hold; remove it to use Optuna's default"
    return f"expects {' or '.join(dict.fromkeys(expressible))}, not {value!r} ({type(value).__name__})"


def _split(annotation: str, separator: str = "|") -> list[str]:
    """Top-level parts of ``A | B[C | D] | None`` (or of ``K, V`` with separator ``,``)."""
    parts, depth, current = [], 0, ""
    for char in annotation:
        depth += char == "["
        depth -= char == "]"
        if char == separator and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _base(alternative: str) -> tuple[str, str]:
    """``list[FrozenTrial]`` -> (``list``, ``FrozenTrial``); ``np.ndarray`` -> (``ndarray``, ``""``)."""
    base, _, rest = alternative.partition("[")
    return base.strip().rsplit(".", 1)[-1], rest.rsplit("]", 1)[0]


def _accepts(annotation: str, value: object) -> bool:
    for alternative in _split(annotation):
        base, inner = _base(alternative)
        if base in _SEQUENCES:
            if isinstance(value, list) and all(_accepts(_split(inner, ",")[0], item) for item in value):
                return True
        elif base in _JSON_TYPES and _JSON_TYPES[base](value):
            return True
    return False


def _describe(alternative: str) -> tuple[str, bool]:
    """How to name a type to a user, and whether JSON can express it."""
    base, inner = _base(alternative)
    if base == "Callable":
        return "a Python function", False
    if base in _SEQUENCES:
        item, json = _describe(_split(inner, ",")[0]) if inner else ("anything", True)
        return f"a list of {item.removeprefix('a ').removeprefix('an ')}", json
    if base in _TYPE_NAMES:
        return _TYPE_NAMES[base], True
    return f"a Python object ({base})", False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SEQUENCES = {"list", "Sequence", "tuple"}
_JSON_TYPES: dict[str, Any] = {
    "None": lambda v: v is None,
    "int": _is_int,
    "float": lambda v: _is_int(v) or (isinstance(v, float) and math.isfinite(v)),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "dict": lambda v: isinstance(v, dict),
    "Mapping": lambda v: isinstance(v, dict),
    "Any": lambda v: True,
}
_TYPE_NAMES = {
    "None": "null",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "dict": "an object",
    "Mapping": "an object",
    "Any": "anything",
}


def _instantiate(where: str, module: Any, config: dict[str, Any]) -> list[Problem]:
    """Build the object as trial pods will: Optuna's own checks of the values run here, not in a pod."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search.build(module, config)
    except Exception as error:
        return [Problem(where, f"{config['class']} refused these options: {type(error).__name__}: {error}")]
    return []


def _warm_start(spec: HpoStudySpec) -> list[Problem]:
    if len(spec.warm_start) > MAX_WARM_START:
        return [
            Problem("spec.warmStart", f"{len(spec.warm_start)} parameter sets; at most {MAX_WARM_START} may be queued")
        ]
    declared = search.distributions(spec)
    for index, params in enumerate(spec.warm_start):
        for name, value in params.items():
            dist = declared.get(name)
            if dist is None:
                continue  # a define-by-run parameter: the objective suggests it
            try:
                inside = dist._contains(dist.to_internal_repr(value))
            except Exception:
                inside = False
            if not inside:
                return [
                    Problem(
                        f"{field_path(('warmStart', index, name))}",
                        f"{value!r} is outside the declared search space of {name}",
                    )
                ]
    return []


def references(spec: HpoStudySpec) -> list[Reference]:
    """The Secrets and claims of the study's namespace the spec names (the loop checks they exist)."""
    found = []
    if spec.storage.admin_secret is not None:
        found.append(Reference("spec.storage.adminSecret", "Secret", spec.storage.admin_secret.name))
    if spec.storage.tls is not None:
        ca = spec.storage.tls.ca_secret
        found.append(Reference("spec.storage.tls.caSecret", "Secret", ca.name, ca.key))
    if spec.checkpoints.claim_name:
        found.append(Reference("spec.checkpoints.claimName", "PersistentVolumeClaim", spec.checkpoints.claim_name))
    source = spec.import_from
    if source is not None and source.claim_name:
        found.append(Reference("spec.importFrom.claimName", "PersistentVolumeClaim", source.claim_name))
    if source is not None and source.url_secret is not None:
        url = source.url_secret
        found.append(Reference("spec.importFrom.urlSecret", "Secret", url.name, url.key))
    queue = queueing.queue_of(spec.queue_name, spec.trial.template)
    if queue is not None:
        found.append(Reference(queue.field, "LocalQueue", queue.name))
    pod = spec.trial.template.get("spec")
    volumes = pod.get("volumes") if isinstance(pod, dict) else None
    for index, volume in enumerate(volumes if isinstance(volumes, list) else []):
        if not isinstance(volume, dict):
            continue
        where = f"{templates.WHERE}.spec.volumes[{index}]"
        secret, claim = volume.get("secret"), volume.get("persistentVolumeClaim")
        if isinstance(secret, dict) and isinstance(secret.get("secretName"), str) and not secret.get("optional"):
            found.append(Reference(f"{where}.secret.secretName", "Secret", secret["secretName"]))
        if isinstance(claim, dict) and isinstance(claim.get("claimName"), str):
            found.append(
                Reference(f"{where}.persistentVolumeClaim.claimName", "PersistentVolumeClaim", claim["claimName"])
            )
    return found


def missing_reference(
    reference: Reference, namespace: str, exists: bool | None, keys: frozenset[str] = frozenset()
) -> Problem | None:
    """The problem of a reference the API did not find (``exists``, None when the cluster does not serve its
    kind; ``keys``: a Secret's keys), if any."""
    if reference.kind == "LocalQueue" and exists is None:
        return Problem(
            reference.field,
            f"this cluster has no Kueue (no {queueing.KUEUE_GROUP}/{queueing.KUEUE_VERSION} API) to admit trials "
            f"from LocalQueue {reference.name}; install Kueue, or remove the queue to run trials without one",
        )
    if reference.kind == "LocalQueue" and not exists:
        return Problem(
            reference.field,
            f"LocalQueue {reference.name} does not exist in namespace {namespace}; create it, pointing at a "
            "ClusterQueue (see examples/kueue-queues.yaml), or name an existing one (the study starts once it exists)",
        )
    if not exists:
        return Problem(
            reference.field,
            f"{reference.kind} {reference.name} does not exist in namespace "
            f"{namespace}; create it (the study starts once it exists)",
        )
    if reference.key is not None and reference.key not in keys:
        return Problem(reference.field, f"Secret {reference.name} has no key {reference.key}; add it")
    if reference.field == "spec.storage.adminSecret" and not {"username", "password"} <= keys:
        return Problem(
            reference.field,
            f"Secret {reference.name} lacks the key username or password; add the "
            "keys username and password of an admin of the study's MySQL server",
        )
    return None


_JOB_TEMPLATE = "spec.template."


def api_problems(status: object) -> list[Problem]:
    """The problems the API server found in the study's first trial Job (a server-side dry-run), by spec field.

    ``status`` is the API's Status body of a refused create (422 Invalid, 400 BadRequest); the fields of
    the Job's pod template are the study's `spec.trial.template` fields.
    """
    if not isinstance(status, dict):
        return [Problem(templates.WHERE, "the API server refused the trial Job built from it")]
    causes = (status.get("details") or {}).get("causes") or []
    problems = []
    for cause in causes if isinstance(causes, list) else []:
        if not isinstance(cause, dict):
            continue
        field = str(cause.get("field") or "")
        message = str(cause.get("message") or cause.get("reason") or "invalid")
        if field.startswith(_JOB_TEMPLATE):
            field = f"{templates.WHERE}.{field[len(_JOB_TEMPLATE) :]}"
        else:
            field = f"{templates.WHERE} (trial Job {field or 'object'})"
        problems.append(Problem(field, f"the API server refuses it: {message}"))
    if not problems:
        message = str(status.get("message") or "the API server refused the trial Job built from it")
        problems.append(Problem(templates.WHERE, message))
    return problems
