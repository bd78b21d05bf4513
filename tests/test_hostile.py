"""Hostile input for both scripts: every bad flag, config file, number, data file, output folder, evaluation input and
resume stops with one line ``<script>: error: ...`` that names the flag or file at fault, a non-zero exit, no Python
traceback, and nothing of the output folder changed.

A table of cases runs each script in-process (``tests/run_script.py``). A case of stage ``parse`` must fail before
any work: the script's first work (:data:`FIRST_WORK`) is replaced by a recorder that must stay uncalled. A handful of
cases go through the real command line in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from run_script import evaluate, train

ROOT = Path(__file__).resolve().parents[1]

T = 50  # the tiny run's num_train_timesteps
TINY = [*tiny.TINY, "--num_inference_steps", "3", "--num_train_timesteps", str(T)]
EVAL = [
    "--max_eval_samples", "16", "--num_samples", "8", "--num_inference_steps", "3", "--num_bpd_timesteps", "5",
    "--pilot_images", "2", "--pilot_grid", "8", "--fid_features", "none", "--no_full_bpd", "--device", "cpu",
]  # fmt: skip
TOKEN = "hf_hostileFakeToken"
# what each script does first once its input is checked (train.py builds its Accelerator, evaluate.py loads the
# weights, after checking the flags against the model's configs)
FIRST_WORK = {
    "train": "accelerate.Accelerator",
    "evaluate": "ddpm_objectives_hf.training.pipelines.load_denoiser",
}


def _stop():
    raise RuntimeError("the script started working")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (4 steps) with a complete checkpoint-2: the output folder every case tries to harm."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("finished") / "run"
    try:
        assert train([*TINY, "--max_train_steps", "4", "--checkpointing_steps", "2", "--output_dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (out / "model_index.json").is_file() and (out / "checkpoint-2").is_dir()
    return out


@dataclass
class Env:
    """The paths of one case: ``run`` (a copy of the finished run: train's --output_dir, evaluate's MODEL_DIR),
    ``eval`` (evaluate's --output_dir, holding an earlier report) and ``tmp`` for data files."""

    tmp: Path
    run: Path
    eval: Path


def snapshot(*folders: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file's bytes and mtime (and every folder) under ``folders`` (or the file itself)."""
    found: dict[str, tuple[bytes, int] | None] = {}
    for folder in folders:
        paths = [folder, *sorted(folder.rglob("*"))] if folder.is_dir() else [folder]
        for p in paths:
            if p.exists():
                found[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
    return found


# ---------------------------------------------------------------------------------------------------- data files
def _pngs(folder: Path, n: int = 20) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"img_{k:02d}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def not_an_image(env: Env) -> tuple[list[str], Path]:
    bad = _pngs(env.tmp / "images")[7]
    bad.write_bytes(b"this is not an image")
    return ["--train_data_dir", str(env.tmp / "images")], bad


def truncated_png(env: Env) -> tuple[list[str], Path]:
    bad = _pngs(env.tmp / "images")[7]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return ["--train_data_dir", str(env.tmp / "images")], bad


def _saved_images(env: Env, **columns) -> Path:
    import datasets
    from PIL import Image

    images = [Image.new("L", (8, 8), 10 * k) for k in range(20)]
    folder = env.tmp / "saved"
    data = datasets.Dataset.from_dict({"image": images, **columns}).cast_column("image", datasets.Image())
    data.save_to_disk(str(folder), num_shards=2)
    return folder


def damaged_shard(env: Env, damage: str) -> tuple[list[str], Path]:
    folder = _saved_images(env)
    shard = sorted(folder.glob("*.arrow"))[-1]
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return ["--dataset_name", str(folder)], shard


def number_column(env: Env) -> tuple[list[str], Path]:
    folder = _saved_images(env, score=[0.5 * k for k in range(20)])
    return ["--dataset_name", str(folder), "--image_column", "score"], folder


def no_image_column(env: Env) -> tuple[list[str], Path]:
    import datasets

    folder = env.tmp / "numbers"
    datasets.Dataset.from_dict({"label": list(range(20)), "text": ["a"] * 20}).save_to_disk(str(folder))
    return ["--dataset_name", str(folder)], folder


def labels_of(env: Env, labels: list, *flags: str) -> tuple[list[str], Path]:
    """Saved images with a ``label`` column of ``labels`` (plain values, no ClassLabel), trained class-conditionally."""
    folder = _saved_images(env, label=labels)
    return ["--dataset_name", str(folder), "--class_conditional", *flags], folder


def _with(made: tuple[list[str], Path], *flags: str) -> tuple[list[str], Path]:
    return [*made[0], *flags], made[1]


def garbage_parquet(env: Env) -> tuple[list[str], Path]:
    path = env.tmp / "images.parquet"
    path.write_bytes(b"PAR1 not really a parquet file")
    return ["--dataset_name", str(path)], path


def empty_folder(env: Env) -> tuple[list[str], Path]:
    (env.tmp / "empty").mkdir()
    return ["--train_data_dir", str(env.tmp / "empty")], env.tmp / "empty"


# ---------------------------------------------------------------------------------------------------- config files
def config_file(name: str, text: str) -> Callable[[Env], tuple[list[str], Path]]:
    def make(env: Env) -> tuple[list[str], Path]:
        path = env.tmp / name
        # the output folder and the tiny model come first, so the file's own mistake is the only one
        path.write_text(text.replace("OUT", str(env.run)))
        return [str(path)], path

    return make


TINY_YAML = (
    "output_dir: OUT\noverwrite_output_dir: true\nblock_out_channels: [8, 16]\nnorm_num_groups: 4\n"
    "attention_resolution_index: -1\nnum_train_timesteps: 50\nnum_inference_steps: 3\nreport_to: none\n"
)


# ---------------------------------------------------------------------------------------------------- output folders
def output_is_a_file(env: Env) -> tuple[list[str], Path]:
    path = env.tmp / "a-file"
    path.write_text("sentinel\n")
    return ["--output_dir", str(path)], path


def output_under_a_file(env: Env) -> tuple[list[str], Path]:
    path = env.tmp / "a-file"
    path.write_text("sentinel\n")
    return ["--output_dir", str(path / "out")], path


def foreign_folder(env: Env) -> tuple[list[str], Path]:
    folder = env.tmp / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("sentinel\n")
    (folder / "model_index.json").write_text("{}\n")
    return ["--output_dir", str(folder)], folder


def read_only_folder(env: Env) -> tuple[list[str], Path]:
    folder = env.tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return ["--output_dir", str(folder / "out")], folder


def corrupt_checkpoint(env: Env) -> tuple[list[str], Path]:
    weights = env.run / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return ["--resume_from_checkpoint", "latest", "--max_train_steps", "6"], env.run / "checkpoint-2"


# ---------------------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    """``argv``: a list of flags, or ``make(env) -> (flags, path)``; ``expect``: substrings of the error line
    (``{path}``, ``{run}``, ``{tmp}`` are filled in); ``stage``: ``parse`` if the script must stop before any work."""

    id: str
    argv: list[str] | Callable[[Env], tuple[list[str], Path]]
    expect: tuple[str, ...]
    script: str = "train"
    stage: str = "parse"
    marks: tuple = ()


def C(id, argv, *expect, **kwargs) -> Case:  # noqa: N802
    return Case(id, argv, expect, **kwargs)


def E(id, argv, *expect, **kwargs) -> Case:  # noqa: N802
    return Case(id, argv, expect, script="evaluate", **kwargs)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
NOT_ROOT = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")

CASES = [
    # ---- flags: unknown, misspelt, abbreviated, wrong type, bad choice
    C("unknown-flag", ["--foo", "1"], "unknown flag --foo"),
    C("misspelt-flag", ["--learning_rat", "0.1"], "--learning_rat", "did you mean --learning_rate"),
    C("abbreviated-flag", ["--learn", "0.1"], "--learn"),
    C("stray-positional", ["--seed", "1", "run.txt"], "'run.txt'"),
    C("int-not-a-number", ["--seed", "x"], "--seed", "invalid int"),
    C("float-not-a-number", ["--learning_rate", "fast"], "--learning_rate", "invalid float"),
    C("bool-not-a-bool", ["--use_ema", "maybe"], "--use_ema"),
    C("bad-prediction-type", ["--prediction_type", "noise"], "--prediction_type", "invalid choice"),
    C("bad-mixed-precision", ["--mixed_precision", "fp32"], "--mixed_precision", "invalid choice"),
    C("bad-lr-scheduler", ["--lr_scheduler", "warmup_cosine"], "--lr_scheduler", "cosine_with_restarts"),
    C("bad-report-to", ["--report_to", "tensorbord"], "--report_to", "tensorboard"),
    C("both-data-sources", ["--dataset_name", "x", "--train_data_dir", "y"], "--train_data_dir", "--dataset_name"),
    C("empty-dataset-name", ["--dataset_name", ""], "--dataset_name"),
    C("bad-hub-model-id", ["--hub_model_id", "a/b/c"], "--hub_model_id", "'a/b/c'"),
    C("bad-hub-endpoint", ["--hub_endpoint", "localhost:8080"], "--hub_endpoint"),
    # ---- numbers: zero, negative, NaN, inf, out of range
    C("lr-zero", ["--learning_rate", "0"], "--learning_rate", "> 0"),
    C("lr-negative", ["--learning_rate", "-1e-3"], "--learning_rate", "> 0", "-0.001"),
    C("lr-minus-inf", ["--learning_rate", "-inf"], "--learning_rate", "-inf"),
    C("lr-nan", ["--learning_rate", "nan"], "--learning_rate", "nan"),
    C("lr-inf", ["--learning_rate", "inf"], "--learning_rate", "inf"),
    C("adam-beta1-one", ["--adam_beta1", "1"], "--adam_beta1", "[0, 1)"),
    C("adam-beta2-negative", ["--adam_beta2", "-0.1"], "--adam_beta2"),
    C("adam-epsilon-zero", ["--adam_epsilon", "0"], "--adam_epsilon"),
    C("weight-decay-negative", ["--adam_weight_decay", "-0.01"], "--adam_weight_decay"),
    C("max-grad-norm-nan", ["--max_grad_norm", "nan"], "--max_grad_norm"),
    C("batch-size-zero", ["--train_batch_size", "0"], "--train_batch_size", ">= 1"),
    C("grad-accumulation-zero", ["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    C("warmup-negative", ["--lr_warmup_steps", "-1"], "--lr_warmup_steps"),
    C("logging-steps-zero", ["--logging_steps", "0"], "--logging_steps"),
    C("checkpointing-steps-zero", ["--checkpointing_steps", "0"], "--checkpointing_steps"),
    C("save-images-steps-negative", ["--save_images_steps", "-5"], "--save_images_steps"),
    C("checkpoints-total-limit-zero", ["--checkpoints_total_limit", "0"], "--checkpoints_total_limit"),
    C("max-train-steps-zero", ["--max_train_steps", "0"], "--max_train_steps"),
    C("max-train-steps-negative", ["--max_train_steps", "-10"], "--max_train_steps"),
    C("inference-steps-zero", ["--num_inference_steps", "0"], "--num_inference_steps"),
    C("inference-steps-above-T", ["--num_inference_steps", str(T + 1)], "--num_inference_steps", f"[1, {T}]"),
    C("sample-images-zero", ["--num_sample_images", "0"], "--num_sample_images"),
    C("ema-max-decay-above-one", ["--ema_max_decay", "1.5"], "--ema_max_decay"),
    C("ema-power-zero", ["--ema_power", "0"], "--ema_power"),
    C("ema-inv-gamma-negative", ["--ema_inv_gamma", "-1"], "--ema_inv_gamma"),
    C("dropout-one", ["--dropout", "1"], "--dropout"),
    C("logit-std-zero", ["--timestep_sampler", "logit_normal", "--logit_std", "0"], "--logit_std"),
    C("seed-negative", ["--seed", "-1"], "--seed"),
    C("seed-too-large", ["--seed", str(2**32)], "--seed"),
    C("norm-groups-do-not-divide", ["--norm_num_groups", "3"], "--norm_num_groups", "--block_out_channels"),
    C("block-channels-empty", ["--block_out_channels"], "--block_out_channels"),
    C("block-channels-zero", ["--block_out_channels", "0", "16"], "--block_out_channels"),
    C("layers-per-block-zero", ["--layers_per_block", "0"], "--layers_per_block"),
    C("attention-index-out-of-range", ["--attention_resolution_index", "2"], "--attention_resolution_index"),
    C("resolution-zero", ["--resolution", "0"], "--resolution"),
    C("resolution-not-divisible", ["--resolution", "12", "--block_out_channels", "8", "8", "8", "8"], "--resolution"),
    C("channels-zero", ["--channels", "0"], "--channels"),
    C("channels-two", ["--channels", "2"], "--channels"),
    C("max-train-samples-zero", ["--max_train_samples", "0"], "--max_train_samples"),
    C("workers-negative", ["--dataloader_num_workers", "-1"], "--dataloader_num_workers"),
    C("snr-gamma-zero", ["--loss_weighting", "min_snr", "--snr_gamma", "0"], "--snr_gamma"),
    C("polynomial-lr-below-end", ["--lr_scheduler", "polynomial", "--learning_rate", "1e-8"], "--lr_scheduler"),
    # ---- class conditioning
    C("label-column-needs-class-conditional", ["--label_column", "label"], "--label_column", "--class_conditional"),
    C("condition-dropout-needs-class-conditional", ["--condition_dropout", "0.2"], "--condition_dropout"),
    C("condition-dropout-one", ["--class_conditional", "--condition_dropout", "1"], "--condition_dropout", "[0, 1)"),
    C("guidance-on-unconditional", ["--guidance_scale", "3"], "--guidance_scale", "unconditional"),
    C(
        "guidance-without-null-class",
        ["--class_conditional", "--condition_dropout", "0", "--guidance_scale", "3"],
        "--guidance_scale",
        "--condition_dropout",
    ),
    C("guidance-negative", ["--class_conditional", "--guidance_scale", "-1"], "--guidance_scale"),
    C("label-column-absent", ["--class_conditional", "--label_column", "nope"], "--label_column", "nope", stage="run"),
    C(
        "labels-not-integers",
        lambda env: labels_of(env, ["cat"] * 20, "--label_column", "label"),
        "--label_column",
        "string",
        stage="run",
    ),
    C(
        "labels-negative",
        lambda env: labels_of(env, [-1] * 20, "--label_column", "label"),
        "--label_column",
        "-1",
        stage="run",
    ),
    C(
        "no-class-label-feature",
        lambda env: labels_of(env, list(range(20))),
        "--label_column",
        "ClassLabel",
        stage="run",
    ),
    # ---- the Hub, checked before training when pushing
    C(
        "push-hub-unreachable",
        ["--push_to_hub", "--hub_model_id", "user/m", "--hub_token", TOKEN, "--hub_endpoint", "http://127.0.0.1:9"],
        "--push_to_hub",
        "before training",
    ),
    # ---- config files, read as the flags they spell
    C("config-malformed-json", config_file("run.json", '{"learning_rate": 0.1,'), "{path}", "JSON"),
    C("config-malformed-yaml", config_file("run.yaml", "a: [1, 2\nb: 3\n"), "{path}", "YAML"),
    C("config-missing", lambda env: ([str(env.tmp / "nope.yaml")], env.tmp / "nope.yaml"), "{path}", "not exist"),
    C("config-is-a-folder", lambda env: ([str(env.tmp / "dir.json")], env.tmp / "dir.json"), "{path}", "folder"),
    C("config-not-a-mapping", config_file("run.json", "[1, 2]"), "{path}", "mapping"),
    C("config-unknown-key", config_file("run.yaml", TINY_YAML + "learning_rat: 0.1\n"), "{path}", "learning_rate"),
    C("config-wrong-type", config_file("run.yaml", TINY_YAML + "train_batch_size: sixteen\n"), "--train_batch_size"),
    C("config-float-for-int", config_file("run.json", '{"train_batch_size": 16.5}'), "{path}", "--train_batch_size"),
    C("config-bool-for-int", config_file("run.json", '{"max_train_steps": true}'), "--max_train_steps"),
    C("config-bad-choice", config_file("run.yaml", TINY_YAML + "prediction_type: noise\n"), "--prediction_type"),
    C("config-list-for-scalar", config_file("run.json", '{"seed": [1, 2]}'), "{path}", "--seed"),
    C("config-null-not-allowed", config_file("run.yaml", "seed: null\n"), "{path}", "--seed"),
    C("config-out-of-range", config_file("run.yaml", TINY_YAML + "learning_rate: .nan\n"), "--learning_rate"),
    C(
        "config-then-bad-flag",
        lambda env: (config_file("r.yaml", TINY_YAML)(env)[0] + ["--seed", "-2"], env.run),
        "--seed",
    ),
    # ---- data files
    C("png-not-an-image", not_an_image, "{path}", stage="run"),
    C("png-truncated", truncated_png, "{path}", stage="run"),
    C("image-column-of-numbers", number_column, "--image_column", "score", stage="run"),
    C("no-image-column", no_image_column, "--image_column", stage="run"),
    C("shard-truncated", lambda env: damaged_shard(env, "truncated"), "{path}", stage="run"),
    C("shard-missing", lambda env: damaged_shard(env, "missing"), "{path}", stage="run"),
    C("parquet-garbage", garbage_parquet, "{path}", stage="run"),
    C("train-data-dir-missing", ["--train_data_dir", "/nonexistent/images"], "--train_data_dir", "/nonexistent"),
    C("train-data-dir-empty", empty_folder, "--train_data_dir", stage="run"),
    # ---- output folders
    C("output-dir-is-a-file", output_is_a_file, "--output_dir", "{path}"),
    C("output-dir-under-a-file", output_under_a_file, "--output_dir", "{path}"),
    C("output-dir-of-someone-else", foreign_folder, "--output_dir", stage="run"),
    C("output-dir-read-only", read_only_folder, "--output_dir", "{path}", marks=(NOT_ROOT,)),
    # ---- resume
    C(
        "resume-missing-checkpoint",
        ["--resume_from_checkpoint", "checkpoint-9"],
        "--resume_from_checkpoint",
        stage="run",
    ),
    C("resume-corrupt-checkpoint", corrupt_checkpoint, "--resume_from_checkpoint", stage="run"),
    C(
        "resume-other-prediction-type",
        ["--resume_from_checkpoint", "latest", "--prediction_type", "sample", "--max_train_steps", "6"],
        "--prediction_type",
        stage="run",
    ),
    C(
        "resume-past-max-train-steps",
        ["--resume_from_checkpoint", "latest", "--max_train_steps", "1"],
        "--max_train_steps",
        stage="run",
    ),
    # ---- evaluate.py
    E("eval-no-model-dir", lambda env: (["--device", "cpu"], env.run), "--model_dir", "required"),
    E("eval-unknown-flag", ["--num_sample", "8"], "--num_sample", "did you mean --num_samples"),
    E("eval-batch-size-zero", ["--batch_size", "0"], "--batch_size"),
    E("eval-num-samples-zero", ["--num_samples", "0"], "--num_samples"),
    E("eval-ode-rtol-zero", ["--ode_rtol", "0"], "--ode_rtol"),
    E("eval-ode-atol-negative", ["--ode_atol", "-1e-5"], "--ode_atol"),
    E("eval-ode-draws-zero", ["--ode_draws", "0"], "--ode_draws"),
    E("eval-ode-divergence", ["--ode_divergence", "skilling"], "--ode_divergence"),
    E("eval-ode-method", ["--ode_method", "euler"], "--ode_method"),
    E("eval-ode-samples-one", ["--max_ode_samples", "1"], "--max_ode_samples"),
    E("eval-pilot-grid-zero", ["--pilot_grid", "0"], "--pilot_grid"),
    E("eval-pilot-images-zero", ["--pilot_images", "0"], "--pilot_images"),
    E("eval-inference-steps-zero", ["--num_inference_steps", "0"], "--num_inference_steps"),
    E("eval-inference-steps-above-T", ["--num_inference_steps", str(T + 1)], "--num_inference_steps", f"{T}]"),
    E("eval-bpd-timesteps-above-T", ["--num_bpd_timesteps", str(T + 1)], "--num_bpd_timesteps"),
    E("eval-bpd-timesteps-one", ["--num_bpd_timesteps", "1"], "--num_bpd_timesteps"),
    E("eval-max-bpd-samples-zero", ["--max_bpd_samples", "0"], "--max_bpd_samples"),
    E("eval-max-eval-samples-zero", ["--max_eval_samples", "0"], "--max_eval_samples"),
    E("eval-seed-negative", ["--seed", "-1"], "--seed"),
    E("eval-bad-fid-features", ["--fid_features", "clip"], "--fid_features"),
    E("eval-output-dir-is-a-file", output_is_a_file, "--output_dir", "{path}"),
    E("eval-device-absent", ["--device", "cuda"], "--device", "cuda", marks=(NO_CUDA,)),
    E("eval-device-unknown", ["--device", "foo"], "--device", "'foo'"),
    E("eval-config-bad-value", config_file("eval.yaml", "model_dir: OUT\nbatch_size: -4\n"), "{path}", "--batch_size"),
    E("eval-guidance-on-unconditional", ["--guidance_scales", "2"], "--guidance_scales", "unconditional"),
    E("eval-label-column-on-unconditional", ["--label_column", "label"], "--label_column", "unconditional"),
    E("eval-guidance-negative", ["--guidance_scales", "1", "-1"], "--guidance_scales"),
    E("eval-not-a-pipeline", lambda env: ([str(env.tmp)], env.tmp), "MODEL_DIR", stage="run"),
    E("eval-png-truncated", lambda env: _with(truncated_png(env), "--split", "train"), "{path}", stage="run"),
]


def _argv(case: Case, env: Env) -> tuple[list[str], Path | None]:
    if callable(case.argv):
        flags, path = case.argv(env)
    else:
        flags, path = list(case.argv), None
    if flags and not flags[0].startswith("-") and case.id.startswith(("config", "eval-config")):
        return flags, path  # a config file holds everything
    if case.script == "train":
        return [*TINY, "--max_train_steps", "4", "--output_dir", str(env.run), "--overwrite_output_dir", *flags], path
    if case.id in ("eval-no-model-dir", "eval-not-a-pipeline"):
        return [*flags, "--output_dir", str(env.eval), *EVAL], path
    return [str(env.run), "--output_dir", str(env.eval), *EVAL, *flags], path


def error_lines(err: str, prog: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_hostile_input(case: Case, finished_run: Path, tmp_path: Path, capsys, monkeypatch):
    env = Env(tmp=tmp_path, run=tmp_path / "run", eval=tmp_path / "eval")
    shutil.copytree(finished_run, env.run)
    env.eval.mkdir()
    (env.eval / "report.json").write_text('{"sentinel": true}\n')
    (env.tmp / "dir.json").mkdir()
    argv, path = _argv(case, env)
    script = train if case.script == "train" else evaluate
    prog = f"{case.script}.py"
    started = []
    if case.stage == "parse":  # must stop before any work: the script's first work is recorded, then stopped
        monkeypatch.setattr(FIRST_WORK[case.script], lambda *a, **k: started.append(a) or _stop())
    before = snapshot(env.run, env.eval, *([path] if path is not None else []))

    try:
        rc = script(argv)
    finally:
        if path is not None and path.name == "read-only":
            path.chmod(0o700)
    out, err = capsys.readouterr()

    assert not started, "the script started working before it checked its input"
    assert rc == 2, f"exit {rc}\n{err[-3000:]}"
    assert "Traceback" not in err and "Traceback" not in out
    assert "usage:" not in err and TOKEN not in err
    lines = error_lines(err, prog)
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    for part in case.expect:
        part = part.format(path=path, run=env.run, tmp=env.tmp)
        assert part in line, f"{part!r} not in {line!r}"
    assert snapshot(env.run, env.eval, *([path] if path is not None else [])) == before


# ---------------------------------------------------------------------------------------------------- the handler
@pytest.mark.parametrize(
    ("raised", "code", "expected"),
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (PermissionError(13, "Permission denied", "/data/out/logs"), 2, "Permission denied: '/data/out/logs'"),
        (RuntimeError("CUDA error: device-side assert\ntriggered"), 1, "internal error RuntimeError"),
    ],
    ids=["ctrl-c", "permission-denied", "internal-error"],
)
def test_any_error_is_one_line(raised, code, expected, tmp_path, capsys, monkeypatch):
    def work(*args, **kwargs):
        raise raised

    monkeypatch.setattr(FIRST_WORK["train"], work)
    rc = train([*TINY, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == code
    assert "Traceback" not in err
    lines = error_lines(err, "train.py")
    assert len(lines) == 1 and expected in lines[0], err
    assert err.rstrip().endswith(lines[0])


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(FIRST_WORK["train"], lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        train([*TINY, "--output_dir", str(tmp_path / "out"), "--debug"])
    from ddpm_objectives_hf.errors import ConfigError

    with pytest.raises(ConfigError, match="learning_rate"):
        train(["--learning_rate", "0", "--debug"])


@pytest.mark.parametrize("script", [train, evaluate], ids=["train", "evaluate"])
def test_help_still_works(script, capsys):
    assert script(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "--debug" in out and "--seed" in out


# ---------------------------------------------------------------------------------------------------- the real CLI
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("train.py", ["--learning_rate", "nan"], "--learning_rate"),
        ("train.py", ["CONFIG"], "run.yaml"),
        ("evaluate.py", ["MODEL", "--device", "foo"], "--device"),
    ],
    ids=["train-nan", "train-bad-config", "evaluate-bad-device"],
)
def test_real_command_line(script, args, expected, finished_run, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.1\nseed: [1\n")
    args = [str(config) if a == "CONFIG" else str(finished_run) if a == "MODEL" else a for a in args]
    before = snapshot(finished_run)
    proc = _cli(str(ROOT / "scripts" / script), *args, "--output_dir", str(finished_run), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    lines = error_lines(proc.stderr, script)
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-3000:]
    assert snapshot(finished_run) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--learning_rate", "nan"], "train.py: error: --learning_rate must be a finite number > 0, got nan"),
        (["--bogus_flag"], "train.py: error: unknown flag --bogus_flag"),
        (["--overwrite_output_dir", "--max_train_steps", "0"], "train.py: error: --max_train_steps"),
    ],
    ids=["nan", "unknown-flag", "zero-steps"],
)
def test_through_accelerate_launch_quiet(args, expected, finished_run, tmp_path):
    """The README's command, `accelerate launch --quiet scripts/train.py ...`: the script's one line is the last
    line (no launcher traceback, printed once), the exit is non-zero (the launcher's 1), the folder untouched."""
    launcher = Path(sys.executable).with_name("accelerate")
    before = snapshot(finished_run)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    command = [str(launcher), "launch", "--quiet", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "scripts" / "train.py"), *args,
               "--output_dir", str(finished_run)]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CalledProcessError" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith(expected) and sum(line.startswith("train.py: error:") for line in lines) == 1
    assert snapshot(finished_run) == before
