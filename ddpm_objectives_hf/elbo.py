"""The variational bound −log p(x0) ≤ L_T + Σ_t L_{t−1} + L_0, term by term, in bits/dim."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .scheduling_ddpm_objective import DDPMObjectiveScheduler


def call_model(model: Callable, noisy_samples: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``model(x_t, t)`` as a tensor, whether it returns one or a diffusers output with ``.sample``."""
    out = model(noisy_samples, timesteps)
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


@torch.no_grad()
def variational_bound(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    x0: torch.Tensor,
    *,
    timesteps: torch.Tensor | list[int] | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-sample terms of the variational bound in bits/dim, as improved-diffusion's ``calc_bpd_loop``.

    For each evaluated t, one x_t ~ q(x_t | x0) is drawn and ``L_{t−1} = KL(q(x_{t−1}|x_t,x0) ‖ p_θ(x_{t−1}|x_t))``
    (t > 0) or the discretized decoder NLL ``L_0 = −log p_θ(x0|x_1)`` (t = 0) is evaluated. Runs without gradients.

    Args:
        model (`Callable`): ``model(x_t, t)`` returning the prediction (a tensor or an output with ``.sample``).
        scheduler ([`DDPMObjectiveScheduler`]): the schedule, target and variance the model was trained with.
        x0 (`torch.Tensor`): data in [−1, 1] on the 8-bit grid, ``[N, C, H, W]``.
        timesteps (`torch.Tensor` or `list[int]`, *optional*): the t to evaluate; all T when `None`.
        noise (`torch.Tensor`, *optional*): ε, either shaped like ``x0`` (the same ε for every t) or
            ``[K, *x0.shape]`` (one per evaluated t). Drawn with ``generator`` when `None`.
        generator (`torch.Generator`, *optional*): for the noise draws.
        clip_denoised (`bool`, defaults to `False`): clip x̂0 to [−1, 1] before forming the mean.
        progress (`bool`, defaults to `False`): show a progress bar over t.

    Returns:
        `dict`: ``prior`` [N] (L_T), ``terms`` [N, K] (column k is the term at ``timesteps[k]``; with all T steps
        index 0 is the decoder L_0), ``total`` [N] (prior + Σ of the evaluated terms: the full bound when all T
        steps are evaluated), ``mse`` [N, K] (‖x0 − x̂0‖² per dim), and ``timesteps`` [K].
    """
    T = scheduler.config.num_train_timesteps
    if timesteps is None:
        timesteps = torch.arange(T, device=x0.device)
    timesteps = torch.as_tensor(timesteps, device=x0.device, dtype=torch.long).flatten()
    if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= T):
        raise ValueError(f"timesteps must lie in 0 … {T - 1}")
    if noise is not None and noise.shape not in (x0.shape, (len(timesteps), *x0.shape)):
        raise ValueError(
            f"noise must have shape {tuple(x0.shape)} or {(len(timesteps), *x0.shape)}, got {tuple(noise.shape)}"
        )
    n = x0.shape[0]
    terms = x0.new_zeros((n, len(timesteps)))
    mse = x0.new_zeros((n, len(timesteps)))
    for k, t in enumerate(tqdm(timesteps.tolist(), desc="variational bound", disable=not progress, leave=False)):
        if noise is None:
            eps = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        else:
            eps = noise if noise.shape == x0.shape else noise[k]
        t_batch = torch.full((n,), t, device=x0.device, dtype=torch.long)
        xt = scheduler.add_noise(x0, eps, t_batch)
        out = call_model(model, xt, t_batch)
        vb = scheduler.vlb_terms(out, x0, xt, t_batch, clip_denoised=clip_denoised)
        terms[:, k] = vb["vb"]
        mse[:, k] = ((vb["pred_xstart"] - x0) ** 2).flatten(1).mean(1)
    prior = scheduler.prior_bpd(x0)
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(dim=1), "mse": mse, "timesteps": timesteps}
