"""`DDPMObjectiveScheduler.step` against improved-diffusion's `p_sample`, written out here from its formulas.

The reference is `SpacedDiffusion` (respaced β from the ᾱ of the timesteps used) + `GaussianDiffusion.p_mean_variance`
+ `p_sample` of openai/improved-diffusion, in numpy float64, fed the same model output and the same noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_objectives_hf import DDPMObjectiveScheduler


def _respaced(alphas_cumprod: np.ndarray, use_timesteps: list[int]) -> dict[str, np.ndarray]:
    """improved-diffusion's `SpacedDiffusion.__init__` then `GaussianDiffusion.__init__` on the new betas."""
    betas, last = [], 1.0
    for i in sorted(use_timesteps):
        betas.append(1.0 - alphas_cumprod[i] / last)
        last = alphas_cumprod[i]
    betas = np.array(betas, dtype=np.float64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "ac": ac,
        "sqrt_recip_ac": np.sqrt(1.0 / ac),
        "sqrt_recipm1_ac": np.sqrt(1.0 / ac - 1.0),
        "coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "logvar_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "logvar_large": np.log(np.append(post_var[1], betas[1:])),
    }


def _p_sample(d, i, x, out, noise, prediction_type, variance_type, clip):
    """improved-diffusion's `p_sample` at respaced index i (x, out, noise: float64 numpy)."""
    c = x.shape[1]
    if variance_type == "learned_range":
        out, var_values = out[:, :c], out[:, c:]
        frac = (var_values + 1) / 2
        log_variance = frac * np.log(d["betas"][i]) + (1 - frac) * d["logvar_clipped"][i]
    elif variance_type == "fixed_large":
        log_variance = d["logvar_large"][i]
    else:
        log_variance = d["logvar_clipped"][i]
    if prediction_type == "epsilon":
        x0 = d["sqrt_recip_ac"][i] * x - d["sqrt_recipm1_ac"][i] * out
    elif prediction_type == "sample":
        x0 = out
    else:  # v = √ᾱ ε − √(1−ᾱ) x0  ⇒  x0 = √ᾱ x_t − √(1−ᾱ) v (Salimans & Ho 2022)
        x0 = np.sqrt(d["ac"][i]) * x - np.sqrt(1.0 - d["ac"][i]) * out
    if clip:
        x0 = np.clip(x0, -1, 1)
    mean = d["coef1"][i] * x0 + d["coef2"][i] * x
    nonzero = float(i != 0)
    return mean + nonzero * np.exp(0.5 * log_variance) * noise


def _model(x: torch.Tensor, t: int, learned: bool) -> torch.Tensor:
    pred = 0.8 * torch.tanh(1.3 * x) + 0.05 * torch.sin(3.0 * x + t / 100.0)
    return torch.cat([pred, 0.9 * torch.tanh(x + t / 1000.0)], dim=1) if learned else pred


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("num_inference_steps", [None, 50, 7])
@pytest.mark.parametrize("timestep_spacing", ["leading", "trailing"])
def test_step_matches_improved_diffusion_p_sample(
    prediction_type, variance_type, num_inference_steps, timestep_spacing
):
    loss_type = "hybrid" if variance_type == "learned_range" else "mse"
    sched = DDPMObjectiveScheduler(
        prediction_type=prediction_type,
        variance_type=variance_type,
        loss_type=loss_type,
        beta_schedule="squaredcos_cap_v2",
        timestep_spacing=timestep_spacing,
    )
    if num_inference_steps is not None:
        sched.set_timesteps(num_inference_steps)
    timesteps = sched.timesteps.tolist()
    d = _respaced(sched.alphas_cumprod.double().numpy(), timesteps)
    index = {t: i for i, t in enumerate(sorted(timesteps))}
    learned = variance_type == "learned_range"
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen, ref_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    checked = timesteps if num_inference_steps is not None else timesteps[:40] + timesteps[-40:]
    for t in checked:
        out = _model(x, t, learned)
        got = sched.step(out, t, x, generator=gen).prev_sample
        i = index[t]
        noise = torch.randn(x.shape, generator=ref_gen, dtype=torch.float64) if i != 0 else torch.zeros_like(x)
        want = _p_sample(d, i, x.numpy(), out.numpy(), noise.numpy(), prediction_type, variance_type, clip=True)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
        x = got


def test_step_noise_scale_is_the_exact_posterior_variance():
    """σ_t of the step is √β̃_t from the float64 table (diffusers' float32 `_get_variance` is off by ~1e-4)."""
    sched = DDPMObjectiveScheduler()
    x = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    for t in (1, 2, 10, 500, 999):
        out = torch.zeros_like(x)
        mean = sched.step(out, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        # x_t = 0 and ε̂ = 0 give x̂0 = 0 and μ̃ = 0: the step is σ_t z exactly
        np.testing.assert_allclose(mean.numpy(), (sched.posterior_variance(t).sqrt() * noise).numpy(), rtol=1e-13)
