"""Save a trained model as a diffusers pipeline that plain diffusers loads, and load it back with its objective.

ε, x0 and v models (fixed or `learned_range` variance) are saved with diffusers' own `UNet2DModel` and
`DDPMScheduler`, so ``DiffusionPipeline.from_pretrained`` samples without this package; the training objective is
kept in ``objective.json`` (and the model card). μ̃ (`mean`) models need the plugin scheduler and save it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from ..errors import PipelineError
from ..scheduling_ddpm_objective import DDPMObjectiveScheduler

OBJECTIVE_FILE = "objective.json"
OBJECTIVE_KEYS = (
    "prediction_type",
    "variance_type",
    "loss_type",
    "loss_weighting",
    "snr_gamma",
    "p2_k",
    "p2_gamma",
    "sigma_data",
    "sigmoid_bias",
    "hybrid_lambda",
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "rescale_betas_zero_snr",
)


def objective_config(scheduler: DDPMObjectiveScheduler) -> dict:
    """The objective part of a scheduler's config (what the model card and ``objective.json`` record)."""
    return {k: scheduler.config[k] for k in OBJECTIVE_KEYS}


def needs_plugin_scheduler(scheduler: DDPMObjectiveScheduler) -> bool:
    """Only μ̃ models need the plugin scheduler to sample; diffusers' `DDPMScheduler` handles ε, x0 and v."""
    return scheduler.config.prediction_type == "mean"


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

    The pipeline is written to a temporary folder beside ``output_dir`` first and then moved in, so an interrupted
    save never leaves a half-written pipeline. Non-finite weights are refused.
    """
    for name, param in unet.named_parameters():
        if not torch.isfinite(param).all():
            raise ValueError(f"refusing to save non-finite weights ({name} has NaN or inf)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipeline = DDPMPipeline(unet=unet, scheduler=sampling_scheduler(scheduler))
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".pipeline-") as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        objective = {**objective_config(scheduler), **(extra or {})}
        objective["plugin_scheduler"] = needs_plugin_scheduler(scheduler)
        (Path(tmp) / OBJECTIVE_FILE).write_text(json.dumps(objective, indent=2, default=str) + "\n")
        for item in sorted(Path(tmp).iterdir()):
            target = output_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    return output_dir


def load_for_evaluation(
    model_dir: str, device: str | torch.device = "cpu"
) -> tuple[UNet2DModel, DDPMObjectiveScheduler, dict]:
    """Load a saved pipeline (local folder or Hub id) as ``(unet, objective scheduler, objective)``.

    The objective comes from ``objective.json`` when present, else from the scheduler config (a pipeline trained
    elsewhere is evaluated with its own target and variance, and the default loss options).
    """
    from diffusers import DiffusionPipeline

    local = Path(model_dir)
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise PipelineError(
                f"MODEL_DIR {model_dir!r} is not a diffusers pipeline folder (no model_index.json); "
                "pass the --output_dir of a training run or a Hub model id"
            )
    try:
        pipeline = DiffusionPipeline.from_pretrained(model_dir)
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
    objective_path = local / OBJECTIVE_FILE if local.exists() else None
    if objective_path is None:
        try:
            from huggingface_hub import hf_hub_download

            objective_path = Path(hf_hub_download(model_dir, OBJECTIVE_FILE))
        except Exception:  # noqa: BLE001  (a pipeline trained elsewhere has none)
            objective_path = None
    if objective_path is not None and objective_path.is_file():
        objective = json.loads(objective_path.read_text())
    config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    config.update({k: objective[k] for k in OBJECTIVE_KEYS if k in objective})
    if config.get("variance_type") not in ("fixed_small", "fixed_large", "learned_range"):
        config["variance_type"] = "fixed_small"
    if config["variance_type"] == "learned_range" and config.get("loss_type", "mse") == "mse":
        config["loss_type"] = "hybrid"
    objective_scheduler = DDPMObjectiveScheduler.from_config(config)
    return unet.to(device).eval(), objective_scheduler, objective
