"""The fast bits/dim estimator against closed forms, and scripts/evaluate.py end to end on a tiny pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from run_script import evaluate, train
from scipy.special import log_ndtr

from ddpm_objectives_hf import DDPMObjectiveScheduler
from ddpm_objectives_hf.bpd import (
    GaussianSurrogate,
    control_variate_features,
    estimate_bpd,
    full_bpd,
    learn_proposal,
)
from ddpm_objectives_hf.errors import ConfigError

T = 100
LN2 = math.log(2.0)


def offset(t: torch.Tensor) -> torch.Tensor:
    """A known error of the oracle's x0 prediction at t: x̂0 = x0 + c_t."""
    return 0.02 + 0.05 * torch.cos(t.double() / 7.0) ** 2


class OffsetOracle:
    """Knows the one training image x0 and predicts ε̂ so that x̂0 = x0 + c_t."""

    def __init__(self, scheduler, x0):
        self.x0, self.ac = x0, scheduler.alphas_cumprod.double()

    def __call__(self, xt, t):
        a = self.ac[t].sqrt().view(-1, 1, 1, 1).to(xt.dtype)
        s = (1 - self.ac[t]).sqrt().view(-1, 1, 1, 1).to(xt.dtype)
        x0_hat = self.x0 + offset(t).view(-1, 1, 1, 1).to(xt.dtype)
        return (xt - a * x0_hat) / s


class NoisyOracle(OffsetOracle):
    """Its error depends on the noise draw: x̂0 = x0 + c_t (1 + ε), with ε = (x_t − √ᾱ_t x0)/√(1 − ᾱ_t)."""

    def __call__(self, xt, t):
        a = self.ac[t].sqrt().view(-1, 1, 1, 1).to(xt.dtype)
        s = (1 - self.ac[t]).sqrt().view(-1, 1, 1, 1).to(xt.dtype)
        eps = (xt - a * self.x0) / s
        x0_hat = self.x0 + offset(t).view(-1, 1, 1, 1).to(xt.dtype) * (1 + eps)
        return (xt - a * x0_hat) / s


def log_bin_probability(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log(Φ(b) − Φ(a)) for a < b, on the tail where it does not cancel (reflected when a > 0)."""
    flip = a > 0
    hi, lo = np.where(flip, -a, b), np.where(flip, -b, a)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + np.log1p(-np.exp(log_lo - log_hi))


def closed_form_bound(x0: torch.Tensor, noisy: bool = False) -> float:
    """prior + decoder + Σ KL for the offset oracle (``noisy``: the noisy oracle, its expectation over ε by
    E(1 + ε)² = 2 and Gauss–Hermite quadrature for the decoder), in bits/dim, in numpy/scipy from diffusers' ᾱ_t."""
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(num_train_timesteps=T).alphas_cumprod.double().numpy()
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    betas = 1 - ac / ac_prev
    post_var = betas * (1 - ac_prev) / (1 - ac)
    coef1 = np.sqrt(ac_prev) * betas / (1 - ac)
    c = offset(torch.arange(T)).numpy()
    kl = 0.5 * (coef1[1:] * c[1:]) ** 2 / post_var[1:] / LN2 * (2 if noisy else 1)  # equal variances: the mean term
    x = x0.double().numpy().ravel()
    # prior: KL(N(√ᾱ_T x0, 1 − ᾱ_T) ‖ N(0, 1)) per dim
    m, v = np.sqrt(ac[-1]) * x, 1 - ac[-1]
    prior = np.mean(0.5 * (-1 - np.log(v) + v + m**2)) / LN2
    # decoder at t = 0: discretized Gaussian, mean x0 + c_0, variance β̃_1 (clipped)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80) if noisy else (np.zeros(1), np.ones(1))
    weights = weights / weights.sum()
    sd = np.sqrt(post_var[1])
    upper = np.where(x > 0.999, np.inf, x + 1 / 255)
    lower = np.where(x < -0.999, -np.inf, x - 1 / 255)
    decoder = 0.0
    for e, w in zip(nodes, weights):
        mean = x + c[0] * (1 + e)
        decoder += w * -np.mean(log_bin_probability((lower - mean) / sd, (upper - mean) / sd)) / LN2
    return float(prior + decoder + kl.sum())


@pytest.fixture(scope="module")
def oracle_setup():
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=T)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, (1, 1, 4, 4), generator=g).double() / 127.5 - 1).float()
    return scheduler, x0, OffsetOracle(scheduler, x0)


def test_full_bpd_equals_closed_form(oracle_setup):
    scheduler, x0, model = oracle_setup
    full = full_bpd(model, scheduler, x0.repeat(2, 1, 1, 1).double(), progress=False)
    assert full["terms"].shape == (2, T)
    np.testing.assert_allclose(full["total"].numpy(), closed_form_bound(x0), rtol=1e-6)


@pytest.mark.parametrize("learned", [False, True])
def test_fast_estimator_is_unbiased_and_interval_covers(oracle_setup, learned):
    scheduler, x0, model = oracle_setup
    truth = closed_form_bound(x0)
    images = x0.repeat(2000, 1, 1, 1).double()
    g = torch.Generator().manual_seed(1)
    proposal = learn_proposal(model, scheduler, x0.double(), grid_size=16, generator=g)[0] if learned else None
    est = estimate_bpd(model, scheduler, images, num_timesteps=8, proposal=proposal, generator=g, progress=False)
    assert est["evaluations_per_image"] == 8
    assert est["stderr"] > 0  # t is random: the per-image estimates vary
    assert abs(est["bpd"] - truth) < 4 * est["stderr"]
    assert est["ci95"][0] <= truth <= est["ci95"][1]


def test_learned_proposal_reduces_variance(oracle_setup):
    scheduler, x0, model = oracle_setup
    images = x0.repeat(500, 1, 1, 1).double()
    g = torch.Generator().manual_seed(2)
    uniform = estimate_bpd(model, scheduler, images, num_timesteps=6, generator=g, progress=False)
    proposal, _ = learn_proposal(model, scheduler, x0.double(), grid_size=32, generator=g)
    learned = estimate_bpd(model, scheduler, images, num_timesteps=6, proposal=proposal, generator=g, progress=False)
    assert learned["stderr"] < uniform["stderr"]


def test_control_variates_reduce_the_noise_and_stay_unbiased(oracle_setup):
    """A model whose error depends on the noise draw: regressing the draw out (cross-fitted) keeps the estimate on
    the closed form and shrinks its interval; the features are zero-mean."""
    scheduler, x0, _ = oracle_setup
    model = NoisyOracle(scheduler, x0)
    truth = closed_form_bound(x0, noisy=True)
    assert truth > closed_form_bound(x0) + 0.01
    images = x0.repeat(600, 1, 1, 1).double()
    g = torch.Generator().manual_seed(4)
    proposal, _ = learn_proposal(model, scheduler, x0.double(), grid_size=16, generator=g)
    results = {
        cv: estimate_bpd(
            model,
            scheduler,
            images,
            num_timesteps=8,
            proposal=proposal,
            control_variates=cv,
            generator=g,
            progress=False,
        )  # fmt: skip
        for cv in (False, True)
    }
    assert results[True]["control_variates"] and not results[False]["control_variates"]
    for est in results.values():
        assert abs(est["bpd"] - truth) < 4 * est["stderr"]
    assert results[True]["stderr"] < 0.5 * results[False]["stderr"]
    features = control_variate_features(torch.randn(20000, 1, 4, 4, generator=g, dtype=torch.float64), x0.double())
    assert features.mean(0).abs().max() < 4 * features.std(0).max() / math.sqrt(20000)


@pytest.mark.parametrize("rank", [16, 5])
def test_gaussian_surrogate_expected_terms_equal_their_monte_carlo_mean(rank):
    """The surrogate's closed-form E_ε L_t (and its decoder's Monte Carlo mean) against many draws of its own
    term through the scheduler's vlb_terms, with the full and a truncated eigenbasis."""
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=T)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(50, 1, 4, 4, generator=g) * 2 - 1
    surrogate = GaussianSurrogate(x, scheduler, rank=rank, draws=64)
    expected = surrogate.expected_terms(x[:3], g)
    for t in (0, 1, 10, 50, T - 1):
        draws = torch.stack(
            [surrogate.term(x[:3], torch.randn(3, 1, 4, 4, generator=g), torch.full((3,), t)) for _ in range(3000)]
        )
        stderr = draws.std(0) / math.sqrt(len(draws))
        tolerance = 4 * stderr * (math.sqrt(1 + 3000 / 64) if t == 0 else 1)  # t = 0 is itself a 64-draw mean
        assert ((expected[:, t] - draws.mean(0)).abs() < tolerance).all(), t


def test_heavy_timesteps_are_drawn_in_proportion(oracle_setup):
    """A t with half of q's mass gets half of the K calls of every image; every image costs exactly K calls."""
    scheduler, x0, oracle = oracle_setup
    seen = []

    def model(xt, t):
        seen.append(t.clone())
        return oracle(xt, t)

    q = torch.full((T,), 0.5 / (T - 1)).double()
    q[0] = 0.5
    est = estimate_bpd(model, scheduler, x0.repeat(3, 1, 1, 1).double(), num_timesteps=8, proposal=q,
                       generator=torch.Generator().manual_seed(5), progress=False)  # fmt: skip
    t = torch.stack(seen)  # [K, images]
    assert est["evaluations_per_image"] == 8 and t.shape == (8, 3)
    assert ((t == 0).sum(0) == 4).all()


@pytest.mark.parametrize("k", [0, 1, T + 1])
def test_estimator_rejects_bad_k(oracle_setup, k):
    scheduler, x0, model = oracle_setup
    with pytest.raises(ConfigError, match="num_timesteps") as err:
        estimate_bpd(model, scheduler, x0, num_timesteps=k, progress=False)
    assert err.value.parameter == "num_timesteps"


# ---------------------------------------------------------------------------------------------------- the script
TINY = [
    "--block_out_channels", "8", "16", "--layers_per_block", "1", "--norm_num_groups", "4",
    "--attention_resolution_index", "-1", "--train_batch_size", "16", "--max_train_steps", "4", "--logging_steps", "2",
    "--num_inference_steps", "3", "--num_sample_images", "4", "--report_to", "none", "--num_train_timesteps", "20",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "model"
    assert train([*TINY, "--output_dir", str(out)]) == 0
    return out


def run_eval(model_dir, tmp_path, *extra):
    return evaluate(
        [str(model_dir), "--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "16", "--num_samples", "16",
         "--num_inference_steps", "4", "--num_bpd_timesteps", "5", "--pilot_images", "2", "--pilot_grid", "8",
         "--fid_features", "digits", *extra]
    )  # fmt: skip


def test_report_on_tiny_pipeline(tiny_pipeline, tmp_path):
    assert run_eval(tiny_pipeline, tmp_path) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    full, fast = report["bpd_full"], report["bpd_fast"]
    assert full["network_evaluations"] == 16 * 20 and math.isfinite(full["bpd"]) and full["bpd"] > 0
    assert full["bpd"] == pytest.approx(full["prior_bpd"] + full["decoder_bpd"] + full["kl_sum_bpd"], rel=1e-6)
    assert fast["network_evaluations"] == fast["network_calls_per_image"] * 16 + fast["pilot_evaluations"]
    assert 5 <= fast["network_calls_per_image"] <= 5 * 4 and fast["ci95"][0] <= fast["bpd"] <= fast["ci95"][1]
    ode = report["bpd_ode"]
    assert ode["num_images"] == 16 and ode["draws"] == 2 and ode["divergence"] == "hutchinson"
    assert ode["rtol"] == ode["atol"] == 1e-5 and ode["network_calls_per_image"] > 2 * 6  # ≥ 6 per RK45 step
    assert math.isfinite(ode["bpd"]) and ode["ci95"][0] < ode["bpd"] < ode["ci95"][1] and ode["estimator_stderr"] > 0
    for name in ("full", "fast"):
        gap = ode[f"gap_{name}_bound"]
        assert gap["bpd"] == pytest.approx(report[f"bpd_{name}"]["bpd"] - ode["bpd"], abs=1e-9)
        assert gap["ci95"][0] < gap["bpd"] < gap["ci95"][1]
    assert report["sampling"]["num_inference_steps"] == 4 and report["sampling"]["num_samples"] == 16
    assert report["fid"]["feature"] == "digits" and report["fid"]["fid"] > 0
    assert sum(report["classifier_view"]["class_histogram"]) == 16
    decomposition = json.loads((tmp_path / "eval" / "elbo_decomposition.json").read_text())
    assert len(decomposition["terms_L_t_minus_1"]) == 20
    for png in ("samples.png", "elbo_terms.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 0


def test_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_eval(tmp_path / "empty", tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "MODEL_DIR" in err and "model_index.json" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("k", ["0", "21"])
def test_k_out_of_range(tiny_pipeline, tmp_path, capsys, k):
    assert run_eval(tiny_pipeline, tmp_path, "--num_bpd_timesteps", k) == 2
    assert "--num_bpd_timesteps" in capsys.readouterr().err


def test_a_folder_without_the_split_names_split_and_its_splits(tiny_pipeline, tmp_path, capsys):
    """A folder of held-out images has only a train split: evaluate.py's default --split test is named, with the
    splits the folder has, and --split train evaluates it."""
    from PIL import Image as PILImage

    folder = tmp_path / "held-out"
    folder.mkdir()
    for i in range(4):
        PILImage.new("L", (8, 8), i * 40).save(folder / f"{i}.png")
    assert run_eval(tiny_pipeline, tmp_path, "--train_data_dir", str(folder), "--no_ode_bpd") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after datasets' "Generating train split" bar
    assert line.startswith("evaluate.py: error: --split 'test' is not a split of the data") and "['train']" in line
    flags = ("--train_data_dir", str(folder), "--split", "train", "--no_ode_bpd", "--fid_features", "none")
    assert run_eval(tiny_pipeline, tmp_path, *flags) == 0


def test_channels_mismatch(tmp_path, capsys):
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    out = tmp_path / "model"
    assert train([*TINY, "--output_dir", str(out)]) == 0
    rgb = [PILImage.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(4)]
    Dataset.from_dict({"image": rgb}).cast_column("image", Image()).save_to_disk(str(tmp_path / "rgb"))
    assert run_eval(out, tmp_path, "--dataset_name", str(tmp_path / "rgb"), "--split", "train") == 2
    assert "channel" in capsys.readouterr().err


def test_missing_feature_network_offline(tiny_pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_OBJECTIVES_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    assert run_eval(tiny_pipeline, tmp_path, "--fid_features", "inception", "--no_full_bpd") == 2
    assert "--fid_features" in capsys.readouterr().err


def test_a_plain_diffusers_pipeline_is_evaluated_under_its_own_variance_type(tmp_path):
    """A `DDPMPipeline` built here with google/ddpm-cifar10-32's scheduler config (linear 1e-4 → 0.02, fixed_large,
    clip_sample) and its other variance types: the report names the model's own variance type, `fixed_large_log`
    means `fixed_large` (same bound), and neither is scored as `fixed_small` (another bound)."""
    from diffusers import DDPMPipeline, DDPMScheduler
    from tiny import tiny_unet

    bounds = {}
    for variance_type in ("fixed_large", "fixed_large_log", "fixed_small"):
        scheduler = DDPMScheduler(num_train_timesteps=20, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                  variance_type=variance_type, clip_sample=True)  # fmt: skip
        folder = tmp_path / variance_type
        DDPMPipeline(unet=tiny_unet(1), scheduler=scheduler).save_pretrained(folder)
        assert run_eval(folder, tmp_path / f"eval-{variance_type}", "--no_ode_bpd", "--fid_features", "none") == 0
        report = json.loads((tmp_path / f"eval-{variance_type}" / "eval" / "report.json").read_text())
        assert report["objective"]["variance_type"] == variance_type
        assert report["objective"]["prediction_type"] == "epsilon"
        bounds[variance_type] = report["bpd_full"]["bpd"]
    assert bounds["fixed_large_log"] == pytest.approx(bounds["fixed_large"], abs=1e-9)
    assert abs(bounds["fixed_small"] - bounds["fixed_large"]) > 0.05


def test_threads_default_to_one_as_accelerate_launch_and_are_restored(tiny_pipeline, tmp_path, monkeypatch, capsys):
    """evaluate.py runs with --num_threads (default $OMP_NUM_THREADS, else 1, as `accelerate launch` gives train.py)
    and gives the caller its threads back; 0 is refused naming the flag."""
    from ddpm_objectives_hf.errors import ConfigError

    seen = []

    def load(*args, **kwargs):  # the evaluation's first work: record its threads, then stop
        seen.append(torch.get_num_threads())
        raise ConfigError("stopped after the threads were set")

    monkeypatch.setattr("ddpm_objectives_hf.training.pipelines.load_denoiser", load)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    assert run_eval(tiny_pipeline, tmp_path) == 2
    assert run_eval(tiny_pipeline, tmp_path, "--num_threads", "2") == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert run_eval(tiny_pipeline, tmp_path) == 2
    assert seen == [1, 2, 3] and torch.get_num_threads() == before
    assert run_eval(tiny_pipeline, tmp_path, "--num_threads", "0") == 2
    assert "--num_threads must be an integer >= 1" in capsys.readouterr().err
