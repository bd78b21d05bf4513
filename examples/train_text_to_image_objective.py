#!/usr/bin/env python
"""The training step of diffusers' ``examples/text_to_image/train_text_to_image.py`` with its loss block replaced
by ``DDPMObjectiveScheduler.training_loss``: v-prediction, min-SNR-γ weighting and zero terminal SNR, configured once
on the scheduler (see docs/training_loop.md for the block it replaces, line by line).

    python examples/train_text_to_image_objective.py --tiny --max_train_steps 5
    accelerate launch examples/train_text_to_image_objective.py --pretrained_model_name_or_path PATH

``--tiny`` writes a tiny random `UNet2DConditionModel` (4 latent channels, 8×8) and Stable Diffusion's scheduler
config into a temporary folder in a Stable Diffusion checkpoint's layout (``unet/``, ``scheduler/``) and loads both
from it, as from a real checkpoint; runs offline in seconds on a CPU. The batches stand in for the script's data:
random latents in the UNet's latent shape (what ``vae.encode(pixels).latent_dist.sample() * scaling_factor``
gives) and random text-encoder states (what ``text_encoder(input_ids)[0]`` gives). With
``--pretrained_model_name_or_path`` the same step runs on that checkpoint's UNet and scheduler: a dry run of the
objective before editing a real training script.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel

from ddpm_objectives_hf import DDPMObjectiveScheduler

# Stable Diffusion v1's scheduler_config.json (a PNDMScheduler; the keys DDPMScheduler lacks are ignored on load)
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
TINY_TEXT_TOKENS = 5  # sequence length of the tiny model's stand-in text states (77 for CLIP)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained_model_name_or_path", help="A Stable Diffusion checkpoint (unet/, scheduler/).")
    source.add_argument("--tiny", action="store_true", help="A tiny random UNet and SD's scheduler, offline.")
    parser.add_argument("--prediction_type", choices=["epsilon", "v_prediction"], default="v_prediction")
    parser.add_argument("--snr_gamma", type=float, default=5.0, help="γ of min-SNR-γ; 0 for the plain MSE.")
    parser.add_argument(
        "--no_zero_terminal_snr", dest="rescale_betas_zero_snr", action="store_false", help="Keep SD's betas."
    )
    parser.add_argument("--train_batch_size", type=int, default=4)
    parser.add_argument("--max_train_steps", type=int, default=5)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", help="Save the trained unet/ and scheduler/ here.")
    args = parser.parse_args(argv)
    if args.train_batch_size < 1 or args.max_train_steps < 1 or args.gradient_accumulation_steps < 1:
        parser.error("--train_batch_size, --max_train_steps and --gradient_accumulation_steps must be >= 1")
    if args.snr_gamma < 0 or not math.isfinite(args.snr_gamma):
        parser.error(f"--snr_gamma must be a finite number >= 0, got {args.snr_gamma}")
    return args


def load_scheduler(path: str, args: argparse.Namespace) -> DDPMObjectiveScheduler:
    """The checkpoint's schedule, with the objective on top: the one line that replaces ``DDPMScheduler``.

    Weightings are stated in ε-units (``w · ‖ε − ε̂‖²`` whatever the target), so the unweighted MSE of the target
    (train_text_to_image.py without ``--snr_gamma``) is `simple` for ε and, for v, ``w = 1 + 1/SNR``: `edm` with
    σ_data = 1 (‖v − v̂‖² = (1 + SNR)/SNR · ‖ε − ε̂‖²).
    """
    if args.snr_gamma > 0:
        weighting = {"loss_weighting": "min_snr", "snr_gamma": args.snr_gamma}
    elif args.prediction_type == "v_prediction":
        weighting = {"loss_weighting": "edm", "sigma_data": 1.0}
    else:
        weighting = {"loss_weighting": "simple"}
    return DDPMObjectiveScheduler.from_pretrained(
        path,
        subfolder="scheduler",
        prediction_type=args.prediction_type,
        rescale_betas_zero_snr=args.rescale_betas_zero_snr,
        **weighting,
    )


def write_tiny_checkpoint(folder: str | Path) -> Path:
    """A tiny random `UNet2DConditionModel` and SD's scheduler config, in a checkpoint's layout."""
    folder = Path(folder)
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4,
        cross_attention_dim=8,
        attention_head_dim=2,
    ).save_pretrained(folder / "unet")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER_CONFIG, indent=2))
    return folder


@dataclass
class LossStep:
    """One step's loss and what it was computed from (for logging and for checking it)."""

    loss: torch.Tensor  # scalar, what is back-propagated
    per_sample_loss: torch.Tensor  # [N] weighted loss of each sample
    model_pred: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor


def compute_loss(
    unet,
    noise_scheduler: DDPMObjectiveScheduler,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> LossStep:
    """train_text_to_image.py's step from "Sample noise" to the loss, with its loss block replaced."""
    # Sample noise that we'll add to the latents (unchanged)
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    bsz = latents.shape[0]
    # Sample a random timestep for each image (unchanged)
    if timesteps is None:
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=generator, device=latents.device
        )
    timesteps = timesteps.long()
    # Add noise to the latents according to the noise magnitude at each timestep (unchanged)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)

    # Predict and compute the loss: replaces the target selection, the prediction and the `snr_gamma` block.
    # The scheduler builds the target (ε or v), weights it (min-SNR-γ in the target's units) and handles SNR = 0.
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    per_sample_loss, _terms = noise_scheduler.training_loss(
        model_pred, latents, noise, timesteps, noisy_images=noisy_latents
    )
    loss = per_sample_loss.mean()
    return LossStep(loss, per_sample_loss, model_pred, latents, noise, timesteps)


def train(args: argparse.Namespace, on_step: Callable[[int, LossStep], None] | None = None) -> list[float]:
    """The loop of train_text_to_image.py around :func:`compute_loss`; returns the loss of every step."""
    with tempfile.TemporaryDirectory(prefix="tiny-sd-") as tiny_folder:
        path = str(write_tiny_checkpoint(tiny_folder)) if args.tiny else args.pretrained_model_name_or_path
        noise_scheduler = load_scheduler(path, args)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision
    )
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    config = accelerator.unwrap_model(unet).config
    latent_shape = (args.train_batch_size, config.in_channels, config.sample_size, config.sample_size)
    text_shape = (args.train_batch_size, TINY_TEXT_TOKENS if args.tiny else 77, config.cross_attention_dim)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)

    losses = []
    unet.train()
    for step in range(args.max_train_steps):
        with accelerator.accumulate(unet):
            # stand-ins for `vae.encode(pixel_values).latent_dist.sample() * scaling_factor` and
            # `text_encoder(input_ids)[0]`
            latents = torch.randn(latent_shape, generator=generator, device=accelerator.device)
            encoder_hidden_states = torch.randn(text_shape, generator=generator, device=accelerator.device)
            out = compute_loss(unet, noise_scheduler, latents, encoder_hidden_states, generator=generator)
            if not torch.isfinite(out.loss):
                raise RuntimeError(
                    f"the loss is {out.loss.item()} at step {step} (timesteps {out.timesteps.tolist()})"
                )
            accelerator.backward(out.loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        if on_step is not None:
            on_step(step, out)
        losses.append(out.loss.item())
        accelerator.print(f"step {step}: loss {losses[-1]:.5f}")

    if args.output_dir and accelerator.is_main_process:
        accelerator.unwrap_model(unet).save_pretrained(Path(args.output_dir) / "unet")
        noise_scheduler.save_pretrained(Path(args.output_dir) / "scheduler")
    accelerator.end_training()
    return losses


def main(argv: list[str] | None = None) -> list[float]:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
