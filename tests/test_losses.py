"""Tests for the hybrid and KL losses and for `diffusion_loss` / `DiffusionLossMixin` on a diffusers UNet.

Expected values are computed here: targets, weights and Gaussian KLs in numpy/float64, the decoder with scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from reference import np_schedule
from scipy.stats import norm

from ddpm_objectives_hf import DDPMObjectiveScheduler, DiffusionLossMixin, ImportanceSampler, diffusion_loss

TARGETS = ("epsilon", "sample", "v_prediction", "mean")


def col(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    return values[t].reshape(-1, 1, 1, 1)


def exact_targets(ref, x0, eps, t):
    a, s = col(ref["a"], t), col(ref["s"], t)
    xt = a * x0 + s * eps
    return xt, {
        "epsilon": eps,
        "sample": x0,
        "v_prediction": a * eps - s * x0,
        "mean": col(ref["coef1"], t) * x0 + col(ref["coef2"], t) * xt,
    }


def c_target(ref, target, t):
    """‖T − T̂‖² = c_T ‖x0 − x̂0‖²."""
    snr = ref["snr"][t]
    return {
        "sample": np.ones_like(snr),
        "epsilon": snr,
        "v_prediction": 1 + snr,
        "mean": ref["ac_prev"][t] * ref["betas"][t] ** 2 / (1 - ref["ac"][t]) ** 2,
    }[target]


def numpy_vb_bits(ref, x0, xt, t, mu_hat, v):
    """L_{t−1} with the learned-range variance (KL, or the decoder NLL at t = 0), per sample, in bits/dim."""
    logvar_true = col(ref["logvar_clipped"], t)
    frac = (v + 1) / 2
    logvar = frac * col(np.log(ref["betas"]), t) + (1 - frac) * logvar_true
    mu = col(ref["coef1"], t) * x0 + col(ref["coef2"], t) * xt
    kl = 0.5 * (-1 + logvar - logvar_true + np.exp(logvar_true - logvar) + (mu - mu_hat) ** 2 / np.exp(logvar))
    nll = -log_bin_probability(x0, mu_hat, np.exp(0.5 * logvar))
    per_sample = np.where(t == 0, nll.mean(axis=(1, 2, 3)), kl.mean(axis=(1, 2, 3)))
    return per_sample / math.log(2)


def log_bin_probability(x, mean, scale):
    """log P(8-bit bin of x) under N(mean, scale²) with scipy's log-CDFs (edge bins open, no cancellation)."""
    lo, hi = (x - 1 / 255 - mean) / scale, (x + 1 / 255 - mean) / scale
    upper = lo > 0  # both ends above the mean: use the survival functions
    log_a = np.where(upper, norm.logsf(lo), norm.logcdf(hi))
    log_b = np.where(upper, norm.logsf(hi), norm.logcdf(lo))
    middle = log_a + np.log1p(-np.exp(log_b - log_a))
    return np.where(x < -0.999, norm.logcdf(hi), np.where(x > 0.999, norm.logsf(lo), middle))


def _batch(ref, t, seed, channels=2):
    rng = np.random.default_rng(seed)
    x0 = rng.integers(0, 256, size=(len(t), channels, 4, 4)) / 127.5 - 1.0
    eps = rng.standard_normal(x0.shape)
    xt, targets = exact_targets(ref, x0, eps, t)
    return rng, x0, eps, xt, targets


# ---------------------------------------------------------------------------------------------- hybrid
@pytest.mark.parametrize("prediction_type", TARGETS)
def test_hybrid_vlb_trains_only_the_variance(prediction_type):
    sched = DDPMObjectiveScheduler(
        num_train_timesteps=100, prediction_type=prediction_type, variance_type="learned_range", loss_type="hybrid"
    )
    ref = np_schedule(sched)
    t = np.array([0, 1, 5, 30, 60, 99])
    rng, x0, eps, xt, targets = _batch(ref, t, seed=0)
    pred = targets[prediction_type] + rng.normal(scale=0.05, size=x0.shape)
    v = np.tanh(rng.standard_normal(x0.shape))
    out = torch.from_numpy(np.concatenate([pred, v], axis=1)).requires_grad_(True)
    tt = torch.from_numpy(t)
    loss, terms = sched.training_loss(
        out, torch.from_numpy(x0), torch.from_numpy(eps), tt, noisy_images=torch.from_numpy(xt)
    )

    (grad_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert torch.count_nonzero(grad_vb[:, :2]) == 0  # the prediction channels get exactly no VLB gradient
    assert (grad_vb[:, 2:].abs().flatten(1).amax(1) > 0).all()  # every sample's variance channels do
    (grad_mse,) = torch.autograd.grad(terms["mse"].sum(), out, retain_graph=True)
    assert torch.count_nonzero(grad_mse[:, 2:]) == 0 and torch.count_nonzero(grad_mse[:, :2]) > 0

    # total = w_T · mse_T + λ T L_t, with L_simple's weight in the target's units (w_T = SNR / c_T)
    mse = ((pred - targets[prediction_type]) ** 2).mean(axis=(1, 2, 3))
    w = ref["snr"][t] / c_target(ref, prediction_type, t)
    w[ref["snr"][t] == 0] = 1.0
    pred_eps = (xt - col(ref["a"], t) * _x0_hat(ref, pred, xt, t, prediction_type)) / col(ref["s"], t)
    mu_hat = col(ref["coef1"], t) * _x0_hat(ref, pred, xt, t, prediction_type) + col(ref["coef2"], t) * xt
    vb = numpy_vb_bits(ref, x0, xt, t, mu_hat, v)
    np.testing.assert_allclose(terms["mse"].detach().numpy(), mse, rtol=1e-10)
    np.testing.assert_allclose(terms["weight"].numpy(), w, rtol=1e-10)
    np.testing.assert_allclose(terms["vb"].detach().numpy(), vb, rtol=1e-7)
    np.testing.assert_allclose(loss.detach().numpy(), w * mse + 0.001 * 100 * vb, rtol=1e-7)
    # in ε-units the mse part is L_simple: mean (ε − ε̂)²
    np.testing.assert_allclose(w * mse, ((eps - pred_eps) ** 2).mean(axis=(1, 2, 3)), rtol=1e-7)
    # the variance channels' gradient of the total is λ T ∂L_t
    (grad_total,) = torch.autograd.grad(loss.sum(), out)
    torch.testing.assert_close(grad_total[:, 2:], 0.1 * grad_vb[:, 2:])


def _x0_hat(ref, pred, xt, t, prediction_type):
    a, s = col(ref["a"], t), col(ref["s"], t)
    if prediction_type == "epsilon":
        return (xt - s * pred) / a
    if prediction_type == "sample":
        return pred
    if prediction_type == "v_prediction":
        return a * xt - s * pred
    return (pred - col(ref["coef2"], t) * xt) / col(ref["coef1"], t)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "mean"])
def test_kl_loss_is_T_times_the_vlb_term(variance_type, prediction_type):
    sched = DDPMObjectiveScheduler(
        num_train_timesteps=50, prediction_type=prediction_type, variance_type=variance_type, loss_type="kl"
    )
    ref = np_schedule(sched)
    t = np.array([0, 1, 10, 25, 49])
    rng, x0, eps, xt, targets = _batch(ref, t, seed=1)
    pred = targets[prediction_type] + rng.normal(scale=0.1, size=x0.shape)
    v = np.tanh(rng.standard_normal(x0.shape)) if variance_type == "learned_range" else None
    out_np = pred if v is None else np.concatenate([pred, v], axis=1)
    out = torch.from_numpy(out_np).requires_grad_(True)
    loss, terms = sched.training_loss(
        out, torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t), noisy_images=torch.from_numpy(xt)
    )
    torch.testing.assert_close(loss, 50 * terms["vb"])
    assert "mse" not in terms
    # the bound itself, in numpy (a fixed variance is the learned range at v = −1, i.e. the clipped β̃)
    mu_hat = col(ref["coef1"], t) * _x0_hat(ref, pred, xt, t, prediction_type) + col(ref["coef2"], t) * xt
    vb = numpy_vb_bits(ref, x0, xt, t, mu_hat, -np.ones_like(x0) if v is None else v)
    np.testing.assert_allclose(terms["vb"].detach().numpy(), vb, rtol=1e-7)
    # KL trains the mean as well
    (grad,) = torch.autograd.grad(loss.sum(), out)
    assert torch.count_nonzero(grad[:, :2]) > 0


# ---------------------------------------------------------------------------------------------- diffusers model
def _unet_kwargs(out_channels=1):
    return {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": out_channels,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 4,
    }


class Net(DiffusionLossMixin, UNet2DModel):
    pass


def test_mixin_on_unet_backward_and_outputs():
    torch.manual_seed(0)
    net = Net(**_unet_kwargs())
    sched = DDPMObjectiveScheduler(num_train_timesteps=100)
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = net.diffusion_loss(x0, sched, generator=torch.Generator().manual_seed(2))
    assert out.per_sample_loss.shape == (4,)
    assert out.timesteps.shape == (4,) and out.timesteps.dtype == torch.long
    assert ((out.timesteps >= 0) & (out.timesteps < 100)).all()
    assert torch.equal(out.sampler_weights, torch.ones(4))
    assert set(out.terms) >= {"mse", "weight", "loss"}
    torch.testing.assert_close(out.loss, out.per_sample_loss.mean())
    out.loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)

    # with given t and ε the per-sample loss is L_simple of the network's ε̂ at x_t made here
    net.zero_grad()
    t = torch.tensor([0, 17, 50, 99])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    ac = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    xt = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
    with torch.no_grad():
        eps_hat = net(xt, t).sample
        given = net.diffusion_loss(x0, sched, timesteps=t, noise=eps)
    torch.testing.assert_close(given.per_sample_loss, ((eps_hat - eps) ** 2).mean(dim=(1, 2, 3)))
    assert torch.equal(given.timesteps, t)


def test_diffusion_loss_with_importance_sampler_and_hybrid_unet():
    torch.manual_seed(0)
    net = Net(**_unet_kwargs(out_channels=2))
    sched = DDPMObjectiveScheduler(
        num_train_timesteps=20, variance_type="learned_range", loss_type="hybrid", prediction_type="v_prediction"
    )
    sampler = ImportanceSampler(20, history=2)
    for t in range(20):  # warm up with a loss that grows with t
        sampler.update(torch.tensor([t, t]), torch.tensor([1.0 + t, 1.0 + t]))
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = diffusion_loss(net, x0, sched, generator=torch.Generator().manual_seed(5), timestep_sampler=sampler)
    p = sampler.probabilities()
    torch.testing.assert_close(out.sampler_weights, (1.0 / (20 * p[out.timesteps])).float())
    torch.testing.assert_close(out.loss, (out.sampler_weights * out.per_sample_loss).mean())
    assert set(out.terms) >= {"mse", "vb", "weight"}
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
