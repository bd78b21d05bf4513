"""Save a trained model as a diffusers pipeline that plain diffusers loads, and load it back with its objective.

Two kinds of folder, both loadable without this package:

- unconditional ε, x0 and v models with a fixed variance: diffusers' own `DDPMPipeline` with `UNet2DModel` and
  `DDPMScheduler` (``DiffusionPipeline.from_pretrained(folder)``; DDIM, DPM-Solver, ... swap in as usual);
- learned-variance, μ̃ (`mean`) and class-conditional models: the package's
  :class:`~ddpm_objectives_hf.pipeline_ddpm_objective.DDPMObjectivePipeline`, whose file travels with the folder as
  ``pipeline.py`` (``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``), with a plain
  `DDPMScheduler`. Its config in ``model_index.json`` holds the model's true target, the number of classes and the
  null class.

The rest of the training objective, the options `DDPMScheduler` does not have (loss type, weighting and its
parameters, ...) and any value it cannot hold (the `mean` target), is kept in ``objective.json`` beside it, with the
run's extra information (and in the model card).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import uuid
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

from ..errors import PipelineError
from ..pipeline_ddpm_objective import REMOTE_CODE_FILE, DDPMObjectivePipeline
from ..scheduling_ddpm_objective import DDPMObjectiveScheduler

OBJECTIVE_FILE = "objective.json"


def objective_config(scheduler: DDPMObjectiveScheduler) -> dict:
    """The whole objective of a scheduler, what the model card describes: every option of its ``__init__`` with its
    value (diffusers' forward process, target and variance, and this package's loss type, weighting and its
    parameters)."""
    return {k: scheduler.config[k] for k in type(scheduler).option_names() if k in scheduler.config}


def _outside_ddpm_scheduler(scheduler: DDPMObjectiveScheduler) -> dict:
    """``{option: DDPMScheduler's default}`` for each option the two share whose value is outside `DDPMScheduler`'s
    ``Literal`` (the μ̃ target, ``prediction_type="mean"``): what a saved `DDPMScheduler` config cannot hold."""
    hints = get_type_hints(DDPMScheduler.__init__)
    defaults = inspect.signature(DDPMScheduler.__init__).parameters
    return {
        name: defaults[name].default
        for name, hint in hints.items()
        if get_origin(hint) is Literal and name in scheduler.config and scheduler.config[name] not in get_args(hint)
    }


def saved_objective(scheduler: DDPMObjectiveScheduler) -> dict:
    """What ``objective.json`` keeps beside a pipeline: the options `DDPMScheduler` does not have
    (``objective_option_names()``) and the true value of those its saved config cannot hold (``prediction_type``
    of a μ̃ model); the others are in ``scheduler/scheduler_config.json``."""
    kept = {k: scheduler.config[k] for k in type(scheduler).objective_option_names()}
    return {**kept, **{k: scheduler.config[k] for k in _outside_ddpm_scheduler(scheduler)}}


def diffusers_scheduler(scheduler: DDPMObjectiveScheduler) -> DDPMScheduler:
    """The scheduler saved with (and sampling in) the pipeline: diffusers' `DDPMScheduler` with the options it
    shares, a value it lacks replaced by its default (`epsilon` for a μ̃ model, which the pipeline feeds ε̂)."""
    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters)
    config = {k: v for k, v in scheduler.config.items() if k in accepted}
    return DDPMScheduler.from_config({**config, **_outside_ddpm_scheduler(scheduler)})


def needs_remote_code(scheduler: DDPMObjectiveScheduler, num_classes: int | None = None) -> bool:
    """Whether the model is sampled (and saved) with :class:`DDPMObjectivePipeline`, loaded with
    ``trust_remote_code=True``: a learned variance (`DDPMPipeline` with DDIM or DPM-Solver would read its variance
    channels as part of the prediction), a target `DDPMScheduler` lacks (`mean`), or class conditioning."""
    return num_classes is not None or scheduler.learned_variance or bool(_outside_ddpm_scheduler(scheduler))


def _check_classes(embeds: int | None, num_classes: int | None, null_class_label: int | None) -> None:
    """``num_classes`` and ``null_class_label`` against the ``embeds`` labels the model embeds."""
    if num_classes is None:
        if embeds is not None:
            raise PipelineError(
                f"the model embeds {embeds} classes: pass the model's num_classes", parameter="num_classes"
            )
        if null_class_label is not None:
            raise PipelineError("null_class_label needs num_classes", parameter="null_class_label")
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise PipelineError(f"num_classes must be a positive int, got {num_classes!r}", parameter="num_classes")
    if embeds is None or embeds < num_classes:
        raise PipelineError(
            f"num_classes={num_classes}, but the model embeds {embeds or 0} classes", parameter="num_classes"
        )
    if null_class_label is not None and not (
        isinstance(null_class_label, int) and num_classes <= null_class_label < embeds
    ):
        raise PipelineError(
            f"null_class_label must be a class the model embeds beyond the {num_classes} classes "
            f"({num_classes} … {embeds - 1}), got {null_class_label!r}",
            parameter="null_class_label",
        )


def sampling_pipeline(
    unet: UNet2DModel,
    scheduler: DDPMObjectiveScheduler,
    num_classes: int | None = None,
    null_class_label: int | None = None,
) -> DDPMPipeline | DDPMObjectivePipeline:
    """The in-memory pipeline of the kind :func:`save_pipeline` saves: `DDPMPipeline` with
    :func:`diffusers_scheduler` for an unconditional fixed-variance ε, x0 or v model, else
    :class:`DDPMObjectivePipeline` (see :func:`needs_remote_code`).

    Args:
        unet (`UNet2DModel`): the trained network (with ``num_class_embeds`` for a class-conditional model).
        scheduler (`DDPMObjectiveScheduler`): the training objective.
        num_classes (`int`, *optional*): K of a class-conditional model (labels 0 … K − 1).
        null_class_label (`int`, *optional*): the learned null class (K when trained with label dropout).

    Raises:
        PipelineError: if the classes do not fit the UNet's class embedding.
    """
    from .models import family_of

    _check_classes(family_of(unet).embedded_classes(unet.config), num_classes, null_class_label)
    sampler = diffusers_scheduler(scheduler)
    if not needs_remote_code(scheduler, num_classes):
        return DDPMPipeline(unet=unet, scheduler=sampler)
    if sampler.config.prediction_type == "sample":
        # the saved scheduler speaks ε for an x0 model too: PNDM, Euler ancestral, KDPM2 (both) and DPM-Solver-SDE,
        # swapped in from its config, implement no `sample` prediction; the pipeline converts the model's x̂0
        sampler = DDPMScheduler.from_config(sampler.config, prediction_type="epsilon")
    return DDPMObjectivePipeline(
        unet=unet,
        scheduler=sampler,
        prediction_type=scheduler.config.prediction_type,
        num_classes=num_classes,
        null_class_label=null_class_label,
    )


def save_pipeline(
    unet: UNet2DModel,
    scheduler: DDPMObjectiveScheduler,
    output_dir: str | os.PathLike,
    extra: dict | None = None,
    *,
    num_classes: int | None = None,
    null_class_label: int | None = None,
) -> Path:
    """Write :func:`sampling_pipeline` (``model_index.json``, ``unet/`` in safetensors, ``scheduler/``, and
    ``pipeline.py`` for :class:`DDPMObjectivePipeline`) and ``objective.json`` into ``output_dir``.

    The pipeline is written to a ``.pipeline-*`` folder inside ``output_dir`` first and then swapped in
    (:func:`~ddpm_objectives_hf.training.run_folder.staged_outputs`), so an error leaves ``output_dir`` as it was.
    Non-finite weights are refused (:class:`PipelineError`).

    Args:
        unet (`UNet2DModel`): the trained network.
        scheduler (`DDPMObjectiveScheduler`): the training objective.
        output_dir (`str` or `os.PathLike`): the pipeline folder (created if missing).
        extra (`dict`, *optional*): the run's information for ``objective.json`` (``timestep_sampler``, ...).
        num_classes (`int`, *optional*): K of a class-conditional model.
        null_class_label (`int`, *optional*): its learned null class, if any.
    """
    from .run_folder import staged_outputs

    for name, param in unet.named_parameters():
        if not torch.isfinite(param).all():
            raise PipelineError(f"refusing to save non-finite weights ({name} has NaN or inf)")
    pipeline = sampling_pipeline(unet, scheduler, num_classes, null_class_label)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # a pipeline.py of an earlier save of another kind must not survive
    with staged_outputs(output_dir, name=f".pipeline-{uuid.uuid4().hex[:8]}", remove=(REMOTE_CODE_FILE,)) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        objective = {**saved_objective(scheduler), **(extra or {})}
        (tmp / OBJECTIVE_FILE).write_text(json.dumps(objective, indent=2, default=str) + "\n")
    return output_dir


def _component_class(entry) -> type | None:
    """The class a ``model_index.json`` entry ``[library, class]`` names, for diffusers and this package only (no
    other code is imported)."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
        return None
    library, name = entry
    if library != "diffusers" and library.split(".")[0] != "ddpm_objectives_hf":
        return None
    try:
        return getattr(importlib.import_module(library), name, None)
    except ImportError:
        return None


def load_for_evaluation(
    model_dir: str,
    device: str | torch.device = "cpu",
    scheduler_class: type[DDPMObjectiveScheduler] = DDPMObjectiveScheduler,
    *,
    revision: str | None = None,
    variant: str | None = None,
    parameter: str = "MODEL_DIR",
) -> tuple[torch.nn.Module, DDPMObjectiveScheduler, dict]:
    """Load a saved pipeline (local folder or Hub id) as ``(unet, objective scheduler, objective)``: what
    :func:`read_pipeline` reads, and the denoiser's weights (:func:`load_denoiser`)."""
    unet_class, _, scheduler, objective = read_pipeline(model_dir, scheduler_class, revision=revision,
                                                         parameter=parameter)  # fmt: skip
    unet = load_denoiser(model_dir, unet_class, device, revision=revision, variant=variant, parameter=parameter)
    return unet, scheduler, objective


def load_denoiser(
    model_dir: str,
    unet_class: type,
    device: str | torch.device = "cpu",
    *,
    revision: str | None = None,
    variant: str | None = None,
    parameter: str = "MODEL_DIR",
) -> torch.nn.Module:
    """The denoiser's weights of a saved pipeline (local folder or Hub id), as ``unet_class`` (from
    :func:`read_pipeline`) in eval mode on ``device``; ``variant``: e.g. ``fp16`` reads
    ``diffusion_pytorch_model.fp16.safetensors``."""
    from ..files import local_path

    source = str(local_path(model_dir) or model_dir)
    try:
        unet = unet_class.from_pretrained(source, subfolder="unet", revision=revision, variant=variant)
    except (OSError, ValueError) as err:
        raise PipelineError(
            f"{parameter} {model_dir!r} could not be loaded as a pipeline: {str(err).splitlines()[0]}"
        ) from err
    return unet.to(device).eval()


def read_pipeline(
    model_dir: str,
    scheduler_class: type[DDPMObjectiveScheduler] = DDPMObjectiveScheduler,
    *,
    revision: str | None = None,
    parameter: str = "MODEL_DIR",
) -> tuple[type, dict, DDPMObjectiveScheduler, dict]:
    """Read a saved pipeline's configs (local folder or Hub id), not its weights, as ``(denoiser class, its config,
    objective scheduler, objective)``.

    Reads ``model_index.json``, ``unet/``, the scheduler config and ``objective.json`` (no pipeline code is run, so
    a :class:`DDPMObjectivePipeline` folder needs no ``trust_remote_code``). The scheduler is ``scheduler_class``
    rebuilt from the saved scheduler config, then the pipeline config's ``prediction_type`` (the model's true
    target), then ``objective.json`` (which wins; its keys that ``scheduler_class.__init__`` does not take are the
    run's extra information). A pipeline trained elsewhere has no ``objective.json``: it is evaluated with its own
    target and variance type (every variance type of `DDPMScheduler`, nothing substituted) and the default loss
    options.

    Args:
        model_dir (`str`): a pipeline folder or Hub model id.
        scheduler_class (`type`, defaults to `DDPMObjectiveScheduler`): the scheduler to rebuild (a subclass that
            adds options reads them from ``objective.json``).
        revision (`str`, *optional*): the Hub revision (branch, tag or commit).
        parameter (`str`, defaults to `"MODEL_DIR"`): how errors name the source (the flag that gave it).

    Returns:
        ``(denoiser class, denoiser config, scheduler, objective)``: ``objective`` is :func:`objective_config` of the scheduler plus the extra
        information of ``objective.json`` (``timestep_sampler``, ``dataset``, ``train_steps``, ...) and the
        pipeline's ``num_classes`` and ``null_class_label`` (`None` for an unconditional model).
    """
    from ..files import local_path

    local = local_path(model_dir)  # None: a Hub id
    if local is not None and not (local / "model_index.json").is_file():
        raise PipelineError(
            f"{parameter} {model_dir!r} is not a diffusers pipeline folder (no model_index.json); "
            "pass the --output_dir of a training run or a Hub model id"
        )
    source = str(local) if local is not None else model_dir
    try:
        index = DiffusionPipeline.load_config(source)
    except (OSError, ValueError) as err:
        raise PipelineError(
            f"{parameter} {model_dir!r} could not be loaded as a pipeline: {str(err).splitlines()[0]}"
        ) from err
    unet_class = _component_class(index.get("unet"))
    scheduler_type = _component_class(index.get("scheduler"))
    from .models import FAMILIES

    if unet_class not in {f.model_class for f in FAMILIES.values()} or not (
        isinstance(scheduler_type, type) and issubclass(scheduler_type, DDPMScheduler)
    ):
        pipeline_name, unet_name, scheduler_name = (
            entry[-1] if isinstance(entry, (list, tuple)) and entry else entry
            for entry in (index.get("_class_name"), index.get("unet"), index.get("scheduler"))
        )
        raise PipelineError(
            f"{parameter} {model_dir!r} holds a {pipeline_name} with {unet_name}/{scheduler_name}; this needs a "
            f"{' or '.join(FAMILIES)} with a DDPM-family scheduler (DDPMScheduler or a subclass)"
        )
    try:
        unet_config = dict(unet_class.load_config(source, subfolder="unet", revision=revision))
        scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler", revision=revision)
    except (OSError, ValueError) as err:
        raise PipelineError(
            f"{parameter} {model_dir!r} could not be loaded as a pipeline: {str(err).splitlines()[0]}"
        ) from err
    num_classes, null_class_label = index.get("num_classes"), index.get("null_class_label")
    try:
        _check_classes(FAMILIES[unet_class.__name__].embedded_classes(unet_config), num_classes, null_class_label)
    except PipelineError as err:
        raise PipelineError(f"{parameter} {model_dir!r}: {err}") from err

    objective = {}
    objective_path = local / OBJECTIVE_FILE if local is not None else None
    if objective_path is None:
        try:
            from huggingface_hub import hf_hub_download

            objective_path = Path(hf_hub_download(model_dir, OBJECTIVE_FILE, revision=revision))
        except Exception:  # noqa: BLE001  (a pipeline trained elsewhere has none)
            objective_path = None
    if objective_path is not None and objective_path.is_file():
        objective = json.loads(objective_path.read_text())
    names = scheduler_class.option_names()
    config = {k: v for k, v in scheduler_config.items() if k in names}
    if index.get("prediction_type") is not None:  # a DDPMObjectivePipeline's true target
        config["prediction_type"] = index["prediction_type"]
    config.update({k: v for k, v in objective.items() if k in names})
    objective_scheduler = scheduler_class.from_config(config)
    extra = {k: v for k, v in objective.items() if k not in names}
    conditioning = {"num_classes": num_classes, "null_class_label": null_class_label}
    return (
        unet_class,
        unet_config,
        objective_scheduler,
        {**objective_config(objective_scheduler), **extra, **conditioning},
    )
