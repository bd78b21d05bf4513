"""Fine-tuning a pretrained diffusers pipeline with another objective (--pretrained_model_name_or_path).

The pretrained model is a plain `DDPMPipeline` built here with google/ddpm-cifar10-32's scheduler config (linear
β from 1e-4 to 0.02, `fixed_large`, `clip_sample`) around a tiny 1-channel UNet for the 8×8 digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from hub_server import FakeHub, hub_server  # noqa: F401
from run_script import train
from safetensors.torch import load_file

from ddpm_objectives_hf import DDPMObjectiveScheduler
from ddpm_objectives_hf.training.models import UNetFamily

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_32 = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                  variance_type="fixed_large", clip_sample=True)  # fmt: skip
STEPS = ["--train_batch_size", "16", "--max_train_steps", "2", "--logging_steps", "1", "--num_inference_steps", "3",
         "--num_sample_images", "4", "--report_to", "none"]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pretrained") / "ddpm-cifar10-like"
    DDPMPipeline(unet=tiny.tiny_unet(1), scheduler=DDPMScheduler(**CIFAR10_32)).save_pretrained(folder)
    return folder


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_fine_tune_to_v_prediction_with_a_learned_variance(pretrained: Path, tmp_path: Path, capsys):
    out = tmp_path / "v"
    argv = ["--output_dir", str(out), "--pretrained_model_name_or_path", str(pretrained), "--prediction_type",
            "v_prediction", "--learn_variance", "--learning_rate", "1e-5", "--checkpointing_steps", "1", *STEPS]  # fmt: skip
    assert train(argv) == 0, capsys.readouterr().err
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample"):
        assert scheduler[key] == CIFAR10_32[key], key  # the pretrained config is the starting point
    assert scheduler["variance_type"] == "learned_range" and scheduler["prediction_type"] == "v_prediction"
    objective = json.loads((out / "objective.json").read_text())
    assert objective["loss_type"] == "hybrid" and objective["base_model"] == pretrained.name
    assert json.loads((out / "unet" / "config.json").read_text())["out_channels"] == 2
    # EMA started from the pretrained weights (two small steps away), not from a fresh initialisation
    before, after = _weights(pretrained), _weights(out)
    shared = [k for k in before if not k.startswith("conv_out")]
    assert max(float((after[k] - before[k]).abs().max()) for k in shared) < 1e-3
    torch.testing.assert_close(after["conv_out.weight"][:1], before["conv_out.weight"], atol=1e-3, rtol=0)
    card = (out / "README.md").read_text()
    assert "base_model" not in card.split("---")[1]  # a local folder is not a Hub id
    assert train([*argv, "--resume_from_checkpoint", "latest"]) == 0  # resumes as any run


def test_the_widened_output_starts_as_the_fixed_variance(pretrained: Path):
    """learned_range with v = +1 is β_t (the pretrained fixed_large) at every t > 0, exactly."""
    unet = UNet2DModel.from_pretrained(pretrained, subfolder="unet")
    UNetFamily().widen_output(unet, 2, 1.0)
    learned = DDPMObjectiveScheduler(**{**CIFAR10_32, "variance_type": "learned_range", "loss_type": "hybrid"})
    fixed = DDPMObjectiveScheduler(**CIFAR10_32)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 10, 500, 999])
    variance_values = unet(x, t).sample[:, 1:]
    torch.testing.assert_close(
        learned.model_log_variance(t, x, variance_values).double(), fixed.model_log_variance(t, x).double(),
        rtol=0, atol=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resolution", "16"], "--resolution 16 differs from the pretrained model's sample_size 8"),
        (["--class_conditional"], "--class_conditional: the pretrained model has no class embedding to train"),
        (["--model_config_name_or_path", "x.json"],
         "--pretrained_model_name_or_path brings its own model: drop --model_config_name_or_path"),
    ],
)  # fmt: skip
def test_flags_that_contradict_the_pretrained_model_are_one_line(pretrained, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    argv = ["--output_dir", str(out), "--pretrained_model_name_or_path", str(pretrained), *extra, *STEPS]
    assert train(argv) == 2
    assert capsys.readouterr().err.strip() == f"train.py: error: {message}"
    assert not out.exists()


def test_a_learned_model_keeps_its_variance_and_other_pipelines_are_refused(tmp_path: Path, capsys):
    learned = tmp_path / "learned"
    DDPMPipeline(unet=tiny.tiny_unet(2), scheduler=DDPMScheduler(**{**CIFAR10_32, "variance_type": "learned_range"})
                 ).save_pretrained(learned)  # fmt: skip
    out = tmp_path / "run"
    argv = ["--output_dir", str(out), "--pretrained_model_name_or_path", str(learned), *STEPS]
    assert train([*argv, "--variance_type", "fixed_small"]) == 2
    assert "--variance_type 'fixed_small': the pretrained model outputs a learned variance" in capsys.readouterr().err
    assert train(argv) == 0  # learned_range with the MSE: the mean is fine-tuned, the variance kept
    assert json.loads((out / "objective.json").read_text())["loss_type"] == "mse"
    capsys.readouterr()
    ddim = tmp_path / "ddim"
    DDPMPipeline(unet=tiny.tiny_unet(1), scheduler=DDIMScheduler()).save_pretrained(ddim)
    assert train(["--output_dir", str(tmp_path / "x"), "--pretrained_model_name_or_path", str(ddim), *STEPS]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train.py: error: --pretrained_model_name_or_path") and "DDPM-family scheduler" in err
    assert len(err.splitlines()) == 1


def test_a_hub_model_is_fine_tuned_by_its_id_and_named_as_the_base_model(
    pretrained: Path,
    hub_server: FakeHub,  # noqa: F811
    tmp_path: Path,
):
    from ddpm_objectives_hf.training.hub import push_to_hub

    repo_id = f"{hub_server.user}/ddpm-cifar10-like"
    push_to_hub(pretrained, repo_id, private=False, token="hf_fake", endpoint=hub_server.endpoint)
    out = tmp_path / "from-hub"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_ENDPOINT=hub_server.endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf-home"),
               HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")  # fmt: skip
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--output_dir", str(out),
               "--pretrained_model_name_or_path", repo_id, "--loss_weighting", "min_snr", *STEPS]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "objective.json").read_text())["base_model"] == repo_id
    metadata = (out / "README.md").read_text().split("---")[1]
    assert f"base_model: {repo_id}" in metadata
