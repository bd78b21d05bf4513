"""Checks of option values, run once right after parsing and before any work (no data read, nothing written).

Every check raises :class:`~ddpm_objectives_hf.errors.ConfigError` naming the parameter at fault (its flag is
``--`` + its name) and what is valid, e.g. ``learning_rate must be a finite number > 0, got nan``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HubError
from ..options import Range, check_range


def check_ranges(obj: Any, **specs: Range) -> None:
    """:func:`check_range` on each named attribute of ``obj`` (a dataclass of options), e.g. in ``__post_init__``."""
    for name, spec in specs.items():
        check_range(name, getattr(obj, name), spec)


def check_non_empty(parameter: str, value: Any) -> None:
    """Raise a `ConfigError` if an optional string option was given as an empty string."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{parameter} must be a non-empty string, got {value!r}", parameter=parameter)


def check_writable_folder(parameter: str, path: str | os.PathLike) -> None:
    """The folder ``path`` is (or can be created as) a writable folder: not a file, not under a file, writable.

    Nothing is left behind: the nearest existing ancestor is checked with an unnamed temporary file.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{parameter} {str(path)!r} exists and is not a folder", parameter=parameter)
    existing = target.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{parameter} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder",
            parameter=parameter,
        )
    try:  # what the file system says (os.access does not know read-only mounts, and root passes it)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise ConfigError(
            f"{parameter} {str(path)!r} cannot be written: {err.strerror or err} in {str(existing)!r}",
            parameter=parameter,
        ) from err


def check_existing_folder(parameter: str, path: str | None) -> None:
    """``path`` (if given) is an existing folder."""
    if path is not None and not Path(path).is_dir():
        raise ConfigError(f"{parameter} {path!r} does not exist or is not a folder", parameter=parameter)


def check_device(parameter: str, device: str) -> None:
    """``device`` is a torch device string whose device is present (``cuda`` needs CUDA, ``cuda:3`` four GPUs)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(f"{parameter} {device!r} is not a torch device ({message})", parameter=parameter) from err
    if dev.type == "cpu":
        return
    backend = getattr(torch.backends, dev.type, None) if dev.type == "mps" else getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if is_available is None or not is_available():
        raise ConfigError(f"{parameter} {device!r}: no {dev.type} device is available here", parameter=parameter)
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(
            f"{parameter} {device!r}: there are only {count} {dev.type} device(s) (indices 0..{count - 1})",
            parameter=parameter,
        )


def tracker_names() -> list[str]:
    """The names ``--report_to`` takes: accelerate's trackers, ``all`` and ``none``."""
    from accelerate.utils import LoggerType

    return [t.value for t in LoggerType] + ["none"]


def check_report_to(parameter: str, value: str, available: bool = False) -> None:
    """``value`` is ``none``, ``all`` or one of accelerate's trackers; with ``available``, that tracker must also be
    installed here."""
    known = tracker_names()
    if value not in known:
        raise ConfigError(
            f"{parameter} must be none, all or one of accelerate's trackers ({', '.join(known[1:-1])}); got {value!r}",
            parameter=parameter,
        )
    if available and value not in ("none", "all"):
        from accelerate.tracking import get_available_trackers

        installed = sorted(str(getattr(t, "value", t)) for t in get_available_trackers())
        if value not in installed:
            raise ConfigError(
                f"{parameter} {value!r}: {value} is not installed here (installed: {', '.join(installed) or 'none'}; "
                "or none to log nothing)",
                parameter=parameter,
            )


def check_repo_id(parameter: str, repo_id: str | None) -> None:
    """``repo_id`` (if given) is a valid Hub repository id: ``name`` or ``namespace/name``."""
    if repo_id is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        message = " ".join(str(err).split())
        raise ConfigError(
            f"{parameter} {repo_id!r} is not a valid Hub repository id: {message}", parameter=parameter
        ) from err


def check_url(parameter: str, url: str | None) -> None:
    """``url`` (if given) is an ``http(s)://host`` address."""
    if url is None:
        return
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{parameter} must be an http(s):// address, got {url!r}", parameter=parameter)


def check_hub_reachable(parameter: str, endpoint: str | None, token: str | None) -> str:
    """Ask the Hub who the token belongs to (one cheap request) so that a push that cannot work fails before the
    work, not after it. Returns the user name.

    Raises:
        HubError: naming ``parameter`` when offline mode is on, the Hub cannot be reached, or the token is refused;
            the token never appears in the message.
    """
    from huggingface_hub import HfApi

    from ..training.hub import _hub_error

    api = HfApi(endpoint=endpoint, token=token)
    try:
        return api.whoami()["name"]
    except Exception as exc:  # noqa: BLE001  (every failure is the user's set-up: one line naming the flag)
        err = _hub_error(exc, repo_id="", endpoint=api.endpoint.rstrip("/"), token=token)
        raise HubError(f"{str(err)} (checked before training)", parameter=parameter) from exc
