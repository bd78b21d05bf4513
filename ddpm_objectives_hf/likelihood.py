"""Gaussian KL divergence and the discretized Gaussian decoder of the variational bound.

Conventions follow [improved-diffusion](https://github.com/openai/improved-diffusion/blob/main/improved_diffusion/losses.py):
values are per element in nats; :func:`mean_flat` averages over all but the batch dimension, and
``nats / ln 2`` gives bits per dimension.
"""

from __future__ import annotations

import math

import torch

LOG2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (per-sample, per-dimension average)."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) per element, in nats:

    ``½ (−1 + log σ₂² − log σ₁² + σ₁²/σ₂² + (μ₁ − μ₂)²/σ₂²)``.
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def log_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """log Φ(x), the exact standard normal log-CDF (stable in both tails; not the tanh approximation)."""
    return torch.special.log_ndtr(x)


def _log_sub_exp(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """log(e^a − e^b) for a ≥ b, without cancellation."""
    diff = torch.clamp(log_b - log_a, max=0.0)
    return log_a + torch.log(torch.clamp(-torch.expm1(diff), min=torch.finfo(log_a.dtype).tiny))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor, num_bins: int = 256
) -> torch.Tensor:
    """log p(x) of data in [−1, 1] quantised to ``num_bins`` levels under a Gaussian, per element, in nats.

    Each level owns the interval ``x ± 1/(num_bins − 1)``; the two edge levels extend to ±∞, so the
    probabilities of all levels sum to one. ``log(Φ(b) − Φ(a))`` is evaluated in log space on the tail where it
    does not cancel (reflected, ``Φ(−a) − Φ(−b)``, when both ends are positive).

    Args:
        x (`torch.Tensor`): data on the grid ``−1 + 2k/(num_bins − 1)``.
        means (`torch.Tensor`): Gaussian means, broadcastable to ``x``.
        log_scales (`torch.Tensor`): log standard deviations, broadcastable to ``x``.
        num_bins (`int`, defaults to 256): quantisation levels (8-bit data: 256).
    """
    half_bin = 1.0 / (num_bins - 1)
    inv_stdv = torch.exp(-log_scales)
    centered = x - means
    upper = inv_stdv * (centered + half_bin)
    lower = inv_stdv * (centered - half_bin)
    log_cdf_upper = log_normal_cdf(upper)  # log Φ(b): the bin's mass below its top
    log_sf_lower = log_normal_cdf(-lower)  # log(1 − Φ(a)): the mass above its bottom
    middle = torch.where(
        lower > 0,
        _log_sub_exp(log_sf_lower, log_normal_cdf(-upper)),
        _log_sub_exp(log_cdf_upper, log_normal_cdf(lower)),
    )
    edge = 1.0 - half_bin / 2  # halfway between the edge level and its neighbour
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, middle))
