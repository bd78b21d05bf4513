"""Every `DDPMScheduler` config is a `DDPMObjectiveScheduler` config with the same meaning (issue: drop-in).

`step` is checked against diffusers' own `DDPMScheduler.step` fed the same model output and generator; the
documented differences (float64 posterior, no noise on a respaced schedule's last step, `fixed_large_log`, a
negative `learned` variance, float32 underflow of ᾱ) are checked on their own.
"""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_objectives_hf import DDPMObjectiveScheduler, variational_bound
from ddpm_objectives_hf.scheduling_ddpm_objective import VARIANCE_TYPES
from ddpm_objectives_hf.weighting import WEIGHTINGS

DIFFUSERS_VARIANCE_TYPES = [
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
]
DIFFUSERS_SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"]


def _model(x: torch.Tensor, t: int, learned: bool) -> torch.Tensor:
    """A smooth deterministic 'network'; its variance channels are positive (a valid `learned` σ², and a `learned_range`
    fraction in (−1, 1))."""
    pred = 0.8 * torch.tanh(1.3 * x) + 0.05 * torch.sin(3.0 * x + t / 100.0)
    return torch.cat([pred, 0.5 + 0.4 * torch.tanh(x + t / 1000.0)], dim=1) if learned else pred


def test_the_choices_are_diffusers_own():
    """The Literal lists of DDPMScheduler's signature are ours (variance types, beta schedules), so a new one in
    diffusers shows up here."""
    ours = inspect.signature(DDPMObjectiveScheduler.__init__).parameters
    theirs = inspect.signature(DDPMScheduler.__init__).parameters
    for name in ("variance_type", "beta_schedule", "timestep_spacing"):
        assert set(_literal(theirs[name].annotation)) <= set(_literal(ours[name].annotation)), name
    assert set(VARIANCE_TYPES) == set(DIFFUSERS_VARIANCE_TYPES)


def _literal(annotation) -> tuple:
    import typing

    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation  # noqa: S307 (a test)
    return typing.get_args(hint)


@pytest.mark.parametrize("variance_type", DIFFUSERS_VARIANCE_TYPES)
@pytest.mark.parametrize("beta_schedule", DIFFUSERS_SCHEDULES)
def test_every_config_round_trips(variance_type, beta_schedule):
    theirs = DDPMScheduler(variance_type=variance_type, beta_schedule=beta_schedule, clip_sample=False)
    ours = DDPMObjectiveScheduler.from_config(theirs.config)
    assert ours.config.variance_type == variance_type and ours.config.beta_schedule == beta_schedule
    back = DDPMScheduler.from_config(ours.config)
    for key, value in theirs.config.items():
        assert back.config[key] == value, key
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=0)
    # the objective's tables are finite for every target's weights
    for units in ("epsilon", "sample", "v_prediction", "mean"):
        assert torch.isfinite(ours.loss_weight(torch.arange(1000), units=units)).all(), units


@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
)
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize(("num_inference_steps", "spacing"), [(None, "leading"), (25, "leading"), (10, "trailing")])
def test_step_matches_diffusers(variance_type, prediction_type, num_inference_steps, spacing):
    """Same output, same generator: ours equals diffusers' step to float32 rounding (ours is float64 inside)."""
    config = dict(variance_type=variance_type, prediction_type=prediction_type, timestep_spacing=spacing,
                  beta_schedule="squaredcos_cap_v2", clip_sample=True)  # fmt: skip
    theirs, ours = DDPMScheduler(**config), DDPMObjectiveScheduler(**config)
    if num_inference_steps:
        theirs.set_timesteps(num_inference_steps)
        ours.set_timesteps(num_inference_steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    learned = variance_type.startswith("learned")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g_theirs, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    timesteps = ours.timesteps.tolist()
    for t in timesteps:
        out = _model(x, t, learned)
        want = theirs.step(out, t, x, generator=g_theirs)
        got = ours.step(out, t, x, generator=g_ours)
        torch.testing.assert_close(got.pred_original_sample, want.pred_original_sample, rtol=1e-5, atol=1e-5)
        if t != timesteps[-1] or t == 0:  # the last respaced step at t > 0: test_last_respaced_step_adds_no_noise
            torch.testing.assert_close(got.prev_sample, want.prev_sample, rtol=1e-4, atol=1e-4)
        x = want.prev_sample


def test_log_variants_mean_what_their_names_say():
    """`fixed_small_log` is β̃ and `fixed_large_log` is β (diffusers' own step is NaN for the latter): same step,
    same bound as the plain forms."""
    x0 = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model = lambda x, t: _model(x, int(t[0]), False)  # noqa: E731
    for plain, log_form in (("fixed_small", "fixed_small_log"), ("fixed_large", "fixed_large_log")):
        a, b = DDPMObjectiveScheduler(variance_type=plain), DDPMObjectiveScheduler(variance_type=log_form)
        x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        for t in (999, 500, 1):
            out = _model(x, t, False)
            sa = a.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            sb = b.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            assert torch.isfinite(sb).all()
            torch.testing.assert_close(sa, sb, rtol=0, atol=0)
        ta = variational_bound(
            model, a, x0, timesteps=[0, 1, 2, 500, 999], generator=torch.Generator().manual_seed(2), progress=False
        )
        tb = variational_bound(
            model, b, x0, timesteps=[0, 1, 2, 500, 999], generator=torch.Generator().manual_seed(2), progress=False
        )
        torch.testing.assert_close(ta["total"], tb["total"], rtol=0, atol=0)
    # the large variance at t = 500 is β_500, independently of the tables
    sched = DDPMObjectiveScheduler(variance_type="fixed_large_log")
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    got = sched.step(torch.zeros_like(x), 500, x, generator=torch.Generator().manual_seed(0)).prev_sample
    beta = 1 - sched.alphas_cumprod64[500] / sched.alphas_cumprod64[499]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(got, beta.sqrt() * noise, rtol=1e-12, atol=0)


def test_learned_reads_the_channels_as_the_variance():
    """diffusers' reading: σ² = v (not improved-diffusion's log σ² = v). With v = β̃_t the bound is the
    `fixed_small` bound, and the step is the `fixed_small` step; a negative v is floored, not NaN."""
    fixed = DDPMObjectiveScheduler(variance_type="fixed_small", loss_type="kl")
    learned = DDPMObjectiveScheduler(variance_type="learned", loss_type="kl")
    x0 = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def with_true_posterior_variance(x, t):
        variance = fixed.posterior_variance(t).float().reshape(-1, 1, 1, 1).expand_as(x)
        variance = torch.where(t.reshape(-1, 1, 1, 1) == 0, fixed.posterior_variance(1).float(), variance)
        return torch.cat([_model(x, 0, False), variance], dim=1)

    plain = lambda x, t: _model(x, 0, False)  # noqa: E731
    a = variational_bound(
        plain, fixed, x0, timesteps=[0, 1, 2, 500, 999], generator=torch.Generator().manual_seed(2), progress=False
    )
    b = variational_bound(with_true_posterior_variance, learned, x0, timesteps=[0, 1, 2, 500, 999], generator=torch.Generator().manual_seed(2),
                          progress=False)  # fmt: skip
    torch.testing.assert_close(a["terms"], b["terms"], rtol=1e-4, atol=1e-6)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = torch.cat([_model(x, 700, False), torch.full_like(x, -0.5)], dim=1)
    step = learned.step(out, 700, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert torch.isfinite(step).all()


def test_mse_with_a_learned_variance_trains_the_mean_only(caplog):
    """diffusers' IF fine-tuning: ε-MSE on the prediction channels; the variance channels get no gradient, and the
    log says so once."""
    for variance_type in ("learned_range", "learned"):
        sched = DDPMObjectiveScheduler(variance_type=variance_type, loss_type="mse")
        x0 = torch.rand(4, 2, 4, 4) * 2 - 1
        noise, t = torch.randn_like(x0), torch.tensor([1, 100, 500, 999])
        output = torch.randn(4, 4, 4, 4, requires_grad=True)
        with caplog.at_level(logging.WARNING):
            loss, terms = sched.training_loss(output, x0, noise, t)
            sched.training_loss(output, x0, noise, t)
        loss.sum().backward()
        assert output.grad[:, 2:].abs().max() == 0 and output.grad[:, :2].abs().max() > 0
        torch.testing.assert_close(loss, ((output[:, :2] - noise) ** 2).mean((1, 2, 3)))
        said = [r for r in caplog.records if "variance channels stay out of the loss" in r.getMessage()]
        assert len(said) == 1 and variance_type in said[0].getMessage()
        caplog.clear()


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_float32_underflow_of_alphas_cumprod(weighting):
    """linear 0.01 → 0.2: diffusers' float32 ᾱ reaches 0 at t ≈ 330 (a float64 product is ~1e-46 at the end).
    Loads for every target and weighting (no blame on the mean target), the weights are finite, the tables come
    from the float64 product there, and sampling and the bound stay finite."""
    theirs = DDPMScheduler(beta_start=0.01, beta_end=0.2)
    assert (theirs.alphas_cumprod == 0).any()
    for target in ("epsilon", "sample", "v_prediction", "mean"):
        sched = DDPMObjectiveScheduler.from_config(theirs.config, prediction_type=target, loss_weighting=weighting)
        t = torch.arange(1000)
        weights = sched.loss_weight(t, units=target)
        assert torch.isfinite(weights).all() and (sched.snr(t) > 0).all()
    product = np.cumprod(1.0 - theirs.betas.double().numpy())
    np.testing.assert_allclose(sched.snr(999).item(), product[-1] / (1 - product[-1]), rtol=1e-6)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for step in (999, 998, 500, 0):
        x = sched.step(0.1 * x, step, x, generator=torch.Generator().manual_seed(step)).prev_sample
        assert torch.isfinite(x).all()
    x0 = torch.rand(2, 1, 4, 4) * 2 - 1
    eps = DDPMObjectiveScheduler.from_config(theirs.config)
    bound = variational_bound(lambda x, t: 0.1 * x, eps, x0, generator=torch.Generator().manual_seed(0),
                              progress=False)  # fmt: skip
    assert torch.isfinite(bound["total"]).all()


def test_laplace_schedule_trains():
    sched = DDPMObjectiveScheduler(beta_schedule="laplace", prediction_type="v_prediction", loss_weighting="min_snr")
    torch.testing.assert_close(sched.alphas_cumprod, DDPMScheduler(beta_schedule="laplace").alphas_cumprod)
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    loss, _ = sched.training_loss(torch.zeros_like(x0), x0, torch.randn_like(x0), torch.tensor([0, 10, 500, 999]))
    assert torch.isfinite(loss).all()


def test_last_respaced_step_adds_no_noise():
    """The documented difference: `steps_offset=1` ends the respaced schedule at t = 1 > 0, where diffusers adds
    noise; ours returns the posterior mean (improved-diffusion's p_sample)."""
    config = dict(steps_offset=1, clip_sample=False, variance_type="fixed_large")
    ours, theirs = DDPMObjectiveScheduler(**config), DDPMScheduler(**config)
    for s in (ours, theirs):
        s.set_timesteps(10)
    last = int(ours.timesteps[-1])
    assert last > 0
    x = torch.randn(2, 1, 4, 4)
    out = _model(x, last, False)
    a = ours.step(out, last, x, generator=torch.Generator().manual_seed(0)).prev_sample
    b = ours.step(out, last, x, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = theirs.step(out, last, x, generator=torch.Generator().manual_seed(0)).prev_sample
    d = theirs.step(out, last, x, generator=torch.Generator().manual_seed(1)).prev_sample
    assert not torch.equal(c, d)
    torch.testing.assert_close(a, 0.5 * (c + d), rtol=0, atol=0.05)  # same mean; theirs adds √β z (≈ 0.014)
