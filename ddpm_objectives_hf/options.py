"""Valid ranges of numeric options, declared once where the option is: ``Annotated[float, Range(gt=0)]`` in a
signature, or a :class:`Range` in a command-line dataclass's ``__post_init__``; :func:`check_range` checks a value
and raises a :class:`~ddpm_objectives_hf.errors.ConfigError` naming the parameter and what is valid.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Real
from typing import Any

from .errors import ConfigError

SEED_LIMIT = 2**32  # numpy's (and accelerate's set_seed) limit


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric option: ``gt < value``, ``ge <= value``, ``value < lt``, ``value <= le``; finite.

    Args:
        gt, ge, lt, le: Bounds (`None`: none).
        integer: The value must be an `int` (not a `bool`).
        optional: `None` is allowed (the option is unset).
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    integer: bool = False
    optional: bool = False

    def describe(self) -> str:
        """What is valid, e.g. ``an integer >= 1``, ``a finite number in [0, 1)``."""
        lower = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        upper = f"{_num(self.lt)})" if self.lt is not None else f"{_num(self.le)}]" if self.le is not None else None
        if lower and upper:
            bounds = f" in {lower}, {upper}"
        elif lower:
            bounds = f" {'>=' if lower[0] == '[' else '>'} {lower[1:]}"
        elif upper:
            bounds = f" {'<=' if upper[-1] == ']' else '<'} {upper[:-1]}"
        else:
            bounds = ""
        text = ("an integer" if self.integer else "a finite number") + bounds
        return text + " (or unset)" if self.optional else text


def _show(value: Any) -> str:
    """A short repr (huge numbers and long strings are cut)."""
    try:
        return reprlib.repr(value)
    except ValueError:  # an int with more digits than Python prints
        return f"an integer of {value.bit_length()} bits"


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


# The usual ranges
POSITIVE_INT = Range(ge=1, integer=True)
NON_NEGATIVE_INT = Range(ge=0, integer=True)
OPTIONAL_POSITIVE_INT = Range(ge=1, integer=True, optional=True)
POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)
UNIT_INTERVAL_OPEN_TOP = Range(ge=0, lt=1)  # [0, 1)
SEED = Range(ge=0, lt=SEED_LIMIT, integer=True)


def check_range(parameter: str, value: Any, spec: Range | None = None, **bounds: Any) -> None:
    """Raise a `ConfigError` naming ``parameter`` unless ``value`` is a finite number within ``spec`` (or ``bounds``,
    the fields of :class:`Range`).

    Example: ``check_range("learning_rate", lr, gt=0)`` → ``learning_rate must be a finite number > 0, got nan``.
    """
    spec = spec if spec is not None else Range(**bounds)
    if value is None and spec.optional:
        return
    number = isinstance(value, Real) and not isinstance(value, bool)
    ok = number and (isinstance(value, int) or not spec.integer)
    if ok:
        v = float(value) if not isinstance(value, int) or abs(value) < 2**1000 else math.inf
        ok = math.isfinite(v) and (spec.gt is None or v > spec.gt) and (spec.ge is None or v >= spec.ge)
        ok = ok and (spec.lt is None or v < spec.lt) and (spec.le is None or v <= spec.le)
    if not ok:
        raise ConfigError(f"{parameter} must be {spec.describe()}, got {_show(value)}", parameter=parameter)


def check_choice(parameter: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a `ConfigError` naming ``parameter`` unless ``value`` is one of ``choices`` (listed in the message)."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"{parameter} must be one of {', '.join(map(str, choices))}; got {value!r}", parameter=parameter
        )
