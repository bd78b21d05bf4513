"""Bits/dim: the full variational bound over all T steps, and a fast unbiased estimator with K ≪ T steps.

The bound is ``prior + Σ_{t=0}^{T−1} L_t``. The fast estimator keeps the prior exact and estimates the sum by
stratified importance sampling: a proposal q_t ∝ the per-t terms' root mean square (learned from a short pilot on a
coarse grid of t) is cut into K strata of equal mass, each image draws one t per stratum by inverting q's CDF at a
jittered point (a heavy t spans several strata and is drawn several times), ``L_t / (K q_t)`` is unbiased for the
sum, and control variates regress each draw's noise out.
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
from .likelihood import LOG2
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


NUM_FEATURES = 6  # of control_variate_features; the Gaussian surrogate's term is one more
_MIN_CV_IMAGES = 2 * 5 * (NUM_FEATURES + 1)  # cross-fitting on two folds with ≥ 5 images per coefficient


class GaussianSurrogate:
    """The exact denoiser of a Gaussian N(μ, Σ) fitted to the images: a model whose VLB terms are known in closed
    form, run through the estimator beside the network as its control variate.

    ``ε̂(x_t) = s (a² Σ + s² I)⁻¹ (x_t − a μ)``, so ``x0 − x̂0 = (I − aA)(x0 − μ) − sAε`` with
    ``A = aΣ(a²Σ + s²I)⁻¹``; in Σ's eigenbasis (eigenvalues λ_i, coordinates z_i of x0 − μ) the expected KL term
    with the fixed variance β̃_t is

        E_ε L_t = κ_t / D · Σ_i [ (s² / (a²λ_i + s²))² z_i² + s² (aλ_i / (a²λ_i + s²))² ],
        κ_t = c1_t² / (2 β̃_t ln 2)   (bits),

    and the decoder's (t = 0) expectation is a Monte Carlo mean over ``draws`` draws of the surrogate alone. Σ is kept
    on its top ``rank`` eigenvectors, with the mean remaining eigenvalue on the rest. Where x_t is mostly noise a
    trained denoiser is close to this posterior mean, so the surrogate's term at the same (t, ε) moves with the
    network's, over t within a stratum and over ε.

    Args:
        images (`torch.Tensor`): [N, C, H, W], the images μ and Σ are fitted to (the surrogate depends on x0 only,
            never on the draws it corrects).
        scheduler ([`DDPMObjectiveScheduler`]): the schedule; the surrogate's terms are the ε-target VLB terms with
            the fixed variance β̃_t.
        rank (`int`, defaults to 256): eigenvectors of Σ kept.
        draws (`int`, defaults to 16): surrogate draws for the decoder's expectation.
    """

    def __init__(self, images: torch.Tensor, scheduler: DDPMObjectiveScheduler, rank: int = 256, draws: int = 16):
        flat = images.flatten(1).double().cpu()
        n, self.dims = flat.shape
        self.mean = flat.mean(0)
        centred = (flat - self.mean) / math.sqrt(max(n - 1, 1))
        _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
        keep = min(rank, len(singular), self.dims)
        self.basis, self.eigenvalues = vh[:keep].T, singular[:keep] ** 2  # [D, r], [r]
        others = self.dims - keep
        self.rest = max(float(centred.pow(2).sum() - self.eigenvalues.sum()), 0.0) / others if others else 0.0
        options = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        options.update(
            prediction_type="epsilon", variance_type="fixed_small", loss_type="mse", loss_weighting="simple"
        )
        self.scheduler = type(scheduler).from_config(options)
        self.ac = scheduler.alphas_cumprod64  # float64, finite where the float32 product underflows
        self.draws = draws

    def __call__(self, noisy_samples: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """ε̂ of the Gaussian at (x_t, t)."""
        t = timesteps.cpu()
        a, s = self.ac[t].sqrt()[:, None], (1 - self.ac[t]).sqrt()[:, None]
        r = noisy_samples.flatten(1).double().cpu() - a * self.mean
        along = r @ self.basis
        eps = (s * along / (a**2 * self.eigenvalues + s**2)) @ self.basis.T
        eps = eps + s * (r - along @ self.basis.T) / (a**2 * self.rest + s**2)
        return eps.reshape(noisy_samples.shape).to(noisy_samples)

    def term(self, original_samples, noise, timesteps) -> torch.Tensor:
        """The surrogate's VLB term (bits/dim) at (x0, ε, t), per sample."""
        xt = self.scheduler.add_noise(original_samples, noise, timesteps)
        return self.scheduler.vlb_terms(self(xt, timesteps), original_samples, xt, timesteps)["vb"].double().cpu()

    def expected_terms(self, original_samples: torch.Tensor, generator=None) -> torch.Tensor:
        """``E_ε L_t`` of the surrogate for every image and t, [N, T] (bits/dim)."""
        x0 = original_samples
        flat = x0.flatten(1).double().cpu() - self.mean
        z2 = (flat @ self.basis) ** 2  # [N, r]
        rest_z2 = (flat.pow(2).sum(1) - z2.sum(1)).clamp_min(0)[:, None]  # [N, 1]
        a2, s2 = self.ac[:, None], 1 - self.ac[:, None]  # [T, 1]
        lam = self.eigenvalues[None, :]
        shrink = s2 / (a2 * lam + s2)  # [T, r]
        gain2 = a2 * lam**2 / (a2 * lam + s2) ** 2
        rest_shrink = s2[:, 0] / (a2[:, 0] * self.rest + s2[:, 0])
        rest_gain2 = a2[:, 0] * self.rest**2 / (a2[:, 0] * self.rest + s2[:, 0]) ** 2
        others = self.dims - len(self.eigenvalues)
        squared_error = (
            z2 @ (shrink**2).T + rest_z2 * rest_shrink**2 + (s2[:, 0] * ((gain2).sum(1) + others * rest_gain2))
        )  # [N, T]: E‖x0 − x̂0‖²
        tables = self.scheduler._tables
        kappa = tables["coef1"] ** 2 / (2 * tables["model_log_variance_fixed"].exp()) / LOG2
        expected = squared_error * kappa / self.dims
        decoder = sum(
            self.term(x0, randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype),
                      torch.zeros(len(x0), dtype=torch.long, device=x0.device))
            for _ in range(self.draws)
        )  # fmt: skip
        expected[:, 0] = decoder / self.draws
        return expected


def control_variate_features(noise: torch.Tensor, original_samples: torch.Tensor) -> torch.Tensor:
    """Zero-mean functions of ε given x0, per sample [N, 6]: the means over dimensions of ``(ε² − 1) · x0ʲ`` and
    ``ε · x0ʲ`` for j = 0, 1, 2. A VLB term's dependence on its noise draw is largely explained by them (at t = 0 on
    the quick-start model they remove 4/5 of the draw's variance; docs/objective.md)."""
    eps, x0 = noise.flatten(1).double(), original_samples.flatten(1).double()
    powers = [torch.ones_like(x0), x0, x0**2]
    return torch.stack([((eps**2 - 1) * p).mean(1) for p in powers] + [(eps * p).mean(1) for p in powers], dim=1)


def _control_variate_corrections(values: torch.Tensor, features: torch.Tensor, folds: int = 2) -> torch.Tensor:
    """``γ_k · F_ik`` per image i and point k, with γ_k the least-squares slope of the values ``Y_·k`` [N, K] on the
    features ``F_·k`` [N, K, P] fitted on the other folds' images only (cross-fitting keeps Y − γ·F unbiased;
    :data:`_MIN_CV_IMAGES` is what the fits need)."""
    n = features.shape[0]
    corrections = torch.zeros_like(values)
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
    With ``control_variates``, each point's draw is regressed out: ``γ_k · F_k`` with the zero-mean features of
    :func:`control_variate_features` (of ε) and the error of the same point for a :class:`GaussianSurrogate` (its
    term at the same (t, ε) minus its exact expectation over the stratum: of t and ε), γ_k cross-fitted over the
    images (unbiased).

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` (see :func:`call_model`).
        scheduler ([`DDPMObjectiveScheduler`]): the model's schedule, target and variance.
        images (`torch.Tensor`): [N, C, H, W] in [−1, 1] on the 8-bit grid.
        num_timesteps (`int`, defaults to 18): K, the network calls per image (2 ≤ K ≤ T); with a pilot of 16
            images on 33 timesteps, ≤ 20 calls per image for 360 images and T = 1000.
        proposal (`torch.Tensor`, *optional*): q over the T timesteps (from :func:`learn_proposal`); when `None`,
            the decoder takes one stratum and the other K − 1 are uniform over 1 … T − 1.
        control_variates (`bool`, defaults to `True`): regress the noise draws out (used from 70 images on).
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
    features = torch.zeros(n, k, NUM_FEATURES + 1, dtype=torch.float64)
    u = (torch.arange(k, dtype=torch.float64) + torch.rand(n, k, dtype=torch.float64, generator=_cpu(generator))) / k
    t_points = torch.searchsorted(cdf, u * cdf[-1]).clamp(max=T - 1)  # [N, K]: one point per stratum and image
    surrogate = GaussianSurrogate(images, scheduler) if control_variates and n >= _MIN_CV_IMAGES else None
    # p_k(t) = K × the part of q_t's mass inside stratum k: the law of stratum k's point, [T, K]
    lower = torch.cat([cdf.new_zeros(1), cdf[:-1]])
    edges = torch.arange(k + 1, dtype=torch.float64) / k
    inside = torch.minimum(cdf[None], edges[1:, None]) - torch.maximum(lower[None], edges[:-1, None])
    point_law = (k * inside.clamp_min(0)).T
    for start in tqdm(range(0, n, batch_size), desc="fast bits/dim", disable=not progress):
        x0 = images[start : start + batch_size]
        kwargs = slice_model_kwargs(model_kwargs, slice(start, start + batch_size), n)
        m = x0.shape[0]
        rows = slice(start, start + m)
        prior[rows] = scheduler.prior_bpd(x0).double().cpu()
        if surrogate is not None:  # its expected point value per image and stratum: Σ_t p_k(t) E_ε L_t / (K q_t)
            expected = (surrogate.expected_terms(x0, generator) / (k * q)) @ point_law  # [m, K]
        for j in range(k):
            t = t_points[rows, j]
            t_dev = t.to(x0.device)
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            xt = scheduler.add_noise(x0, noise, t_dev)
            out = call_model(model, xt, t_dev, kwargs)
            vb = scheduler.vlb_terms(out, x0, xt, t_dev)["vb"].double().cpu()
            values[rows, j] = vb / (k * q[t])
            if surrogate is not None:
                features[rows, j, :NUM_FEATURES] = control_variate_features(noise, x0).cpu()
                features[rows, j, NUM_FEATURES] = surrogate.term(x0, noise, t_dev) / (k * q[t]) - expected[:, j]
    corrections = _control_variate_corrections(values, features) if surrogate is not None else torch.zeros_like(values)
    estimate = prior + (values - corrections).sum(1)
    return {
        "per_image": estimate,
        **mean_with_interval(estimate),
        "evaluations_per_image": k,
        "control_variates": surrogate is not None,
    }


def mean_with_interval(per_image: torch.Tensor) -> dict:
    """``bpd`` (the mean over images), its ``stderr`` and the normal 95% interval ``ci95 = bpd ± 1.96 stderr``."""
    values = per_image.double().cpu()
    mean = float(values.mean())
    stderr = float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"bpd": mean, "stderr": stderr, "ci95": (mean - 1.96 * stderr, mean + 1.96 * stderr)}


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """Index draws happen on the CPU; a CUDA generator cannot drive them, so derive a CPU one from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(
        int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    )
