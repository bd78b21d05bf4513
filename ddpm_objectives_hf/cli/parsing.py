"""Parse flags, or a JSON/YAML file of them, into option dataclasses; every mistake is one `ConfigError` line.

A config file is read as the flags it spells (``{"learning_rate": 0.002}`` is ``--learning_rate=0.002``), so it is
parsed, converted and checked exactly as the command line is; flags after the file override it. argparse's usage
block is never printed for a mistake (``--help`` still prints the help), abbreviated flags are not guessed, and an
unknown flag or key is named with the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from ..errors import ConfigError, DDPMObjectivesError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


class ArgumentParser(HfArgumentParser):
    """transformers' `HfArgumentParser` that raises `ConfigError` instead of printing usage and exiting, takes no
    abbreviated flags, and has a ``--debug`` switch (show the traceback of an error)."""

    def __init__(self, dataclass_types, prog: str | None = None, description: str | None = None):
        super().__init__(dataclass_types, prog=prog, description=description, allow_abbrev=False)
        # argparse takes `-1` and `-0.5` as values but `-1e-3`, `-inf` as flags; all are numbers here
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.I)
        self.add_argument(
            "--debug", action="store_true", help="On an error, show the Python traceback (command line only)."
        )

    def error(self, message: str):  # argparse calls this for every parsing mistake
        message = re.sub(r"(--\w+)/--[\w-]+", r"\1", " ".join(message.split()))  # "--a_b/--a-b" → "--a_b"
        parameter = None
        if message.startswith("argument "):  # "argument --seed/--se-ed: invalid int value: 'x'" → "--seed: ..."
            options, _, rest = message[len("argument ") :].partition(":")
            option = options.split("/")[0]
            message = f"{option}:{rest}"
            parameter = self._dest_of(option)
        raise ConfigError(message, parameter=parameter)

    def _dest_of(self, option: str) -> str | None:
        action = self._option_string_actions.get(option)
        return action.dest if action is not None else None

    def flags(self) -> list[str]:
        """Every flag the parser knows (``--x``, ``--no_x``, ``--x-y`` spellings)."""
        return [o for o in self._option_string_actions if o.startswith("--")]

    def option_actions(self) -> dict[str, Any]:
        """The argparse action of each option, by name (``--name`` itself, not ``--no_name``)."""
        return {a.dest: a for a in self._actions if f"--{a.dest}" in a.option_strings and a.dest != "help"}


def _closest(word: str, candidates: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def _optional_fields(dataclass_types) -> set[str]:
    """Names of fields whose annotation allows `None` (read from the annotations: the parser rewrites
    ``field.type``)."""
    names = set()
    for dtype in dataclass_types:
        for name, hint in typing.get_type_hints(dtype).items():
            args = typing.get_args(hint)
            union = typing.get_origin(hint) in (typing.Union, types.UnionType)
            if union and type(None) in args:
                names.add(name)
    return names


def read_config_file(path: str) -> dict:
    """The mapping in a JSON or YAML file; `ConfigError` naming the file if it is missing, unreadable, malformed or
    not a mapping."""
    file = Path(path)
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "does not exist"
        raise ConfigError(f"config file {path!r} {what}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path!r} cannot be read: {' '.join(str(err).split())}") from err
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config file {path!r} is not valid JSON: {err}") from err
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(err, "problem", None) or " ".join(str(err).split())
            raise ConfigError(f"config file {path!r} is not valid YAML: {problem}{where}") from err
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"config file {path!r} must hold a mapping of option names to values; it is {kind}")
    return data


def config_to_argv(path: str, parser: ArgumentParser, optional: set[str]) -> tuple[list[str], list[str]]:
    """The flags a config file spells, and the names of the options it sets to ``null`` (unset).

    Raises:
        ConfigError: naming the file and the key for an unknown key, a list for a single value, a mapping, or
            ``null`` for an option that cannot be unset.
    """
    data = read_config_file(path)
    actions = parser.option_actions()
    actions.pop("debug", None)  # a command-line switch, not a setting
    argv: list[str] = []
    nulls: list[str] = []
    for key, value in data.items():
        if key not in actions:
            hint = " (--debug is a command-line switch)" if key == "debug" else _closest(str(key), list(actions))
            raise ConfigError(f"config file {path!r}: unknown option {key!r}{hint}")
        action = actions[key]
        if value is None:
            if key not in optional:
                raise ConfigError(f"config file {path!r}: --{key} cannot be null (unset)", parameter=key)
            nulls.append(key)
            continue
        if isinstance(value, dict):
            raise ConfigError(f"config file {path!r}: --{key} must be a value, not a mapping", parameter=key)
        many = action.nargs in ("+", "*")
        if isinstance(value, list) and not many:
            raise ConfigError(f"config file {path!r}: --{key} takes one value, not a list {value!r}", parameter=key)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, (dict, list)) for v in values):
            raise ConfigError(f"config file {path!r}: --{key} must be a list of values, got {value!r}", parameter=key)
        words = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
        # `--key=value` keeps a value that starts with "-" a value; lists go as separate words (numbers)
        argv += [f"--{key}", *words] if many else [f"--{key}={words[0]}"]
    return argv, nulls


def parse_dataclasses(
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    prog: str,
    description: str | None = None,
    defaults: dict | None = None,
) -> tuple:
    """Parse ``argv`` (flags, or a config file then flags) into one instance of each dataclass.

    Their ``__post_init__`` checks run here, so a returned tuple holds only valid options. ``defaults`` replace the
    dataclasses' defaults of the options they name (a pretrained model's), which flags and the config file override.

    Raises:
        ConfigError: One line naming the flag (or the config file and key) at fault.
    """
    parser = ArgumentParser(dataclass_types, prog=prog, description=description)
    if defaults:
        parser.set_defaults(**defaults)  # a default no dataclass field takes is dropped with the namespace's extras
    argv = list(argv)
    nulls: list[str] = []
    source, file_keys = "", set()
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        source = argv[0]
        file_argv, nulls = config_to_argv(argv[0], parser, _optional_fields(dataclass_types))
        set_in_file = {a[2:].split("=", 1)[0] for a in file_argv if a.startswith("--")} | set(nulls)
        overridden = {a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--")}
        file_keys = set_in_file - overridden
        argv = file_argv + argv[1:]
    try:
        namespace, remaining = parser.parse_known_args(args=argv)
    except ConfigError as err:
        raise _in_file(err, source, file_keys) from err
    if remaining:
        unknown = next((a for a in remaining if a.startswith("-")), None)
        if unknown is not None:
            name = unknown.split("=", 1)[0]
            raise ConfigError(f"unknown flag {name}{_closest(name, parser.flags())}")
        hint = f" (a config file ends in {', '.join(CONFIG_SUFFIXES)} and comes first)"
        raise ConfigError(f"unexpected argument {remaining[0]!r}{hint}")
    for name in nulls:
        setattr(namespace, name, None)
    outputs = []
    for dtype in dataclass_types:
        keys = {f.name for f in dataclasses.fields(dtype) if f.init}
        try:
            outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in keys}))
        except DDPMObjectivesError as err:
            raise _in_file(err, source, file_keys) from err
    return tuple(outputs)


def _in_file(err: DDPMObjectivesError, source: str, file_keys: set[str]) -> DDPMObjectivesError:
    """``err``, said to come from the config file ``source`` when the option at fault was set there."""
    if not source or err.parameter not in file_keys:
        return err
    from . import error_line

    return type(err)(f"config file {source!r}: {error_line(err)}", parameter=err.parameter)
