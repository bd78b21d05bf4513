"""Save a trained model as a diffusers pipeline that plain diffusers loads, and load it back with its objective.

ε, x0 and v models (fixed or `learned_range` variance) are saved with diffusers' own `UNet2DModel` and
`DDPMScheduler`, so ``DiffusionPipeline.from_pretrained`` samples without this package; the rest of the training
objective, the options `DDPMScheduler` does not have (``DDPMObjectiveScheduler.objective_option_names()``: loss
type, weighting and its parameters, ...), is kept in ``objective.json`` beside it, with the run's extra information
(and in the model card). μ̃ (`mean`) models need the plugin scheduler and save it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ..errors import PipelineError
from ..scheduling_ddpm_objective import VARIANCE_TYPES, DDPMObjectiveScheduler

OBJECTIVE_FILE = "objective.json"


def objective_config(scheduler: DDPMObjectiveScheduler) -> dict:
    """The whole objective of a scheduler, what the model card describes: every option of its ``__init__`` with its
    value (diffusers' forward process, target and variance, and this package's loss type, weighting and its
    parameters)."""
    return {k: scheduler.config[k] for k in type(scheduler).option_names() if k in scheduler.config}


def saved_objective(scheduler: DDPMObjectiveScheduler) -> dict:
    """What ``objective.json`` keeps beside a pipeline: the options `DDPMScheduler` does not have
    (``objective_option_names()``); the others are in ``scheduler/scheduler_config.json``."""
    return {k: scheduler.config[k] for k in type(scheduler).objective_option_names()}


def needs_plugin_scheduler(scheduler: DDPMObjectiveScheduler) -> bool:
    """Whether diffusers' `DDPMScheduler` cannot sample the model: an option it shares takes a value outside its
    ``Literal`` (the μ̃ target, ``prediction_type="mean"``); it samples ε, x0 and v models."""
    hints = get_type_hints(DDPMScheduler.__init__)
    return any(
        get_origin(hint) is Literal and name in scheduler.config and scheduler.config[name] not in get_args(hint)
        for name, hint in hints.items()
    )


def sampling_scheduler(scheduler: DDPMObjectiveScheduler) -> DDPMScheduler:
    """The scheduler saved with the pipeline: diffusers' own where it can sample the model, else the plugin's."""
    if needs_plugin_scheduler(scheduler):
        return scheduler
    import inspect

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters)
    return DDPMScheduler.from_config({k: v for k, v in scheduler.config.items() if k in accepted})


def save_pipeline(
    unet: UNet2DModel, scheduler: DDPMObjectiveScheduler, output_dir: str | os.PathLike, extra: dict | None = None
) -> Path:
    """Write ``model_index.json``, ``unet/`` (safetensors), ``scheduler/`` and ``objective.json`` into ``output_dir``.

    The pipeline is written to a ``.pipeline-*`` folder inside ``output_dir`` first and then swapped in
    (:func:`~ddpm_objectives_hf.training.run_folder.staged_outputs`), so an error leaves ``output_dir`` as it was.
    Non-finite weights are refused (:class:`PipelineError`).
    """
    from .run_folder import staged_outputs

    for name, param in unet.named_parameters():
        if not torch.isfinite(param).all():
            raise PipelineError(f"refusing to save non-finite weights ({name} has NaN or inf)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipeline = DDPMPipeline(unet=unet, scheduler=sampling_scheduler(scheduler))
    with staged_outputs(output_dir, name=f".pipeline-{uuid.uuid4().hex[:8]}") as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        objective = {**saved_objective(scheduler), **(extra or {})}
        objective["plugin_scheduler"] = needs_plugin_scheduler(scheduler)
        (tmp / OBJECTIVE_FILE).write_text(json.dumps(objective, indent=2, default=str) + "\n")
    return output_dir


def load_for_evaluation(
    model_dir: str,
    device: str | torch.device = "cpu",
    scheduler_class: type[DDPMObjectiveScheduler] = DDPMObjectiveScheduler,
) -> tuple[UNet2DModel, DDPMObjectiveScheduler, dict]:
    """Load a saved pipeline (local folder or Hub id) as ``(unet, objective scheduler, objective)``.

    The scheduler is ``scheduler_class`` rebuilt from the saved scheduler config and ``objective.json`` (which
    wins; its keys that ``scheduler_class.__init__`` does not take are the run's extra information). A pipeline
    trained elsewhere has no ``objective.json``: it is evaluated with its own target and variance and the default
    loss options (a variance diffusers has and this package not is `fixed_small`; a `learned_range` variance gets
    the loss of :meth:`~DDPMObjectiveScheduler.with_learned_variance`).

    Args:
        model_dir (`str`): a pipeline folder or Hub model id.
        device (`str` or `torch.device`): where the UNet goes.
        scheduler_class (`type`, defaults to `DDPMObjectiveScheduler`): the scheduler to rebuild (a subclass that
            adds options reads them from ``objective.json``).

    Returns:
        ``(unet, scheduler, objective)``: ``objective`` is :func:`objective_config` of the scheduler plus the extra
        information of ``objective.json`` (``timestep_sampler``, ``dataset``, ``train_steps``, ...).
    """
    from diffusers import DiffusionPipeline

    from .data import local_path

    local = local_path(model_dir)  # None: a Hub id
    if local is not None and not (local / "model_index.json").is_file():
        raise PipelineError(
            f"MODEL_DIR {model_dir!r} is not a diffusers pipeline folder (no model_index.json); "
            "pass the --output_dir of a training run or a Hub model id"
        )
    try:
        pipeline = DiffusionPipeline.from_pretrained(str(local) if local is not None else model_dir)
    except (OSError, ValueError) as err:
        raise PipelineError(
            f"MODEL_DIR {model_dir!r} could not be loaded as a pipeline: {str(err).splitlines()[0]}"
        ) from err
    unet = getattr(pipeline, "unet", None)
    scheduler = getattr(pipeline, "scheduler", None)
    if not isinstance(unet, UNet2DModel) or not isinstance(scheduler, DDPMScheduler):
        raise PipelineError(
            f"MODEL_DIR {model_dir!r} holds a {type(pipeline).__name__} with {type(unet).__name__}/"
            f"{type(scheduler).__name__}; evaluation needs a UNet2DModel with a DDPM scheduler"
        )
    objective = {}
    objective_path = local / OBJECTIVE_FILE if local is not None else None
    if objective_path is None:
        try:
            from huggingface_hub import hf_hub_download

            objective_path = Path(hf_hub_download(model_dir, OBJECTIVE_FILE))
        except Exception:  # noqa: BLE001  (a pipeline trained elsewhere has none)
            objective_path = None
    if objective_path is not None and objective_path.is_file():
        objective = json.loads(objective_path.read_text())
    names = scheduler_class.option_names()
    config = {k: v for k, v in scheduler.config.items() if k in names}
    config.update({k: v for k, v in objective.items() if k in names})
    if config.get("variance_type") not in VARIANCE_TYPES:
        config["variance_type"] = "fixed_small"
    if config["variance_type"] == "learned_range":
        config = scheduler_class.with_learned_variance(config)
    objective_scheduler = scheduler_class.from_config(config)
    extra = {k: v for k, v in objective.items() if k not in names}
    return unet.to(device).eval(), objective_scheduler, {**objective_config(objective_scheduler), **extra}
