"""End-to-end tests of scripts/train.py on the embedded digits with a tiny UNet (a few steps, a second or so each).

`main(argv)` runs in-process; the two-process test launches the script with `accelerate launch` on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import tiny
import torch
import yaml
from hub_server import FakeHub, hub_server  # noqa: F401
from PIL import Image
from run_script import train
from safetensors.torch import load_file

from ddpm_objectives_hf.training.arguments import parse_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train.py"


TOKEN = "hf_fake_secret"
TINY = [*tiny.TINY, "--checkpointing_steps", "1000", "--num_inference_steps", "5"]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
ERROR_PREFIX = "train.py: error:"


def tiny_args(output_dir: Path, *extra: str, steps: int = 6) -> list[str]:
    """Flags of a tiny run; `extra` comes last, so it overrides (argparse keeps the last value of a flag)."""
    return [*TINY, "--max_train_steps", str(steps), "--output_dir", str(output_dir), *extra]


def run_ok(argv: list[str], capsys=None) -> None:
    """Train and expect success; with ``capsys`` a failure shows the script's stderr."""
    rc = train(argv)
    err = capsys.readouterr().err if capsys is not None else ""
    assert rc == 0, f"train.py failed (exit {rc}):\n{err[-3000:]}"


def run_error(argv: list[str], capsys) -> str:
    """Run, expect a failure; return the error message (one line, after the `train.py: error:` prefix)."""
    rc = train(argv)
    out, err = capsys.readouterr()
    assert rc != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, err[-3000:]
    assert err.rstrip().endswith(errors[0])  # the last thing written, and a single line
    return errors[0][len(ERROR_PREFIX) :].strip()


def snapshot(folder: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file's bytes and mtime (and every folder) under `folder`."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def load_and_sample(output_dir: Path, batch_size: int = 2):
    """Load the saved pipeline as plain diffusers does and sample a few images; check them.

    A `DDPMObjectivePipeline` folder (learned variance, μ̃, class-conditional) names its ``pipeline.py``, which
    diffusers runs with ``trust_remote_code=True`` (tests/test_pipeline.py does so in a Python without this
    package); here the same class is built from the folder's components, so no remote code runs in the test process.
    """
    from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel

    from ddpm_objectives_hf.pipeline_ddpm_objective import DDPMObjectivePipeline

    index = json.loads((output_dir / "model_index.json").read_text())
    kwargs = {}
    if index["_class_name"] == ["pipeline", "DDPMObjectivePipeline"]:
        assert (output_dir / "pipeline.py").is_file()
        pipeline = DDPMObjectivePipeline(
            unet=UNet2DModel.from_pretrained(output_dir, subfolder="unet"),
            scheduler=DDPMScheduler.from_pretrained(output_dir, subfolder="scheduler"),
            **{k: index[k] for k in ("prediction_type", "num_classes", "null_class_label")},
        )
        if index["num_classes"] is not None:
            kwargs["class_labels"] = [i % index["num_classes"] for i in range(batch_size)]
    else:
        pipeline = DiffusionPipeline.from_pretrained(output_dir)
    images = pipeline(
        batch_size=batch_size,
        num_inference_steps=3,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images
    size = pipeline.unet.config.sample_size
    assert images.shape == (batch_size, size, size, pipeline.unet.config.in_channels)
    assert np.isfinite(images).all()
    return pipeline


def unet_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / UNET_WEIGHTS)


def _losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in json.loads((output_dir / "loss_history.json").read_text())]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = unet_weights(a), unet_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(autouse=True, scope="module")
def _fast_cpu():
    """Tiny models on a shared CPU: one intra-op thread (OpenMP threads spin-waiting for a busy core made these runs
    several times slower), and subnormal floats (the tiny gradients of KL/VLB-weighted losses, ~20x slower CPU
    kernels) flushed to zero, as GPUs do. Both are restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushing = torch.set_flush_denormal(True)
    yield
    if flushing:
        torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    """A finished default-objective run (ε, MSE, simple weighting); tests only read it."""
    out = tmp_path_factory.mktemp("default") / "out"
    run_ok(tiny_args(out))
    return out


# ---------------------------------------------------------------------------------------------------- 1. default run
def test_default_run_writes_a_plain_diffusers_pipeline(default_run: Path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    out = default_run
    for name in (
        "model_index.json",
        UNET_WEIGHTS,
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "objective.json",
        "README.md",
        "samples.png",
        "weighting.png",
        "loss.png",
        "training_config.json",
    ):
        assert (out / name).is_file(), name
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".*"))

    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    objective = json.loads((out / "objective.json").read_text())  # the options DDPMScheduler does not have
    scheduler_config = json.loads((out / "scheduler/scheduler_config.json").read_text())
    assert scheduler_config["prediction_type"] == "epsilon" and objective["loss_weighting"] == "simple"
    assert objective["train_steps"] == 6 and "plugin_scheduler" not in objective
    assert not (out / "pipeline.py").exists()  # no remote code: DiffusionPipeline.from_pretrained as it is
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "library_name: diffusers" in readme.split("\n---", 1)[0]
    history = json.loads((out / "loss_history.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6] and all(np.isfinite(h["loss"]) for h in history)
    for image in ("samples.png", "weighting.png", "loss.png"):
        with Image.open(out / image) as im:
            im.verify()

    pipeline = load_and_sample(out, batch_size=3)
    assert type(pipeline) is DDPMPipeline
    assert type(pipeline.unet) is UNet2DModel and type(pipeline.scheduler) is DDPMScheduler
    assert pipeline.unet.config.sample_size == 8
    assert pipeline.unet.config.in_channels == pipeline.unet.config.out_channels == 1


# ---------------------------------------------------------------------------------------------------- 2. objectives
OBJECTIVES = {
    "eps-mse-simple": ["--prediction_type", "epsilon", "--loss_type", "mse", "--loss_weighting", "simple"],
    "v-mse-min_snr": ["--prediction_type", "v_prediction", "--loss_weighting", "min_snr"],
    "x0-mse-p2": ["--prediction_type", "sample", "--loss_weighting", "p2"],
    "mean-mse-snr": ["--prediction_type", "mean", "--loss_weighting", "snr"],
    "eps-kl": ["--prediction_type", "epsilon", "--loss_type", "kl"],
    "v-hybrid-learned": ["--prediction_type", "v_prediction", "--learn_variance"],
    "x0-edm-importance": ["--prediction_type", "sample", "--loss_weighting", "edm", "--timestep_sampler", "importance"],
    "eps-stratified": ["--prediction_type", "epsilon", "--timestep_sampler", "stratified"],
    "v-zero_snr-truncated_snr": [
        "--prediction_type", "v_prediction", "--rescale_betas_zero_snr", "--loss_weighting", "truncated_snr",
    ],
}  # fmt: skip


@pytest.mark.parametrize("flags", list(OBJECTIVES.values()), ids=list(OBJECTIVES))
def test_objective_trains_saves_and_samples(flags: list[str], tmp_path: Path, capsys):
    from diffusers import DDPMScheduler, UNet2DModel

    from ddpm_objectives_hf.pipeline_ddpm_objective import DDPMObjectivePipeline

    out = tmp_path / "out"
    run_ok(tiny_args(out, *flags, steps=4), capsys)

    objective = json.loads((out / "objective.json").read_text())
    expected_prediction = flags[flags.index("--prediction_type") + 1]
    assert objective["timestep_sampler"] == (
        flags[flags.index("--timestep_sampler") + 1] if "--timestep_sampler" in flags else "uniform"
    )
    if "--loss_weighting" in flags:
        assert objective["loss_weighting"] == flags[flags.index("--loss_weighting") + 1]
    index = json.loads((out / "model_index.json").read_text())
    scheduler_config = json.loads((out / "scheduler/scheduler_config.json").read_text())

    pipeline = load_and_sample(out)
    assert type(pipeline.unet) is UNet2DModel
    # diffusers' schedulers have no μ̃ target: the saved DDPMScheduler is fed ε̂, the true target is in the pipeline
    # config and objective.json
    assert scheduler_config["prediction_type"] == ("epsilon" if expected_prediction == "mean" else expected_prediction)
    assert objective.get("prediction_type", scheduler_config["prediction_type"]) == expected_prediction
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"] and type(pipeline.scheduler) is DDPMScheduler
    assert "plugin_scheduler" not in objective
    if expected_prediction == "mean" or "--learn_variance" in flags:
        # the package's pipeline, saved as pipeline.py: loaded by plain diffusers with trust_remote_code=True
        assert index["_class_name"] == ["pipeline", "DDPMObjectivePipeline"]
        assert type(pipeline) is DDPMObjectivePipeline and pipeline.config.prediction_type == expected_prediction
    else:
        assert index["_class_name"] == "DDPMPipeline" and not (out / "pipeline.py").exists()
    if "--learn_variance" in flags:
        assert pipeline.unet.config.out_channels == 2 * pipeline.unet.config.in_channels == 2
        assert scheduler_config["variance_type"] == "learned_range"
        assert objective["loss_type"] == "hybrid"
    else:
        assert pipeline.unet.config.out_channels == 1
        assert scheduler_config["variance_type"] != "learned_range"
    if "--loss_type" in flags:
        assert objective["loss_type"] == flags[flags.index("--loss_type") + 1]
    if "--rescale_betas_zero_snr" in flags:
        assert scheduler_config["rescale_betas_zero_snr"] is True
        assert scheduler_config["timestep_spacing"] == "trailing"


# ---------------------------------------------------------------------------------------------------- 3. config files
def test_json_and_yaml_config_files_equal_flags(tmp_path: Path, capsys):
    config = {
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "attention_resolution_index": -1,
        "train_batch_size": 16,
        "max_train_steps": 2,
        "logging_steps": 1,
        "checkpointing_steps": 1000,
        "num_inference_steps": 2,
        "num_sample_images": 4,
        "report_to": "none",
        "prediction_type": "v_prediction",
        "loss_weighting": "min_snr",
        "snr_gamma": 4.0,
        "learning_rate": 0.002,
        "use_ema": False,
        "random_flip": True,
        "timestep_sampler": "stratified",
    }
    flags = []
    for key, value in config.items():
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]

    runs = {}
    for kind in ("flags", "json", "yaml"):
        out = tmp_path / f"out-{kind}"
        if kind == "flags":
            argv = [*flags, "--output_dir", str(out)]
        else:
            path = tmp_path / f"run.{kind}"
            content = {**config, "output_dir": str(out)}
            path.write_text(json.dumps(content) if kind == "json" else yaml.safe_dump(content))
            argv = [str(path)]
        parsed = parse_args(argv)
        run_ok(argv, capsys)
        written = json.loads((out / "training_config.json").read_text())
        assert written["run"].pop("output_dir") == str(out)
        runs[kind] = (parsed, written)

    flag_parsed, flag_written = runs["flags"]
    for kind in ("json", "yaml"):
        parsed, written = runs[kind]
        assert written == flag_written, kind
        assert parsed[:3] == flag_parsed[:3], kind  # data, model, objective dataclasses
    assert flag_written["objective"]["prediction_type"] == "v_prediction"
    assert flag_written["objective"]["snr_gamma"] == 4.0
    assert flag_written["run"]["use_ema"] is False and flag_written["data"]["random_flip"] is True
    assert flag_written["model"]["block_out_channels"] == [8, 16]
    assert "hub_token" not in flag_written["run"]


# ---------------------------------------------------------------------------------------------------- 4. checkpoints
def test_a_checkpoint_logs_one_line(tmp_path: Path, caplog):
    """Not accelerate's line per file (seven per checkpoint, through the progress bar): one line of the script's."""
    caplog.set_level(logging.INFO)
    run_ok(tiny_args(tmp_path / "run", "--checkpointing_steps", "2", steps=4))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [line for line in lines if ".checkpoint-" in line or "saved in" in line]
    assert [line for line in lines if line.startswith("saved checkpoint")] == ["saved checkpoint-2"]


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path: Path, capsys, caplog):
    common = ["--timestep_sampler", "importance", "--gradient_accumulation_steps", "1"]
    # A: straight through, no checkpoints
    a = tmp_path / "a"
    run_ok(tiny_args(a, *common, steps=8), capsys)
    # B: the same with a checkpoint every 2 steps, at most 2 kept (the last step writes none)
    b = tmp_path / "b"
    run_ok(tiny_args(b, *common, "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", steps=8), capsys)
    assert sorted(p.name for p in b.iterdir() if "checkpoint" in p.name) == ["checkpoint-4", "checkpoint-6"]
    assert (b / "checkpoint-4" / "checkpoint_complete").is_file()
    assert_same_weights(a, b)  # saving checkpoints does not change the run

    # C: a run that was killed after step 4, while writing checkpoint-5 (a leftover temporary folder, even with a
    # marker, and an incomplete checkpoint-7 folder): `latest` is checkpoint-4
    c = tmp_path / "c"
    c.mkdir()
    shutil.copy(b / "ddpm_objectives_run.json", c)  # a folder this tool made
    shutil.copytree(b / "checkpoint-4", c / "checkpoint-4")
    shutil.copytree(b / "checkpoint-6", c / ".checkpoint-5.tmp")
    (c / "checkpoint-7").mkdir()
    (c / "checkpoint-7" / "model.safetensors").write_bytes(b"partial")
    caplog.set_level(logging.INFO, logger="ddpm_objectives_hf.train")
    run_ok(
        tiny_args(
            c, *common, "--checkpointing_steps", "2", "--checkpoints_total_limit", "1",
            "--resume_from_checkpoint", "latest", steps=8,
        ),
        capsys,
    )  # fmt: skip
    assert "checkpoint-4 at step 4" in caplog.text
    assert_same_weights(a, c)
    assert _losses(c) == _losses(a)  # the loss history (restored from the checkpoint, then continued) too
    objective = json.loads((c / "objective.json").read_text())
    assert objective["train_steps"] == 8
    # --checkpoints_total_limit 1: only the newest complete checkpoint is left (checkpoint-4 was pruned)
    assert sorted(p.name for p in c.glob("checkpoint-*") if (p / "checkpoint_complete").is_file()) == ["checkpoint-6"]
    load_and_sample(c)


# ---------------------------------------------------------------------------------------------------- 5. bad input
def _no_image_dataset(tmp_path: Path) -> str:
    import datasets

    path = tmp_path / "no-images"
    datasets.Dataset.from_dict({"label": [0, 1, 2], "text": ["a", "b", "c"]}).save_to_disk(str(path))
    return str(path)


def _bad_unet_config(tmp_path: Path) -> str:
    path = tmp_path / "unet-config"
    path.mkdir()
    config = {
        "_class_name": "UNet2DModel",
        "in_channels": 1,
        "out_channels": 1,  # learned variance needs 2
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 4,
    }
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


BAD_INPUT = {
    "missing-train-data-dir": (lambda tmp: ["--train_data_dir", str(tmp / "nope")], ["--train_data_dir", "nope"]),
    "hub-dataset-offline": (
        lambda tmp: ["--dataset_name", "someone/some-dataset-that-is-not-cached"],
        ["--dataset_name", "offline"],
    ),
    "dataset-without-image-column": (
        lambda tmp: ["--dataset_name", _no_image_dataset(tmp)],
        ["--image_column", "no image column", "label"],
    ),
    "resolution-unet-cannot-take": (
        lambda tmp: ["--resolution", "12", "--block_out_channels", "8", "16", "16", "16"],
        ["--resolution 12", "divisible by 8"],
    ),
    "unknown-loss-weighting": (lambda tmp: ["--loss_weighting", "foo"], ["--loss_weighting", "foo"]),
    "min-snr-gamma-zero": (lambda tmp: ["--snr_gamma", "0", "--loss_weighting", "min_snr"], ["--snr_gamma"]),
    "model-config-wrong-out-channels": (
        lambda tmp: ["--model_config_name_or_path", _bad_unet_config(tmp), "--learn_variance"],
        ["--model_config_name_or_path", "out_channels=1"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_fails_with_one_line_and_writes_nothing(case: str, default_run: Path, tmp_path: Path, capsys):
    make_flags, expected = BAD_INPUT[case]
    flags = make_flags(tmp_path)

    # into a new folder: nothing is created
    fresh = tmp_path / "fresh"
    message = run_error(tiny_args(fresh, *flags), capsys)
    for part in expected:
        assert part in message, message
    assert not fresh.exists() or not any(fresh.iterdir())

    # into the folder of a finished run, even with --overwrite_output_dir: nothing of it changes
    before = snapshot(default_run)
    assert run_error(tiny_args(default_run, *flags, "--overwrite_output_dir"), capsys) == message
    assert snapshot(default_run) == before


def test_non_empty_output_dir_of_another_run_is_refused(default_run: Path, capsys):
    before = snapshot(default_run)
    message = run_error(tiny_args(default_run, "--prediction_type", "sample"), capsys)
    assert "--output_dir" in message and "not empty" in message and "--overwrite_output_dir" in message
    assert snapshot(default_run) == before


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--prediction_type", "foo", "invalid choice"),
        ("--loss_type", "l1", "invalid choice"),
        ("--timestep_sampler", "foo", "invalid choice"),
    ],
)
def test_unknown_choice_is_an_argparse_error(flag: str, value: str, expected: str, tmp_path: Path, capsys):
    assert train(tiny_args(tmp_path / "out", flag, value)) == 2  # argparse's exit code, no usage block
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert flag in last and expected in last and repr(value) in last
    assert "usage:" not in err
    assert not (tmp_path / "out").exists()


def test_resume_latest_without_checkpoint(default_run: Path, capsys):
    before = snapshot(default_run)
    message = run_error(tiny_args(default_run, "--resume_from_checkpoint", "latest"), capsys)
    assert "--resume_from_checkpoint latest" in message and "no complete checkpoint" in message
    assert snapshot(default_run) == before


def test_resume_from_corrupt_checkpoint(default_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    shutil.copytree(default_run, out)
    checkpoint = out / "checkpoint-4"
    checkpoint.mkdir()
    weights = (default_run / UNET_WEIGHTS).read_bytes()
    (checkpoint / "model.safetensors").write_bytes(weights[: len(weights) // 3])  # truncated by a full disk
    (checkpoint / "checkpoint_complete").write_text("4\n")
    before = snapshot(out)

    for resume in (str(checkpoint), "latest"):
        message = run_error(tiny_args(out, "--resume_from_checkpoint", resume, steps=8), capsys)
        assert "--resume_from_checkpoint" in message and "checkpoint-4" in message
        assert "could not be loaded" in message
        assert snapshot(out) == before

    message = run_error(tiny_args(out, "--resume_from_checkpoint", str(out / "checkpoint-9"), steps=8), capsys)
    assert "--resume_from_checkpoint" in message and "does not exist" in message
    assert snapshot(out) == before


def test_nan_loss_stops_without_saving_weights(tmp_path: Path, capsys, monkeypatch):
    import ddpm_objectives_hf
    from ddpm_objectives_hf.losses import DiffusionLossOutput

    real_loss = ddpm_objectives_hf.diffusion_loss
    calls = []

    def nan_at_third_step(*args, **kwargs):
        out = real_loss(*args, **kwargs)
        calls.append(out.timesteps.tolist())
        if len(calls) == 3:  # the loss of the 3rd optimizer step (step 3, as in the logs and checkpoint names)
            return DiffusionLossOutput(
                loss=out.loss * float("nan"),
                per_sample_loss=out.per_sample_loss,
                terms=out.terms,
                timesteps=out.timesteps,
                sampler_weights=out.sampler_weights,
            )
        return out

    monkeypatch.setattr(ddpm_objectives_hf, "diffusion_loss", nan_at_third_step)
    out = tmp_path / "out"
    message = run_error(tiny_args(out, "--checkpointing_steps", "2", steps=6), capsys)
    assert "NaN" in message and "step 3" in message
    assert str(calls[2]) in message  # the timesteps of the bad batch
    assert "--learning_rate" in message
    assert len(calls) == 4  # stopped at the first check after the bad step (step 4: logging)
    assert not (out / "unet").exists() and not (out / "model_index.json").exists()
    assert not list(out.glob("checkpoint-4")) and (out / "checkpoint-2" / "checkpoint_complete").is_file()


# ---------------------------------------------------------------------------------------------------- 6. Hub
def test_push_to_hub_one_commit_private_without_token_leaks(
    hub_server: FakeHub,  # noqa: F811
    tmp_path: Path,
    capfd,
    caplog,
):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    argv = tiny_args(
        out, "--checkpointing_steps", "2", "--report_to", "tensorboard",
        "--push_to_hub", "--hub_model_id", "user/digits", "--hub_private_repo",
        "--hub_endpoint", hub_server.endpoint, "--hub_token", TOKEN,
    )  # fmt: skip
    rc = train(argv)
    stdout, stderr = capfd.readouterr()
    assert rc == 0, stderr[-3000:]

    assert set(hub_server.repos) == {"user/digits"}
    assert hub_server.repos["user/digits"].private is True
    assert len(hub_server.commits) == 1
    files = set(hub_server.commits[0].files)
    for name in (
        "model_index.json",
        "unet/config.json",
        UNET_WEIGHTS,
        "scheduler/scheduler_config.json",
        "README.md",
        "samples.png",
        "objective.json",
    ):
        assert name in files, name
    assert hub_server.commits[0].files[UNET_WEIGHTS] == (out / UNET_WEIGHTS).read_bytes()
    # local checkpoints and TensorBoard logs exist, but were not uploaded
    assert list(out.glob("checkpoint-*")) and list((out / "logs").rglob("events.out.tfevents.*"))
    assert not [f for f in files if f.startswith(("checkpoint-", "logs/", ".")) or "tfevents" in f or ".tmp" in f]
    assert {r.authorization for r in hub_server.requests} == {f"Bearer {TOKEN}"}

    # the token is never shown or written
    for text in (stdout, stderr, caplog.text):
        assert TOKEN not in text
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("hub_model_id", ["digits", None])
def test_push_with_a_bare_name_names_the_full_repo_in_the_card(
    hub_model_id: str | None,
    hub_server: FakeHub,  # noqa: F811
    tmp_path: Path,
    capsys,
):
    """A bare --hub_model_id (or none: the folder's name) gets its namespace from the Hub; the card that is pushed
    (and the local one) loads the full `namespace/name`."""
    from ddpm_objectives_hf.training.model_card import python_string

    out = tmp_path / "digits"
    name = ["--hub_model_id", hub_model_id] if hub_model_id else []
    argv = tiny_args(out, "--push_to_hub", *name, "--hub_endpoint", hub_server.endpoint, "--hub_token", TOKEN, steps=2)
    run_ok(argv, capsys)
    full_id = f"{hub_server.user}/digits"
    assert set(hub_server.repos) == {full_id}
    pushed = hub_server.commits[0].files["README.md"].decode()
    assert f"from_pretrained({python_string(full_id)}" in pushed
    assert (out / "README.md").read_text() == pushed


def _closed_port_endpoint() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("failure", ["http-500", "closed-port", "offline"])
def test_failing_hub_keeps_local_pipeline(failure: str, request, tmp_path: Path, capsys, monkeypatch):
    """A push that fails keeps the saved pipeline; a Hub that cannot be reached at all (offline, closed port) is
    found by the check before training, so nothing is trained or written."""
    if failure == "http-500":
        hub = request.getfixturevalue("hub_server")
        hub.fail_next(500, path_contains="/api/repos/create")  # the push fails (the check at the start passed)
        endpoint = hub.endpoint
    else:
        offline = failure == "offline"
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        endpoint = _closed_port_endpoint()
    out = tmp_path / "out"
    argv = tiny_args(
        out, "--push_to_hub", "--hub_model_id", "user/digits", "--hub_endpoint", endpoint, "--hub_token", TOKEN
    )
    message = run_error(argv, capsys)
    assert "--push_to_hub" in message and TOKEN not in message
    if failure == "http-500":
        assert "500" in message and endpoint in message
    elif failure == "closed-port":
        assert endpoint in message
    else:
        assert "offline" in message
    if failure != "http-500":  # stopped before any work
        assert "before training" in message
        assert not out.exists()
        return
    # the pipeline was saved before the push and is intact
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()
    load_and_sample(out)


# ---------------------------------------------------------------------------------------------------- 7. processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_with_accelerate_launch(tmp_path: Path):
    port = _free_port()
    out = tmp_path / "out"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "ACCELERATE_USE_CPU": "1",
        "MASTER_PORT": str(port),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(SCRIPT),
        *tiny_args(out, "--timestep_sampler", "importance", "--checkpointing_steps", "4", steps=6),
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]

    assert "training with 2 process(es)" in log
    assert log.count("saved the pipeline, samples and model card") == 1  # saved once, by the main process
    checkpoint = out / "checkpoint-4"
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert not list(out.glob(".*"))  # no temporary folders left
    objective = json.loads((out / "objective.json").read_text())
    assert objective["timestep_sampler"] == "importance" and objective["train_steps"] == 6
    history = json.loads((out / "loss_history.json").read_text())
    assert [h["step"] for h in history] == [2, 4, 6]
    load_and_sample(out)


def test_streaming_data_path(tmp_path, capsys, monkeypatch):
    """Data that do not fit in memory stream through an accelerate DataLoader, and resuming continues it."""
    monkeypatch.setattr("ddpm_objectives_hf.data.fits_in_memory", lambda *a, **k: False)
    out = tmp_path / "stream"
    run_ok(tiny_args(out, "--checkpointing_steps", "2", "--random_flip", steps=4), capsys)
    assert (out / UNET_WEIGHTS).is_file()
    load_and_sample(out)
    run_ok(tiny_args(out, "--resume_from_checkpoint", "latest", "--overwrite_output_dir", steps=6), capsys)
    assert [s for s, _ in _losses(out)] == [2, 4, 6]


def test_a_running_run_holds_its_folder(tmp_path: Path, capsys):
    """A second run on a folder in use (plain, resume or overwrite) gets one line naming --output_dir and the holder;
    once the holder ends (a kill releases the lock the same way) the folder is free, and no lock file is left."""
    from ddpm_objectives_hf.training.run_folder import RunFolder

    out = tmp_path / "run"
    with RunFolder(out) as held:
        held.hold()  # another run, as far as the kernel is concerned (its own open file description)
        for extra in ([], ["--overwrite_output_dir"], ["--resume_from_checkpoint", "latest"]):
            assert train([*tiny_args(out, steps=2), *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert (
                err == f"train.py: error: --output_dir '{out}' is in use by another run (pid {os.getpid()}); wait for "
                "it to end or choose another folder"
            )
        assert list(out.iterdir()) == []  # nothing written by the refused runs
    run_ok(tiny_args(out, steps=2))
    run_ok(tiny_args(out, "--overwrite_output_dir", steps=2))  # the finished run released it


def test_loss_log_against_a_direct_computation():
    """LossLog's mean, per-quarter means and first non-finite step equal those computed from the kept losses."""
    from types import SimpleNamespace

    from ddpm_objectives_hf.errors import TrainingError
    from ddpm_objectives_hf.training.state import LossLog

    g = torch.Generator().manual_seed(0)
    T, log, kept = 100, LossLog(100, torch.device("cpu")), []
    for step in range(5):
        t = torch.randint(0, T, (8,), generator=g)
        per_sample = torch.rand(8, generator=g)
        log.add(SimpleNamespace(loss=per_sample.mean(), timesteps=t, per_sample_loss=per_sample), step, images=8)
        kept.append((t, per_sample))
    logs = log.flush()
    t_all, l_all = torch.cat([t for t, _ in kept]), torch.cat([v for _, v in kept])
    assert logs["loss"] == pytest.approx(float(torch.stack([v.mean() for _, v in kept]).mean()), rel=1e-6)
    for q in range(4):
        in_q = (t_all >= q * 25) & (t_all < (q + 1) * 25)
        assert logs[f"loss_q{q}"] == pytest.approx(float(l_all[in_q].mean()), rel=1e-6)
    assert logs["images_per_s"] > 0
    log.check_finite()  # all finite so far
    bad = torch.tensor([0.1, float("nan")])
    log.add(SimpleNamespace(loss=bad.mean(), timesteps=torch.tensor([3, 97]), per_sample_loss=bad), 6, images=2)
    log.add(
        SimpleNamespace(loss=torch.tensor(float("inf")), timesteps=torch.tensor([5, 6]), per_sample_loss=bad), 7, 2
    )
    with pytest.raises(TrainingError, match=r"at step 7 \(timesteps \[3, 97\]\)"):
        log.check_finite()
