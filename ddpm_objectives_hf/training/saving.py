"""The end of a run: the final pipeline (EMA weights), its samples, plots, loss history and model card, written into a
staging folder and swapped in; then the upload to the Hub."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .arguments import RunArguments

from .state import Classes, TrainState

logger = logging.getLogger("ddpm_objectives_hf.train")


@torch.no_grad()
def sample_images(
    unet,
    scheduler,
    num_images: int,
    num_inference_steps: int,
    seed: int,
    device,
    classes: Classes | None = None,
    guidance_scale: float | None = None,
):
    """A grid of samples through the pipeline that is saved (diffusers' DDPMPipeline, or the package's pipeline for
    learned variances, μ̃ and class-conditional models: then image i has the class i mod K)."""
    from .pipelines import sampling_pipeline
    from .plots import sample_grid

    pipeline = sampling_pipeline(
        unet,
        scheduler,
        num_classes=classes.num_classes if classes else None,
        null_class_label=classes.null_class_label if classes else None,
    )
    pipeline.set_progress_bar_config(desc="sampling", leave=False)
    generator = torch.Generator(device=device).manual_seed(seed)
    kwargs = {}
    if classes is not None:
        kwargs = {"class_labels": [i % classes.num_classes for i in range(num_images)]}
        kwargs["guidance_scale"] = 1.0 if guidance_scale is None else guidance_scale
    images = pipeline(
        batch_size=num_images,
        generator=generator,
        num_inference_steps=num_inference_steps,
        output_type="pil",
        **kwargs,
    ).images
    return sample_grid(images, min_side=128)


def save_run(
    unet,
    scheduler,
    state: TrainState,
    data_args,
    obj,
    run: RunArguments,
    output_dir: Path,
    classes: Classes | None,
    base_model: str | None = None,
):
    """Pipeline, samples, plots, loss history and model card into ``output_dir``; returns the card's writer
    ``write_card(folder, repo_id=...)`` (the push renders it again once the Hub gives the full repo id)."""

    from .model_card import write_model_card
    from .pipelines import needs_remote_code, objective_config, save_pipeline
    from .plots import plot_loss_curve, plot_weighting

    unet.eval()
    dataset = data_args.dataset_name or data_args.train_data_dir or "sklearn-digits"
    final_loss = state.history[-1]["loss"] if state.history else float("nan")
    from ..files import local_path

    extra = {"timestep_sampler": obj.timestep_sampler, "dataset": dataset, "train_steps": state.step}
    hub_base_model = base_model if base_model and local_path(base_model) is None else None
    if base_model:  # a local folder by its name only (never an absolute path)
        extra["base_model"] = hub_base_model or Path(base_model).resolve().name
    conditioning = {}
    if classes is not None:
        conditioning = {
            "class_conditional": True,
            "label_column": classes.label_column,
            "num_classes": classes.num_classes,
            "condition_dropout": classes.dropout,
        }
        extra.update(conditioning)
    save_pipeline(
        unet,
        scheduler,
        output_dir,
        extra=extra,
        num_classes=classes.num_classes if classes else None,
        null_class_label=classes.null_class_label if classes else None,
    )
    grid = sample_images(
        unet,
        scheduler,
        run.num_sample_images,
        run.num_inference_steps,
        run.seed,
        unet.device,
        classes,
        run.guidance_scale,
    )
    grid.save(output_dir / "samples.png")
    t = torch.arange(scheduler.config.num_train_timesteps)
    curves = {f"{obj.loss_weighting} ({scheduler.config.loss_type})": scheduler.effective_weight(t).numpy()}
    if obj.loss_weighting != "simple":
        curves["simple (L_simple)"] = torch.ones(len(t)).numpy()
    curves["vlb (the ELBO's λ_t)"] = scheduler.vlb_weight(t).numpy()
    plot_weighting(t.numpy(), curves, output_dir / "weighting.png")
    if state.history:
        plot_loss_curve(
            [h["step"] for h in state.history], [h["loss"] for h in state.history], output_dir / "loss.png"
        )
    (output_dir / "loss_history.json").write_text(json.dumps(state.history) + "\n")  # output_dir: the staging folder
    images = {"samples": "samples.png", "weighting": "weighting.png"}
    if state.history:
        images["loss"] = "loss.png"
    write_card = functools.partial(
        write_model_card,
        objective={**objective_config(scheduler), "timestep_sampler": obj.timestep_sampler},
        folder_name=Path(run.output_dir).resolve().name,  # output_dir is the staging folder
        dataset_name=dataset,
        metrics={"final_loss": final_loss},
        images=images,
        training={
            "train_steps": state.step,
            "train_batch_size": run.train_batch_size,
            "learning_rate": run.learning_rate,
            "lr_scheduler": run.lr_scheduler,
            "use_ema": run.use_ema,
            "seed": run.seed,
            "mixed_precision": run.mixed_precision or "no",
            "num_inference_steps": run.num_inference_steps,  # of the samples, and the card's snippet
            **conditioning,
        },
        remote_code=needs_remote_code(scheduler, classes.num_classes if classes else None),
        base_model=hub_base_model,
        num_classes=classes.num_classes if classes else None,
        guidance_scale=(1.0 if run.guidance_scale is None else run.guidance_scale)
        if classes and classes.null_class_label is not None
        else None,
    )
    write_card(output_dir, repo_id=run.hub_model_id if run.push_to_hub else None)  # None: the folder's name
    return write_card


def push_run(run: RunArguments, output_dir: Path, write_card) -> None:
    from .hub import DEFAULT_IGNORE_PATTERNS, push_to_hub, resolve_repo_id
    from .run_folder import LOCAL_ONLY_PATTERNS

    def name_repo_in_card(full_id: str) -> None:
        """A bare --hub_model_id (or none) gets its namespace from the Hub: the pushed card's snippet loads it."""
        if full_id != run.hub_model_id:
            write_card(output_dir, repo_id=full_id)  # README.md, replaced atomically

    repo_id = resolve_repo_id(run.hub_model_id, str(output_dir))  # a bare name gets its namespace from the Hub
    url = push_to_hub(
        output_dir,
        repo_id,
        private=run.hub_private_repo,
        token=run.hub_token,
        endpoint=run.hub_endpoint,
        ignore_patterns=(*DEFAULT_IGNORE_PATTERNS, *LOCAL_ONLY_PATTERNS),  # leftovers of interrupted saves, the marker
        before_upload=name_repo_in_card,
    )
    logger.info("pushed to %s", url)
