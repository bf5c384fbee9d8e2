"""Finding the user's objective: which ``module:function`` to run, and importing it.

Runs in a trial pod after the assignment is parsed and before the objective starts. A user ships the
objective in an image built FROM the trial image, or mounts it (a ConfigMap or a volume) and puts its
directory on ``PYTHONPATH`` or in the working directory.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

import optuna

from hpo_trial.contract import OBJECTIVE_ENV
from hpo_trial.errors import ConfigurationError

__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVE_ENV", "Objective", "choose_objective", "load_objective"]

DEFAULT_OBJECTIVE = "hpo_trial.workloads.digits:objective"
"""The default workload: a PyTorch network on scikit-learn's digits."""

Objective = Callable[[optuna.Trial], object]
_HOW_TO_SHIP = (
    "ship it in an image built FROM the trial image, or mount it and add its directory to PYTHONPATH "
    "(or run hpo-trial in that directory)"
)


def choose_objective(flag: str | None, env: str | None, assigned: str | None) -> str:
    """Apply the precedence ``--objective`` > ``HPO_OBJECTIVE`` > the assignment > the default workload.

    Args:
        flag: The ``--objective`` command-line value, if given.
        env: The ``HPO_OBJECTIVE`` environment variable, if set.
        assigned: The assignment's ``objective``, if not null.

    Returns:
        The ``module:function`` path to run.
    """
    for candidate in (flag, env, assigned):
        if candidate:
            return candidate
    return DEFAULT_OBJECTIVE


def load_objective(path: str) -> Objective:
    """Import ``module:function`` (the function may be dotted, e.g. ``module:Class.method``).

    The working directory is searched too, as ``python -m`` would.

    Args:
        path: The objective's path.

    Returns:
        The callable.

    Raises:
        ConfigurationError: The path is malformed, the module cannot be imported, or the attribute is
            missing or not callable; the message names the path and how to fix it.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            f"objective {path!r} is not of the form module:function (for example my_package.train:objective)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name == error.name or module_name.startswith(f"{error.name}.")):
            raise ConfigurationError(
                f"objective {path!r}: no module named {module_name!r} in this image; {_HOW_TO_SHIP}"
            ) from None
        raise ConfigurationError(
            f"objective {path!r}: importing module {module_name!r} failed because it imports {error.name!r}, "
            "which is not installed; install it in the image built FROM the trial image"
        ) from None
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ConfigurationError(
            f"objective {path!r}: importing module {module_name!r} raised {type(error).__name__}: {first_line}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(
                f"objective {path!r}: module {module_name!r} has no attribute {attribute!r}; check the name after "
                "the colon"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigurationError(
            f"objective {path!r} is a {type(target).__name__}, not a function; name a function that takes an "
            "optuna.Trial and returns its value"
        )
    return target
