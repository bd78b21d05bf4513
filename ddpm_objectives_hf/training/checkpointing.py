"""Training checkpoints on top of ``accelerator.save_state``: atomic, pruned, resumable.

A checkpoint is written to ``.checkpoint-N.tmp`` and renamed to ``checkpoint-N`` only once complete, so a kill
during a save never leaves a ``latest`` that cannot be loaded.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import CheckpointError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "checkpoint_complete"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / COMPLETE_MARKER).is_file()]


def checkpoint_step(path: str | os.PathLike) -> int:
    m = CHECKPOINT_RE.match(Path(path).name)
    if not m:
        raise CheckpointError(f"--resume_from_checkpoint {str(path)!r} is not a folder named checkpoint-<step>")
    return int(m.group(1))


def resolve_checkpoint(resume_from_checkpoint: str, output_dir: str | os.PathLike) -> Path:
    """``latest`` → the newest complete checkpoint of ``output_dir``; a path → that checkpoint, checked."""
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"--resume_from_checkpoint latest: no complete checkpoint-<step> folder in --output_dir {str(output_dir)!r}"
            )
        return found[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {resume_from_checkpoint!r} does not exist")
    checkpoint_step(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise CheckpointError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is incomplete or corrupt (no {COMPLETE_MARKER} marker)"
        )
    return path


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """``accelerator.save_state`` into a temporary folder (all processes), then rename it (main process).

    Keeps at most ``total_limit`` checkpoints (the oldest are removed after the new one is complete).
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / COMPLETE_MARKER).write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> int:
    """``accelerator.load_state(path)``; returns the step, or raises :class:`CheckpointError` if it cannot load."""
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # noqa: BLE001  (any failure to load is the checkpoint's fault for the user)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"--resume_from_checkpoint {str(path)!r} could not be loaded: {first_line}") from err
    return checkpoint_step(path)
