"""The probability-flow ODE likelihood against closed forms: Gaussian data N(μ, Σ) with a full covariance, whose exact
denoiser, marginals and flow map are known (docs/objective.md, "The likelihood the bound stands in for")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_objectives_hf import DDPMObjectiveScheduler, variational_bound
from ddpm_objectives_hf.errors import ConfigError
from ddpm_objectives_hf.ode import ContinuousSchedule, ode_bpd, ode_log_likelihood

SHAPE = (1, 2, 3)  # D = 6
D = 6


def gaussian(seed: int = 0, scale: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """μ and a full covariance Σ (correlated, eigenvalues spread over a decade)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    eig = scale**2 * np.geomspace(0.1, 1.0, D)
    return rng.normal(scale=0.2, size=D), (q * eig) @ q.T


def noise_level(scheduler: DDPMObjectiveScheduler, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, s) at fractional t by the documented rule, computed here from ᾱ alone: log-SNR linear in t between steps,
    ᾱ = sigmoid(λ); on a last interval ending at SNR = 0, the angle atan2(s, a) linear in t."""
    ac = scheduler.alphas_cumprod.double().numpy()
    lo = np.clip(np.floor(t).astype(int), 0, len(ac) - 1)
    hi = np.clip(lo + 1, 0, len(ac) - 1)
    f = t - lo
    if ac[hi].min() > 0:
        lam = (1 - f) * np.log(ac[lo] / (1 - ac[lo])) + f * np.log(ac[hi] / (1 - ac[hi]))
        abar = 1 / (1 + np.exp(-lam))
        return np.sqrt(abar), np.sqrt(1 - abar)
    # a zero-terminal-SNR schedule: the tests below only use it at the last interval or exactly on the steps
    phi_lo, phi_hi = np.arctan2(np.sqrt(1 - ac[lo]), np.sqrt(ac[lo])), np.arctan2(np.sqrt(1 - ac[hi]), np.sqrt(ac[hi]))
    with np.errstate(divide="ignore"):
        lam_lo, lam_hi = np.log(ac[lo] / (1 - ac[lo])), np.log(ac[hi] / (1 - ac[hi]))
    finite = np.isfinite(lam_hi) & np.isfinite(lam_lo)
    lam = np.where(finite, (1 - f) * np.where(finite, lam_lo, 0.0) + f * np.where(finite, lam_hi, 0.0), 0.0)
    phi = np.where(finite, np.arctan(np.exp(-lam / 2)), (1 - f) * phi_lo + f * phi_hi)
    return np.cos(phi), np.sin(phi)


class ExactModel:
    """The exact denoiser of N(μ, Σ) (of N(μ_y, Σ) given ``class_labels`` y) in the scheduler's target:
    ε* = s (a²Σ + s²I)⁻¹ (x − aμ), x0* = (x − sε*)/a, v* = aε* − s x0*, μ̃* = c1 x0* + c2 x (c1, c2 from ᾱ, linear
    in t between steps)."""

    def __init__(self, scheduler: DDPMObjectiveScheduler, mu: np.ndarray, sigma: np.ndarray):
        self.scheduler, self.mu, self.sigma = scheduler, np.atleast_2d(mu), sigma

    def __call__(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        tt = t.detach().double().numpy()
        a, s = noise_level(self.scheduler, tt)
        mu = self.mu[np.zeros(len(tt), dtype=int) if class_labels is None else class_labels.numpy()]
        cov = a[:, None, None] ** 2 * self.sigma + s[:, None, None] ** 2 * np.eye(D)
        gain = torch.from_numpy(s[:, None, None] * np.linalg.inv(cov)).to(x.dtype)
        flat = x.flatten(1)
        eps = (gain @ (flat - torch.from_numpy(a[:, None] * mu).to(x.dtype))[:, :, None])[:, :, 0]
        a_, s_ = (torch.from_numpy(v).to(x.dtype)[:, None] for v in (a, s))
        x0 = (flat - s_ * eps) / a_
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            out = eps
        elif kind == "sample":
            out = x0
        elif kind == "v_prediction":
            out = a_ * eps - s_ * x0
        else:
            ac = self.scheduler.alphas_cumprod.double().numpy()
            prev = np.concatenate([[1.0], ac[:-1]])
            beta = 1 - ac / prev
            c1 = np.interp(tt, np.arange(len(ac)), np.sqrt(prev) * beta / (1 - ac))
            c2 = np.interp(tt, np.arange(len(ac)), np.sqrt(1 - beta) * (1 - prev) / (1 - ac))
            out = torch.from_numpy(c1)[:, None].to(x.dtype) * x0 + torch.from_numpy(c2)[:, None].to(x.dtype) * flat
        return out.reshape(x.shape)


def log_normal(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    diff = x - mean
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * diff @ np.linalg.solve(cov, diff) - 0.5 * logdet - 0.5 * D * math.log(2 * math.pi))


def sqrtm(c: np.ndarray, power: float) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * w**power) @ v.T


def expected_log_likelihood(y: np.ndarray, mu, sigma, phi0: float, phi1: float) -> float:
    """What the ODE from φ0 to φ1 computes for the exact model, in closed form: the flow map of Gaussians is
    x1 = m1 + C1^½ C0^−½ (x0 − m0) (C = cos²φ Σ + sin²φ I, m = cos φ μ), so the ODE gives
    log N(x1; 0, I) + log N(x0; m0, C0) − log N(x1; m1, C1) + D log cos φ0 with x0 = cos φ0 · y."""
    a0, s0, a1, s1 = math.cos(phi0), math.sin(phi0), math.cos(phi1), math.sin(phi1)
    c0, c1 = a0**2 * sigma + s0**2 * np.eye(D), a1**2 * sigma + s1**2 * np.eye(D)
    x0 = a0 * y
    x1 = a1 * mu + sqrtm(c1, 0.5) @ sqrtm(c0, -0.5) @ (x0 - a0 * mu)
    exact = log_normal(x1, np.zeros(D), np.eye(D)) + log_normal(x0, a0 * mu, c0) - log_normal(x1, a1 * mu, c1)
    return exact + D * math.log(a0)


def tight_ode(model, scheduler, y, **kwargs) -> dict:
    """The ODE at a tolerance far below the tests' 1e-6 nats per dimension, with the exact divergence."""
    options = {"divergence": "exact", "rtol": 1e-10, "atol": 1e-10, "method": "DOP853", "progress": False}
    return ode_log_likelihood(model, scheduler, y, **{**options, **kwargs})


def draw(mu, sigma, n: int, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multivariate_normal(mu, sigma, size=n)).reshape((n,) + SHAPE)


TARGETS = ["epsilon", "sample", "v_prediction", "mean"]


@pytest.mark.parametrize("prediction_type", TARGETS)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_ode_equals_closed_form(prediction_type, zero_snr):
    scheduler = DDPMObjectiveScheduler(
        num_train_timesteps=200,
        beta_schedule="squaredcos_cap_v2",
        rescale_betas_zero_snr=zero_snr,
        prediction_type=prediction_type,
    )
    mu, sigma = gaussian()
    y = draw(mu, sigma, 3)
    out = tight_ode(ExactModel(scheduler, mu, sigma), scheduler, y)
    phi0, phi1 = ContinuousSchedule(scheduler).span(prediction_type)
    if zero_snr and prediction_type != "epsilon":
        assert phi1 == pytest.approx(math.pi / 2, abs=1e-12)  # the flow reaches pure noise: the prior is exact
        exact = [log_normal(v, mu, sigma + math.tan(phi0) ** 2 * np.eye(D)) for v in y.flatten(1).numpy()]
        np.testing.assert_allclose(out["log_likelihood"].numpy() / D, np.array(exact) / D, atol=1e-6, rtol=0)
    expected = [expected_log_likelihood(v, mu, sigma, phi0, phi1) for v in y.flatten(1).numpy()]
    np.testing.assert_allclose(out["log_likelihood"].numpy() / D, np.array(expected) / D, atol=1e-6, rtol=0)


def test_linear_schedule_and_prior_mismatch():
    """The DDPM linear schedule: at SNR_T ≈ 4e-5 the prior N(0, I) differs from the marginal; the closed form
    carries the difference, and the result is still close to log N(y; μ, Σ + σ0²I)."""
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=1000)
    mu, sigma = gaussian(seed=3)
    y = draw(mu, sigma, 2, seed=4)
    out = tight_ode(ExactModel(scheduler, mu, sigma), scheduler, y)
    phi0, phi1 = ContinuousSchedule(scheduler).span("epsilon")
    expected = [expected_log_likelihood(v, mu, sigma, phi0, phi1) for v in y.flatten(1).numpy()]
    np.testing.assert_allclose(out["log_likelihood"].numpy() / D, np.array(expected) / D, atol=1e-6, rtol=0)
    marginal = [log_normal(v, mu, sigma + math.tan(phi0) ** 2 * np.eye(D)) for v in y.flatten(1).numpy()]
    np.testing.assert_allclose(out["log_likelihood"].numpy() / D, np.array(marginal) / D, atol=1e-3, rtol=0)


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "sigmoid"])
def test_every_beta_schedule(beta_schedule):
    """The other schedules diffusers builds from beta_start/beta_end: the same closed form, v target."""
    scheduler = DDPMObjectiveScheduler(
        num_train_timesteps=200, beta_schedule=beta_schedule, beta_end=0.05, prediction_type="v_prediction"
    )
    mu, sigma = gaussian(seed=13)
    y = draw(mu, sigma, 2, seed=14)
    out = tight_ode(ExactModel(scheduler, mu, sigma), scheduler, y)
    phi0, phi1 = ContinuousSchedule(scheduler).span("v_prediction")
    expected = [expected_log_likelihood(v, mu, sigma, phi0, phi1) for v in y.flatten(1).numpy()]
    np.testing.assert_allclose(out["log_likelihood"].numpy() / D, np.array(expected) / D, atol=1e-6, rtol=0)


def test_class_conditional_gives_log_p_x_given_y():
    """model_kwargs reach each image's solve: with a class mean μ_y per class the ODE gives log N(y; μ_y, ·)."""
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=100, rescale_betas_zero_snr=True, prediction_type="sample")
    mu, sigma = gaussian(seed=5)
    mus = np.stack([mu, -mu, 2 * mu])
    labels = torch.tensor([2, 0, 1, 2])
    rng = np.random.default_rng(6)
    y = torch.from_numpy(np.stack([rng.multivariate_normal(mus[k], sigma) for k in labels.numpy()])).reshape(
        (4,) + SHAPE
    )
    out = tight_ode(
        ExactModel(scheduler, mus, sigma), scheduler, y, batch_size=3, model_kwargs={"class_labels": labels}
    )
    phi0, _ = ContinuousSchedule(scheduler).span("sample")
    exact = [
        log_normal(v, mus[k], sigma + math.tan(phi0) ** 2 * np.eye(D)) for v, k in zip(y.flatten(1).numpy(), labels)
    ]
    np.testing.assert_allclose(out["log_likelihood"].numpy() / D, np.array(exact) / D, atol=1e-6, rtol=0)


def test_hutchinson_interval_covers_the_exact_trace():
    """Many Rademacher probes on the same image: their mean's 95% interval covers the exact-divergence value, and
    single probes really vary (a full Σ: the Jacobian is not diagonal)."""
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=100)
    mu, sigma = gaussian(seed=7, scale=0.5)
    y = draw(mu, sigma, 1, seed=8)
    model = ExactModel(scheduler, mu, sigma)
    exact = ode_log_likelihood(model, scheduler, y, divergence="exact", rtol=1e-8, atol=1e-8, progress=False)
    copies = y.expand((64,) + SHAPE)
    estimates = ode_log_likelihood(
        model,
        scheduler,
        copies,
        divergence="hutchinson",
        rtol=1e-8,
        atol=1e-8,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )["log_likelihood"]
    mean, se = float(estimates.mean()), float(estimates.std() / 8)
    assert float(estimates.std()) > 1e-3
    assert abs(mean - float(exact["log_likelihood"][0])) < 1.96 * se + 1e-6


def test_batch_composition_does_not_matter():
    """An image's solve is its own: alone, or with other images in another order, the same numbers."""
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=100, prediction_type="v_prediction")
    mu, sigma = gaussian(seed=9)
    y = draw(mu, sigma, 5, seed=10)
    model = ExactModel(scheduler, mu, sigma)
    probes = torch.randint(0, 2, y.shape, generator=torch.Generator().manual_seed(1)).double() * 2 - 1
    together = ode_log_likelihood(model, scheduler, y, probes=probes, progress=False)
    order = torch.tensor([3, 1, 4, 0, 2])
    shuffled = ode_log_likelihood(model, scheduler, y[order], probes=probes[order], batch_size=2, progress=False)
    alone = ode_log_likelihood(model, scheduler, y[:1], probes=probes[:1], progress=False)
    for key in ("log_likelihood", "evaluations"):
        np.testing.assert_array_equal(shuffled[key].numpy(), together[key][order].numpy())
    np.testing.assert_array_equal(alone["log_likelihood"].numpy(), together["log_likelihood"][:1].numpy())


def test_bound_is_above_the_exact_likelihood_on_average():
    """The same exact model scored both ways, in bits/dim on the 8-bit grid: the variational bound averaged over
    many images is above the dequantised ODE value (the bound of a model is ≥ its likelihood's cross-entropy,
    and the exact model's ODE density is the data's own); per image it need not be."""
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=100)
    mu, sigma = gaussian(seed=11, scale=0.25)
    x = draw(mu, sigma, 48, seed=12).clamp(-1, 1)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1  # on the 8-bit grid
    model = ExactModel(scheduler, mu, sigma)
    g = torch.Generator().manual_seed(0)
    bound = variational_bound(model, scheduler, x, generator=g, progress=False)["total"].double()
    ode = ode_bpd(model, scheduler, x, draws=2, divergence="exact", generator=g, progress=False)
    assert float(bound.mean()) > ode["bpd"]
    assert ode["ci95"][0] < ode["bpd"] < ode["ci95"][1]


@pytest.mark.parametrize(
    "kwargs, parameter",
    [
        ({"rtol": 0.0}, "ode_rtol"),
        ({"atol": -1e-5}, "ode_atol"),
        ({"rtol": float("nan")}, "ode_rtol"),
        ({"divergence": "skilling"}, "ode_divergence"),
        ({"method": "euler"}, "ode_method"),
        ({"draws": 0}, "ode_draws"),
    ],
)
def test_bad_options_name_their_parameter(kwargs, parameter):
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=10)
    mu, sigma = gaussian()
    with pytest.raises(ConfigError) as err:
        ode_bpd(ExactModel(scheduler, mu, sigma), scheduler, draw(mu, sigma, 1), progress=False, **kwargs)
    assert err.value.parameter == parameter


def test_a_scheduler_without_a_ddpm_schedule_is_refused():
    from diffusers import EulerDiscreteScheduler

    mu, sigma = gaussian()
    with pytest.raises(ConfigError) as err:
        ode_log_likelihood(lambda x, t: x, EulerDiscreteScheduler(), draw(mu, sigma, 1), progress=False)
    assert err.value.parameter == "scheduler"


def test_an_error_in_the_network_stops_every_solve():
    """A failing network call reaches the caller as it is, and no solver thread is left waiting."""
    import threading

    scheduler = DDPMObjectiveScheduler(num_train_timesteps=50)
    mu, sigma = gaussian()
    exact = ExactModel(scheduler, mu, sigma)
    calls = []

    def failing(x, t):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("out of memory (simulated)")
        return exact(x, t)

    with pytest.raises(RuntimeError, match="simulated"):
        ode_log_likelihood(failing, scheduler, draw(mu, sigma, 6), progress=False)
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("ode-solve")]
