"""Bits/dim: the full variational bound over all T steps, and a fast unbiased estimator with K ≪ T steps.

The bound is ``prior + Σ_{t=0}^{T−1} L_t``. The fast estimator keeps the prior exact and estimates the sum by
stratified importance sampling: a proposal q_t ∝ the per-t terms' root mean square (learned from a short pilot on a coarse grid of t)
is cut into K strata of equal mass, each image draws one t per stratum by inverting q's CDF at a jittered point
(a heavy t spans several strata and is drawn several times), ``L_t / (K q_t)`` is unbiased for the sum, and
control variates regress each draw's noise out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .elbo import call_model, slice_model_kwargs, variational_bound
from .options import Range, check_range
from .scheduling_ddpm_objective import DDPMObjectiveScheduler


def full_bpd(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`variational_bound` over all T steps for every image, in batches: ``prior`` [N], ``terms`` [N, T],
    ``total`` [N] (bits/dim). Costs N × T network evaluations.

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` (see :func:`call_model`).
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule, target and variance.
        images (`torch.Tensor`): [N, C, H, W] in [−1, 1] on the 8-bit grid.
        batch_size (`int`, defaults to 256): images per network call.
        generator (`torch.Generator`, *optional*): for ε.
        progress (`bool`, defaults to `True`): show progress bars.
        model_kwargs (`dict`, *optional*): the conditioning of the N images, as the model's forward takes it (e.g.
            ``{"class_labels": y}``, ``{"encoder_hidden_states": h}``, ``{"added_cond_kwargs": {...}}``); split with
            the images by :func:`slice_model_kwargs` (tensors of first dimension N are sliced, nested dicts too).
    """
    parts = []
    n = images.shape[0]
    for start in tqdm(range(0, n, batch_size), desc="full bits/dim", disable=not progress):
        rows = slice(start, start + batch_size)
        kwargs = slice_model_kwargs(model_kwargs, rows, n)
        parts.append(
            variational_bound(
                model, scheduler, images[rows], generator=generator, progress=progress, model_kwargs=kwargs
            )
        )
    return {k: torch.cat([p[k] for p in parts]) for k in ("prior", "terms", "total")}


@torch.no_grad()
def learn_proposal(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    pilot_images: torch.Tensor,
    *,
    grid_size: int = 32,
    uniform_mix: float = 0.01,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, int]:
    """A proposal q over t = 0 … T − 1, ∝ the root mean square VLB term of the pilot images (the decoder L_0 at
    t = 0): ``q_t ∝ √E[L_t²]`` minimises the variance of one draw of ``L_t / q_t`` (as Nichol & Dhariwal's
    importance sampler), so a t whose terms vary more across images and noise draws gets more of the draws.

    The terms are evaluated at t = 0 and on a grid of ``grid_size`` timesteps (denser at small t, where they are
    large), interpolated in log space; ``uniform_mix`` of uniform mass keeps every t reachable. Returns
    ``(q, evaluations)``.

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` (see :func:`call_model`).
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule, target and variance.
        pilot_images (`torch.Tensor`): [P, C, H, W], evaluated in one batch.
        grid_size (`int`, defaults to 32): timesteps evaluated besides t = 0.
        uniform_mix (`float`, defaults to 0.01): uniform mass mixed into q.
        generator (`torch.Generator`, *optional*): for ε.
        model_kwargs (`dict`, *optional*): the conditioning of the P pilot images, as the model's forward takes it
            (e.g. ``{"class_labels": y}``, ``{"encoder_hidden_states": h}``).
    """
    T = scheduler.config.num_train_timesteps
    grid = np.unique(np.round(np.geomspace(1, T - 1, num=min(grid_size, T - 1))).astype(int)) if T > 2 else []
    grid = np.concatenate([[0], grid]).astype(int)
    out = variational_bound(
        model, scheduler, pilot_images, timesteps=torch.as_tensor(grid), generator=generator, model_kwargs=model_kwargs
    )
    rms_terms = out["terms"].double().pow(2).mean(0).sqrt().clamp_min(1e-12).log().cpu().numpy()
    log_q = np.interp(np.arange(T), grid, rms_terms)
    q = torch.from_numpy(np.exp(log_q - log_q.max()))
    q = (1 - uniform_mix) * q / q.sum() + uniform_mix / T
    return q, len(grid) * pilot_images.shape[0]


def control_variate_features(noise: torch.Tensor, original_samples: torch.Tensor) -> torch.Tensor:
    """Zero-mean functions of ε given x0, per sample [N, 6]: the means over dimensions of ``(ε² − 1) · x0ʲ`` and
    ``ε · x0ʲ`` for j = 0, 1, 2. A VLB term's dependence on its noise draw is largely explained by them (at t = 0 on
    the quick-start model they remove 4/5 of the draw's variance; docs/objective.md)."""
    eps, x0 = noise.flatten(1).double(), original_samples.flatten(1).double()
    powers = [torch.ones_like(x0), x0, x0**2]
    return torch.stack([((eps**2 - 1) * p).mean(1) for p in powers] + [(eps * p).mean(1) for p in powers], dim=1)


def _control_variate_corrections(values: torch.Tensor, features: torch.Tensor, folds: int = 2) -> torch.Tensor:
    """``γ_k · F_ik`` per image i and point k, with γ_k the least-squares slope of the values ``Y_·k`` [N, K] on the
    features ``F_·k`` [N, K, P] fitted on the other folds' images only (cross-fitting keeps Y − γ·F unbiased);
    zeros when a fold would have fewer than 5 images per feature."""
    n, k, p = features.shape
    corrections = torch.zeros_like(values)
    if n < folds * 5 * p:
        return corrections
    fold = torch.arange(n) % folds
    for j in range(folds):
        train, test = fold != j, fold == j
        y = values[train] - values[train].mean(0)  # [n_train, K]
        f = features[train] - features[train].mean(0)  # [n_train, K, P]
        gamma = torch.linalg.lstsq(f.permute(1, 0, 2), y.T.unsqueeze(-1)).solution  # [K, P, 1]
        corrections[test] = (features[test].permute(1, 0, 2) @ gamma).squeeze(-1).T
    return corrections


@torch.no_grad()
def estimate_bpd(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    images: torch.Tensor,
    *,
    num_timesteps: int = 18,
    proposal: torch.Tensor | None = None,
    control_variates: bool = True,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict:
    """Unbiased bits/dim with ``num_timesteps`` network evaluations per image, and a 95% confidence interval.

    The prior L_T is exact. ``Σ_{t=0}^{T−1} L_t`` (the decoder L_0 included) is estimated from K points per image,
    one in each of K equal-mass strata of the proposal q: ``u_k = (k + U_k)/K``, ``t_k = Q⁻¹(u_k)`` with Q the
    CDF of q, each point ``L_{t_k} / (K q_{t_k})`` with its own noise draw. A t that carries more than 1/K of q (the
    decoder, the first steps) is drawn that many times, so the heavy terms get draws in proportion to their size.
    With ``control_variates``, each point's noise draw is regressed out: ``γ_k · F(ε, x0)`` with the zero-mean
    features of :func:`control_variate_features` and γ_k cross-fitted over the images (unbiased).

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` (see :func:`call_model`).
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule, target and variance.
        images (`torch.Tensor`): [N, C, H, W] in [−1, 1] on the 8-bit grid.
        num_timesteps (`int`, defaults to 18): K, the network calls per image (2 ≤ K ≤ T); with a pilot of 16
            images on 33 timesteps, ≤ 20 calls per image for 360 images and T = 1000.
        proposal (`torch.Tensor`, *optional*): q over the T timesteps (from :func:`learn_proposal`); when `None`,
            the decoder takes one stratum and the other K − 1 are uniform over 1 … T − 1.
        control_variates (`bool`, defaults to `True`): regress the noise draws out (used from 60 images on).
        batch_size (`int`, defaults to 256): images per network call.
        generator (`torch.Generator`, *optional*): for t and ε.
        progress (`bool`, defaults to `True`): show a progress bar over the batches.
        model_kwargs (`dict`, *optional*): the conditioning of the N images, as the model's forward takes it (e.g.
            ``{"class_labels": y}``, ``{"encoder_hidden_states": h}``, ``{"added_cond_kwargs": {...}}``); split with
            the images by :func:`slice_model_kwargs` (tensors of first dimension N are sliced, nested dicts too).

    Returns:
        `dict` with ``per_image`` [N] (bits/dim), ``bpd`` (mean), ``stderr``, ``ci95`` ``(low, high)``,
        ``evaluations_per_image`` and ``control_variates`` (whether they were used).
    """
    T = scheduler.config.num_train_timesteps
    check_range("num_timesteps", num_timesteps, Range(ge=2, le=T, integer=True))
    if proposal is None:
        proposal = torch.cat([torch.ones(1) / num_timesteps, torch.full((T - 1,), (1 - 1 / num_timesteps) / (T - 1))])
    q = proposal.double().cpu()
    q = q / q.sum()
    cdf = torch.cumsum(q, 0)
    n, k = images.shape[0], num_timesteps
    prior = torch.zeros(n, dtype=torch.float64)
    values = torch.zeros(n, k, dtype=torch.float64)
    features = torch.zeros(n, k, 6, dtype=torch.float64)
    for start in tqdm(range(0, n, batch_size), desc="fast bits/dim", disable=not progress):
        x0 = images[start : start + batch_size]
        kwargs = slice_model_kwargs(model_kwargs, slice(start, start + batch_size), n)
        m = x0.shape[0]
        rows = slice(start, start + m)
        prior[rows] = scheduler.prior_bpd(x0).double().cpu()
        u = (
            torch.arange(k, dtype=torch.float64) + torch.rand(m, k, dtype=torch.float64, generator=_cpu(generator))
        ) / k
        t_all = torch.searchsorted(cdf, u * cdf[-1]).clamp(max=T - 1)  # [m, K]
        for j in range(k):
            t = t_all[:, j]
            t_dev = t.to(x0.device)
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            xt = scheduler.add_noise(x0, noise, t_dev)
            out = call_model(model, xt, t_dev, kwargs)
            vb = scheduler.vlb_terms(out, x0, xt, t_dev)["vb"].double().cpu()
            values[rows, j] = vb / (k * q[t])
            features[rows, j] = control_variate_features(noise, x0).cpu()
    corrections = _control_variate_corrections(values, features) if control_variates else torch.zeros_like(values)
    estimate = prior + (values - corrections).sum(1)
    mean = float(estimate.mean())
    stderr = float(estimate.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "per_image": estimate,
        "bpd": mean,
        "stderr": stderr,
        "ci95": (mean - 1.96 * stderr, mean + 1.96 * stderr),
        "evaluations_per_image": k,
        "control_variates": bool(corrections.abs().sum() > 0),
    }


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """Index draws happen on the CPU; a CUDA generator cannot drive them, so derive a CPU one from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    )
