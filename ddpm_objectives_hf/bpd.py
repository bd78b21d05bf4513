"""Bits/dim: the full variational bound over all T steps, and a fast unbiased estimator with K ≪ T steps.

The bound is ``prior + Σ_{t=0}^{T−1} L_t``. The fast estimator keeps the prior and the decoder L_0 exact and
estimates ``Σ_{t≥1} L_t`` by stratified importance sampling: a proposal q_t ∝ the per-t terms (learned from a
short pilot on a coarse grid of t) splits 1 … T−1 into K − 1 strata of equal q-mass, and each image draws one t
per stratum with probability ∝ q_t inside it; ``L_t · Q_k / q_t`` is then unbiased for the stratum's sum.
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
    grid_size: int = 64,
    uniform_mix: float = 0.01,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, int]:
    """A proposal q over t = 1 … T − 1 (q[0] = 0), ∝ the mean VLB term of the pilot images.

    The terms are evaluated on a grid of ``grid_size`` timesteps (denser at small t, where they are large), and
    interpolated in log space; ``uniform_mix`` of uniform mass keeps every t reachable. Returns ``(q, evaluations)``.

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` (see :func:`call_model`).
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule, target and variance.
        pilot_images (`torch.Tensor`): [P, C, H, W], evaluated in one batch.
        grid_size (`int`, defaults to 64): timesteps evaluated.
        uniform_mix (`float`, defaults to 0.01): uniform mass mixed into q.
        generator (`torch.Generator`, *optional*): for ε.
        model_kwargs (`dict`, *optional*): the conditioning of the P pilot images, as the model's forward takes it
            (e.g. ``{"class_labels": y}``, ``{"encoder_hidden_states": h}``).
    """
    T = scheduler.config.num_train_timesteps
    grid = (
        np.unique(np.round(np.geomspace(1, T - 1, num=min(grid_size, T - 1))).astype(int)) if T > 2 else np.array([1])
    )
    out = variational_bound(
        model, scheduler, pilot_images, timesteps=torch.as_tensor(grid), generator=generator, model_kwargs=model_kwargs
    )
    mean_terms = out["terms"].double().mean(0).clamp_min(1e-12).log().cpu().numpy()
    log_q = np.interp(np.arange(1, T), grid, mean_terms)
    q = torch.from_numpy(np.exp(log_q - log_q.max()))
    q = q / q.sum()
    q = (1 - uniform_mix) * q + uniform_mix / (T - 1)
    return torch.cat([q.new_zeros(1), q]), len(grid) * pilot_images.shape[0]


def make_strata(proposal: torch.Tensor, num_strata: int) -> list[torch.Tensor]:
    """Split t = 1 … T − 1 into at most ``num_strata`` contiguous strata of about equal proposal mass."""
    T = len(proposal)
    cdf = torch.cumsum(proposal[1:].double(), 0) / proposal[1:].sum()
    cuts = torch.searchsorted(cdf, torch.arange(1, num_strata, dtype=torch.float64) / num_strata).tolist()
    edges = sorted(set([0] + [c + 1 for c in cuts if 0 < c + 1 < T - 1] + [T - 1]))
    return [torch.arange(lo + 1, hi + 1) for lo, hi in zip(edges[:-1], edges[1:])]


@torch.no_grad()
def estimate_bpd(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    images: torch.Tensor,
    *,
    num_timesteps: int = 25,
    proposal: torch.Tensor | None = None,
    exact_draws: int = 1,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict:
    """Unbiased bits/dim with ``num_timesteps`` network evaluations per image, and a 95% confidence interval.

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` (see :func:`call_model`).
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule, target and variance.
        images (`torch.Tensor`): [N, C, H, W] in [−1, 1] on the 8-bit grid.
        num_timesteps (`int`, defaults to 25): K: the decoder L_0 plus K − 1 sampled timesteps (2 ≤ K ≤ T).
        proposal (`torch.Tensor`, *optional*): q over the T timesteps (from :func:`learn_proposal`); uniform
            over 1 … T − 1 when `None` (plain stratified sampling).
        exact_draws (`int`, defaults to 1): noise draws averaged in strata of a single timestep (the decoder and the
            heavy small-t terms, where t is exact and the noise draw is all the variance left).
        batch_size (`int`, defaults to 256): images per network call.
        generator (`torch.Generator`, *optional*): for t and ε.
        progress (`bool`, defaults to `True`): show a progress bar over the batches.
        model_kwargs (`dict`, *optional*): the conditioning of the N images, as the model's forward takes it (e.g.
            ``{"class_labels": y}``, ``{"encoder_hidden_states": h}``, ``{"added_cond_kwargs": {...}}``); split with
            the images by :func:`slice_model_kwargs` (tensors of first dimension N are sliced, nested dicts too).

    Returns:
        `dict` with ``per_image`` [N] (bits/dim), ``bpd`` (mean), ``stderr``, ``ci95`` ``(low, high)``,
        ``evaluations_per_image`` and ``num_strata``.
    """
    T = scheduler.config.num_train_timesteps
    if not 2 <= num_timesteps <= T:
        raise ValueError(f"--num_bpd_timesteps must be between 2 and T = {T}, got {num_timesteps}")
    if exact_draws < 1:
        raise ValueError(f"--bpd_exact_draws must be >= 1, got {exact_draws}")
    if proposal is None:
        proposal = torch.cat([torch.zeros(1), torch.full((T - 1,), 1.0 / (T - 1))]).double()
    proposal = proposal.double().cpu()
    strata = make_strata(proposal, num_timesteps - 1)
    n = images.shape[0]
    estimate = torch.zeros(n, dtype=torch.float64)
    steps = [torch.zeros(1, dtype=torch.long)] + strata  # stratum 0 is the decoder alone, evaluated exactly
    calls = 0
    for start in tqdm(range(0, n, batch_size), desc="fast bits/dim", disable=not progress):
        x0 = images[start : start + batch_size]
        kwargs = slice_model_kwargs(model_kwargs, slice(start, start + batch_size), n)
        m = x0.shape[0]
        total = scheduler.prior_bpd(x0).double().cpu()
        for stratum in steps:
            if len(stratum) == 1:  # t is exact here: only the noise draw varies, so average `exact_draws` of them
                t, scale, draws = stratum.expand(m), torch.ones(m, dtype=torch.float64), exact_draws
            else:  # one t per image, ∝ q inside the stratum, weighted Q_k / q_t
                q = proposal[stratum]
                pick = torch.multinomial(q / q.sum(), m, replacement=True, generator=_cpu(generator))
                t, scale, draws = stratum[pick], q.sum() / q[pick], 1
            t_dev = t.to(x0.device)
            for _ in range(draws):
                noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
                xt = scheduler.add_noise(x0, noise, t_dev)
                out = call_model(model, xt, t_dev, kwargs)
                vb = scheduler.vlb_terms(out, x0, xt, t_dev)["vb"].double().cpu()
                total += vb * scale / draws
            calls += draws
        estimate[start : start + m] = total
    mean = float(estimate.mean())
    stderr = float(estimate.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "per_image": estimate,
        "bpd": mean,
        "stderr": stderr,
        "ci95": (mean - 1.96 * stderr, mean + 1.96 * stderr),
        "evaluations_per_image": calls // math.ceil(n / batch_size),
        "num_strata": len(strata),
    }


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """Index draws happen on the CPU; a CUDA generator cannot drive them, so derive a CPU one from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    )
