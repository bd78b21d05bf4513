"""Loss weightings, each one function of the signal-to-noise ratio, stated in ε-units.

A weighting w turns the per-timestep error into the loss ``w(t) · mean‖ε − ε̂‖²``, where ε̂ is the noise implied by
the model output, whatever the network predicts. With ``SNR = ᾱ_t / (1 − ᾱ_t)`` the errors of the four targets are
proportional::

    ‖ε − ε̂‖² = SNR · ‖x0 − x̂0‖²,   ‖v − v̂‖² = (1 + SNR) · ‖x0 − x̂0‖²,   ‖μ̃ − μ̂‖² = coef1² · ‖x0 − x̂0‖²

so a weighting carries to another target by ``w_B = w_A · c_A / c_B`` (``c`` from that table). The scheduler turns
each weighting into a table over t once, in float64, for the configured target
(:meth:`DDPMObjectiveScheduler.loss_weight`).

Like k-diffusion's, a weighting here is just a function ``w(snr, **params) -> Tensor``; add your own with
:func:`register_weighting` or pass a callable as ``loss_weighting``. Its keyword arguments are looked up by name among
the scheduler's options (the keywords of ``DDPMObjectiveScheduler.__init__``, e.g. ``snr_gamma``) and the schedule
inputs (:data:`SCHEDULE_INPUTS`): a weighting with a new parameter needs that one keyword added to the scheduler.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from .errors import ConfigError

WeightingFn = Callable[..., torch.Tensor]

WEIGHTINGS: dict[str, WeightingFn] = {}


def register_weighting(name: str, fn: WeightingFn | None = None):
    """Register ``fn(snr, **params) -> ε-units weight`` under ``name`` (usable as a decorator)."""

    def wrap(f: WeightingFn) -> WeightingFn:
        WEIGHTINGS[name] = f
        return f

    return wrap(fn) if fn is not None else wrap


@register_weighting("simple")
def simple(snr: torch.Tensor) -> torch.Tensor:
    """L_simple of [Ho et al. 2020](https://arxiv.org/abs/2006.11239): ``w = 1`` (x0-units: SNR)."""
    return torch.ones_like(snr)


@register_weighting("snr")
def snr_weighting(snr: torch.Tensor) -> torch.Tensor:
    """SNR weighting: ``w = SNR`` (x0-units: SNR²)."""
    return snr.clone()


@register_weighting("truncated_snr")
def truncated_snr(snr: torch.Tensor) -> torch.Tensor:
    """Truncated SNR: ``w = max(1, 1/SNR)``, i.e. ``max(SNR, 1)`` in x0-units ([Salimans & Ho 2022](https://arxiv.org/abs/2202.00512))."""
    return torch.clamp(1.0 / snr, min=1.0)


@register_weighting("min_snr")
def min_snr(snr: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Min-SNR-γ: ``w = min(1, γ/SNR)``, i.e. ``min(SNR, γ)`` in x0-units ([Hang et al. 2023](https://arxiv.org/abs/2303.09556))."""
    return torch.clamp(snr_gamma / snr, max=1.0)


@register_weighting("soft_min_snr")
def soft_min_snr(snr: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Soft-min-SNR: ``w = γ / (SNR + γ)`` ([Crowson et al. 2024](https://arxiv.org/abs/2401.11605); k-diffusion: γ = σ_data⁻²)."""
    return snr_gamma / (snr + snr_gamma)


@register_weighting("p2")
def p2(snr: torch.Tensor, p2_k: float, p2_gamma: float) -> torch.Tensor:
    """Perception-prioritized weighting: ``w = 1 / (k + SNR)^γ`` ([Choi et al. 2022](https://arxiv.org/abs/2204.00227))."""
    return (p2_k + snr) ** (-p2_gamma)


@register_weighting("edm")
def edm(snr: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's λ(σ) = (σ² + σ_data²)/(σ σ_data)² with σ² = 1/SNR: ``w = 1 + 1/(σ_data² SNR)`` ([Karras et al. 2022](https://arxiv.org/abs/2206.00364))."""
    return 1.0 + 1.0 / (sigma_data**2 * snr)


@register_weighting("debiased")
def debiased(snr: torch.Tensor) -> torch.Tensor:
    """Debiased estimation: ``w = 1/√SNR`` ([Yu et al. 2024](https://arxiv.org/abs/2310.08442))."""
    return snr.rsqrt()


@register_weighting("sigmoid")
def sigmoid(snr: torch.Tensor, sigmoid_bias: float, neg_dlogsnr_dt: torch.Tensor) -> torch.Tensor:
    """Sigmoid weighting of the log-SNR λ = log SNR: ``w = ½ sigmoid(b − λ) (−dλ/dt)`` ([Kingma & Gao 2023](https://arxiv.org/abs/2303.00848)).

    This is the weighting ``sigmoid(b − λ)`` of the paper applied under uniform t; ``−dλ/dt`` is the schedule's, on
    t ∈ (0, 1].
    """
    return 0.5 * torch.sigmoid(sigmoid_bias - torch.log(snr)) * neg_dlogsnr_dt


@register_weighting("vlb")
def vlb(snr: torch.Tensor, coef1_sq: torch.Tensor, model_variance: torch.Tensor) -> torch.Tensor:
    """The ELBO's λ_t = β_t² / (2 σ_t² α_t (1 − ᾱ_t)) ([Ho et al. 2020](https://arxiv.org/abs/2006.11239), eq. 12).

    Written as ``coef1² / (2 σ_t² SNR)`` with ``coef1 = √ᾱ_{t−1} β_t / (1 − ᾱ_t)`` so that it holds at t = 0 too
    (where σ_0² is the clipped variance). With σ_t² = β̃_t it is ``½ (SNR(t−1) − SNR(t)) / SNR(t)``.
    """
    return coef1_sq / (2.0 * model_variance * snr)


# Per-timestep tensors of the schedule a weighting may ask for by name (its other keywords are scheduler options).
SCHEDULE_INPUTS = ("coef1_sq", "model_variance", "neg_dlogsnr_dt")


def weighting_parameters(name: str) -> tuple[str, ...]:
    """The scheduler options the weighting ``name`` takes: its keyword arguments other than the schedule inputs
    (``("snr_gamma",)`` for `min_snr`, ``()`` for `simple`)."""
    return tuple(arg for arg in list(inspect.signature(WEIGHTINGS[name]).parameters)[1:] if arg not in SCHEDULE_INPUTS)


def weighting_name(weighting: str | WeightingFn) -> str:
    """The registered name of a weighting (registering a callable under its ``__name__`` if needed)."""
    if callable(weighting):
        name = getattr(weighting, "__name__", "custom")
        if WEIGHTINGS.get(name) is not weighting:
            name = name if name not in WEIGHTINGS else f"custom_{name}"
            register_weighting(name, weighting)
        return name
    if weighting not in WEIGHTINGS:
        raise ConfigError(
            f"loss_weighting={weighting!r} is not known; valid values: {', '.join(sorted(WEIGHTINGS))}, "
            "or a callable of the SNR (see ddpm_objectives_hf.weighting.register_weighting).",
            parameter="loss_weighting",
        )
    return weighting


def evaluate_weighting(name: str, snr: torch.Tensor, params: dict, schedule: dict) -> torch.Tensor:
    """Call the weighting ``name`` on ``snr`` with the keyword arguments its signature asks for.

    Args:
        name (`str`): a registered weighting.
        snr (`torch.Tensor`): SNR per timestep.
        params (`dict`): the scheduler's options by name (its config: ``snr_gamma``, ``p2_k``, ...).
        schedule (`dict`): per-timestep schedule tensors a weighting may ask for (``coef1_sq``, ``model_variance``,
            ``neg_dlogsnr_dt``).
    """
    fn = WEIGHTINGS[name]
    kwargs = {}
    for arg in list(inspect.signature(fn).parameters)[1:]:
        if arg in params:
            kwargs[arg] = params[arg]
        elif arg in schedule:
            kwargs[arg] = schedule[arg]
        else:
            raise ConfigError(
                f"loss_weighting={name!r} asks for {arg!r}, which is neither a scheduler option (add the keyword "
                f"{arg!r} to the scheduler's __init__) nor a schedule input ({', '.join(SCHEDULE_INPUTS)}).",
                parameter="loss_weighting",
            )
    return fn(snr, **kwargs)
