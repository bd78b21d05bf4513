"""The command-line layer: the only part of the package that speaks in ``--flags``.

Library errors (:mod:`ddpm_objectives_hf.errors`) name the parameter at fault; here a parameter becomes its flag
(``--`` + its name) and every error becomes one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import re

from ..errors import DDPMObjectivesError


def flag(parameter: str) -> str:
    """The command-line flag of a parameter: ``--`` + its name."""
    return f"--{parameter}"


def error_line(err: BaseException) -> str:
    """One line for the user: a library error's message with the parameter at fault named as its flag."""
    message = " ".join(str(err).split()) or type(err).__name__
    parameter = getattr(err, "parameter", None)
    if not isinstance(err, DDPMObjectivesError) or not parameter or flag(parameter) in message:
        return message
    if re.match(rf"{re.escape(parameter)}\b", message):
        return flag(parameter) + message[len(parameter) :]
    return f"{flag(parameter)}: {message}"
