"""Tests for the likelihood pieces (`normal_kl`, the discretized Gaussian decoder) and `variational_bound`.

Expected values come from torch.distributions, scipy.stats.norm and closed forms in numpy/float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import np_schedule
from scipy.stats import norm

from ddpm_objectives_hf import (
    DDPMObjectiveScheduler,
    discretized_gaussian_log_likelihood,
    normal_kl,
    variational_bound,
)

TARGETS = ("epsilon", "sample", "v_prediction", "mean")
BINS = torch.linspace(-1, 1, 256, dtype=torch.float64)


def reference_bin_probability(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """P(bin of x) under N(mean, scale²) with scipy, the edge bins open (on the tail that does not cancel)."""
    lo, hi = x - 1 / 255, x + 1 / 255
    upper_tail = lo > mean
    middle = np.where(
        upper_tail,
        norm.sf(lo, mean, scale) - norm.sf(hi, mean, scale),
        norm.cdf(hi, mean, scale) - norm.cdf(lo, mean, scale),
    )
    return np.where(x < -0.999, norm.cdf(hi, mean, scale), np.where(x > 0.999, norm.sf(lo, mean, scale), middle))


def reference_log_bin_probability(x: np.ndarray, mean, scale) -> np.ndarray:
    """log P(bin of x) with scipy's log-CDFs, on the tail where the difference does not cancel."""
    lo, hi = (x - 1 / 255 - mean) / scale, (x + 1 / 255 - mean) / scale
    upper = lo > 0
    log_a = np.where(upper, norm.logsf(lo), norm.logcdf(hi))
    log_b = np.where(upper, norm.logsf(hi), norm.logcdf(lo))
    middle = log_a + np.log1p(-np.exp(log_b - log_a))
    return np.where(x < -0.999, norm.logcdf(hi), np.where(x > 0.999, norm.logsf(lo), middle))


# ---------------------------------------------------------------------------------------------- normal_kl
def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64) * 3, torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64) * 4, torch.randn(50, generator=g, dtype=torch.float64)
    ours = normal_kl(m1, lv1, m2, lv2)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)), torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    )
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert normal_kl(m1, lv1, m1, lv1).abs().max().item() < 1e-14
    # broadcasting: scalar log-variances
    torch.testing.assert_close(
        normal_kl(m1, torch.tensor(0.3), m2, torch.tensor(-1.0)),
        normal_kl(m1, torch.full_like(m1, 0.3), m2, torch.full_like(m2, -1.0)),
    )


# ---------------------------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("mean", [0.0, 0.37, -0.99, 1.0, -1.0, 1.3, 3.0, -5.0, 50.0])
@pytest.mark.parametrize("scale", [1e-4, 1e-3, 0.01, 0.2, 1.0, 30.0])
def test_discretized_decoder_sums_to_one_and_matches_scipy(mean, scale):
    means = torch.full_like(BINS, mean)
    log_scales = torch.full_like(BINS, math.log(scale))
    logp = discretized_gaussian_log_likelihood(BINS, means=means, log_scales=log_scales)
    assert logp.dtype == torch.float64
    assert torch.isfinite(logp).all() and (logp <= 1e-12).all()
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    ref = reference_bin_probability(BINS.numpy(), mean, scale)
    np.testing.assert_allclose(logp.exp().numpy(), ref, rtol=1e-6, atol=1e-12)
    # in log space where scipy's probability is representable
    ok = ref > 1e-280
    np.testing.assert_allclose(logp.numpy()[ok], np.log(ref[ok]), rtol=1e-6, atol=1e-9)
    # and everywhere, deep tails included, against scipy's log-CDFs
    np.testing.assert_allclose(
        logp.numpy(), reference_log_bin_probability(BINS.numpy(), mean, scale), rtol=1e-6, atol=1e-12
    )
    # the bins mirror: log p(x; m, s) = log p(−x; −m, s)
    mirrored = discretized_gaussian_log_likelihood(-BINS, means=-means, log_scales=log_scales)
    torch.testing.assert_close(mirrored, logp, rtol=1e-9, atol=1e-12)


def test_discretized_decoder_broadcasts_and_is_stable_in_float32():
    x = BINS.float().reshape(1, 1, 16, 16).expand(3, 1, 16, 16)
    means = torch.tensor([-40.0, 0.1, 40.0]).reshape(3, 1, 1, 1)
    log_scales = torch.log(torch.tensor([1e-4, 1e-4, 1e-4])).reshape(3, 1, 1, 1)
    logp = discretized_gaussian_log_likelihood(x, means=means, log_scales=log_scales)
    assert logp.shape == (3, 1, 16, 16)
    assert torch.isfinite(logp).all()
    # the edge bin owns all the mass of a mean far outside [−1, 1]
    assert logp[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert logp[2, 0, -1, -1].item() == pytest.approx(0.0, abs=1e-6)
    # a bin centre at the mean with scale ≪ bin width has probability ~1
    x1 = BINS[140:141]
    assert discretized_gaussian_log_likelihood(x1, means=x1, log_scales=torch.tensor(math.log(1e-4))).item() == (
        pytest.approx(0.0, abs=1e-12)
    )


# ---------------------------------------------------------------------------------------------- oracle bound
def _one_image(seed=0, shape=(1, 2, 4, 4)) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=shape) / 127.5 - 1.0)


def _oracle(x0: torch.Tensor, ref: dict, prediction_type: str):
    """The denoiser that knows x0: returns the exact target of `prediction_type` at (x_t, t)."""
    x0n = x0.numpy()

    def model(xt, t):
        xt = xt.numpy()
        tt = t.numpy()
        shape = (-1,) + (1,) * (xt.ndim - 1)
        a, s = ref["a"][tt].reshape(shape), ref["s"][tt].reshape(shape)
        eps = (xt - a * x0n) / s
        out = {
            "epsilon": eps,
            "sample": np.broadcast_to(x0n, xt.shape),
            "v_prediction": a * eps - s * x0n,
            "mean": ref["coef1"][tt].reshape(shape) * x0n + ref["coef2"][tt].reshape(shape) * xt,
        }[prediction_type]
        return torch.from_numpy(np.array(out))

    return model


def _closed_form_prior_bpd(x0: np.ndarray, ref: dict) -> np.ndarray:
    """KL(N(√ᾱ_T x0, 1 − ᾱ_T) ‖ N(0, 1)) per dimension, in bits."""
    ac = ref["ac"][-1]
    kl = 0.5 * (-1.0 - np.log(1 - ac) + (1 - ac) + ac * x0**2)
    return kl.reshape(len(x0), -1).mean(axis=1) / math.log(2)


def _closed_form_decoder_bpd(x0: np.ndarray, ref: dict) -> np.ndarray:
    """−log p(x0 | x1) with mean x0 and the clipped posterior variance at t = 0, per dimension, in bits."""
    scale = math.sqrt(ref["post_var_clipped"][0])
    p = reference_bin_probability(x0, x0, scale)
    return -np.log(p).reshape(len(x0), -1).mean(axis=1) / math.log(2)


@pytest.mark.parametrize("prediction_type", TARGETS)
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_oracle_denoiser_bound(prediction_type, beta_schedule):
    sched = DDPMObjectiveScheduler(
        num_train_timesteps=50, prediction_type=prediction_type, beta_schedule=beta_schedule
    )
    ref = np_schedule(sched)
    x0 = _one_image(seed=1, shape=(2, 2, 4, 4))
    out = variational_bound(_oracle(x0, ref, prediction_type), sched, x0, generator=torch.Generator().manual_seed(0))
    assert out["terms"].shape == (2, 50)
    # every KL term L_{t−1} (t > 0) vanishes
    assert out["terms"][:, 1:].abs().max().item() < 1e-5
    prior = _closed_form_prior_bpd(x0.numpy(), ref)
    decoder = _closed_form_decoder_bpd(x0.numpy(), ref)
    np.testing.assert_allclose(out["prior"].numpy(), prior, rtol=1e-8)
    np.testing.assert_allclose(out["terms"][:, 0].numpy(), decoder, rtol=1e-6)
    np.testing.assert_allclose(out["total"].numpy(), prior + decoder, rtol=1e-6, atol=1e-5)
    # the oracle's x̂0 is exact
    assert out["mse"].max().item() < 1e-12


# ---------------------------------------------------------------------------------------------- variational_bound
class LinearEps(torch.nn.Module):
    """A fixed, imperfect ε-model: ε̂ = 0.7 x_t + 0.01 t/T (float64), optionally with variance channels."""

    def __init__(self, num_timesteps, learned=False):
        super().__init__()
        self.num_timesteps, self.learned = num_timesteps, learned

    def forward(self, xt, t):
        eps_hat = 0.7 * xt + 0.01 * (t.double() / self.num_timesteps).reshape(-1, 1, 1, 1)
        if not self.learned:
            return eps_hat
        return torch.cat([eps_hat, torch.tanh(xt)], dim=1)


def _manual_terms(model, ref, x0: np.ndarray, noises: np.ndarray, timesteps, learned=False) -> np.ndarray:
    """The bound term by term in numpy/scipy: x_t, x̂0, μ̂, the Gaussian KL, or the decoder NLL at t = 0."""
    n = len(x0)
    cols = []
    for k, t in enumerate(timesteps):
        eps = noises[k]
        xt = ref["a"][t] * x0 + ref["s"][t] * eps
        out = model(torch.from_numpy(xt), torch.full((n,), t)).numpy()
        eps_hat = out[:, : x0.shape[1]]
        x0_hat = (xt - ref["s"][t] * eps_hat) / ref["a"][t]
        mu_hat = ref["coef1"][t] * x0_hat + ref["coef2"][t] * xt
        mu = ref["coef1"][t] * x0 + ref["coef2"][t] * xt
        logvar_true = np.log(ref["post_var_clipped"][t])
        if learned:
            frac = (out[:, x0.shape[1] :] + 1) / 2
            logvar = frac * np.log(ref["betas"][t]) + (1 - frac) * logvar_true
        else:
            logvar = np.full_like(x0, logvar_true)
        if t == 0:
            nll = -np.log(reference_bin_probability(x0, mu_hat, np.exp(0.5 * logvar)))
            cols.append(nll.reshape(n, -1).mean(axis=1) / math.log(2))
        else:
            kl = 0.5 * (-1 + logvar - logvar_true + np.exp(logvar_true - logvar) + (mu - mu_hat) ** 2 / np.exp(logvar))
            cols.append(kl.reshape(n, -1).mean(axis=1) / math.log(2))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("learned", [False, True])
def test_variational_bound_matches_a_manual_loop(learned):
    T = 40
    kw = {"variance_type": "learned_range", "loss_type": "kl"} if learned else {}
    sched = DDPMObjectiveScheduler(num_train_timesteps=T, **kw)
    ref = np_schedule(sched)
    model = LinearEps(T, learned)
    x0 = _one_image(seed=2, shape=(3, 1, 4, 4))
    timesteps = [0, 1, 7, 20, 39]
    noise = torch.randn(len(timesteps), *x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = variational_bound(model, sched, x0, timesteps=timesteps, noise=noise)
    expected = _manual_terms(model, ref, x0.numpy(), noise.numpy(), timesteps, learned)
    np.testing.assert_allclose(out["terms"].numpy(), expected, rtol=1e-6, atol=1e-9)
    assert out["timesteps"].tolist() == timesteps
    np.testing.assert_allclose(out["prior"].numpy(), _closed_form_prior_bpd(x0.numpy(), ref), rtol=1e-8)
    np.testing.assert_allclose(out["total"].numpy(), out["prior"].numpy() + expected.sum(axis=1), rtol=1e-6)
    assert (out["terms"][:, 1:] > 0).all()  # an imperfect model pays at every t


def test_variational_bound_shapes_subsets_and_noise():
    T = 30
    sched = DDPMObjectiveScheduler(num_train_timesteps=T)
    model = LinearEps(T)
    x0 = _one_image(seed=3, shape=(2, 1, 4, 4))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    full = variational_bound(model, sched, x0, noise=eps)
    assert full["prior"].shape == (2,)
    assert full["terms"].shape == (2, T) and full["mse"].shape == (2, T) and full["total"].shape == (2,)
    assert full["timesteps"].tolist() == list(range(T))
    torch.testing.assert_close(full["total"], full["prior"] + full["terms"].sum(1))

    # a subset with the same ε (shaped like x0) gives the same columns
    subset = [29, 3, 0, 11]
    part = variational_bound(model, sched, x0, timesteps=torch.tensor(subset), noise=eps)
    torch.testing.assert_close(part["terms"], full["terms"][:, subset])
    torch.testing.assert_close(part["mse"], full["mse"][:, subset])
    torch.testing.assert_close(part["prior"], full["prior"])

    # one ε per evaluated t ([K, *x0.shape]): column k uses noise[k]
    noise_k = torch.stack([eps, -eps, 0.5 * eps, eps])
    per_t = variational_bound(model, sched, x0, timesteps=subset, noise=noise_k)
    torch.testing.assert_close(per_t["terms"][:, [0, 3]], full["terms"][:, [29, 11]])
    one = variational_bound(model, sched, x0, timesteps=[3], noise=-eps)
    torch.testing.assert_close(per_t["terms"][:, 1], one["terms"][:, 0])

    # the generator makes it reproducible; different seeds differ
    a = variational_bound(model, sched, x0, timesteps=[5, 6], generator=torch.Generator().manual_seed(9))
    b = variational_bound(model, sched, x0, timesteps=[5, 6], generator=torch.Generator().manual_seed(9))
    c = variational_bound(model, sched, x0, timesteps=[5, 6], generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(a["terms"], b["terms"])
    assert not torch.equal(a["terms"], c["terms"])

    # a diffusers-style output with `.sample` is accepted
    class Out:
        def __init__(self, sample):
            self.sample = sample

    wrapped = variational_bound(lambda x, t: Out(model(x, t)), sched, x0, timesteps=subset, noise=eps)
    torch.testing.assert_close(wrapped["terms"], part["terms"])

    with pytest.raises(ValueError, match="noise"):
        variational_bound(model, sched, x0, timesteps=subset, noise=torch.zeros(3, *x0.shape, dtype=x0.dtype))
    with pytest.raises(ValueError, match="timesteps"):
        variational_bound(model, sched, x0, timesteps=[0, T])
    with pytest.raises(ValueError, match="timesteps"):
        variational_bound(model, sched, x0, timesteps=[-1])


def test_clip_denoised_only_changes_out_of_range_predictions():
    T = 20
    sched = DDPMObjectiveScheduler(num_train_timesteps=T, prediction_type="sample")
    x0 = _one_image(seed=5, shape=(2, 1, 4, 4))
    inside = variational_bound(lambda x, t: 0.5 * x0, sched, x0, timesteps=[0, 5, 19], noise=torch.zeros_like(x0))
    clipped = variational_bound(
        lambda x, t: 0.5 * x0, sched, x0, timesteps=[0, 5, 19], noise=torch.zeros_like(x0), clip_denoised=True
    )
    torch.testing.assert_close(inside["terms"], clipped["terms"])
    outside = variational_bound(lambda x, t: 3 * x0, sched, x0, timesteps=[5], noise=torch.zeros_like(x0))
    outside_clipped = variational_bound(
        lambda x, t: 3 * x0, sched, x0, timesteps=[5], noise=torch.zeros_like(x0), clip_denoised=True
    )
    assert (outside_clipped["terms"] < outside["terms"]).all()
