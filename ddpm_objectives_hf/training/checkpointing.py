"""Output folders, checkpoints and the final save: owned, atomic, checked, and read without running code.

* **Ownership.** A folder this tool makes gets :data:`RUN_MARKER` (a small JSON file naming the tool) before anything
  else; a non-empty folder without it is never written to.
* **Checkpoints.** ``accelerator.save_state`` writes ``.checkpoint-N.tmp``; the run's identity (:data:`IDENTITY_FILE`)
  and a completion record listing every file and its size (:data:`COMPLETE_MARKER`, written last) are added, and the
  folder is renamed to ``checkpoint-N``. A kill at any moment leaves the previous ``latest`` loadable.
* **Safe resume.** Every file of a checkpoint is read as JSON, safetensors, or with ``torch.load(weights_only=True)``
  (accelerate unpickles custom states with ``weights_only=False``; here it is forced to `True`), so a checkpoint cannot
  run code (`torch.load` security notes: https://pytorch.org/docs/stable/generated/torch.load.html).
* **Final save.** Everything is built in one staging folder (:data:`STAGING_FINAL`) inside the output folder, then
  swapped in entry by entry; an interrupted swap is finished at the next start (:func:`prepare_output_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import CheckpointError, ConfigError

TOOL = "ddpm_objectives_hf"
RUN_MARKER = "ddpm_objectives_run.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "checkpoint_complete"
IDENTITY_FILE = "run_identity.json"
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
PARAMETER = "resume_from_checkpoint"

#: Testing hook for the kill -9 tests: a comma-separated list of named points at which the process stops itself
#: (SIGSTOP) after saying so on stderr. Read once at import; unset, a point costs one set lookup.
STOP_AT_ENV = "DDPM_OBJECTIVES_HF_STOP_AT"
_STOP_AT = frozenset(filter(None, os.environ.get(STOP_AT_ENV, "").split(",")))


def fault_point(name: str) -> None:
    """Stop here (SIGSTOP) if ``name`` is listed in ``$DDPM_OBJECTIVES_HF_STOP_AT``: the test then copies the folder
    (what a kill at this moment would leave), resumes the process or kills it."""
    if name in _STOP_AT:
        print(f"{TOOL}: stopped at {name}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)


# ---------------------------------------------------------------------------------------------------- files
def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[str], object]) -> Path:
    """Write ``path`` via a temporary file in the same folder and ``os.replace``: readers (and a kill) never see a
    partial file. ``content`` is text, bytes, or a function that writes the file at the path it is given."""
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


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def _read_json(path: Path) -> dict:
    """A JSON object from ``path`` (never unpickled); :class:`ValueError` if it is not one."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path.name} is not JSON ({type(err).__name__})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def _remove(path: Path) -> None:
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


def all_finite(tensors: Iterable) -> bool:
    """Whether every value of ``tensors`` is finite (one host synchronisation)."""
    import torch

    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


# ---------------------------------------------------------------------------------------------------- output folder
def is_run_folder(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir`` was made by this tool (it holds :data:`RUN_MARKER` naming it)."""
    marker = Path(output_dir) / RUN_MARKER
    try:
        return marker.is_file() and _read_json(marker).get("created_by") == TOOL
    except (OSError, ValueError):
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


def prepare_output_dir(
    output_dir: str | os.PathLike, *, replace: bool = False, resumed_step: int | None = None
) -> None:
    """Claim ``output_dir`` for a run that is about to train (main process, after all checks passed).

    Writes :data:`RUN_MARKER` first, finishes or discards interrupted saves, and removes the folders of
    ``checkpoint-N`` that are incomplete or newer than ``resumed_step`` (the step resumed from a checkpoint of this
    folder: what comes after it is replaced by this run). With ``replace``, every other output of a previous run goes
    too (its checkpoints included, except the ones this run resumes from), so two runs never mix; so do the
    remains of a run that failed before its first checkpoint (:func:`run_results`: none).

    Args:
        output_dir: The run's folder; it must be empty, missing, or made by this tool.
        replace: Remove a previous run's outputs (``overwrite_output_dir``).
        resumed_step: Step of the checkpoint of this folder the run resumed from, or `None`.
    """
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    if not is_run_folder(root):
        if run_outputs(root):
            raise ConfigError(f"output_dir '{root}' is not empty and was not made by {TOOL}", parameter="output_dir")
        _write_json(root / RUN_MARKER, {"created_by": TOOL, "format": 1})
    clean_leftovers(root)
    replace = replace or not run_results(root)  # a run that failed before its first checkpoint: nothing to keep
    for path in run_outputs(root):
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir():
            step = int(match.group(1))
            keep = resumed_step is not None and step <= resumed_step
            if (path / COMPLETE_MARKER).is_file() and (keep or not (replace or resumed_step is not None)):
                continue
        elif not replace:
            continue
        _remove(path)


# ---------------------------------------------------------------------------------------------------- staging
def _finish_swap(staging: Path, root: Path) -> None:
    """Move the entries of a complete staging folder into ``root`` (idempotent: a kill mid-way is finished by calling
    it again). ``model_index.json`` goes out first and comes back last, so no reader loads a half-swapped pipeline."""
    record = _read_json(staging / STAGED_RECORD)
    last = [name for name in record["entries"] if name == "model_index.json"]
    first = [name for name in record["entries"] if name not in last]
    trash = root / f"{TRASH_PREFIX}{staging.name.lstrip('.')}"
    trash.mkdir(exist_ok=True)

    def retire(name: str) -> None:
        target = root / name
        if target.exists() or target.is_symlink():
            if (trash / name).exists():
                _remove(trash / name)
            os.replace(target, trash / name)

    for name in last:
        if (staging / name).exists():
            retire(name)
    for index, name in enumerate(first):
        if (staging / name).exists():
            if (root / name).is_dir() or (staging / name).is_dir():
                retire(name)
            os.replace(staging / name, root / name)
        if index == len(first) // 2 and record.get("label"):
            fault_point(f"{record['label']}:swapping")
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
    output_dir: str | os.PathLike, name: str = STAGING_FINAL, remove: Iterable[str] = (), label: str | None = None
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
        label: Name of the :func:`fault_point`\\ s (`None`: none).
    """
    root = Path(output_dir)
    staging = root / name
    _remove(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if label:
        fault_point(f"{label}:staged")
    entries = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
    _write_json(staging / STAGED_RECORD, {"entries": entries, "remove": sorted(remove), "label": label})
    _finish_swap(staging, root)


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_step(path: str | os.PathLike) -> int:
    m = CHECKPOINT_RE.match(Path(path).name)
    if not m:
        raise CheckpointError(
            f"{PARAMETER} {str(path)!r} is not a folder named checkpoint-<step>", parameter=PARAMETER
        )
    return int(m.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / COMPLETE_MARKER).is_file()]


def resolve_checkpoint(resume_from_checkpoint: str, output_dir: str | os.PathLike) -> Path:
    """``latest`` → the newest complete checkpoint of ``output_dir``; a path → that checkpoint, checked."""
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(
                f"{PARAMETER} latest: no complete checkpoint-<step> folder in the output folder {str(output_dir)!r}",
                parameter=PARAMETER,
            )
        return found[-1]
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise CheckpointError(f"{PARAMETER} {resume_from_checkpoint!r} does not exist", parameter=PARAMETER)
    checkpoint_step(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise CheckpointError(
            f"{PARAMETER} {resume_from_checkpoint!r} is incomplete or corrupt (no {COMPLETE_MARKER} marker)",
            parameter=PARAMETER,
        )
    return path


def _unreadable(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{PARAMETER} {str(path)!r} could not be loaded: {reason}", parameter=PARAMETER)


def verify_checkpoint(path: str | os.PathLike) -> dict:
    """Check a checkpoint's completion record against its files (names and sizes) and return its run identity.

    Only JSON is read here. Raises :class:`CheckpointError` naming the file at fault.
    """
    path = Path(path)
    step = checkpoint_step(path)
    try:
        record = _read_json(path / COMPLETE_MARKER)
    except (OSError, ValueError) as err:
        raise _unreadable(path, str(err)) from err
    files = record.get("files")
    if record.get("created_by") != TOOL or record.get("step") != step or not isinstance(files, dict):
        raise _unreadable(path, f"{COMPLETE_MARKER} is not the completion record of step {step} written by {TOOL}")
    present = {p.name for p in path.iterdir()} - {COMPLETE_MARKER}
    if present - set(files):
        raise _unreadable(
            path, f"unexpected file {sorted(present - set(files))[0]} (not written with this checkpoint)"
        )
    for name, size in sorted(files.items()):
        if name not in present:
            raise _unreadable(path, f"{name} is missing")
        if (path / name).stat().st_size != size:
            raise _unreadable(path, f"{name} has {(path / name).stat().st_size} bytes, {size} were written")
    try:
        return _read_json(path / IDENTITY_FILE)
    except (OSError, ValueError) as err:
        raise _unreadable(path, str(err)) from err


def identity_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """``(key, saved value, current value)`` for every key of two run identities that differs; nested dicts give
    ``outer.inner`` keys. Values are compared as JSON (tuples equal lists)."""
    saved, current = json.loads(json.dumps(saved, default=str)), json.loads(json.dumps(current, default=str))
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [(f"{key}.{k}", x, y) for k, x, y in identity_differences(a, b)]
        elif a != b:
            out.append((key, a, b))
    return out


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    total_limit: int | None = None,
    identity: dict | None = None,
) -> Path:
    """``accelerator.save_state`` into ``.checkpoint-N.tmp`` (all processes), then, on the main process, the run's
    identity and the completion record, and a rename to ``checkpoint-N``.

    Keeps at most ``total_limit`` checkpoints (the oldest are removed after the new one is complete). The caller checks
    that the weights are finite first.
    """
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        _remove(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / IDENTITY_FILE).write_text(json.dumps(identity or {}, indent=2, default=str) + "\n")
        fault_point(f"checkpoint-{step}:saved")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"created_by": TOOL, "step": step, "files": files}) + "\n")
        _remove(final)
        os.replace(tmp, final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(root)[:-total_limit]:
                fault_point(f"checkpoint-{step}:pruning")
                _remove(old)
    accelerator.wait_for_everyone()
    return final


@contextlib.contextmanager
def _torch_load_weights_only(failures: list[tuple[str, BaseException]]) -> Iterator[None]:
    """Every ``torch.load`` in the block runs with ``weights_only=True`` (accelerate passes ``False`` for custom
    states); each failure is recorded with its file, since accelerate swallows some (the RNG states)."""
    import torch

    real_load = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(f, *args, **kwargs)
        except Exception as err:
            failures.append((str(f), err))
            raise

    torch.load = load
    try:
        yield
    finally:
        torch.load = real_load


def load_checkpoint(accelerator, path: str | os.PathLike) -> int:
    """``accelerator.load_state(path)`` without code execution; returns the step.

    The completion record is checked first (:func:`verify_checkpoint`), safetensors headers are parsed, and every
    pickled file is read with ``torch.load(weights_only=True)``. Raises :class:`CheckpointError` (naming the file) if
    anything cannot be read so.
    """
    from safetensors import safe_open

    path = Path(path)
    verify_checkpoint(path)
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001  (any failure to parse is the file's fault)
            raise _unreadable(path, f"{weights.name} is not a valid safetensors file") from err
    failures: list[tuple[str, BaseException]] = []
    try:
        with _torch_load_weights_only(failures):
            accelerator.load_state(str(path))
    except Exception as err:  # noqa: BLE001  (any failure to load is the checkpoint's fault for the user)
        raise _unreadable(path, _describe(failures[0]) if failures else _first_line(err)) from err
    if failures:  # accelerate ignores unreadable RNG states; a resume without them is not the same run
        raise _unreadable(path, _describe(failures[0]))
    return checkpoint_step(path)


def _describe(failure: tuple[str, BaseException]) -> str:
    import pickle

    name, err = Path(failure[0]).name, failure[1]
    if isinstance(err, pickle.UnpicklingError):
        return f"{name} holds pickled objects other than tensors and plain data (refused: they could run code)"
    return f"{name}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
