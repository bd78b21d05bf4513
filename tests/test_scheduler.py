"""Tests for `DDPMObjectiveScheduler`: conversions between targets, agreement with diffusers' `DDPMScheduler`,
the `mean` target at sampling, posterior quantities, option validation and save/load.

Every expected value is computed here independently: closed forms in numpy/float64 from the schedule (diffusers' ᾱ
table, β_t = 1 − ᾱ_t/ᾱ_{t−1}), diffusers' own `DDPMScheduler`, or improved-diffusion's formulas transcribed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline
from reference import np_schedule
from tiny import tiny_unet

from ddpm_objectives_hf import DDPMObjectiveScheduler

TARGETS = ("epsilon", "sample", "v_prediction", "mean")


def bc(values: np.ndarray, t: np.ndarray, ndim: int) -> np.ndarray:
    return values[t].reshape((-1,) + (1,) * (ndim - 1))


def np_targets(sched: dict, x0: np.ndarray, eps: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """x_t and the exact ε, x0, v, μ̃ at t (numpy)."""
    a, s = bc(sched["a"], t, x0.ndim), bc(sched["s"], t, x0.ndim)
    xt = a * x0 + s * eps
    mu = bc(sched["coef1"], t, x0.ndim) * x0 + bc(sched["coef2"], t, x0.ndim) * xt
    return {"xt": xt, "epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0, "mean": mu}


def make_data(n: int, shape=(2, 3, 3), seed: int = 0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, size=(n, *shape))
    eps = rng.standard_normal((n, *shape))
    return x0, eps


def T(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_conversions_round_trip_and_match_exact_targets(beta_schedule):
    sched = DDPMObjectiveScheduler(beta_schedule=beta_schedule)
    ref = np_schedule(sched)
    num = sched.config.num_train_timesteps
    rng = np.random.default_rng(1)
    t = np.concatenate([[0, 1, 2, num // 2, num - 2, num - 1], rng.integers(0, num, size=10)])
    x0, eps = make_data(len(t), seed=2)
    exact = np_targets(ref, x0, eps, t)
    xt, tt = T(exact["xt"]), T(t)
    for src in TARGETS:
        pred = T(exact[src])
        for dst in TARGETS:
            converted = sched.convert_prediction(pred, xt, tt, from_type=src, to_type=dst)
            assert converted.dtype == torch.float64
            np.testing.assert_allclose(converted.numpy(), exact[dst], rtol=1e-10, atol=1e-10, err_msg=f"{src}->{dst}")
            back = sched.convert_prediction(converted, xt, tt, from_type=dst, to_type=src)
            np.testing.assert_allclose(back.numpy(), exact[src], rtol=1e-10, atol=1e-10, err_msg=f"{src}->{dst}->")
        # the named helpers are the same conversions
        np.testing.assert_allclose(sched.predict_original_sample(pred, xt, tt, src).numpy(), x0, atol=1e-10)
        np.testing.assert_allclose(sched.predict_noise(pred, xt, tt, src).numpy(), eps, atol=1e-10)
        np.testing.assert_allclose(
            sched.predict_velocity(pred, xt, tt, src).numpy(), exact["v_prediction"], atol=1e-10
        )
        np.testing.assert_allclose(sched.predict_mean(pred, xt, tt, src).numpy(), exact["mean"], atol=1e-10)


@pytest.mark.parametrize("prediction_type", TARGETS)
def test_get_target_is_the_exact_target(prediction_type):
    sched = DDPMObjectiveScheduler(prediction_type=prediction_type, beta_schedule="squaredcos_cap_v2")
    ref = np_schedule(sched)
    t = np.array([0, 1, 10, 500, 998, 999])
    x0, eps = make_data(len(t), seed=3)
    exact = np_targets(ref, x0, eps, t)
    target = sched.get_target(T(x0), T(eps), T(t), noisy_samples=T(exact["xt"]))
    np.testing.assert_allclose(target.numpy(), exact[prediction_type], rtol=1e-12, atol=1e-12)
    # without x_t it is made by diffusers' `add_noise`, on the same ᾱ table
    target = sched.get_target(T(x0), T(eps), T(t))
    np.testing.assert_allclose(target.numpy(), exact[prediction_type], rtol=1e-12, atol=1e-12)
    # the default conversion direction is the configured prediction type
    np.testing.assert_allclose(
        sched.convert_prediction(T(exact[prediction_type]), T(exact["xt"]), T(t), to_type="sample").numpy(),
        x0,
        atol=1e-10,
    )


def test_snr_and_log_snr():
    sched = DDPMObjectiveScheduler(beta_schedule="squaredcos_cap_v2")
    ref = np_schedule(sched)
    t = torch.arange(1000)
    np.testing.assert_allclose(sched.snr(t).numpy(), ref["snr"], rtol=1e-12)
    np.testing.assert_allclose(sched.log_snr(t).numpy(), np.log(ref["snr"]), rtol=1e-12)
    assert sched.snr(7).item() == pytest.approx(ref["snr"][7], rel=1e-12)
    zero = DDPMObjectiveScheduler(rescale_betas_zero_snr=True)
    assert zero.snr(999).item() == 0.0
    assert zero.log_snr(999).item() == -np.inf


# ---------------------------------------------------------------------------------------------- posterior
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2", "scaled_linear"])
def test_posterior_quantities_match_improved_diffusion(beta_schedule):
    sched = DDPMObjectiveScheduler(beta_schedule=beta_schedule)
    ref = np_schedule(sched)
    t = torch.arange(sched.config.num_train_timesteps)
    coef1, coef2 = sched.posterior_mean_coefficients(t)
    assert coef1.dtype == torch.float64
    np.testing.assert_allclose(coef1.numpy(), ref["coef1"], rtol=1e-12)
    np.testing.assert_allclose(coef2.numpy(), ref["coef2"], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(sched.posterior_variance(t).numpy(), ref["post_var"], rtol=1e-12)
    assert sched.posterior_variance(0).item() == 0.0
    np.testing.assert_allclose(sched.posterior_log_variance_clipped(t).numpy(), ref["logvar_clipped"], rtol=1e-12)
    # Ho et al. eq. 7 in its ε form: μ̃ = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t
    tt = np.array([0, 3, 400, 999])
    x0, eps = make_data(len(tt), seed=4)
    exact = np_targets(ref, x0, eps, tt)
    mu_eps = (exact["xt"] - bc(ref["betas"] / ref["s"], tt, 4) * eps) / bc(np.sqrt(ref["alphas"]), tt, 4)
    got = sched.posterior_mean(T(x0), T(exact["xt"]), T(tt))
    np.testing.assert_allclose(got.numpy(), mu_eps, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------- diffusers parity
def _pair(prediction_type="epsilon", variance_type="fixed_small", **kw):
    loss_type = "kl" if variance_type == "learned_range" else "mse"
    ours = DDPMObjectiveScheduler(
        prediction_type=prediction_type, variance_type=variance_type, loss_type=loss_type, **kw
    )
    theirs = DDPMScheduler(prediction_type=prediction_type, variance_type=variance_type, **kw)
    return ours, theirs


def _float64_arithmetic(scheduler):
    """Make diffusers' `step`/`_get_variance` do their arithmetic in float64 on the same ᾱ values.

    diffusers evaluates ``1 − ᾱ_t/ᾱ_{t−1}`` on its float32 ᾱ table in float32, which at t ≈ 1 (β ≈ 1e-4) is off by
    ~1e-3 relative; in float64 both schedulers (and the numpy closed forms) agree to round-off.
    """
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.one = scheduler.one.double()
    return scheduler


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_add_noise_and_get_velocity_match_diffusers_and_numpy(beta_schedule):
    ours, theirs = _pair(beta_schedule=beta_schedule)
    t = np.array([0, 1, 250, 998, 999])
    x0, eps = make_data(len(t), seed=5)
    x0f, epsf, tt = T(x0).float(), T(eps).float(), T(t)
    torch.testing.assert_close(ours.add_noise(x0f, epsf, tt), theirs.add_noise(x0f, epsf, tt))
    torch.testing.assert_close(ours.get_velocity(x0f, epsf, tt), theirs.get_velocity(x0f, epsf, tt))
    # closed form on diffusers' ᾱ table (a float32 cumprod)
    ac = theirs.alphas_cumprod.double().numpy()
    a, s = bc(np.sqrt(ac), t, 4), bc(np.sqrt(1 - ac), t, 4)
    np.testing.assert_allclose(ours.add_noise(T(x0), T(eps), tt).numpy(), a * x0 + s * eps, rtol=1e-12)
    np.testing.assert_allclose(ours.get_velocity(T(x0), T(eps), tt).numpy(), a * eps - s * x0, rtol=1e-12)
    # the objective's targets are exact for the x_t that `add_noise` makes
    exact = np_targets(np_schedule(ours), x0, eps, t)
    np.testing.assert_allclose(ours.add_noise(T(x0), T(eps), tt).numpy(), exact["xt"], rtol=1e-12)
    for target in TARGETS:
        s = DDPMObjectiveScheduler(prediction_type=target, beta_schedule=beta_schedule)
        np.testing.assert_allclose(s.get_target(T(x0), T(eps), tt).numpy(), exact[target], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("respaced", [False, True])
def test_get_variance_matches_diffusers_and_closed_form(variance_type, respaced):
    pairs = [_pair(variance_type=variance_type), _pair(variance_type=variance_type)]
    for ours, theirs in pairs[1:]:
        _float64_arithmetic(ours)
        _float64_arithmetic(theirs)
    for ours, theirs in pairs:
        if respaced:
            ours.set_timesteps(50)
            theirs.set_timesteps(50)
    ac = pairs[0][0].alphas_cumprod.double().numpy()
    v = torch.tensor([[-0.7], [0.2], [0.9]])
    ts = pairs[0][0].timesteps.tolist() if respaced else [1, 2, *range(3, 1000, 37), 999]
    for t in ts:
        prev = int(pairs[0][0].previous_timestep(t))
        assert prev == int(pairs[0][1].previous_timestep(t)) == (t - 1 if not respaced else prev)
        ac_prev = ac[prev] if prev >= 0 else 1.0
        beta = 1 - ac[t] / ac_prev
        beta_tilde = max(beta * (1 - ac_prev) / (1 - ac[t]), 1e-20)
        frac = (v.double().numpy() + 1) / 2
        closed = {
            "fixed_small": beta_tilde,
            "fixed_large": beta,
            "learned_range": frac * np.log(beta) + (1 - frac) * np.log(beta_tilde),
        }[variance_type]
        for k, (ours, theirs) in enumerate(pairs):
            pv = v if k == 0 else v.double()
            got, want = ours._get_variance(t, predicted_variance=pv), theirs._get_variance(t, predicted_variance=pv)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            if k == 0:  # diffusers' float32 1 − ᾱ_t/ᾱ_{t−1} loses ~6e-8 absolute to cancellation
                tol = 1e-6 if variance_type == "learned_range" else 0.0
                np.testing.assert_allclose(got.double().numpy(), closed, rtol=1e-5 + 2e-7 / beta, atol=tol)
            else:
                np.testing.assert_allclose(got.numpy(), closed, rtol=1e-10)
        if variance_type == "fixed_small" and not respaced:
            assert pairs[0][0].posterior_variance(t).item() == pytest.approx(beta_tilde, rel=1e-12)


def _toy_model(x: torch.Tensor, t: int, learned: bool) -> torch.Tensor:
    """A fixed, smooth 'network': a prediction of the right scale, plus variance channels in (−1, 1)."""
    pred = 0.8 * torch.tanh(1.3 * x) + 0.05 * torch.sin(x * 3.0 + t / 100.0)
    if not learned:
        return pred
    return torch.cat([pred, 0.9 * torch.tanh(x + t / 1000.0)], dim=1)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large", "learned_range"])
@pytest.mark.parametrize("num_inference_steps", [None, 50])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_matches_diffusers(prediction_type, variance_type, num_inference_steps, dtype):
    ours, theirs = _pair(prediction_type, variance_type)
    if dtype == torch.float64:
        _float64_arithmetic(ours)
        _float64_arithmetic(theirs)
        tol = 1e-9
    else:
        tol = 1e-4  # diffusers' float32 β_t = 1 − ᾱ_t/ᾱ_{t−1} at t ≈ 1 (the other steps agree to ~1e-6)
    if num_inference_steps is not None:
        ours.set_timesteps(num_inference_steps)
        theirs.set_timesteps(num_inference_steps)
    timesteps = theirs.timesteps.tolist()
    assert ours.timesteps.tolist() == timesteps
    if num_inference_steps is None:
        timesteps = timesteps[:30] + timesteps[480:500] + timesteps[-30:]  # both ends of the full grid
    gen_o, gen_t = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    learned = variance_type == "learned_range"
    for t in timesteps:
        out = _toy_model(x, t, learned)
        o = ours.step(out, t, x, generator=gen_o)
        d = theirs.step(out, t, x, generator=gen_t)
        assert o.prev_sample.dtype == dtype
        torch.testing.assert_close(o.pred_original_sample, d.pred_original_sample, rtol=tol, atol=tol)
        torch.testing.assert_close(o.prev_sample, d.prev_sample, rtol=tol, atol=tol)
        x = d.prev_sample
    tup = ours.step(_toy_model(x, 0, learned), timesteps[-1], x, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 2


def test_full_trajectory_matches_diffusers():
    """A whole 1000-step chain from the same noise and generator seed ends at the same sample."""
    ours, theirs = _pair("epsilon", "fixed_small")
    _float64_arithmetic(ours)
    _float64_arithmetic(theirs)
    x_o = x_t = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gen_o, gen_t = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for t in theirs.timesteps.tolist():
        x_o = ours.step(_toy_model(x_o, t, False), t, x_o, generator=gen_o).prev_sample
        x_t = theirs.step(_toy_model(x_t, t, False), t, x_t, generator=gen_t).prev_sample
    torch.testing.assert_close(x_o, x_t, rtol=1e-9, atol=1e-9)
    # and with diffusers' own float32 ᾱ and arithmetic, a float32 chain ends within float32 round-off
    ours, theirs = _pair("epsilon", "fixed_small")
    x_o = x_t = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    gen_o, gen_t = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for t in theirs.timesteps.tolist():
        x_o = ours.step(_toy_model(x_o, t, False), t, x_o, generator=gen_o).prev_sample
        x_t = theirs.step(_toy_model(x_t, t, False), t, x_t, generator=gen_t).prev_sample
    torch.testing.assert_close(x_o, x_t, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- step with `mean`
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_step_mean_with_exact_posterior_mean(beta_schedule):
    sched = _float64_arithmetic(DDPMObjectiveScheduler(prediction_type="mean", beta_schedule=beta_schedule))
    ref = np_schedule(sched)
    x0, eps = make_data(3, shape=(1, 4, 4), seed=8)
    for t in [999, 998, 500, 20, 1, 0]:
        tt = np.full(3, t)
        exact = np_targets(ref, x0, eps, tt)
        out = sched.step(T(exact["mean"]), t, T(exact["xt"]), generator=torch.Generator().manual_seed(t))
        np.testing.assert_allclose(out.pred_original_sample.numpy(), x0, rtol=1e-8, atol=1e-8)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64).numpy()
        sigma = np.sqrt(ref["post_var"][t]) if t > 0 else 0.0
        np.testing.assert_allclose(out.prev_sample.numpy() - sigma * noise, exact["mean"], rtol=1e-9, atol=1e-9)
        if t == 0:
            np.testing.assert_allclose(out.prev_sample.numpy(), x0, atol=1e-8)


@pytest.mark.parametrize("num_inference_steps", [None, 20])
@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_mean_model_samples_the_epsilon_trajectory(num_inference_steps, variance_type):
    """μ̂ = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t (training grid) sampled with `mean` == ε̂ sampled by diffusers."""
    eps_sched = _float64_arithmetic(DDPMScheduler(prediction_type="epsilon", variance_type=variance_type))
    mean_sched = _float64_arithmetic(DDPMObjectiveScheduler(prediction_type="mean", variance_type=variance_type))
    ref = np_schedule(eps_sched)
    if num_inference_steps is not None:
        eps_sched.set_timesteps(num_inference_steps)
        mean_sched.set_timesteps(num_inference_steps)

    def eps_model(x, t):
        return 0.9 * torch.tanh(x) + 0.1 * np.cos(t / 50.0)

    def mean_model(x, t):
        return (x - ref["betas"][t] / ref["s"][t] * eps_model(x, t)) / np.sqrt(ref["alphas"][t])

    x_e = x_m = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gen_e, gen_m = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for t in eps_sched.timesteps.tolist():
        e = eps_sched.step(eps_model(x_e, t), t, x_e, generator=gen_e)
        m = mean_sched.step(mean_model(x_m, t), t, x_m, generator=gen_m)
        torch.testing.assert_close(m.pred_original_sample, e.pred_original_sample, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(m.prev_sample, e.prev_sample, rtol=1e-8, atol=1e-8)
        x_e, x_m = e.prev_sample, m.prev_sample


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"prediction_type": "x_start"}, "prediction_type"),
        ({"loss_type": "l1"}, "loss_type"),
        ({"loss_weighting": "no_such_weighting"}, "loss_weighting"),
        ({"variance_type": "other"}, "variance_type"),
        ({"snr_gamma": 0.0}, "snr_gamma"),
        ({"snr_gamma": -1.0}, "snr_gamma"),
        ({"p2_gamma": 0.0}, "p2_gamma"),
        ({"p2_k": -0.5}, "p2_k"),
        ({"p2_k": 0.0}, "p2_k"),
        ({"sigma_data": 0.0}, "sigma_data"),
        ({"sigma_data": float("nan")}, "sigma_data"),
        ({"loss_type": "hybrid", "variance_type": "fixed_small"}, "hybrid"),
        ({"loss_type": "hybrid", "variance_type": "fixed_small"}, "learned_range"),
        ({"trained_betas": [0.1, 1.5, 0.2]}, r"trained_betas: .*β_1 = 1.5; every β_t must be in \(0, 1\]"),
        ({"trained_betas": [0.1, 0.0, 0.2]}, r"trained_betas: .*β_1 = 0.0"),
        ({"trained_betas": [0.1, 1.0, 0.2]}, r"trained_betas: .*ᾱ_1 = 0 before the last step t = 2"),
    ],
)
def test_invalid_options_raise(kwargs, option):
    with pytest.raises(ValueError, match=option):
        DDPMObjectiveScheduler(**kwargs)


@pytest.mark.parametrize(
    ("variance_type", "loss_type", "out_channels"),
    [("fixed_small", "mse", 6), ("fixed_large", "kl", 6), ("learned_range", "hybrid", 3), ("learned_range", "kl", 4)],
)
def test_wrong_channel_count_raises(variance_type, loss_type, out_channels):
    sched = DDPMObjectiveScheduler(variance_type=variance_type, loss_type=loss_type)
    x0 = torch.zeros(2, 3, 4, 4)
    out = torch.zeros(2, out_channels, 4, 4)
    t = torch.tensor([3, 5])
    with pytest.raises(ValueError, match="out_channels"):
        sched.training_loss(out, x0, torch.zeros_like(x0), t)
    with pytest.raises(ValueError, match="variance_type"):
        sched.training_loss(out, x0, torch.zeros_like(x0), t)
    with pytest.raises(ValueError, match="out_channels"):
        sched.step(out, 5, x0)


def test_convert_prediction_rejects_unknown_types():
    sched = DDPMObjectiveScheduler()
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="from_type"):
        sched.convert_prediction(x, x, torch.tensor([1]), from_type="x_start", to_type="sample")
    with pytest.raises(ValueError, match="to_type"):
        sched.convert_prediction(x, x, torch.tensor([1]), from_type="sample", to_type="score")


# ---------------------------------------------------------------------------------------------- save / load
OBJECTIVE_FIELDS = {
    "prediction_type": "mean",
    "variance_type": "learned_range",
    "loss_type": "hybrid",
    "loss_weighting": "p2",
    "snr_gamma": 3.5,
    "p2_k": 2.0,
    "p2_gamma": 0.5,
    "sigma_data": 0.7,
    "sigmoid_bias": -1.5,
    "hybrid_lambda": 0.01,
    "beta_schedule": "squaredcos_cap_v2",
    "num_train_timesteps": 200,
    "rescale_betas_zero_snr": False,
}


def test_scheduler_save_load_round_trip(tmp_path):
    sched = DDPMObjectiveScheduler(**OBJECTIVE_FIELDS)
    sched.save_pretrained(tmp_path)
    loaded = DDPMObjectiveScheduler.from_pretrained(tmp_path)
    assert type(loaded) is DDPMObjectiveScheduler
    for key, value in OBJECTIVE_FIELDS.items():
        assert loaded.config[key] == value, key
    t = torch.arange(200)
    for units in (None, *TARGETS):
        torch.testing.assert_close(loaded.loss_weight(t, units), sched.loss_weight(t, units))
    # from_config of the saved config works as well
    again = DDPMObjectiveScheduler.from_config(loaded.config)
    assert again.config.loss_weighting == "p2" and again.config.p2_gamma == 0.5


@pytest.mark.parametrize(
    "scheduler_kwargs",
    [
        {"prediction_type": "epsilon", "loss_weighting": "min_snr", "snr_gamma": 4.0},
        {"prediction_type": "mean", "loss_weighting": "vlb"},
        {"prediction_type": "v_prediction", "variance_type": "learned_range", "loss_type": "hybrid"},
    ],
)
def test_pipeline_save_and_reload(tmp_path, scheduler_kwargs):
    learned = scheduler_kwargs.get("variance_type") == "learned_range"
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=100, **scheduler_kwargs)
    pipe = DDPMPipeline(unet=tiny_unet(2 if learned else 1), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    reloaded = DiffusionPipeline.from_pretrained(tmp_path)
    reloaded.set_progress_bar_config(disable=True)
    assert type(reloaded.scheduler) is DDPMObjectiveScheduler
    for key, value in scheduler_kwargs.items():
        assert reloaded.scheduler.config[key] == value
    images = []
    for p in (pipe, reloaded):
        out = p(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
        images.append(out.images)
    assert images[0].shape == (2, 8, 8, 1)
    assert np.isfinite(images[0]).all() and images[0].min() >= 0 and images[0].max() <= 1
    np.testing.assert_allclose(images[0], images[1], atol=1e-6)
