"""The trial runtime's exceptions: why a trial pod could not run its assigned trial to an outcome.

Every error the runtime raises derives from :class:`HpoTrialError`; :mod:`hpo_trial.outcome` maps
each to the exit code the operator reads. Exceptions raised by the user's objective are not wrapped
in these: they are the objective's outcome, not the runtime's failure.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "HpoTrialError",
    "ObjectiveError",
    "SpecError",
    "StorageUnavailableError",
    "SupersededError",
]


class HpoTrialError(Exception):
    """Base class of the trial runtime's errors."""


class ObjectiveError(HpoTrialError):
    """The objective returned no usable value (None, NaN/inf, not a number, the wrong count)."""


class ConfigurationError(HpoTrialError):
    """The pod was set up so that the trial cannot run: a bad assignment, objective path or sampler.

    Running the same pod again cannot help; the study's spec or the image has to change.
    """


class StorageUnavailableError(HpoTrialError):
    """The study's database could not be reached, or the connection to it was lost."""


class SupersededError(HpoTrialError):
    """The operator gave the trial to a later attempt (this pod was thought lost): this one must not report."""


class SpecError(ConfigurationError):
    """A configuration error that one field of the study's spec causes, named in the message.

    Used by the import of an existing study (:mod:`hpo_trial.transfer`): the message reads
    ``<field>: <what is wrong>``, e.g. ``spec.importFrom.studyName: no study 'x' in ...``.

    Attributes:
        field: The spec's field, as a camelCase path (``spec.importFrom.path``).
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
