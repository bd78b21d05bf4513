"""`diffusion_loss` and `DiffusionLossMixin`: one training step's objective for a diffusers model.

The steps read as the DDPM training algorithm (Ho et al. 2020, Algorithm 1): draw t and ε, make x_t, predict, weight the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .elbo import call_model
from .scheduling_ddpm_objective import DDPMObjectiveScheduler
from .timestep_sampling import TimestepSampler


@dataclass
class DiffusionLossOutput(BaseOutput):
    """Output of :func:`diffusion_loss`.

    Args:
        loss (`torch.Tensor`): scalar mean of ``weights · per_sample_loss`` (what to back-propagate).
        per_sample_loss (`torch.Tensor`): [N] loss of each sample before the sampler's weights.
        terms (`dict`): named per-sample terms (``mse``, ``vb``, ``weight``, ``loss``).
        timesteps (`torch.Tensor`): [N] the t drawn.
        sampler_weights (`torch.Tensor`): [N] the timestep sampler's importance weights (ones if uniform).
    """

    loss: torch.Tensor
    per_sample_loss: torch.Tensor
    terms: dict
    timesteps: torch.Tensor
    sampler_weights: torch.Tensor


def diffusion_loss(
    model,
    clean_images: torch.Tensor,
    scheduler: DDPMObjectiveScheduler,
    *,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    timestep_sampler: TimestepSampler | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> DiffusionLossOutput:
    """Sample t and ε, run ``model(x_t, t, **model_kwargs)`` and return the configured objective.

    Args:
        model: a diffusers model (or any callable ``model(x_t, t, **model_kwargs)``), called by
            :func:`~ddpm_objectives_hf.elbo.call_model` (x_t positionally, t as ``timestep=`` where the forward has
            that parameter).
        clean_images (`torch.Tensor`): x0 in [−1, 1], ``[N, C, H, W]``.
        scheduler ([`DDPMObjectiveScheduler`]): holds the target, weighting and loss type.
        timesteps (`torch.Tensor`, *optional*): t per sample; drawn by ``timestep_sampler`` (uniform) when `None`.
        noise (`torch.Tensor`, *optional*): ε; drawn with ``generator`` when `None`.
        generator (`torch.Generator`, *optional*): for t and ε.
        timestep_sampler ([`TimestepSampler`], *optional*): where t comes from and its importance weights.
        model_kwargs (`dict`, *optional*): the conditioning of the N samples, as the model's forward takes it:
            e.g. ``{"class_labels": y}`` (class-conditional `UNet2DModel`, DiT), ``{"encoder_hidden_states": h}``
            (`UNet2DConditionModel`, `Transformer2DModel`), plus ``{"added_cond_kwargs": {...}}`` (SDXL-style UNets).
    """
    x0 = clean_images
    n = x0.shape[0]
    if timesteps is None:
        sampler = timestep_sampler or TimestepSampler(scheduler.config.num_train_timesteps)
        timesteps, weights = sampler.sample(n, device=x0.device, generator=generator)
    else:
        weights = torch.ones(n, device=x0.device)
    if noise is None:
        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    noisy = scheduler.add_noise(x0, noise, timesteps)
    model_output = call_model(model, noisy, timesteps, model_kwargs)
    per_sample, terms = scheduler.training_loss(model_output, x0, noise, timesteps, noisy_images=noisy)
    loss = (weights * per_sample).mean()
    return DiffusionLossOutput(
        loss=loss, per_sample_loss=per_sample, terms=terms, timesteps=timesteps, sampler_weights=weights
    )


class DiffusionLossMixin:
    """Mix into a diffusers model class to give it ``model.diffusion_loss(...)``::

    class Net(DiffusionLossMixin, UNet2DModel):
        pass

    out = Net(...).diffusion_loss(clean_images, scheduler, model_kwargs={"class_labels": y})
    out.loss.backward()
    """

    def diffusion_loss(
        self,
        clean_images: torch.Tensor,
        scheduler: DDPMObjectiveScheduler,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        timestep_sampler: TimestepSampler | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> DiffusionLossOutput:
        """See :func:`diffusion_loss`.

        Args:
            clean_images (`torch.Tensor`): x0, ``[N, C, H, W]``.
            scheduler ([`DDPMObjectiveScheduler`]): holds the target, weighting and loss type.
            timesteps (`torch.Tensor`, *optional*): t per sample; drawn when `None`.
            noise (`torch.Tensor`, *optional*): ε; drawn when `None`.
            generator (`torch.Generator`, *optional*): for t and ε.
            timestep_sampler ([`TimestepSampler`], *optional*): where t comes from.
            model_kwargs (`dict`, *optional*): the conditioning, as this model's forward takes it (e.g.
                ``{"class_labels": y}``, ``{"encoder_hidden_states": h}``).
        """
        return diffusion_loss(
            self,
            clean_images,
            scheduler,
            timesteps=timesteps,
            noise=noise,
            generator=generator,
            timestep_sampler=timestep_sampler,
            model_kwargs=model_kwargs,
        )
