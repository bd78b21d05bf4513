"""One error hierarchy for the library: every error names the parameter at fault; the command-line layer maps it.

A library function raises, e.g., ``DataError("does not exist", parameter="dataset_name")``; the scripts print it as
``--dataset_name: does not exist`` (the flag of a parameter is ``--`` + its name), so only the command-line layer
speaks in flags. All are ``ValueError``s (bad input), except where a subclass also says it is an ``OSError``/
``RuntimeError`` (the Hub, a feature network), so callers that catch the builtin types keep working.
"""

from __future__ import annotations


class DDPMObjectivesError(Exception):
    """Base class. ``parameter`` is the name of the argument (and flag) at fault, or `None`."""

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter


class ConfigError(DDPMObjectivesError, ValueError):
    """An option value, or a combination of options, that is not valid."""


class DataError(DDPMObjectivesError, ValueError):
    """Data that cannot be read or used: a missing folder, no image column, a size the model cannot take."""


class CheckpointError(DDPMObjectivesError, ValueError):
    """A checkpoint that does not exist, is incomplete, unsafe, or does not belong to this run."""


class PipelineError(DDPMObjectivesError, ValueError):
    """A folder or Hub id that is not a pipeline this package can evaluate."""


class HubError(DDPMObjectivesError, RuntimeError):
    """A Hub operation failed (network, HTTP, authentication, offline mode, invalid repository id)."""


class FeatureNetworkError(DDPMObjectivesError, RuntimeError):
    """The requested FID feature network is not available."""


class TrainingError(DDPMObjectivesError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN/inf)."""
