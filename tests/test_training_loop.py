"""examples/train_text_to_image_objective.py: the package's loss inside someone else's loop.

The per-sample loss of every step is checked against the min-SNR-γ loss as diffusers' own
examples/text_to_image/train_text_to_image.py computes it (`compute_snr` from `diffusers.training_utils`, the
target from diffusers' `DDPMScheduler`), with zero terminal SNR, for ε- and v-prediction.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_text_to_image_objective.py"
GAMMA = 5.0


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_text_to_image_objective", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def diffusers_scheduler(example, prediction_type: str) -> DDPMScheduler:
    """diffusers' own scheduler from the same SD config, as train_text_to_image.py builds its ``noise_scheduler``."""
    return DDPMScheduler.from_config(
        example.SD_SCHEDULER_CONFIG, prediction_type=prediction_type, rescale_betas_zero_snr=True
    )


def diffusers_per_sample_loss(noise_scheduler, model_pred, latents, noise, timesteps, snr_gamma=GAMMA):
    """The loss of train_text_to_image.py, per sample (before its final ``loss.mean()``)."""
    if noise_scheduler.config.prediction_type == "epsilon":
        target = noise
    elif noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    loss = loss.mean(dim=list(range(1, len(loss.shape))))
    if snr_gamma is None:
        return loss
    snr = compute_snr(noise_scheduler, timesteps)
    mse_loss_weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if noise_scheduler.config.prediction_type == "epsilon":
        mse_loss_weights = mse_loss_weights / snr
    elif noise_scheduler.config.prediction_type == "v_prediction":
        mse_loss_weights = mse_loss_weights / (snr + 1)
    return loss * mse_loss_weights


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loop_runs_and_each_step_is_diffusers_min_snr_loss(example, prediction_type, tmp_path):
    reference = diffusers_scheduler(example, prediction_type)
    assert reference.alphas_cumprod[-1] == 0  # zero terminal SNR is on
    steps = []

    def check(step, out):
        expected = diffusers_per_sample_loss(reference, out.model_pred.detach(), out.latents, out.noise, out.timesteps)
        torch.testing.assert_close(out.per_sample_loss.detach().float(), expected, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(out.loss, out.per_sample_loss.mean())
        steps.append(out.timesteps)

    args = example.parse_args(
        ["--tiny", "--prediction_type", prediction_type, "--max_train_steps", "3", "--output_dir", str(tmp_path)]
    )
    losses = example.train(args, on_step=check)
    assert len(losses) == len(steps) == 3 and all(torch.isfinite(torch.tensor(losses)))
    # the loop trained the UNet it loaded, and the saved scheduler carries the objective
    initial = UNet2DConditionModel.from_pretrained(
        example.write_tiny_checkpoint(tmp_path / "initial"), subfolder="unet"
    )
    trained = UNet2DConditionModel.from_pretrained(tmp_path, subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), trained.parameters()))
    saved = example.DDPMObjectiveScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert (saved.config.prediction_type, saved.config.loss_weighting) == (prediction_type, "min_snr")
    assert saved.config.rescale_betas_zero_snr and saved.config.snr_gamma == GAMMA


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_last_timestep_with_zero_terminal_snr(example, prediction_type, tmp_path):
    """At t = T − 1 the SNR is 0. diffusers' formula gives min(0, γ)/0 = NaN for ε (one such sample makes the
    batch loss NaN) and 0/(0 + 1) = 0 for v. The package uses the limit SNR → 0 of the same weight: 1 for ε,
    0 for v; everywhere else the two agree."""
    args = example.parse_args(["--tiny", "--prediction_type", prediction_type])
    folder = example.write_tiny_checkpoint(tmp_path)
    scheduler = example.load_scheduler(str(folder), args)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    reference = diffusers_scheduler(example, prediction_type)
    g = torch.Generator().manual_seed(0)
    latents, states = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 3, 8, generator=g)
    timesteps = torch.tensor([0, 1, 500, 998, 999])
    out = example.compute_loss(unet, scheduler, latents, states, timesteps=timesteps, generator=g)
    expected = diffusers_per_sample_loss(reference, out.model_pred.detach(), latents, out.noise, timesteps)
    ours = out.per_sample_loss.detach().float()
    torch.testing.assert_close(ours[:-1], expected[:-1], rtol=1e-5, atol=1e-7)
    assert torch.isfinite(out.loss)
    unweighted = diffusers_per_sample_loss(reference, out.model_pred.detach(), latents, out.noise, timesteps, None)
    if prediction_type == "epsilon":
        assert torch.isnan(expected[-1])
        torch.testing.assert_close(ours[-1], unweighted[-1])  # weight 1
    else:
        assert expected[-1] == 0 and ours[-1] == 0 and unweighted[-1] > 0  # weight 0
    # the loss gradient is finite too
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in unet.parameters() if p.grad is not None)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_plain_mse_without_snr_gamma(example, prediction_type, tmp_path):
    """``--snr_gamma 0`` is train_text_to_image.py's ``snr_gamma=None`` loss, the unweighted MSE of the target:
    `simple` for ε, `edm` with σ_data = 1 (w = 1 + 1/SNR in ε-units) for v, finite at SNR = 0 too."""
    args = example.parse_args(["--tiny", "--snr_gamma", "0", "--prediction_type", prediction_type])
    folder = example.write_tiny_checkpoint(tmp_path)
    scheduler = example.load_scheduler(str(folder), args)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    g = torch.Generator().manual_seed(1)
    latents, states = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    out = example.compute_loss(unet, scheduler, latents, states, timesteps=torch.tensor([0, 10, 700, 999]))
    reference = diffusers_scheduler(example, prediction_type)
    expected = diffusers_per_sample_loss(reference, out.model_pred.detach(), latents, out.noise, out.timesteps, None)
    torch.testing.assert_close(out.per_sample_loss.detach().float(), expected, rtol=1e-5, atol=1e-7)
