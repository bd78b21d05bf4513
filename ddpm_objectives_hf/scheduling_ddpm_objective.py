"""`DDPMObjectiveScheduler`: diffusers' `DDPMScheduler` that also knows the training objective.

The module is a top-level module of the package and exposes ``SchedulerMixin`` so that a pipeline saved with this
scheduler reloads through ``DiffusionPipeline.from_pretrained`` (diffusers records plugin classes by module path).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler, DDPMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers looks it up here)
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

from .errors import ConfigError
from .likelihood import LOG2, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .options import NON_NEGATIVE, POSITIVE, POSITIVE_INT, Range, check_choice, check_range
from .weighting import WeightingFn, evaluate_weighting, weighting_name

logger = logging.get_logger(__name__)

PredictionType = Literal["epsilon", "sample", "v_prediction", "mean"]

# Each choice with its one-sentence description and formula (the model card and `--help` are built from these).
PREDICTION_TYPES: dict[str, str] = {
    "epsilon": "The network predicts the noise ε of x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε "
    "([Ho et al. 2020](https://arxiv.org/abs/2006.11239)).",
    "sample": "The network predicts the clean sample x0 of x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε.",
    "v_prediction": "The network predicts the velocity v = √ᾱ_t ε − √(1−ᾱ_t) x0 "
    "([Salimans & Ho 2022](https://arxiv.org/abs/2202.00512)).",
    "mean": "The network predicts the posterior mean μ̃_t(x_t, x0) = coef1 · x0 + coef2 · x_t of q(x_{t−1} | x_t, x0).",
}
LOSS_TYPES: dict[str, str] = {
    "mse": "The weighted regression loss w(t) · ‖ε − ε̂‖², in ε-units for every target.",
    "kl": "The true variational bound term T · L_t in bits/dim: KL(q(x_{t−1} | x_t, x0) ‖ p_θ(x_{t−1} | x_t)) for t > 0, "
    "the discretized Gaussian decoder NLL −log p_θ(x0 | x_1) at t = 0.",
    "hybrid": "L_simple + λ · T · L_t with the mean detached in L_t, which trains the learned variance "
    "([Nichol & Dhariwal 2021](https://arxiv.org/abs/2102.09672)).",
}
VARIANCE_TYPES: dict[str, str] = {
    "fixed_small": "A fixed reverse variance σ_t² = β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), the posterior variance.",
    "fixed_small_log": "σ_t² = β̃_t as `fixed_small`, taken through log β̃_t (diffusers' name from "
    "[Janner et al. 2022](https://arxiv.org/abs/2205.09991)).",
    "fixed_large": "A fixed reverse variance σ_t² = β_t.",
    "fixed_large_log": "σ_t² = β_t as `fixed_large`, taken through log β_t (GLIDE's `max_log`).",
    "learned": "A learned reverse variance: the extra output channels are σ_t² itself, as diffusers' `DDPMScheduler` "
    "reads them (floored at 1e-20).",
    "learned_range": "A learned reverse variance log σ_t² = f log β_t + (1 − f) log β̃_t, f = (v + 1)/2 from extra "
    "output channels ([Nichol & Dhariwal 2021](https://arxiv.org/abs/2102.09672)).",
}
# Variance types whose σ² comes from extra output channels (out_channels = 2 × in_channels), and those equal to β_t.
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
LARGE_VARIANCE_TYPES = ("fixed_large", "fixed_large_log")
# The floor of a variance before its log (as diffusers' `_get_variance`).
_VARIANCE_FLOOR = 1e-20


# Bounds of numeric options, carried by their annotation and checked by `DDPMObjectiveScheduler.check_options`
Positive = Annotated[float, POSITIVE]
NonNegative = Annotated[float, NON_NEGATIVE]
PositiveInt = Annotated[int, POSITIVE_INT]

# The beta schedules built from `beta_start` and `beta_end` (`squaredcos_cap_v2` and `laplace` are not).
_BETA_RANGE_SCHEDULES = ("linear", "scaled_linear", "sigmoid")

# SNR substituted for 0 (zero terminal SNR) when a weighting is turned into x0-units: w(δ)·δ is the limit SNR → 0.
_SNR_FLOOR = 1e-300


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector [N] to broadcast against ``like`` [N, ...]."""
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


class DDPMObjectiveScheduler(DDPMScheduler):
    """A `DDPMScheduler` that carries the DDPM training objective: target, loss weighting, VLB and hybrid losses.

    Sampling (`set_timesteps`, `step`, `add_noise`, `DDPMPipeline`) works as in diffusers, for the four targets.
    Training uses :meth:`training_loss`; the variational bound uses :meth:`vlb_terms` and
    :func:`ddpm_objectives_hf.variational_bound`. Every per-timestep quantity of the derivation is exposed
    (:meth:`snr`, :meth:`posterior_mean`, :meth:`loss_weight`, ...), computed once in float64.

    The ``__init__`` signature declares every option once: its type (a ``Literal`` lists the valid values, `Positive`
    and friends bound a number, both checked by :meth:`check_options`), its default, and here its documentation. From
    it come the config, the training flags (``--`` + the name, help from this block) and the keys of
    ``objective.json`` (the options that `DDPMScheduler` does not have). A weighting's keyword arguments are looked
    up among the options by name, so a weighting with a new parameter is its function in
    :mod:`~ddpm_objectives_hf.weighting` plus one keyword here, with its line below.

    Args (beyond `DDPMScheduler`'s, which keep their meaning and defaults):
        prediction_type (`"epsilon"`, `"sample"`, `"v_prediction"` or `"mean"`, defaults to `"epsilon"`):
            What the network predicts: the noise ε, the clean sample x0, the velocity ``v = √ᾱ ε − √(1−ᾱ) x0``
            ([Salimans & Ho 2022](https://arxiv.org/abs/2202.00512)) or the posterior mean μ̃ of
            q(x_{t−1} | x_t, x0) (improved-diffusion's ``PREVIOUS_X``).
        variance_type (`"fixed_small"`, `"fixed_small_log"`, `"fixed_large"`, `"fixed_large_log"`, `"learned"` or
            `"learned_range"`, defaults to `"fixed_small"`):
            Reverse-step variance σ_t²: β̃_t (`fixed_small`, and `fixed_small_log` which diffusers computes through
            its log), β_t (`fixed_large`, and GLIDE's `fixed_large_log`), or from extra output channels
            (``out_channels = 2 * in_channels``): `learned_range` interpolates log σ² between log β̃_t and log β_t
            ([Nichol & Dhariwal 2021](https://arxiv.org/abs/2102.09672)); `learned` reads the channels as σ² itself,
            floored at 1e-20. `learned` follows diffusers' `DDPMScheduler.step` (σ = √v), not improved-diffusion's
            ``LEARNED`` (v = log σ²), so that a model saved with diffusers' scheduler means the same here; to train
            a variance from scratch prefer `learned_range`, whose output is bounded between the two fixed ones. With
            the `mse` loss a learned variance stays out of the loss (the mean is trained, the variance channels are
            left as they are, as diffusers' DeepFloyd IF fine-tuning does).
        loss_type (`"mse"`, `"kl"` or `"hybrid"`, defaults to `"mse"`):
            `mse`: the weighted target MSE. `kl`: the true VLB term (KL for t > 0, decoder NLL at t = 0, in bits/dim,
            scaled by T like improved-diffusion's ``RESCALED_KL``). `hybrid`: the weighted MSE plus
            ``hybrid_lambda · T · L_t`` with the mean detached, for `learned_range` variance.
        loss_weighting (`str` or callable, defaults to `"simple"`):
            A weighting of :data:`~ddpm_objectives_hf.weighting.WEIGHTINGS` (built in: `simple`, `vlb`, `snr`,
            `truncated_snr`, `min_snr`, `soft_min_snr`, `p2`, `edm`, `debiased`, `sigmoid`; add one with
            :func:`~ddpm_objectives_hf.weighting.register_weighting`), or a callable ``w(snr) -> weight``. Weights
            are in ε-units: the loss is ``w(t) · mean‖ε − ε̂‖²`` for every target.
        snr_gamma (`float` > 0, defaults to 5.0): γ of `min_snr` and `soft_min_snr`.
        p2_k (`float` > 0, defaults to 1.0): k of `p2`.
        p2_gamma (`float` > 0, defaults to 1.0): γ of `p2`.
        sigma_data (`float` > 0, defaults to 0.5): σ_data of `edm`.
        sigmoid_bias (`float`, defaults to 0.0): bias b of `sigmoid`.
        hybrid_lambda (`float` >= 0, defaults to 0.001): λ of the hybrid loss.

    Every `DDPMScheduler` config loads (``from_config`` in both directions) with the same meaning. The differences
    from `DDPMScheduler`, all tested against it:

    - `step` computes the posterior of the (respaced) step in float64, from a float64 ᾱ table: diffusers' float32
      ``alphas_cumprod`` (what `add_noise` uses) where it is a normal float32, the float64 product of the same β_t
      where the float32 product underflows (a linear 0.01 → 0.2 schedule: ᾱ ≈ 1e-46), so the tables, weights and
      steps stay finite there;
    - `step` adds no noise on the last step of a respaced schedule (improved-diffusion's ``p_sample``), where
      `DDPMScheduler` adds noise whenever that step's t > 0 (e.g. ``steps_offset=1``);
    - `fixed_large_log` samples with σ² = β_t (`DDPMScheduler.step` takes √(log β_t) there, which is NaN), and a
      negative `learned` variance is floored at 1e-20 (diffusers: NaN);
    - configs whose mathematics breaks are refused with the cause: β_t outside (0, 1], or ᾱ_t reaching 0 before the
      last step (nothing of x0 is left from there on, so the later posteriors are undefined).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"] = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: Literal[
            "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"
        ] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        loss_type: Literal["mse", "kl", "hybrid"] = "mse",
        loss_weighting: str | WeightingFn = "simple",
        snr_gamma: Positive = 5.0,
        p2_k: Positive = 1.0,
        p2_gamma: Positive = 1.0,
        sigma_data: Positive = 0.5,
        sigmoid_bias: float = 0.0,
        hybrid_lambda: NonNegative = 0.001,
    ):
        # every option of this class (a subclass's too: the config holds all of them before __init__ runs)
        self.check_options(self.config)
        name = weighting_name(loss_weighting)
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            variance_type=variance_type,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        self.register_to_config(loss_weighting=name)  # a callable is stored by its registered name
        self.alphas_cumprod64 = _alphas_cumprod_float64(self.betas, self.alphas_cumprod)
        self._build_tables()
        self._device_tables: dict[tuple, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ the options (the __init__ signature)
    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The keywords of ``cls.__init__`` in signature order: the config keys."""
        return tuple(_option_hints(cls))

    @classmethod
    def objective_option_names(cls) -> tuple[str, ...]:
        """The options diffusers' `DDPMScheduler` does not have (loss type, weighting and its parameters, ...):
        ``option_names()`` minus `DDPMScheduler`'s, what ``objective.json`` keeps beside a saved pipeline."""
        inherited = set(_option_hints(DDPMScheduler))
        return tuple(name for name in cls.option_names() if name not in inherited)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise a `ConfigError` (a `ValueError`) naming the first invalid option of ``options``.

        Each option present is checked against its annotation in ``cls.__init__``: a ``Literal`` lists the valid
        values; an ``int`` or ``float`` must be a finite number of that kind, within its `Range` if annotated with
        one (`Positive`, `NonNegative`, `PositiveInt`). Then the rules between options: ``0 < beta_start <=
        beta_end < 1`` for the schedules built from them; `hybrid` needs a learned variance (`learned_range` or
        `learned`). (A learned variance with the `mse` loss is valid: the variance channels stay out of the loss.)
        """
        trained_betas = options.get("trained_betas") is not None
        for name, hint in _option_hints(cls, extras=True).items():
            if name not in options or (name == "beta_schedule" and trained_betas):  # trained betas: no schedule
                continue
            value = options[name]
            kind, bounds = (get_args(hint)[0], get_args(hint)[1:]) if get_origin(hint) is Annotated else (hint, ())
            if get_origin(kind) is Literal:
                check_choice(name, value, get_args(kind))
            elif kind in (int, float):
                ranges = [b for b in bounds if isinstance(b, Range)]
                check_range(name, value, ranges[0] if ranges else Range(integer=kind is int))
        schedule = options.get("beta_schedule", "linear")
        if not trained_betas and schedule in _BETA_RANGE_SCHEDULES and {"beta_start", "beta_end"} <= set(options):
            start, end = options["beta_start"], options["beta_end"]
            if not 0 < start <= end < 1:
                parameter = "beta_start" if not 0 < start < 1 else "beta_end"
                raise ConfigError(
                    f"{parameter}: beta_schedule={schedule!r} needs 0 < beta_start <= beta_end < 1, got "
                    f"beta_start={start!r}, beta_end={end!r}",
                    parameter=parameter,
                )
        loss_type, variance_type = options.get("loss_type", "mse"), options.get("variance_type", "fixed_small")
        if loss_type == "hybrid" and variance_type not in LEARNED_VARIANCE_TYPES:
            raise ConfigError(
                f"loss_type='hybrid' trains a learned variance: it needs variance_type 'learned_range' or 'learned', "
                f"got {variance_type!r}",
                parameter="loss_type",
            )

    @classmethod
    def with_learned_variance(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` for a model that learns its variance: ``variance_type="learned_range"`` (a `learned` one is
        kept), and the hybrid loss ``L_simple + λ · T · L_t`` ([Nichol & Dhariwal 2021](https://arxiv.org/abs/2102.09672))
        where the loss type is `mse` or not given (the MSE alone leaves the variance channels untrained); `kl` and
        `hybrid` are kept."""
        learned = options.get("variance_type") if options.get("variance_type") in LEARNED_VARIANCE_TYPES else None
        options = {**options, "variance_type": learned or "learned_range"}
        if options.get("loss_type", "mse") == "mse":
            options["loss_type"] = "hybrid"
        return options

    @property
    def learned_variance(self) -> bool:
        """Whether σ_t² comes from the model's extra output channels (``out_channels = 2 × in_channels``)."""
        return self.config.variance_type in LEARNED_VARIANCE_TYPES

    # ------------------------------------------------------------------ per-timestep tables (float64, length T)
    def _build_tables(self) -> None:
        """Everything the objective needs per training timestep, computed once in float64.

        The schedule is diffusers' own ``alphas_cumprod`` (the ᾱ_t that `add_noise` and `step` use); every derived
        quantity (β_t = 1 − ᾱ_t/ᾱ_{t−1}, SNR, posterior, weights) is computed from it in float64, so the objective
        is exact for the forward process the model is trained on (at small t, 1 − ᾱ_t from a float32 cumprod
        differs from the float64 one by ~1e-4 relative, which the KL terms would otherwise feel). Where the float32
        product underflows, ᾱ_t is the float64 product (:attr:`alphas_cumprod64`).
        """
        ac = self.alphas_cumprod64
        _check_schedule(ac, self.betas, self.config)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        coef1, coef2, post_var, betas = _posterior_coefficients(ac, ac_prev)
        # β̃ at t = 0 is 0; the clipped log-variance reuses β̃ at t = 1 there (improved-diffusion).
        post_var_1 = post_var[1] if len(post_var) > 1 else betas[0]
        post_logvar_clipped = torch.log(torch.cat([post_var_1.reshape(1), post_var[1:]]))
        log_betas = torch.log(torch.cat([post_var_1.reshape(1), betas[1:]]))  # fixed_large, as improved-diffusion
        snr = ac / (1.0 - ac)
        t = {
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "snr": snr,
            "coef1": coef1,
            "coef2": coef2,
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_logvar_clipped,
            "log_betas": log_betas,
            "log_betas_raw": torch.log(betas),
        }
        fixed_logvar = log_betas if self.config.variance_type in LARGE_VARIANCE_TYPES else post_logvar_clipped
        t["model_log_variance_fixed"] = fixed_logvar
        self._tables = t

        # Loss weights: ε-units w(t), then the native units of every target (w · c_ε / c_target), exact at SNR = 0.
        T = len(snr)
        params = {k: self.config[k] for k in self.option_names()}  # a weighting's parameters are options by name

        def eps_weights(snr_floor: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
            """w_ε(t) with SNR = 0 read as ``snr_floor`` (also in the schedule's −d log SNR / dt)."""
            snr_eval = torch.where(snr > 0, snr, torch.full_like(snr, snr_floor))
            log_snr = torch.log(snr_eval)
            grid = np.arange(1, T + 1) / T
            neg_dlogsnr_dt = -torch.from_numpy(np.gradient(log_snr.numpy(), grid)) if T > 1 else log_snr
            schedule = {"coef1_sq": coef1**2, "model_variance": fixed_logvar.exp(), "neg_dlogsnr_dt": neg_dlogsnr_dt}
            w = evaluate_weighting(self.config.loss_weighting, snr_eval, params, schedule).double()
            return w, snr_eval, schedule

        # At SNR = 0 a weight is its limit SNR → 0, read off two tiny SNRs: the value where it settles, 0 where it
        # shrinks, inf where it grows (ε-units: simple and min-SNR settle, the VLB's λ_t, debiased and EDM diverge).
        w_eps, snr_eval, schedule = eps_weights(_SNR_FLOOR)
        w_eps_nearer, snr_nearer, _ = eps_weights(_SNR_FLOOR**0.5)

        def limit_at_zero_snr(w: torch.Tensor, w_nearer: torch.Tensor) -> torch.Tensor:
            settled = torch.isclose(w, w_nearer, rtol=1e-9, atol=0.0)
            limit = torch.where(w.abs() < w_nearer.abs(), torch.zeros_like(w), torch.full_like(w, math.inf))
            return torch.where((snr > 0) | settled, w, limit)

        w_x0 = limit_at_zero_snr((w_eps * snr_eval).nan_to_num(posinf=math.inf), w_eps_nearer * snr_nearer)
        # ε-prediction at SNR = 0 carries no x0 information (x_t = ε); like diffusers' min-SNR code, weight it by 1.
        eps_native = torch.where(snr > 0, w_eps, torch.ones_like(w_eps))
        self._weights = {
            "epsilon_units": limit_at_zero_snr(w_eps, w_eps_nearer),
            "epsilon": eps_native,
            "sample": w_x0,
            "v_prediction": w_x0 / (1.0 + snr),
            "mean": w_x0 / coef1**2,
        }
        vlb_eps = schedule["coef1_sq"] / (2 * schedule["model_variance"] * snr_eval)
        self._vlb_weight_eps = torch.where(snr > 0, vlb_eps, torch.full_like(vlb_eps, math.inf))
        bad = [k for k, v in self._weights.items() if k != "epsilon_units" and not torch.isfinite(v).all()]
        if bad or not torch.isfinite(w_eps[snr > 0]).all():
            raise ConfigError(
                f"loss_weighting={self.config.loss_weighting!r} gives non-finite weights for this schedule "
                f"(targets {bad or ['epsilon']}); check its parameters",
                parameter="loss_weighting",
            )

    def _table(self, name: str, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``table[name][t]`` on ``like``'s device and dtype, shaped to broadcast against it."""
        key = (like.device, like.dtype)
        cache = self._device_tables.get(key)
        if cache is None:
            cache = {k: v.to(device=like.device, dtype=like.dtype) for k, v in self._tables.items()}
            for k, v in self._weights.items():
                cache["weight_" + k] = v.to(device=like.device, dtype=like.dtype)
            self._device_tables[key] = cache
        return _bcast(cache[name][timesteps.to(like.device)], like)

    def _lookup(self, table: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        timesteps = torch.as_tensor(timesteps)
        return table.to(timesteps.device)[timesteps.long()]

    # ------------------------------------------------------------------ the quantities of the derivation
    def snr(self, timesteps: torch.Tensor | int) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t) (float64)."""
        return self._lookup(self._tables["snr"], timesteps)

    def log_snr(self, timesteps: torch.Tensor | int) -> torch.Tensor:
        """λ_t = log SNR(t) (−inf at zero terminal SNR)."""
        return torch.log(self.snr(timesteps))

    def posterior_mean_coefficients(self, timesteps: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(coef1, coef2)`` of μ̃ = coef1 · x0 + coef2 · x_t:
        coef1 = √ᾱ_{t−1} β_t / (1 − ᾱ_t), coef2 = √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)."""
        return self._lookup(self._tables["coef1"], timesteps), self._lookup(self._tables["coef2"], timesteps)

    def posterior_variance(self, timesteps: torch.Tensor | int) -> torch.Tensor:
        """β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (0 at t = 0)."""
        return self._lookup(self._tables["posterior_variance"], timesteps)

    def posterior_log_variance_clipped(self, timesteps: torch.Tensor | int) -> torch.Tensor:
        """log β̃_t, with β̃ at t = 1 used at t = 0 (improved-diffusion)."""
        return self._lookup(self._tables["posterior_log_variance_clipped"], timesteps)

    def posterior_mean(self, original_samples: torch.Tensor, noisy_samples: torch.Tensor, timesteps: torch.Tensor):
        """μ̃_t(x_t, x0) = coef1 · x0 + coef2 · x_t."""
        x0, xt = original_samples, noisy_samples
        return self._table("coef1", timesteps, x0) * x0 + self._table("coef2", timesteps, x0) * xt

    def model_log_variance(
        self, timesteps: torch.Tensor, like: torch.Tensor, variance_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log σ_t² of p_θ(x_{t−1} | x_t): fixed (β̃_t clipped or β_t), for `learned_range`
        ``f · log β_t + (1 − f) · log β̃_t`` with ``f = (v + 1) / 2``, for `learned` ``log max(v, 1e-20)``."""
        variance_type = self.config.variance_type
        if variance_type in LEARNED_VARIANCE_TYPES and variance_values is None:
            raise ValueError(f"variance_type={variance_type!r} needs the model's variance channels")
        if variance_type == "learned":
            return torch.log(variance_values.clamp(min=_VARIANCE_FLOOR))
        if variance_type == "learned_range":
            frac = (variance_values + 1) / 2
            min_log = self._table("posterior_log_variance_clipped", timesteps, like)
            max_log = self._table("log_betas_raw", timesteps, like)
            return frac * max_log + (1 - frac) * min_log
        return self._table("model_log_variance_fixed", timesteps, like).expand_as(like)

    # ------------------------------------------------------------------ targets and conversions
    def get_target(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, noisy_samples=None
    ) -> torch.Tensor:
        """The regression target of ``prediction_type`` for x0, ε at t (x_t needed for the `mean` target)."""
        return self.convert_prediction(
            noise,
            noisy_samples if noisy_samples is not None else self.add_noise(original_samples, noise, timesteps),
            timesteps,
            from_type="epsilon",
            original_samples=original_samples,
        )

    def convert_prediction(
        self,
        prediction: torch.Tensor,
        noisy_samples: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        from_type: PredictionType | None = None,
        to_type: PredictionType | None = None,
        original_samples: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Convert a prediction of one target into another, through the same x_t.

        With a = √ᾱ_t, s = √(1 − ᾱ_t): x_t = a x0 + s ε, v = a ε − s x0 (so ε = a v + s x_t, x0 = a x_t − s v),
        μ̃ = coef1 x0 + coef2 x_t. ``from_type`` defaults to the configured ``prediction_type``; ``to_type`` to
        ``prediction_type`` too. ``original_samples``, when known, is used as x0 directly (exact targets).
        """
        from_type = from_type or self.config.prediction_type
        to_type = to_type or self.config.prediction_type
        if from_type == to_type and from_type in PREDICTION_TYPES:
            return prediction
        xt = noisy_samples
        return convert_prediction(
            prediction,
            xt,
            a=self._table("sqrt_alphas_cumprod", timesteps, xt),
            s=self._table("sqrt_one_minus_alphas_cumprod", timesteps, xt),
            coef1=self._table("coef1", timesteps, xt),
            coef2=self._table("coef2", timesteps, xt),
            from_type=from_type,
            to_type=to_type,
            original_samples=original_samples,
        )

    def predict_original_sample(self, model_output, noisy_samples, timesteps, prediction_type=None):
        """x̂0 implied by a prediction."""
        return self.convert_prediction(
            model_output, noisy_samples, timesteps, from_type=prediction_type, to_type="sample"
        )

    def predict_noise(self, model_output, noisy_samples, timesteps, prediction_type=None):
        """ε̂ implied by a prediction."""
        return self.convert_prediction(
            model_output, noisy_samples, timesteps, from_type=prediction_type, to_type="epsilon"
        )

    def predict_velocity(self, model_output, noisy_samples, timesteps, prediction_type=None):
        """v̂ implied by a prediction."""
        return self.convert_prediction(
            model_output, noisy_samples, timesteps, from_type=prediction_type, to_type="v_prediction"
        )

    def predict_mean(self, model_output, noisy_samples, timesteps, prediction_type=None):
        """μ̂ implied by a prediction."""
        return self.convert_prediction(
            model_output, noisy_samples, timesteps, from_type=prediction_type, to_type="mean"
        )

    # ------------------------------------------------------------------ weighting
    def loss_weight(self, timesteps: torch.Tensor | int, units: PredictionType | None = None) -> torch.Tensor:
        """The configured weighting at t (float64): ε-units by default, or the native units of ``units``.

        In ε-units the loss is ``w · mean‖ε − ε̂‖²``; in the units of target T it is ``w_T · mean‖T − T̂‖²`` with
        ``w_T = w · c_ε / c_T``. At SNR = 0 (zero terminal SNR) the ε-units weight is the weighting's limit SNR → 0,
        ``inf`` where it diverges; the ε target uses 1 there (as diffusers' min-SNR code), the other targets the
        finite limit of their native weight.
        """
        return self._lookup(self._weights["epsilon_units" if units is None else units], timesteps)

    def vlb_weight(self, timesteps: torch.Tensor | int) -> torch.Tensor:
        """The ELBO's λ_t in ε-units for the model's fixed variance: ``L_{t−1} = λ_t · mean‖ε − ε̂‖²`` (nats/dim);
        ``inf`` where SNR = 0 (ε carries no x0 information there)."""
        return self._lookup(self._vlb_weight_eps, timesteps)

    def effective_weight(self, timesteps: torch.Tensor | int) -> torch.Tensor:
        """ε-units weight of the whole configured loss on the mean: the weighting for `mse` and `hybrid`,
        ``T · λ_t / ln 2`` (bits, rescaled like ``RESCALED_KL``) for `kl` (λ_t the VLB weight)."""
        if self.config.loss_type == "kl":
            return self.vlb_weight(timesteps) * self.config.num_train_timesteps / LOG2
        return self.loss_weight(timesteps)

    # ------------------------------------------------------------------ model output
    def split_model_output(self, model_output: torch.Tensor, sample: torch.Tensor):
        """``(prediction, variance_values)``: split off the variance channels of a learned-variance model."""
        channels = sample.shape[1]
        variance_type = self.config.variance_type
        if variance_type in LEARNED_VARIANCE_TYPES:
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"variance_type={variance_type!r} needs a model with out_channels = 2 * {channels} = "
                    f"{2 * channels} (prediction + variance), got {model_output.shape[1]} channels"
                )
            # one `split` (not two slices): when both parts get gradients, autograd joins them in one node instead
            # of zero-filling a full-size gradient per slice and adding the two
            prediction, variance_values = model_output.split(channels, dim=1)
            return prediction, variance_values
        if model_output.shape[1] != channels:
            raise ValueError(
                f"variance_type={self.config.variance_type!r} needs a model with out_channels = {channels}, got "
                f"{model_output.shape[1]} (use variance_type 'learned_range' or 'learned' for 2 * {channels})"
            )
        return model_output, None

    # ------------------------------------------------------------------ the variational bound
    def vlb_terms(
        self,
        model_output: torch.Tensor,
        original_samples: torch.Tensor,
        noisy_samples: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        clip_denoised: bool = False,
        detach_mean: bool = False,
    ) -> dict[str, torch.Tensor]:
        """The VLB term at t, per sample, in bits/dim: ``L_{t−1} = KL(q(x_{t−1}|x_t,x0) ‖ p_θ(x_{t−1}|x_t))`` for
        t > 0 and the decoder NLL ``L_0 = −log p_θ(x0|x_1)`` at t = 0 (diffusers' t = 0 is the papers' t = 1).

        Returns a dict with ``vb`` [N] and ``pred_xstart`` (x̂0), ``model_mean``, ``model_log_variance``.
        ``detach_mean`` stops the gradient through the mean (the hybrid loss trains only the variance with it).
        """
        prediction, variance_values = self.split_model_output(model_output, noisy_samples)
        return self._vlb_terms(
            prediction,
            variance_values,
            original_samples,
            noisy_samples,
            timesteps,
            clip_denoised=clip_denoised,
            detach_mean=detach_mean,
        )

    def _vlb_terms(
        self, prediction, variance_values, original_samples, noisy_samples, timesteps, *, clip_denoised, detach_mean
    ) -> dict[str, torch.Tensor]:
        """:meth:`vlb_terms` on a model output already split into prediction and variance channels."""
        if detach_mean:
            prediction = prediction.detach()
        x0, xt = original_samples, noisy_samples
        pred_x0 = self.predict_original_sample(prediction, xt, timesteps)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        if self.config.prediction_type == "mean" and not clip_denoised:
            model_mean = prediction
        else:
            model_mean = self.posterior_mean(pred_x0, xt, timesteps)
        fixed_variance = variance_values is None and self.config.variance_type not in LEARNED_VARIANCE_TYPES
        if fixed_variance:
            # a fixed variance is one number per sample: keep it [N, 1, ...] so that exp/log run on N values, not on
            # every element (broadcasting gives the same value per element); expanded only for the returned dict
            model_logvar = self._table("model_log_variance_fixed", timesteps, xt)
        else:
            model_logvar = self.model_log_variance(timesteps, xt, variance_values)
        true_mean = self.posterior_mean(x0, xt, timesteps)
        true_logvar = self._table("posterior_log_variance_clipped", timesteps, xt)
        kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / LOG2
        first = timesteps.to(kl.device) == 0

        def decoder_nll(rows=slice(None)):
            log_scales = 0.5 * model_logvar[rows]
            nll = discretized_gaussian_log_likelihood(x0[rows], means=model_mean[rows], log_scales=log_scales)
            return -mean_flat(nll) / LOG2

        n = kl.shape[0] if kl.ndim == 1 else -1
        same_batch = first.shape == (n,) and x0.shape[0] == model_mean.shape[0] == model_logvar.shape[0] == n
        if kl.device.type == "cpu" and same_batch:
            # On the CPU reading the mask costs no device synchronisation: evaluate the decoder NLL (4 log Φ over the
            # batch, the dearest part of the loss) only for the samples with t = 0 instead of for all and discarding.
            rows = first.nonzero().flatten()
            if len(rows) == 0:
                vb = kl
            elif len(rows) == len(first):
                vb = decoder_nll()
            else:
                vb = kl.index_put((rows,), decoder_nll(rows))
        else:
            vb = torch.where(first, decoder_nll(), kl)
        if fixed_variance:
            model_logvar = model_logvar.expand_as(xt)
        return {"vb": vb, "pred_xstart": pred_x0, "model_mean": model_mean, "model_log_variance": model_logvar}

    def prior_bpd(self, original_samples: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x0) ‖ N(0, I)) per sample, in bits/dim (no parameters)."""
        x0 = original_samples
        t = torch.full((x0.shape[0],), self.config.num_train_timesteps - 1, device=x0.device, dtype=torch.long)
        mean = self._table("sqrt_alphas_cumprod", t, x0) * x0
        logvar = torch.log(self._table("sqrt_one_minus_alphas_cumprod", t, x0) ** 2).expand_as(x0)
        return mean_flat(normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))) / LOG2

    # ------------------------------------------------------------------ training loss
    def training_loss(
        self,
        model_output: torch.Tensor,
        clean_images: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        noisy_images: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample loss of the configured objective and its named terms.

        - `mse`: ``w_T(t) · mean‖T − T̂‖²`` = ``w(t) · mean‖ε − ε̂‖²`` (``terms["mse"]`` is the unweighted
          target error).
        - `kl`: ``T · L_t`` in bits/dim (``terms["vb"]`` is L_t).
        - `hybrid`: ``w(t) · mse + λ · T · L_t`` where L_t sees a detached mean.

        Args:
            model_output (`torch.Tensor`): the network output at x_t (prediction, plus variance channels for
                `learned_range`).
            clean_images (`torch.Tensor`): x0 in [−1, 1].
            noise (`torch.Tensor`): the ε used to make x_t.
            timesteps (`torch.Tensor`): t per sample, in 0 … T − 1.
            noisy_images (`torch.Tensor`, *optional*): x_t; recomputed with `add_noise` when not given.

        Returns:
            `(loss, terms)`: ``loss`` [N], and ``terms`` a dict of [N] tensors (``mse``, ``vb``, ``weight``).
        """
        x0 = clean_images
        xt = noisy_images if noisy_images is not None else self.add_noise(x0, noise, timesteps)
        T = self.config.num_train_timesteps
        loss_type = self.config.loss_type
        # split the (upcast) output once: the mse and the VLB share the split, so its backward is one node
        prediction, variance_values = self.split_model_output(_upcast(model_output), x0)
        if loss_type == "mse" and variance_values is not None:
            _say_variance_untrained(self.config.variance_type)
        terms: dict[str, torch.Tensor] = {}
        if loss_type in ("mse", "hybrid"):
            target = self.get_target(x0, noise, timesteps, noisy_samples=xt)
            # the weight in the loss's (upcast) dtype: a bf16 weight table would carry 3 significant digits
            weight = self._table("weight_" + self.config.prediction_type, timesteps, prediction).flatten()
            terms["mse"] = mean_flat((prediction - _upcast(target)) ** 2)
            terms["weight"] = weight
            loss = weight * terms["mse"]
        if loss_type in ("kl", "hybrid"):
            vb = self._vlb_terms(
                prediction,
                variance_values,
                _upcast(x0),
                _upcast(xt),
                timesteps,
                clip_denoised=False,
                detach_mean=loss_type == "hybrid",
            )
            terms["vb"] = vb["vb"]
            if loss_type == "kl":
                loss = vb["vb"] * T
            else:
                loss = loss + self.config.hybrid_lambda * T * vb["vb"]
        terms["loss"] = loss
        return loss, terms

    # ------------------------------------------------------------------ sampling
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """One reverse step x_t → x_{t−1} (or to the previous inference timestep), for all four targets.

        As `DDPMScheduler.step`: the prediction is turned into x̂0 (clipped or thresholded as configured), then
        x_{t−1} ~ N(μ̃(x̂0, x_t), σ²) with the posterior of the (respaced) step and the configured variance.
        """
        t = int(timestep)
        prev_t = int(self.previous_timestep(t))
        prediction, predicted_variance = self.split_model_output(model_output, sample)

        # 1. x̂0 from the prediction (training-grid conversions: a `mean` prediction is μ̃ of t → t−1)
        t_vec = torch.full((sample.shape[0],), t, device=sample.device, dtype=torch.long)
        pred_original_sample = self.predict_original_sample(prediction, sample, t_vec)

        # 2. clip or threshold x̂0
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            pred_original_sample = pred_original_sample.clamp(
                -self.config.clip_sample_range, self.config.clip_sample_range
            )

        # 3. posterior q(x_prev | x_t, x̂0) of the (possibly respaced) step t → prev_t, in float64: with
        #    β = 1 − ᾱ_t/ᾱ_prev, μ̃ = coef1 x̂0 + coef2 x_t and β̃ = β (1 − ᾱ_prev)/(1 − ᾱ_t)
        alpha_prod_t = self.alphas_cumprod64[t]
        alpha_prod_prev = self.alphas_cumprod64[prev_t] if prev_t >= 0 else torch.ones((), dtype=torch.float64)
        coef1, coef2, posterior_variance, beta = _posterior_coefficients(alpha_prod_t, alpha_prod_prev)
        pred_prev_sample = coef1.to(sample.dtype) * pred_original_sample + coef2.to(sample.dtype) * sample

        # 4. x_prev = μ̃ + σ z, σ² of the configured variance from the same β and β̃ (no noise on the last step, as
        #    improved-diffusion's p_sample: its respaced index 0 is diffusers' prev_t < 0)
        if prev_t >= 0:
            noise = randn_tensor(
                model_output.shape[:1] + sample.shape[1:],
                generator=generator,
                device=sample.device,
                dtype=sample.dtype,
            )
            log_variance = self._step_log_variance(beta, posterior_variance, predicted_variance)
            pred_prev_sample = pred_prev_sample + torch.exp(0.5 * log_variance).to(sample) * noise

        if not return_dict:
            return (pred_prev_sample, pred_original_sample)
        return DDPMSchedulerOutput(prev_sample=pred_prev_sample, pred_original_sample=pred_original_sample)

    def _step_log_variance(self, beta, posterior_variance, predicted_variance):
        """log σ² of one (respaced) step in float64: log β̃ (`fixed_small`, `fixed_small_log`), log β (`fixed_large`,
        `fixed_large_log`), ``f · log β + (1 − f) · log β̃`` with ``f = (v + 1)/2`` (`learned_range`) or log v
        (`learned`); β̃ and v floored at 1e-20 as diffusers."""
        variance_type = self.config.variance_type
        log_beta = torch.log(beta)
        log_posterior = torch.log(posterior_variance.clamp(min=_VARIANCE_FLOOR))
        if variance_type in LARGE_VARIANCE_TYPES:
            return log_beta
        if variance_type == "learned":
            return torch.log(predicted_variance.double().clamp(min=_VARIANCE_FLOOR))
        if variance_type == "learned_range":
            frac = (predicted_variance.double() + 1) / 2
            return frac * log_beta + (1 - frac) * log_posterior
        return log_posterior


def convert_prediction(
    prediction: torch.Tensor,
    noisy_samples: torch.Tensor,
    *,
    a: torch.Tensor,
    s: torch.Tensor,
    coef1: torch.Tensor,
    coef2: torch.Tensor,
    from_type: PredictionType,
    to_type: PredictionType,
    original_samples: torch.Tensor | None = None,
) -> torch.Tensor:
    """Convert a prediction of one target into another at the noise level ``a = √ᾱ``, ``s = √(1 − ᾱ)``.

    x_t = a x0 + s ε, v = a ε − s x0 (so ε = a v + s x_t, x0 = a x_t − s v), μ̃ = coef1 x0 + coef2 x_t. The
    coefficients broadcast against x_t: the scheduler's tables at integer t, or a continuous noise level (the
    probability-flow ODE). ``original_samples``, when known, is used as x0 directly (exact targets).
    """
    check_choice("from_type", from_type, PREDICTION_TYPES)
    check_choice("to_type", to_type, PREDICTION_TYPES)
    if from_type == to_type:
        return prediction
    xt = noisy_samples
    if from_type == "epsilon":
        eps = prediction
        x0 = original_samples if original_samples is not None else (xt - s * eps) / a
    elif from_type == "v_prediction":
        x0, eps = a * xt - s * prediction, a * prediction + s * xt
    else:
        x0 = prediction if from_type == "sample" else (prediction - coef2 * xt) / coef1
        eps = (xt - a * x0) / s
    if to_type == "epsilon":
        return eps
    if to_type == "sample":
        return x0
    if to_type == "v_prediction":
        return a * eps - s * x0
    return coef1 * x0 + coef2 * xt


@functools.cache
def _say_variance_untrained(variance_type: str) -> None:
    logger.warning(
        f"variance_type={variance_type!r} with loss_type='mse': the mean is trained, the variance channels stay out of "
        "the loss (use loss_type 'hybrid' or 'kl' to train them)"
    )


def _alphas_cumprod_float64(betas: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """ᾱ_t in float64: diffusers' float32 ``alphas_cumprod`` (what `add_noise` uses) where it is a normal float32, and
    the float64 product of the same β_t where the float32 product has underflowed."""
    float32_table = alphas_cumprod.double()
    float64_product = torch.cumprod(1.0 - betas.double(), dim=0)
    return torch.where(float32_table >= torch.finfo(torch.float32).tiny, float32_table, float64_product)


def _check_schedule(alphas_cumprod: torch.Tensor, betas: torch.Tensor, config: Mapping[str, Any]) -> None:
    """Raise a `ConfigError` where the schedule's mathematics breaks: some β_t outside (0, 1], or ᾱ_t = 0 before the
    last step (x_t holds nothing of x0 from there on: the later steps' posteriors q(x_{t−1} | x_t, x0) are
    undefined). ᾱ_T = 0 (zero terminal SNR) is valid."""
    parameter = "trained_betas" if config.get("trained_betas") is not None else "beta_schedule"
    source = (
        "trained_betas"
        if parameter == "trained_betas"
        else f"the schedule ({', '.join(f'{k}={config.get(k)!r}' for k in ('beta_schedule', 'beta_start', 'beta_end'))})"
    )
    b = betas.double()
    bad = ~((b > 0) & (b <= 1))
    if bad.any():
        t = int(bad.nonzero()[0])
        raise ConfigError(f"{parameter}: {source} has β_{t} = {float(b[t])!r}; every β_t must be in (0, 1]",
                          parameter=parameter)  # fmt: skip
    early_zero = (alphas_cumprod[:-1] <= 0).nonzero()
    if len(early_zero):
        t = int(early_zero[0])
        raise ConfigError(
            f"{parameter}: {source} makes ᾱ_{t} = 0 before the last step t = {len(alphas_cumprod) - 1} (even in float64): "
            "nothing of x0 is left in x_t from there on, so the later steps' posteriors are undefined",
            parameter=parameter,
        )


def _posterior_coefficients(alphas_cumprod: torch.Tensor, alphas_cumprod_prev: torch.Tensor):
    """``(coef1, coef2, β̃, β)`` of q(x_{prev} | x_t, x0) for a step from ᾱ_t to ᾱ_prev, with β = 1 − ᾱ_t/ᾱ_prev."""
    ac, ac_prev = alphas_cumprod, alphas_cumprod_prev
    beta = 1.0 - ac / ac_prev
    coef1 = ac_prev.sqrt() * beta / (1.0 - ac)
    coef2 = (1.0 - beta).sqrt() * (1.0 - ac_prev) / (1.0 - ac)
    variance = beta * (1.0 - ac_prev) / (1.0 - ac)
    return coef1, coef2, variance, beta


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half precision to float32 for the loss; float32 and float64 are kept as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@functools.cache
def _option_hints(scheduler_class: type, extras: bool = False) -> dict[str, Any]:
    """``{name: annotation}`` of every keyword of ``scheduler_class.__init__``, in signature order (``extras``
    keeps ``Annotated`` metadata such as a `Range`; without it the plain type)."""
    init = scheduler_class.__init__
    hints = get_type_hints(init, include_extras=extras)
    parameters = list(inspect.signature(init).parameters.values())[1:]
    return {
        p.name: hints.get(p.name, Any)
        for p in parameters
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }
