"""Model families from the command line: a class-conditional `DiTTransformer2DModel` trains on the digits, saves,
loads and samples without this package (with a σ-space scheduler, the batch from the labels), resumes and is
evaluated; bad model configs get one line naming the flag; a UNet's output layer widens without changing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch
from run_script import evaluate, train

from ddpm_objectives_hf.training.models import FAMILIES, UNetFamily, family_of

DIT = {"_class_name": "DiTTransformer2DModel", "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 1,
       "patch_size": 2, "norm_num_groups": 16}  # fmt: skip
STEPS = ["--train_batch_size", "16", "--max_train_steps", "6", "--logging_steps", "2", "--num_inference_steps", "3",
         "--num_sample_images", "4", "--report_to", "none", "--num_train_timesteps", "50"]  # fmt: skip


def _config(tmp_path: Path, **changes) -> str:
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps({**DIT, **changes}))
    return str(path)


def test_a_class_conditional_dit_trains_saves_samples_and_evaluates(tmp_path: Path):
    out = tmp_path / "dit"
    argv = ["--output_dir", str(out), "--model_config_name_or_path", _config(tmp_path), "--class_conditional",
            "--learn_variance", "--checkpointing_steps", "3", *STEPS]  # fmt: skip
    assert train(argv) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "DiTTransformer2DModel"] and index["null_class_label"] == 10
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert unet_config["num_embeds_ada_norm"] == 10 and unet_config["out_channels"] == 2  # learned variance
    # resume from the last checkpoint to the same step count: the same run, nothing to train
    assert train([*argv, "--resume_from_checkpoint", "latest"]) == 0
    # without the package: plain diffusers, Euler (scale_model_input, init_noise_sigma), the batch from the labels
    script = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'ddpm_objectives_hf':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import numpy as np, torch\n"
        "from diffusers import DiffusionPipeline, EulerDiscreteScheduler\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)\n"
        "pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)\n"
        "images = pipe(class_labels=[0, 3, 7], guidance_scale=2.0, num_inference_steps=4, output_type='np').images\n"
        "print(type(pipe.unet).__name__, images.shape, bool(np.isfinite(images).all()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "DiTTransformer2DModel (3, 8, 8, 1) True"
    flags = ["--output_dir", str(tmp_path / "eval"), "--max_eval_samples", "8", "--num_samples", "8",
             "--num_inference_steps", "3", "--num_bpd_timesteps", "5", "--pilot_images", "2", "--pilot_grid", "8",
             "--fid_features", "none", "--max_ode_samples", "2", "--ode_draws", "1"]  # fmt: skip
    assert evaluate([str(out), *flags]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["objective"]["variance_type"] == "learned_range" and report["conditioning"]["num_classes"] == 10
    assert all(torch.isfinite(torch.tensor(report[k]["bpd"])) for k in ("bpd_full", "bpd_fast", "bpd_ode"))


@pytest.mark.parametrize(
    ("changes", "extra", "message"),
    [
        ({}, [], "--model_config_name_or_path: DiTTransformer2DModel is class-conditional; add --class_conditional"),
        ({"_class_name": "UNet2DConditionModel"}, ["--class_conditional"],
         "--model_config_name_or_path: 'UNet2DConditionModel' is not a model class this tool trains; valid: "
         "UNet2DModel, DiTTransformer2DModel"),
        ({"patch_size": 3}, ["--class_conditional"], "--resolution 8 must be a multiple of the DiT's patch_size 3"),
    ],
)  # fmt: skip
def test_a_model_config_that_cannot_serve_is_one_line(tmp_path: Path, capsys, changes, extra, message):
    out = tmp_path / "run"
    argv = ["--output_dir", str(out), "--model_config_name_or_path", _config(tmp_path, **changes), *extra, *STEPS]
    assert train(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"train.py: error: {message}"
    assert not out.exists()


def test_families_are_found_by_class_name_and_a_widened_unet_keeps_its_outputs():
    assert set(FAMILIES) == {"UNet2DModel", "DiTTransformer2DModel"}
    unet = tiny.tiny_unet(1)
    assert isinstance(family_of(unet), UNetFamily) and family_of({"_class_name": "UNet2DModel"}) is family_of(unet)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 40])
    before = unet(x, t).sample
    UNetFamily().widen_output(unet, 2, -1.0)
    after = unet(x, t).sample
    assert unet.config.out_channels == 2 and after.shape == (2, 2, 8, 8)
    torch.testing.assert_close(after[:, :1], before)
    torch.testing.assert_close(after[:, 1:], torch.full_like(before, -1.0))


def test_a_dit_drops_labels_only_as_the_run_says():
    """diffusers' DiT label embedding drops labels itself (p = 0.1) in training mode; prepared for training, the
    run's --condition_dropout is the only dropout (two training-mode forwards agree)."""
    family = FAMILIES["DiTTransformer2DModel"]
    config = family.configure(DIT, resolution=8, channels=1, out_channels=1, num_classes=10, null_class=True)
    torch.manual_seed(0)
    model = family.prepare_for_training(family.model_class.from_config(config)).train()
    x, t, y = torch.randn(64, 1, 8, 8), torch.full((64,), 10), torch.arange(64) % 10
    torch.testing.assert_close(model(x, t, class_labels=y).sample, model(x, t, class_labels=y).sample)
    assert family.embedded_classes(config) == 11
