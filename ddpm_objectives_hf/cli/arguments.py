"""The objective's command-line options, derived from the scheduler's ``__init__`` signature.

Every keyword of ``DDPMObjectiveScheduler.__init__`` that can be a flag is one, ``--`` + its name: its type from the
annotation (``Literal[...]`` gives the choices; ``bool``, ``int``, ``float``, ``str`` and ``X | None``), its default
from the signature, its help from the ``Args:`` block of the first class in the MRO that documents it (so diffusers'
`DDPMScheduler` documents the options it defines). :func:`objective_arguments` makes the dataclass that transformers'
`HfArgumentParser` parses (flags, JSON or YAML files); :func:`build_scheduler` builds the scheduler from it, passing
on every option the signature names. A new keyword in the signature is a new flag, with nothing else to edit.

Beside the scheduler's options, the objective has command-line-only flags (:data:`CLI_ONLY_FIELDS`): the
``--learn_variance`` shortcut and the timestep sampler (its options are not all flags: ``make_timestep_sampler``
also takes the process layout from accelerate).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

from ..scheduling_ddpm_objective import DDPMObjectiveScheduler
from ..timestep_sampling import TIMESTEP_SAMPLERS
from ..weighting import WEIGHTINGS

_FLAG_TYPES = (bool, int, float, str)

# Flags whose default differs from the signature's, resolved by `build_scheduler`: the spacing follows the schedule
# (trailing timesteps with a zero terminal SNR, as [Lin et al. 2024](https://arxiv.org/abs/2305.08891) recommend).
_CLI_DEFAULTS: dict[str, tuple[Any, str]] = {
    "timestep_spacing": (None, "Default: trailing with --rescale_betas_zero_snr, else {default}."),
}

# Command-line-only objective flags: (name, type, default, help).
CLI_ONLY_FIELDS: tuple[tuple[str, Any, Any, str], ...] = (
    (
        "learn_variance",
        bool,
        False,
        "Shortcut for --variance_type learned_range --loss_type hybrid (kl is kept): the UNet gets 2x output "
        "channels for the learned variance.",
    ),
    (
        "timestep_sampler",
        Literal[TIMESTEP_SAMPLERS],
        "uniform",
        "Which t each sample sees: uniform, stratified (one stratum per sample of the global batch), importance "
        "(p_t ∝ √E[L_t²], weight 1/(T p_t)) or logit_normal.",
    ),
    ("logit_mean", float, 0.0, "Mean of the logit-normal timestep sampler."),
    ("logit_std", float, 1.0, "Standard deviation of the logit-normal timestep sampler."),
)


def docstring_args(cls: type) -> dict[str, str]:
    """``{name: description}`` from the ``Args:`` block of ``cls.__doc__`` (diffusers' format: a line
    ``name (type, defaults to x):`` then the description, on the same line or indented below it)."""
    lines = inspect.cleandoc(cls.__dict__.get("__doc__") or "").splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"Args\b.*:\s*$", line)), None)
    if start is None:
        return {}
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[start + 1 :]:
        if line.strip() and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^ {4}(\w+) \(.*\):(.*)$", line)
        if entry:
            current = found.setdefault(entry.group(1), [])
            current.append(entry.group(2).strip())
        elif current is not None and line.startswith(" " * 8):
            current.append(line.strip())
    return {name: " ".join(part for part in parts if part) for name, parts in found.items()}


def option_help(scheduler_class: type, name: str) -> str:
    """The documentation of option ``name``: from the first class in ``scheduler_class``'s MRO that has it."""
    for cls in scheduler_class.__mro__:
        text = docstring_args(cls).get(name)
        if text:
            return text
    return ""


def _flag_type(hint: Any) -> Any | None:
    """The type `HfArgumentParser` parses for an annotation, or `None` where the option cannot be a flag.

    ``Literal``, ``bool``, ``int``, ``float``, ``str`` as they are; ``X | None`` as ``Optional[X]``; a union with
    ``str`` (``str | WeightingFn``: a name or a callable) as ``str``; anything else (``trained_betas``) is no flag.
    """
    if hint in _FLAG_TYPES or get_origin(hint) is Literal:
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        if len(args) == 1:
            inner = _flag_type(args[0])
        else:
            inner = str if str in args else None
        if inner is not None:
            return Optional[inner] if optional else inner  # noqa: UP045  (HfArgumentParser takes typing.Optional)
    return None


def _help(text: str) -> str:
    """Docstring markup made plain for a terminal (``:func:`~a.b```, double backticks), ``%`` escaped for argparse."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "`")
    return text.replace("%", "%%").strip()


def objective_arguments(scheduler_class: type = DDPMObjectiveScheduler) -> type:
    """The dataclass of the objective's flags for ``scheduler_class`` (a `DDPMObjectiveScheduler` or subclass).

    Its fields are the scheduler's options that can be flags, in signature order, then :data:`CLI_ONLY_FIELDS`;
    ``loss_weighting``'s choices are the weightings registered when this is called (the dataclass is made again
    only when the registry has changed, so parsing twice gives equal dataclasses). The class attribute
    ``scheduler_class`` tells :func:`build_scheduler` what to build.
    """
    return _objective_arguments(scheduler_class, tuple(sorted(WEIGHTINGS)))


@functools.cache
def _objective_arguments(scheduler_class: type, weightings: tuple[str, ...]) -> type:
    hints = get_type_hints(scheduler_class.__init__)
    signature = inspect.signature(scheduler_class.__init__)
    fields = []
    for name in scheduler_class.option_names():
        flag_type = _flag_type(hints.get(name, Any))
        default = signature.parameters[name].default
        if flag_type is None or default is inspect.Parameter.empty:
            continue
        text = option_help(scheduler_class, name)
        if name in _CLI_DEFAULTS:
            cli_default, note = _CLI_DEFAULTS[name]
            text += " " + note.format(default=default)
            flag_type, default = Optional[flag_type], cli_default  # noqa: UP045
        meta = {"help": _help(text)}
        if name == "loss_weighting":
            meta["choices"] = list(weightings)  # the registry when the dataclass is made (a callable is no flag)
        fields.append((name, flag_type, dataclasses.field(default=default, metadata=meta)))
    for name, flag_type, default, text in CLI_ONLY_FIELDS:
        fields.append((name, flag_type, dataclasses.field(default=default, metadata={"help": text})))
    cls = dataclasses.make_dataclass(
        "ObjectiveArguments", fields, namespace={"scheduler_class": scheduler_class, "__module__": __name__}
    )
    cls.__doc__ = (
        f"The objective's flags: the options of `{scheduler_class.__name__}` (see its docstring) and the "
        "command-line-only ones (`CLI_ONLY_FIELDS`)."
    )
    return cls


def scheduler_options(args: Any, scheduler_class: type | None = None) -> dict[str, Any]:
    """The keyword arguments of ``scheduler_class`` (default: ``args.scheduler_class``) from parsed objective
    arguments: the fields its signature names, the command-line defaults resolved, and ``learn_variance`` applied
    with :meth:`~DDPMObjectiveScheduler.with_learned_variance`."""
    scheduler_class = scheduler_class or type(args).scheduler_class
    names = set(scheduler_class.option_names())
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name in names}
    if "timestep_spacing" in options and options["timestep_spacing"] is None:
        if options.get("rescale_betas_zero_snr"):
            options["timestep_spacing"] = "trailing"
        else:
            del options["timestep_spacing"]  # the scheduler's default
    if getattr(args, "learn_variance", False):
        options = scheduler_class.with_learned_variance(options)
    return options


def build_scheduler(args: Any, scheduler_class: type | None = None) -> DDPMObjectiveScheduler:
    """The scheduler of parsed objective arguments (see :func:`scheduler_options`); an invalid option raises the
    scheduler's `ConfigError`, which names it."""
    scheduler_class = scheduler_class or type(args).scheduler_class
    return scheduler_class(**scheduler_options(args, scheduler_class))
