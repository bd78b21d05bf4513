"""Checkpoints: saved atomically, checked, of the same run, and read without running code.

* **Checkpoints.** ``accelerator.save_state`` writes ``.checkpoint-N.tmp``; the run's identity (:data:`IDENTITY_FILE`)
  and a completion record listing every file and its size (:data:`COMPLETE_MARKER`, written last) are added, and the
  folder is renamed to ``checkpoint-N``. A kill at any moment leaves the previous ``latest`` loadable.
* **Same run.** A resume compares the checkpoint's identity (objective, model config, data, batch) with this run's
  (:func:`run_identity`, :func:`check_same_run`) and refuses another run's checkpoint, naming what differs.
* **Safe resume.** Every file of a checkpoint is read as JSON, safetensors, or first with
  ``torch.load(weights_only=True)``: accelerate unpickles custom states with ``weights_only=False``, and only files
  that hold nothing but tensors and plain data reach it, so a checkpoint cannot run code (`torch.load` security notes:
  https://pytorch.org/docs/stable/generated/torch.load.html). Nothing in the process is patched.
* **Finite weights.** Nothing is saved from weights that became NaN/inf (:func:`check_finite_weights`).

The output folder (ownership marker, staging, the final save) is :mod:`.run_folder`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..errors import CheckpointError, ConfigError, TrainingError
from .run_folder import (
    CHECKPOINT_RE,
    COMPLETE_MARKER,
    TOOL,
    list_checkpoints,
    read_json,
    remove_path,
)

IDENTITY_FILE = "run_identity.json"
PARAMETER = "resume_from_checkpoint"


def all_finite(tensors: Iterable) -> bool:
    """Whether every value of ``tensors`` is finite (one host synchronisation)."""
    import torch

    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_step(path: str | os.PathLike) -> int:
    m = CHECKPOINT_RE.match(Path(path).name)
    if not m:
        raise CheckpointError(
            f"{PARAMETER} {str(path)!r} is not a folder named checkpoint-<step>", parameter=PARAMETER
        )
    return int(m.group(1))


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
        record = read_json(path / COMPLETE_MARKER)
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
        return read_json(path / IDENTITY_FILE)
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


# ---------------------------------------------------------------------------------------------------- same run
#: The parameter that sets each UNet2DModel config key (a key of none: ``model_config_name_or_path``).
MODEL_CONFIG_PARAMETERS = {
    "block_out_channels": "block_out_channels",
    "layers_per_block": "layers_per_block",
    "norm_num_groups": "norm_num_groups",
    "dropout": "dropout",
    "down_block_types": "attention_resolution_index",
    "up_block_types": "attention_resolution_index",
    "sample_size": "resolution",
    "in_channels": "channels",
    "out_channels": "variance_type",
}
#: The parameter that sets an identity entry not named after one (``num_processes``: ``accelerate launch``'s).
IDENTITY_PARAMETERS = {"num_images": "max_train_samples"}


def run_identity(
    scheduler,
    unet_config: Mapping,
    *,
    timestep_sampler: str,
    use_ema: bool,
    dataset_name: str | None,
    dataset_config_name: str | None,
    train_data_dir: str | None,
    resolution: int,
    channels: int,
    num_images: int,
    train_batch_size: int,
    gradient_accumulation_steps: int,
    num_processes: int,
    label_column: str | None = None,
    condition_dropout: float = 0.0,
) -> dict:
    """What a checkpoint's run is (saved in each checkpoint as :data:`IDENTITY_FILE`): the objective (scheduler
    config), the model config and the data and batch of this run, keyed by parameter name. A resume with other
    values of these is another run (:func:`check_same_run`)."""
    from .pipelines import objective_config

    return {
        **objective_config(scheduler),
        "timestep_sampler": timestep_sampler,
        "use_ema": use_ema,
        "model": {k: v for k, v in dict(unet_config).items() if not k.startswith("_")},
        "dataset_name": dataset_name,
        "dataset_config_name": dataset_config_name,
        "train_data_dir": train_data_dir,
        "resolution": resolution,
        "channels": channels,
        "label_column": label_column,
        "condition_dropout": condition_dropout,
        "num_images": num_images,
        "train_batch_size": train_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "num_processes": num_processes,
    }


def check_same_run(
    path: str | os.PathLike, identity: dict, *, max_train_steps: int, name_of: Callable[[str], str] = str
) -> int:
    """Refuse a checkpoint of another run (naming the parameters that differ) or one past ``max_train_steps``;
    return its step. Reads only JSON.

    Args:
        path: The checkpoint folder (``checkpoint-N``).
        identity: This run's :func:`run_identity`.
        max_train_steps: The step this run trains to.
        name_of: How messages name the parameters (the command line passes ``cli.flag``: ``--name``).

    Raises:
        CheckpointError: Another run's checkpoint, or an incomplete one (``parameter="resume_from_checkpoint"``).
        ConfigError: Its step is past ``max_train_steps`` (``parameter="max_train_steps"``).
    """
    path = Path(path)
    differences = identity_differences(verify_checkpoint(path), identity)
    if differences:
        parts: dict[str, str] = {}
        for key, saved, current in differences:
            in_model = key.startswith("model.")
            name = key.split(".", 1)[1] if in_model else key
            parameter = MODEL_CONFIG_PARAMETERS.get(name, "model_config_name_or_path") if in_model else name
            parameter = IDENTITY_PARAMETERS.get(parameter, parameter)
            label = name_of(parameter) + ("" if name == parameter else f" ({name})")
            parts.setdefault(parameter, f"{label}: checkpoint {saved!r}, this run {current!r}")
        raise CheckpointError(
            f"{PARAMETER} {str(path)!r} is of another run: {'; '.join(parts.values())}; pass that run's values, or "
            f"{name_of('overwrite_output_dir')} / a new {name_of('output_dir')} to start over",
            parameter=PARAMETER,
        )
    step = checkpoint_step(path)
    if step > max_train_steps:
        raise ConfigError(
            f"max_train_steps {max_train_steps} is below the step of {name_of(PARAMETER)} {str(path)!r} ({step}); "
            f"pass {name_of('max_train_steps')} {step} or more",
            parameter="max_train_steps",
        )
    return step


def check_finite_weights(model, ema, step: int, *, name_of: Callable[[str], str] = str) -> None:
    """The weights of ``model`` (and their EMA ``ema``, a diffusers ``EMAModel`` or `None`) are finite, else stop
    before anything is saved (one host synchronisation).

    Raises:
        TrainingError: Naming the step, and the parameters to change (``name_of``: how messages name them).
    """
    tensors = [*model.parameters(), *(ema.shadow_params if ema is not None else [])]
    if not all_finite(tensors):
        raise TrainingError(
            f"the weights became NaN/inf by step {step} (the loss was still finite); stopping without saving "
            f"weights: lower {name_of('learning_rate')} or check {name_of('loss_weighting')}"
        )


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
        remove_path(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / IDENTITY_FILE).write_text(json.dumps(identity or {}, indent=2, default=str) + "\n")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"created_by": TOOL, "step": step, "files": files}) + "\n")
        remove_path(final)
        os.replace(tmp, final)
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(root)[:-total_limit]:
                remove_path(old)
    accelerator.wait_for_everyone()
    return final


def _check_pickles_hold_only_data(path: Path) -> None:
    """Read every pickled file of the checkpoint with ``torch.load(weights_only=True)`` before accelerate loads it:
    a file that passes references only the allow-listed tensor and plain-data constructors, so unpickling it again
    (accelerate passes ``weights_only=False`` for custom states) calls nothing else. A file that fails is refused,
    naming it; nothing in the process is patched."""
    from accelerate.utils.other import load  # torch.load with accelerate's allow-list (numpy RNG states)

    for file in sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".pkl", ".bin", ".pt", ".pth")):
        try:
            load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001  (any failure to read it safely is the file's fault)
            raise _unreadable(path, _describe((str(file), err))) from err


def load_checkpoint(accelerator, path: str | os.PathLike) -> int:
    """``accelerator.load_state(path)`` without code execution; returns the step.

    The completion record is checked first (:func:`verify_checkpoint`), safetensors headers are parsed, and every
    pickled file must read with ``torch.load(weights_only=True)`` before accelerate loads any. Raises
    :class:`CheckpointError` (naming the file) if anything cannot be read so.
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
    _check_pickles_hold_only_data(path)
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # noqa: BLE001  (any failure to load is the checkpoint's fault for the user)
        raise _unreadable(path, _first_line(err)) from err
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
