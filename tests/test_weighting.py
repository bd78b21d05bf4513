"""Tests for the loss weightings: the formulas of the table in docs/objective.md §9, units conversions, the published code
(diffusers' min-SNR, the Min-SNR paper, P2, k-diffusion), the VLB identity, L_simple, zero terminal SNR and
user weightings.

Expected values are written here in numpy/float64 from the schedule (diffusers' ᾱ table), or transcribed from the
published code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr
from reference import np_schedule

from ddpm_objectives_hf import DDPMObjectiveScheduler
from ddpm_objectives_hf.weighting import WEIGHTINGS, register_weighting

TARGETS = ("epsilon", "sample", "v_prediction", "mean")
BUILTIN = ("simple", "vlb", "snr", "truncated_snr", "min_snr", "soft_min_snr", "p2", "edm", "debiased", "sigmoid")
PARAMS = {"snr_gamma": 3.0, "p2_k": 0.7, "p2_gamma": 0.5, "sigma_data": 0.6, "sigmoid_bias": -2.0}


def c_target(ref: dict, target: str) -> np.ndarray:
    """‖T − T̂‖² = c_T ‖x0 − x̂0‖² (docs/objective.md §7)."""
    return {
        "sample": np.ones_like(ref["snr"]),
        "epsilon": ref["snr"],
        "v_prediction": 1.0 + ref["snr"],
        "mean": ref["ac_prev"] * ref["betas"] ** 2 / (1.0 - ref["ac"]) ** 2,
    }[target]


def expected_eps_weight(name: str, ref: dict, variance_type: str = "fixed_small") -> np.ndarray:
    """The ε-units weight of docs/objective.md §9, written out."""
    snr, p = ref["snr"], PARAMS
    if name == "simple":
        return np.ones_like(snr)
    if name == "vlb":
        var = ref["var_" + variance_type]
        return ref["betas"] ** 2 / (2 * var * ref["alphas"] * (1 - ref["ac"]))
    if name == "snr":
        return snr
    if name == "truncated_snr":
        return np.maximum(1.0, 1.0 / snr)
    if name == "min_snr":
        return np.minimum(1.0, p["snr_gamma"] / snr)
    if name == "soft_min_snr":
        return p["snr_gamma"] / (snr + p["snr_gamma"])
    if name == "p2":
        return 1.0 / (p["p2_k"] + snr) ** p["p2_gamma"]
    if name == "edm":
        return 1.0 + 1.0 / (p["sigma_data"] ** 2 * snr)
    if name == "debiased":
        return 1.0 / np.sqrt(snr)
    if name == "sigmoid":
        lam = np.log(snr)
        n = len(lam)
        h = 1.0 / n  # t on (0, 1]: t_i = (i + 1)/T
        dlam = np.empty(n)
        dlam[1:-1] = (lam[2:] - lam[:-2]) / (2 * h)
        dlam[0] = (lam[1] - lam[0]) / h
        dlam[-1] = (lam[-1] - lam[-2]) / h
        return 0.5 / (1.0 + np.exp(-(p["sigmoid_bias"] - lam))) * (-dlam)
    raise AssertionError(name)


def make(name, **kw) -> DDPMObjectiveScheduler:
    return DDPMObjectiveScheduler(loss_weighting=name, **PARAMS, **kw)


def T_(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------------------------- the table
@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_epsilon_units_weight_matches_reference_formula(name, beta_schedule):
    sched = make(name, beta_schedule=beta_schedule)
    ref = np_schedule(sched)
    t = torch.arange(1000)
    got = sched.loss_weight(t)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected_eps_weight(name, ref), rtol=1e-10)
    # an integer timestep and a subset give the same values
    assert sched.loss_weight(17).item() == pytest.approx(got[17].item(), rel=1e-15)
    np.testing.assert_array_equal(sched.loss_weight(torch.tensor([3, 999, 0])).numpy(), got[[3, 999, 0]].numpy())


def test_vlb_weight_with_fixed_large_and_its_x0_form():
    sched = make("vlb", variance_type="fixed_large")
    ref = np_schedule(sched)
    t = torch.arange(1000)
    np.testing.assert_allclose(
        sched.loss_weight(t).numpy(), expected_eps_weight("vlb", ref, "fixed_large"), rtol=1e-10
    )
    # with σ² = β̃ the x0-units weight is ½ (SNR(t−1) − SNR(t)) for t > 0
    small = make("vlb")
    x0_weight = small.loss_weight(t, "sample").numpy()
    np.testing.assert_allclose(x0_weight[1:], 0.5 * (ref["snr"][:-1] - ref["snr"][1:]), rtol=1e-8)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_units_conversion(name, beta_schedule):
    sched = make(name, beta_schedule=beta_schedule)
    ref = np_schedule(sched)
    t = torch.arange(1000)
    w_eps = sched.loss_weight(t).numpy()
    for target in TARGETS:
        w_target = sched.loss_weight(t, target).numpy()
        np.testing.assert_allclose(w_target * c_target(ref, target), w_eps * ref["snr"], rtol=1e-10, err_msg=target)
        # effective_weight is the ε-units weight for mse
    np.testing.assert_allclose(sched.effective_weight(t).numpy(), w_eps, rtol=1e-15)


def test_effective_weight_of_kl_is_rescaled_vlb():
    sched = make("simple", loss_type="kl")
    ref = np_schedule(sched)
    t = torch.arange(1000)
    expected = 1000 * expected_eps_weight("vlb", ref) / math.log(2)
    np.testing.assert_allclose(sched.effective_weight(t).numpy(), expected, rtol=1e-10)


# ---------------------------------------------------------------------------------------------- published code
@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_matches_diffusers_train_text_to_image(gamma):
    timesteps = torch.arange(1000)

    def published(noise_scheduler, prediction_type, snr):
        # diffusers examples/text_to_image/train_text_to_image.py (--snr_gamma)
        mse_loss_weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
        if prediction_type == "epsilon":
            mse_loss_weights = mse_loss_weights / snr
        elif prediction_type == "v_prediction":
            mse_loss_weights = mse_loss_weights / (snr + 1)
        return mse_loss_weights

    for prediction_type in ("epsilon", "v_prediction"):
        sched = DDPMObjectiveScheduler(loss_weighting="min_snr", snr_gamma=gamma, prediction_type=prediction_type)
        ours = sched.loss_weight(timesteps, prediction_type).numpy()
        # diffusers' compute_snr works in float32 (1 − ᾱ at t ≈ 0 loses ~1e-3 relative)
        snr32 = compute_snr(sched, timesteps)
        np.testing.assert_allclose(published(sched, prediction_type, snr32).numpy(), ours, rtol=2e-3)
        # the same code on the float64 SNR
        ref = np_schedule(sched)
        snr64 = torch.from_numpy(ref["snr"])
        np.testing.assert_allclose(published(sched, prediction_type, snr64).numpy(), ours, rtol=1e-12)
        # the configured target's native weight is what training_loss applies
        assert torch.equal(sched.loss_weight(timesteps, prediction_type), sched._weights[prediction_type])


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_paper_x0_weight(gamma):
    sched = DDPMObjectiveScheduler(loss_weighting="min_snr", snr_gamma=gamma, prediction_type="sample")
    ref = np_schedule(sched)
    t = torch.arange(1000)
    np.testing.assert_allclose(sched.loss_weight(t, "sample").numpy(), np.minimum(ref["snr"], gamma), rtol=1e-12)


@pytest.mark.parametrize(("k", "gamma"), [(1.0, 0.5), (1.0, 1.0), (0.3, 2.0)])
def test_p2_matches_choi_et_al_code(k, gamma):
    sched = DDPMObjectiveScheduler(loss_weighting="p2", p2_k=k, p2_gamma=gamma)
    ac = np_schedule(sched)["ac"]
    # jychoi118/P2-weighting, guided_diffusion/gaussian_diffusion.py (ε target):
    #   self.snr = 1.0 / (1 - self.alphas_cumprod) - 1
    #   weight = _extract_into_tensor(1 / (self.p2_k + self.snr)**self.p2_gamma, t, target.shape)
    #   terms["mse"] = mean_flat(weight * (target - model_output) ** 2)
    snr = 1.0 / (1 - ac) - 1
    weight = 1 / (k + snr) ** gamma
    np.testing.assert_allclose(sched.loss_weight(torch.arange(1000), "epsilon").numpy(), weight, rtol=1e-9)


class KDiffusionDenoiser:
    """k-diffusion `layers.Denoiser` scalings and weightings, transcribed (VE σ = √((1 − ᾱ)/ᾱ))."""

    def __init__(self, sigma_data):
        self.sigma_data = sigma_data

    def get_scalings(self, sigma):
        c_skip = self.sigma_data**2 / (sigma**2 + self.sigma_data**2)
        c_out = sigma * self.sigma_data / (sigma**2 + self.sigma_data**2) ** 0.5
        c_in = 1 / (sigma**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out, c_in

    def _weighting_soft_min_snr(self, sigma):
        return (sigma * self.sigma_data) ** 2 / (sigma**2 + self.sigma_data**2) ** 2

    def x0_weight(self, sigma, weighting):
        """`loss` is c_weight · ‖F − (x0 − c_skip x̃)/c_out‖² = c_weight / c_out² · ‖D − x0‖²."""
        _, c_out, _ = self.get_scalings(sigma)
        c_weight = self._weighting_soft_min_snr(sigma) if weighting == "soft-min-snr" else np.ones_like(sigma)
        return c_weight / c_out**2


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_soft_min_snr_and_edm_match_k_diffusion(sigma_data):
    t = torch.arange(1000)
    soft = DDPMObjectiveScheduler(loss_weighting="soft_min_snr", snr_gamma=sigma_data**-2, prediction_type="sample")
    edm = DDPMObjectiveScheduler(loss_weighting="edm", sigma_data=sigma_data, prediction_type="sample")
    ac = np_schedule(soft)["ac"]
    sigma = np.sqrt((1 - ac) / ac)
    k = KDiffusionDenoiser(sigma_data)
    np.testing.assert_allclose(soft.loss_weight(t, "sample").numpy(), k.x0_weight(sigma, "soft-min-snr"), rtol=1e-10)
    np.testing.assert_allclose(edm.loss_weight(t, "sample").numpy(), k.x0_weight(sigma, "karras"), rtol=1e-10)
    if sigma_data == 1.0:  # EDM with σ_data = 1 is the uniform v-MSE
        np.testing.assert_allclose(edm.loss_weight(t, "v_prediction").numpy(), 1.0, rtol=1e-10)


# ---------------------------------------------------------------------------------------------- VLB and simple
def _implied_predictions(ref, x0, eps_hat, xt, t):
    """x̂0, ε̂, v̂, μ̂ implied by ε̂ at x_t (numpy)."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, s = ref["a"][t].reshape(shape), ref["s"][t].reshape(shape)
    x0_hat = (xt - s * eps_hat) / a
    mu_hat = ref["coef1"][t].reshape(shape) * x0_hat + ref["coef2"][t].reshape(shape) * xt
    return {"epsilon": eps_hat, "sample": x0_hat, "v_prediction": a * eps_hat - s * x0_hat, "mean": mu_hat}


def _data(ref, t, seed=0, shape=(2, 4, 4)):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, size=(len(t), *shape))
    eps = rng.standard_normal(x0.shape)
    eps_hat = eps + rng.normal(scale=0.3, size=x0.shape)
    a, s = ref["a"][t].reshape(-1, 1, 1, 1), ref["s"][t].reshape(-1, 1, 1, 1)
    return x0, eps, eps_hat, a * x0 + s * eps


@pytest.mark.parametrize("prediction_type", TARGETS)
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_vlb_weighted_mse_is_the_kl_term(prediction_type, beta_schedule):
    sched = DDPMObjectiveScheduler(
        prediction_type=prediction_type, loss_weighting="vlb", loss_type="mse", beta_schedule=beta_schedule
    )
    ref = np_schedule(sched)
    t = np.array([1, 2, 5, 50, 300, 700, 998, 999])
    x0, eps, eps_hat, xt = _data(ref, t, seed=1)
    pred = _implied_predictions(ref, x0, eps_hat, xt, t)[prediction_type]
    loss, terms = sched.training_loss(T_(pred), T_(x0), T_(eps), T_(t), noisy_images=T_(xt))
    vb_nats = sched.vlb_terms(T_(pred), T_(x0), T_(xt), T_(t))["vb"] * math.log(2)
    np.testing.assert_allclose(loss.numpy(), vb_nats.numpy(), rtol=1e-6)
    # and the KL in closed form: equal variances β̃_t, so ½ (μ̃ − μ̂)² / β̃_t per dimension
    mu = _implied_predictions(ref, x0, eps, xt, t)["mean"]
    mu_hat = _implied_predictions(ref, x0, eps_hat, xt, t)["mean"]
    kl = ((mu - mu_hat) ** 2 / (2 * ref["post_var"][t].reshape(-1, 1, 1, 1))).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(loss.numpy(), kl, rtol=1e-6)
    np.testing.assert_allclose(terms["weight"].numpy(), sched.loss_weight(T_(t), prediction_type).numpy())


@pytest.mark.parametrize("prediction_type", TARGETS)
def test_simple_is_l_simple_for_every_target(prediction_type):
    sched = DDPMObjectiveScheduler(prediction_type=prediction_type, loss_weighting="simple")
    ref = np_schedule(sched)
    t = np.array([0, 1, 10, 100, 500, 900, 999])
    x0, eps, eps_hat, xt = _data(ref, t, seed=2)
    pred = _implied_predictions(ref, x0, eps_hat, xt, t)[prediction_type]
    loss, terms = sched.training_loss(T_(pred), T_(x0), T_(eps), T_(t), noisy_images=T_(xt))
    np.testing.assert_allclose(loss.numpy(), ((eps - eps_hat) ** 2).mean(axis=(1, 2, 3)), rtol=1e-7)
    assert set(terms) >= {"mse", "weight", "loss"}
    assert loss.shape == (len(t),)


@pytest.mark.parametrize("name", ["min_snr", "p2", "truncated_snr", "debiased"])
@pytest.mark.parametrize("prediction_type", TARGETS)
def test_weighted_loss_is_weight_times_eps_mse(name, prediction_type):
    sched = make(name, prediction_type=prediction_type)
    ref = np_schedule(sched)
    t = np.array([0, 3, 60, 400, 850, 999])
    x0, eps, eps_hat, xt = _data(ref, t, seed=3)
    pred = _implied_predictions(ref, x0, eps_hat, xt, t)[prediction_type]
    loss, _ = sched.training_loss(T_(pred), T_(x0), T_(eps), T_(t), noisy_images=T_(xt))
    expected = expected_eps_weight(name, ref)[t] * ((eps - eps_hat) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-7)


# ---------------------------------------------------------------------------------------------- zero terminal SNR
@pytest.mark.parametrize("name", BUILTIN)
def test_zero_terminal_snr_weights_are_finite(name):
    sched = make(name, rescale_betas_zero_snr=True)
    t = torch.arange(1000)
    assert sched.snr(999).item() == 0.0
    for target in TARGETS:
        w = sched.loss_weight(t, target)
        assert torch.isfinite(w).all(), (name, target)
        assert (w >= 0).all()
    # ε target at SNR = 0: weight 1, as diffusers' min-SNR code sets it
    assert sched.loss_weight(999, "epsilon").item() == 1.0
    # the x0-units limit where it is plain: min_snr → min(0, γ) = 0, truncated → max(0, 1) = 1, edm → σ_data⁻²
    limits = {"min_snr": 0.0, "truncated_snr": 1.0, "edm": PARAMS["sigma_data"] ** -2, "simple": 0.0, "snr": 0.0}
    if name in limits:
        assert sched.loss_weight(999, "sample").item() == pytest.approx(limits[name], abs=1e-12)
    # training loss is finite at t = T − 1 for every target
    rng = np.random.default_rng(4)
    x0 = T_(rng.uniform(-1, 1, size=(2, 1, 4, 4)))
    noise = T_(rng.standard_normal((2, 1, 4, 4)))
    tt = torch.tensor([999, 999])
    for target in TARGETS:
        s = make(name, rescale_betas_zero_snr=True, prediction_type=target)
        pred = T_(rng.standard_normal((2, 1, 4, 4)))
        loss, _ = s.training_loss(pred, x0, noise, tt)
        assert torch.isfinite(loss).all(), (name, target)
        # the exact target has zero loss
        exact = s.get_target(x0, noise, tt)
        assert torch.isfinite(exact).all()
        assert s.training_loss(exact, x0, noise, tt)[0].abs().max().item() < 1e-12


# ---------------------------------------------------------------------------------------------- user weightings
def test_callable_weighting():
    def inverse_one_plus_snr_test(snr):
        return 1.0 / (1.0 + snr)

    sched = DDPMObjectiveScheduler(loss_weighting=inverse_one_plus_snr_test)
    assert sched.config.loss_weighting == "inverse_one_plus_snr_test"
    ref = np_schedule(sched)
    np.testing.assert_allclose(sched.loss_weight(torch.arange(1000)).numpy(), 1 / (1 + ref["snr"]), rtol=1e-12)
    # the stored name reloads in this process
    again = DDPMObjectiveScheduler.from_config(sched.config)
    np.testing.assert_allclose(again.loss_weight(torch.arange(1000)).numpy(), 1 / (1 + ref["snr"]), rtol=1e-12)


def test_register_weighting_with_parameters_and_schedule_inputs():
    @register_weighting("test_gamma_power")
    def gamma_power(snr, snr_gamma):
        return (1.0 + snr) ** -snr_gamma

    register_weighting("test_half_vlb", lambda snr, coef1_sq, model_variance: coef1_sq / (4 * model_variance * snr))
    try:
        sched = DDPMObjectiveScheduler(loss_weighting="test_gamma_power", snr_gamma=0.25)
        ref = np_schedule(sched)
        t = torch.arange(1000)
        np.testing.assert_allclose(sched.loss_weight(t).numpy(), (1 + ref["snr"]) ** -0.25, rtol=1e-12)
        half = DDPMObjectiveScheduler(loss_weighting="test_half_vlb")
        np.testing.assert_allclose(half.loss_weight(t).numpy(), expected_eps_weight("vlb", ref) / 2, rtol=1e-10)
    finally:
        WEIGHTINGS.pop("test_gamma_power", None)
        WEIGHTINGS.pop("test_half_vlb", None)


def test_unknown_weighting_lists_valid_values():
    with pytest.raises(ValueError, match="loss_weighting") as info:
        DDPMObjectiveScheduler(loss_weighting="not_a_weighting")
    for name in BUILTIN:
        assert name in str(info.value)


def test_weighting_asking_for_unknown_input_raises():
    register_weighting("test_bad_input", lambda snr, no_such_option: snr)
    try:
        with pytest.raises(ValueError, match="no_such_option"):
            DDPMObjectiveScheduler(loss_weighting="test_bad_input")
    finally:
        WEIGHTINGS.pop("test_bad_input", None)


def test_non_finite_weighting_raises():
    register_weighting("test_nan", lambda snr: snr * float("nan"))
    try:
        with pytest.raises(ValueError, match="non-finite"):
            DDPMObjectiveScheduler(loss_weighting="test_nan")
    finally:
        WEIGHTINGS.pop("test_nan", None)


def test_vlb_weight_is_infinite_only_at_zero_snr():
    scheduler = DDPMObjectiveScheduler(rescale_betas_zero_snr=True)
    lam = scheduler.vlb_weight(torch.arange(1000))
    assert torch.isinf(lam[-1]) and torch.isfinite(lam[:-1]).all()
    ref = np_schedule(scheduler)
    expected = ref["betas"][1:-1] ** 2 / (
        2 * ref["var_fixed_small"][1:-1] * ref["alphas"][1:-1] * (1 - ref["ac"][1:-1])
    )
    np.testing.assert_allclose(lam[1:-1].numpy(), expected, rtol=1e-9)


@pytest.mark.parametrize(
    "name, eps_units, x0_units",
    [("simple", 1.0, 0.0), ("min_snr", 1.0, 0.0), ("debiased", math.inf, 0.0), ("edm", math.inf, 4.0)],
)
def test_weights_at_zero_terminal_snr_are_the_limits(name, eps_units, x0_units):
    """At SNR = 0 a weight is its limit SNR → 0 (by hand: simple 1 and SNR·1 → 0; min(SNR, γ)/SNR → 1; the debiased
    1/√SNR → inf and √SNR → 0; EDM's 1 + 1/(σ_data² SNR) → inf and, times SNR, → 1/σ_data² = 4)."""
    scheduler = DDPMObjectiveScheduler(rescale_betas_zero_snr=True, loss_weighting=name, sigma_data=0.5)
    last = scheduler.config.num_train_timesteps - 1
    assert float(scheduler.snr(last)) == 0.0
    assert float(scheduler.loss_weight(last)) == eps_units
    assert float(scheduler.loss_weight(last, units="sample")) == pytest.approx(x0_units, rel=1e-12, abs=0)
    assert float(scheduler.loss_weight(last, units="epsilon")) == 1.0  # as diffusers' min-SNR code
