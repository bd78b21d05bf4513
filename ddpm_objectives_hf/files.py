"""Files and paths shared by training and evaluation: atomic writes, and "local path or Hub id"."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[str], object]) -> Path:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``: readers (and a kill) never see a
    partial file (a kill leaves a ``.tmp-*`` file: a leftover to a run folder). ``content`` is text, bytes, or a
    function that writes the file at the path it is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".tmp-{path.name}.{uuid.uuid4().hex[:8]}")  # the usual permissions, unlike mkstemp
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            Path(tmp).write_bytes(content)
        else:
            Path(tmp).write_text(content)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def local_path(name: str | os.PathLike) -> Path | None:
    """The local file or folder `name` refers to (`~` expanded) when it exists, else `None`: a Hub id.

    The one decision "local path or Hub id" for data sets (`dataset_name`) and pipelines (`model_dir`): an existing
    path always wins over a Hub id of the same spelling.
    """
    path = Path(name).expanduser()
    return path if path.exists() else None
