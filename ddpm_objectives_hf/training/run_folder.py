"""The output folder of a run: owned, held, written atomically, and swapped in as a whole. :class:`RunFolder` is the
interface a training loop uses (resume, claim, checkpoint, finish); the functions below are its parts.

* **Ownership.** A folder this tool makes gets :data:`RUN_MARKER` (a small JSON file naming the tool) before anything
  else; a non-empty folder without it is never written to (:func:`check_output_dir`, :meth:`RunFolder.claim`).
* **One run per folder.** A folder holding an earlier run is only continued from one of its checkpoints or replaced
  as a whole (``overwrite_output_dir``): two runs never mix. A running run holds its folder (an ``flock`` on it,
  :meth:`RunFolder.hold`): a second run on it stops with one line naming the holder.
* **Atomic files.** :func:`~ddpm_objectives_hf.files.atomic_write` writes through a temporary file and
  ``os.replace``.
* **Final save.** Everything is built in one staging folder (:data:`STAGING_FINAL`) inside the output folder, then
  swapped in entry by entry (:func:`staged_outputs`); an interrupted swap is finished at the next start
  (:func:`clean_leftovers`).

Checkpoints themselves (save, verify, load, the run's identity) are in :mod:`.checkpointing`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write

TOOL = "ddpm_objectives_hf"
RUN_MARKER = "ddpm_objectives_run.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "checkpoint_complete"
STAGING_FINAL = ".staging-final"
STAGED_RECORD = ".staged.json"
TRASH_PREFIX = ".staging-trash-"
#: What a run's final save writes (swapped in as a whole; one it does not rewrite is removed).
FINAL_OUTPUTS = (
    "model_index.json",
    "unet",
    "scheduler",
    "objective.json",
    "README.md",
    "samples.png",
    "weighting.png",
    "loss.png",
    "loss_history.json",
)
#: Dot-folders and files of interrupted saves (removed at the next start; never uploaded).
LEFTOVER_PREFIXES = (".checkpoint-", ".pipeline-", ".staging", ".tmp")
#: What stays local: leftovers and the ownership marker (fnmatch patterns, `*` also matches `/`).
LOCAL_ONLY_PATTERNS = (*(f"{prefix}*" for prefix in LEFTOVER_PREFIXES), RUN_MARKER)


# ---------------------------------------------------------------------------------------------------- files
def write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict:
    """A JSON object from ``path`` (never unpickled); :class:`ValueError` if it is not one."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path.name} is not JSON ({type(err).__name__})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def remove_path(path: Path) -> None:
    """Remove a file or folder: a folder is first renamed to a leftover name, so a kill mid-way leaves no half
    folder under its real name (only a leftover, removed at the next start)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        trash = path.parent / f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        path.unlink()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (``checkpoint-N`` holding :data:`COMPLETE_MARKER`) in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / COMPLETE_MARKER).is_file()]


# ---------------------------------------------------------------------------------------------------- output folder
def is_run_folder(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` was made by this tool: it holds :data:`RUN_MARKER` naming it, or nothing but complete
    checkpoints of this tool (a run's checkpoints copied to another machine to resume there)."""
    root = Path(output_dir)
    if _made_by_this_tool(root / RUN_MARKER):
        return True
    entries = list(root.iterdir()) if root.is_dir() else []
    return bool(entries) and all(
        CHECKPOINT_RE.match(p.name) and p.is_dir() and _made_by_this_tool(p / COMPLETE_MARKER) for p in entries
    )


def _made_by_this_tool(record: Path) -> bool:
    """Whether the JSON file ``record`` exists and names this tool as ``created_by``."""
    try:
        return record.is_file() and read_json(record).get("created_by") == TOOL
    except (OSError, ValueError, AttributeError):
        return False


def _is_leftover(name: str) -> bool:
    return name.startswith(LEFTOVER_PREFIXES)


def run_outputs(output_dir: str | os.PathLike) -> list[Path]:
    """The entries of ``output_dir`` that are outputs of a run (not the marker, not leftovers of interrupted saves)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name != RUN_MARKER and not _is_leftover(p.name))


def run_results(output_dir: str | os.PathLike) -> list[Path]:
    """What a run in ``output_dir`` produced that is worth keeping: complete checkpoints, final outputs, sample grids
    (a run that failed before its first checkpoint has none)."""
    root = Path(output_dir)
    kept = [*FINAL_OUTPUTS, "samples"]
    return [*list_checkpoints(root), *(root / name for name in kept if (root / name).exists())]


def clean_leftovers(output_dir: str | os.PathLike) -> None:
    """Finish an interrupted swap whose staging folder was complete, then remove every leftover of interrupted saves
    (``.checkpoint-N.tmp``, ``.pipeline-*``, ``.staging*``, ``.tmp*``). Only call it on a folder this tool made."""
    root = Path(output_dir)
    for staging in sorted(root.iterdir()):
        if staging.is_dir() and _is_leftover(staging.name) and (staging / STAGED_RECORD).is_file():
            _finish_swap(staging, root)
    for path in sorted(root.iterdir()):
        if _is_leftover(path.name) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif _is_leftover(path.name):
            path.unlink(missing_ok=True)


def check_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite_output_dir: bool = False,
    resume_from_checkpoint: str | None = None,
    name_of: Callable[[str], str] = str,
) -> None:
    """Refuse an ``output_dir`` a run must not write to; only reads (nothing is written until
    :meth:`RunFolder.claim`).

    Never a non-empty folder this tool did not make (with or without ``overwrite_output_dir`` or
    ``resume_from_checkpoint``); never two runs mixed in a folder it made: a folder holding an earlier run is only
    continued from one of its own checkpoints, or replaced with ``overwrite_output_dir``.

    Args:
        output_dir: The run's folder.
        overwrite_output_dir: Replace an earlier run of this tool in it.
        resume_from_checkpoint: ``"latest"`` or a checkpoint folder the run continues, or `None`.
        name_of: How messages name the other parameters (the command line passes ``cli.flag``: ``--name``).

    Raises:
        ConfigError: With ``parameter="output_dir"``, saying which folder and what to do.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {str(output_dir)!r} exists and is not a folder", parameter="output_dir")
    if out.is_dir():  # a running run's folder, whatever this run would do with it (free: released at once)
        fd = _lock_folder(out, output_dir)
        if fd is not None:
            os.close(fd)
    if not out.is_dir() or not any(out.iterdir()):
        return
    overwrite, resume = name_of("overwrite_output_dir"), name_of("resume_from_checkpoint")
    if not is_run_folder(out):
        raise ConfigError(
            f"output_dir {str(output_dir)!r} is not empty and was not made by this tool (no {RUN_MARKER}); nothing "
            f"in it is written, even with {overwrite} or {resume}: choose a new or empty folder",
            parameter="output_dir",
        )
    results = run_results(out)
    if not results or overwrite_output_dir:
        return  # (a run that failed before its first checkpoint left nothing to keep: it is replaced)
    checkpoints = [p.name for p in list_checkpoints(out)]
    held = f"checkpoints {', '.join(checkpoints)}" if checkpoints else f"{results[0].name}, ..., no checkpoint"
    if not resume_from_checkpoint:
        how = f"{resume} latest to continue it, " if checkpoints else ""
        raise ConfigError(
            f"output_dir {str(output_dir)!r} is not empty: it holds an earlier run ({held}); pass {how}"
            f"{overwrite} to replace it (checkpoints included), or choose a new folder",
            parameter="output_dir",
        )
    path = Path(resume_from_checkpoint)
    if (
        resume_from_checkpoint != "latest"
        and (path.is_absolute() or path.exists())
        and path.resolve().parent != out.resolve()
    ):
        raise ConfigError(
            f"output_dir {str(output_dir)!r} holds an earlier run ({held}) and {resume} {resume_from_checkpoint!r} "
            f"is a checkpoint of another folder: the two runs would mix; pass {overwrite} to replace it, or choose "
            "a new folder",
            parameter="output_dir",
        )


def _lock_folder(root: Path, output_dir: str | os.PathLike) -> int | None:
    """An open descriptor of ``root`` with an exclusive ``flock`` (`None` without ``flock``); a ConfigError naming
    ``output_dir`` and the holder when another process has it."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return None
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held by another process
        os.close(fd)
        raise ConfigError(
            f"output_dir {str(output_dir)!r} is in use by another run ({_lock_holder(root)}); wait for it to end or "
            "choose another folder",
            parameter="output_dir",
        ) from None
    except OSError:  # a file system without flock (some network mounts): the run goes on unlocked
        os.close(fd)
        return None
    return fd


def _lock_holder(root: Path) -> str:
    """The process holding a ``flock`` on ``root``, from Linux's ``/proc/locks`` (``"another process"`` elsewhere)."""
    try:
        inode = root.stat().st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                return f"pid {fields[4]}"
    except (OSError, ValueError):
        pass
    return "another process"


# ---------------------------------------------------------------------------------------------------- staging
def _finish_swap(staging: Path, root: Path) -> None:
    """Move the entries of a complete staging folder into ``root`` (idempotent: a kill mid-way is finished by calling
    it again). ``model_index.json`` goes out first and comes back last, so no reader loads a half-swapped pipeline."""
    record = read_json(staging / STAGED_RECORD)
    last = [name for name in record["entries"] if name == "model_index.json"]
    first = [name for name in record["entries"] if name not in last]
    trash = root / f"{TRASH_PREFIX}{staging.name.lstrip('.')}"
    trash.mkdir(exist_ok=True)

    def retire(name: str) -> None:
        target = root / name
        if target.exists() or target.is_symlink():
            if (trash / name).exists():
                remove_path(trash / name)
            os.replace(target, trash / name)

    for name in last:
        if (staging / name).exists():
            retire(name)
    for name in first:
        if (staging / name).exists():
            if (root / name).is_dir() or (staging / name).is_dir():
                retire(name)
            os.replace(staging / name, root / name)
    for name in record.get("remove", []):
        if name not in record["entries"]:
            retire(name)
    for name in last:
        if (staging / name).exists():
            os.replace(staging / name, root / name)
    shutil.rmtree(trash, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_outputs(
    output_dir: str | os.PathLike, name: str = STAGING_FINAL, remove: Iterable[str] = ()
) -> Iterator[Path]:
    """Build outputs in ``output_dir/name``, then swap them in as a whole.

    On an error inside the block the staging folder is removed and ``output_dir`` is as it was. Once the block ends,
    a record of the entries is written (the commit point) and they replace those of ``output_dir``; entries named in
    ``remove`` that were not rebuilt are removed. A kill after the commit point is finished by
    :func:`clean_leftovers` at the next start.

    Args:
        output_dir: Where the outputs go.
        name: The staging folder's name (a dot-folder that uploads ignore).
        remove: Outputs of a previous save that must not survive this one if it does not rewrite them.
    """
    root = Path(output_dir)
    staging = root / name
    remove_path(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    entries = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
    write_json(staging / STAGED_RECORD, {"entries": entries, "remove": sorted(remove)})
    _finish_swap(staging, root)


# ---------------------------------------------------------------------------------------------------- the interface
class RunFolder:
    """The output folder of one training run, in four moves: :meth:`resume` (read a checkpoint of this same run),
    :meth:`claim` (hold the folder and make it this run's), :meth:`checkpoint` and :meth:`finish` (the final outputs,
    swapped in as a whole). Use it as a context manager: the folder is held from :meth:`claim` until the block ends,
    however it ends (the kernel releases it if the process dies).

    Args:
        output_dir: The run's folder (checked beforehand by :func:`check_output_dir`).
        overwrite: Replace an earlier run of this tool in it (``overwrite_output_dir``).
        checkpoints_total_limit: How many checkpoints to keep (`None`: all).
        name_of: How messages name the parameters (the command line passes ``cli.flag``: ``--name``).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        overwrite: bool = False,
        checkpoints_total_limit: int | None = None,
        name_of: Callable[[str], str] = str,
    ):
        self.root = Path(output_dir)
        self.overwrite = overwrite
        self.checkpoints_total_limit = checkpoints_total_limit
        self.name_of = name_of
        self.identity: dict | None = None
        self._resumed_here: int | None = None  # the step of a checkpoint of this folder the run continues
        self._fd: int | None = None  # the descriptor holding the folder's flock

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def hold(self) -> None:
        """Hold the folder: an exclusive ``flock`` on the folder itself, taken without waiting, until the ``with``
        block ends. No file is made for it, and the kernel releases it when the holder ends, however it ends (a
        killed run blocks nothing); no lock where the file system has no ``flock``.

        Raises:
            ConfigError: With ``parameter="output_dir"``, naming the process that holds the folder.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._fd = _lock_folder(self.root, self.root)

    def resume(self, accelerator, checkpoint: str, identity: dict, *, max_train_steps: int, state) -> Path:
        """Load ``checkpoint`` (``"latest"`` or a path) into ``accelerator``'s registered objects, only if it is of this
        same run (``identity``: :func:`~.checkpointing.run_identity`) and reads without running code; the checkpoint
        folder, whose step ``state.step`` (a registered object) must then hold."""
        from ..errors import CheckpointError
        from .checkpointing import PARAMETER, check_same_run, load_checkpoint, resolve_checkpoint

        path = resolve_checkpoint(checkpoint, self.root)
        step = check_same_run(path, identity, max_train_steps=max_train_steps, name_of=self.name_of)
        load_checkpoint(accelerator, path)
        if state.step != step:
            raise CheckpointError(
                f"{PARAMETER} {str(path)!r} holds the state of step {state.step}, not {step}", parameter=PARAMETER
            )
        if path.resolve().parent == self.root.resolve():
            self._resumed_here = step
        return path

    def claim(self, accelerator, identity: dict, config: dict) -> None:
        """Make the folder this run's (main process; all processes wait), after every check passed: :meth:`hold` it,
        write :data:`RUN_MARKER` first, finish or discard interrupted saves, and remove the ``checkpoint-N`` that
        are incomplete or newer than the one resumed from in this folder (this run replaces what came after it).
        With ``overwrite``, every other output of a previous run goes too (its checkpoints included, except the ones
        resumed from), so two runs never mix; so do the remains of a run that failed before its first checkpoint.
        Then ``config`` is recorded as ``training_config.json``; ``identity`` goes into every checkpoint."""
        self.identity = identity
        if accelerator.is_main_process:
            self.hold()
            root, resumed_step = self.root, self._resumed_here
            if not _made_by_this_tool(root / RUN_MARKER):
                if run_outputs(root) and not is_run_folder(root):
                    raise ConfigError(f"output_dir '{root}' is not empty and was not made by {TOOL}",
                                      parameter="output_dir")  # fmt: skip
                write_json(root / RUN_MARKER, {"created_by": TOOL, "format": 1})
            clean_leftovers(root)
            replace = self.overwrite or not run_results(root)  # a failed run's remains: nothing to keep
            for path in run_outputs(root):
                match = CHECKPOINT_RE.match(path.name)
                if match and path.is_dir():
                    keep = resumed_step is not None and int(match.group(1)) <= resumed_step
                    if (path / COMPLETE_MARKER).is_file() and (keep or not (replace or resumed_step is not None)):
                        continue
                elif not replace:
                    continue
                remove_path(path)
            atomic_write(root / "training_config.json", json.dumps(config, indent=2) + "\n")
        accelerator.wait_for_everyone()

    def checkpoint(self, accelerator, step: int) -> Path:
        """Save ``checkpoint-{step}`` (all processes), keeping the newest ``checkpoints_total_limit``
        (:func:`~.checkpointing.save_checkpoint`)."""
        from .checkpointing import save_checkpoint

        return save_checkpoint(accelerator, self.root, step, self.checkpoints_total_limit, identity=self.identity)

    def finish(self):
        """A context manager giving the staging folder where the final outputs are built (main process); they
        replace the previous ones (:data:`FINAL_OUTPUTS`) as a whole when the block ends, and not at all if it
        raises (:func:`staged_outputs`)."""
        return staged_outputs(self.root, remove=FINAL_OUTPUTS)
