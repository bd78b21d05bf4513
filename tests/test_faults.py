"""Faults: kill -9 during checkpoints and the final save, folders that are not this tool's, hostile checkpoints,
non-finite weights, a failing final save.

The kill tests run the real script as a subprocess; through `tests/stop_at.py` it stops itself (SIGSTOP) at named
points of a save (hooks of the test, none in the product): the test copies the folder there (exactly what a kill at that moment leaves on disk), lets it go on,
and kills it with SIGKILL at the last point; others are killed with SIGKILL after seeded random delays. Every
interrupted folder is then resumed with `--resume_from_checkpoint latest`, and must end as the uninterrupted run ends:
a pipeline diffusers loads, complete checkpoints only, no leftovers, the same weights (resuming is bit-exact).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_train import UNET_WEIGHTS, load_and_sample, run_error, run_ok, snapshot, tiny_args, unet_weights

from ddpm_objectives_hf.training.checkpointing import verify_checkpoint
from ddpm_objectives_hf.training.run_folder import (
    COMPLETE_MARKER,
    LOCAL_ONLY_PATTERNS,
    RUN_MARKER,
    clean_leftovers,
    list_checkpoints,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train.py"
STEPS = 12
KILL_FLAGS = ["--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--timestep_sampler", "importance"]
RANDOM_KILLS = 1  # runs killed after a seeded random delay (each costs ~10 s of the file's ~50 s)
STOPS = ["checkpoint-4:saved", "checkpoint-6:pruning", "final:staged", "final:swapping"]  # the last one is killed


def _args(output_dir: Path, *extra: str, steps: int) -> list[str]:
    """test_train's tiny run on 64 of the digits (decoding all 1437 dominates a short run)."""
    return tiny_args(output_dir, "--max_train_samples", "64", *extra, steps=steps)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg"
    )
    return {**env, **extra}


def _start(out: Path, log: Path, *flags: str, stop_at: tuple[str, ...] = ()) -> subprocess.Popen:
    """train.py in a subprocess; with ``stop_at``, through tests/stop_at.py, which stops it at those points."""
    launcher = [str(Path(__file__).with_name("stop_at.py")), ",".join(stop_at)] if stop_at else []
    argv = [sys.executable, *launcher, str(SCRIPT), *_args(out, *flags, steps=STEPS)]
    with open(log, "wb") as handle:
        return subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=handle, stderr=subprocess.STDOUT)


def _resume(out: Path, *flags: str, capsys=None) -> None:
    run_ok(_args(out, *flags, "--resume_from_checkpoint", "latest", steps=STEPS), capsys)


def assert_consistent(out: Path, steps: int = STEPS) -> None:
    """A finished run: no leftovers, only complete checkpoints, a final pipeline diffusers loads, of ``steps``."""
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    for checkpoint in out.glob("checkpoint-*"):
        verify_checkpoint(checkpoint)  # complete: every file listed, of its size
    load_and_sample(out)
    assert json.loads((out / "objective.json").read_text())["train_steps"] == steps
    assert (out / "README.md").is_file() and (out / RUN_MARKER).is_file()


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoint-2 (tests copy it)."""
    out = tmp_path_factory.mktemp("checkpointed") / "out"
    run_ok(_args(out, "--checkpointing_steps", "2", steps=4))
    return out


# ---------------------------------------------------------------------------------------------------- kill -9
def _random_kill(proc: subprocess.Popen, out: Path, delay: float, killed: list) -> None:
    """SIGKILL ``delay`` seconds after the first checkpoint appears (each step writes one)."""
    while not (out / "checkpoint-1").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        killed.append(delay)
    proc.wait()


def test_kill_during_checkpoints_and_final_save_then_resume(tmp_path: Path, capsys):
    rng = random.Random(20240607)
    # stopped at named points (copied there), killed at the last; others killed at random moments
    stopped_out = tmp_path / "stopped"
    stopped = _start(stopped_out, tmp_path / "stopped.log", *KILL_FLAGS, stop_at=tuple(STOPS))
    randoms, threads, killed = [], [], []
    for i in range(RANDOM_KILLS):
        out = tmp_path / f"random-{i}"
        proc = _start(out, tmp_path / f"random-{i}.log", *KILL_FLAGS, "--checkpointing_steps", "1")
        threads.append(threading.Thread(target=_random_kill, args=(proc, out, rng.uniform(0.0, 1.5), killed)))
        threads[-1].start()
        randoms.append(out)

    copies = {}
    for point in STOPS:
        _, status = os.waitpid(stopped.pid, os.WUNTRACED)
        log = (tmp_path / "stopped.log").read_text()
        assert os.WIFSTOPPED(status), log[-3000:]
        assert f"stopped at {point}" in log, log[-3000:]
        if point != STOPS[-1]:
            copies[point] = tmp_path / point.replace(":", "-")
            shutil.copytree(stopped_out, copies[point], symlinks=True)
            os.kill(stopped.pid, signal.SIGCONT)
    os.kill(stopped.pid, signal.SIGKILL)
    stopped.wait()
    for thread in threads:
        thread.join(timeout=120)

    # what the kills left: the previous `latest` is complete; the interrupted save is a dot-folder
    assert [p.name for p in list_checkpoints(copies["checkpoint-4:saved"])] == ["checkpoint-2"]
    assert (copies["checkpoint-4:saved"] / ".checkpoint-4.tmp").is_dir()
    assert not (copies["checkpoint-4:saved"] / ".checkpoint-4.tmp" / COMPLETE_MARKER).exists()
    assert not (copies["final:staged"] / "model_index.json").exists()  # the staged pipeline is not in yet
    assert (copies["final:staged"] / ".staging-final" / "model_index.json").is_file()
    # killed mid-swap: not a pipeline (model_index.json goes out first), until the next start finishes the swap
    assert not (stopped_out / "model_index.json").exists() and (stopped_out / ".staging-final").is_dir()
    clean_leftovers(stopped_out)
    assert_consistent(stopped_out)
    reference = unet_weights(stopped_out)  # the killed run's own final weights

    # every interrupted folder resumes to the same end
    for out in [*copies.values(), *randoms, stopped_out]:
        _resume(out, *KILL_FLAGS, capsys=capsys)
        assert_consistent(out)
        assert_same_weights(unet_weights(out), reference)
        assert len(list_checkpoints(out)) <= 2


# ---------------------------------------------------------------------------------------------------- final save
def test_failing_final_save_leaves_the_previous_outputs(checkpointed_run: Path, tmp_path: Path, capsys, monkeypatch):
    import ddpm_objectives_hf.training.plots as plots

    out = tmp_path / "out"
    shutil.copytree(checkpointed_run, out)
    final = [
        "model_index.json",
        "unet",
        "scheduler",
        "objective.json",
        "README.md",
        "samples.png",
        "loss_history.json",
    ]
    before = {name: snapshot(out / name) if (out / name).is_dir() else (out / name).read_bytes() for name in final}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "plot_loss_curve", broken)
    argv = _args(out, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest", steps=6)
    assert "disk full" in run_error(argv, capsys)
    after = {name: snapshot(out / name) if (out / name).is_dir() else (out / name).read_bytes() for name in final}
    assert after == before  # the previous (4-step) outputs, untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    load_and_sample(out)

    monkeypatch.undo()  # the corrected re-run: the same command
    run_ok(argv, capsys)
    assert_consistent(out, steps=6)


# ---------------------------------------------------------------------------------------------------- ownership
def test_folder_this_tool_did_not_make_is_never_written(checkpointed_run: Path, tmp_path: Path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "README.md").write_text("my notes\n")
    (user / ".staging-final").mkdir()  # names like this tool's leftovers are the user's too
    (user / ".checkpoint-3.tmp").write_text("mine\n")
    shutil.copytree(checkpointed_run / "checkpoint-2", user / "checkpoint-2")  # even a checkpoint of this tool
    before = snapshot(user)
    for flags in (
        [],
        ["--overwrite_output_dir"],
        ["--resume_from_checkpoint", "latest"],
        ["--resume_from_checkpoint", str(checkpointed_run / "checkpoint-2")],
        ["--resume_from_checkpoint", "latest", "--overwrite_output_dir"],
    ):
        message = run_error(_args(user, "--checkpointing_steps", "2", *flags, steps=6), capsys)
        assert "--output_dir" in message and "not made by this tool" in message, message
        assert snapshot(user) == before


def test_a_folder_of_only_this_tools_checkpoints_resumes(checkpointed_run: Path, tmp_path: Path, capsys):
    """Complete checkpoints copied to another machine (nothing else: no run marker) are this tool's: the run resumes
    from the latest, and the folder becomes a run folder; one file of the user's beside them makes it the user's."""
    moved = tmp_path / "moved"
    moved.mkdir()
    for checkpoint in list_checkpoints(checkpointed_run):
        shutil.copytree(checkpoint, moved / checkpoint.name)
    run_ok(_args(moved, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest", steps=6), capsys)
    assert (moved / "ddpm_objectives_run.json").is_file() and (moved / "model_index.json").is_file()

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copytree(list_checkpoints(checkpointed_run)[-1], mixed / list_checkpoints(checkpointed_run)[-1].name)
    (mixed / "notes.txt").write_text("mine\n")
    message = run_error(
        _args(mixed, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest", steps=6), capsys
    )
    assert "--output_dir" in message and "not made by this tool" in message


def test_overwrite_replaces_the_previous_run_completely(checkpointed_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    run_ok(_args(out, "--checkpointing_steps", "2", "--save_images_steps", "2", steps=6), capsys)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    # a shorter run under another objective replaces it: only its own checkpoint, outputs and history remain
    new = ["--prediction_type", "sample", "--checkpointing_steps", "2"]
    run_ok(_args(out, *new, "--overwrite_output_dir", steps=4), capsys)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    assert verify_checkpoint(out / "checkpoint-2")["prediction_type"] == "sample"
    assert not (out / "samples").exists()  # the old run's intermediate samples went too
    assert [h["step"] for h in json.loads((out / "loss_history.json").read_text())] == [2, 4]
    assert json.loads((out / "scheduler/scheduler_config.json").read_text())["prediction_type"] == "sample"
    assert_consistent(out, steps=4)

    # resuming it under the old objective is refused, naming the flag; under its own it continues
    before = snapshot(out)
    message = run_error(
        _args(out, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest", steps=6), capsys
    )
    assert "--resume_from_checkpoint" in message and "another run" in message and "--prediction_type" in message
    assert snapshot(out) == before
    run_ok(_args(out, *new, "--resume_from_checkpoint", "latest", steps=6), capsys)
    assert [h["step"] for h in json.loads((out / "loss_history.json").read_text())] == [2, 4, 6]

    # the same folder without either flag, or resuming a checkpoint of another folder in it: refused, saying how
    before = snapshot(out)
    message = run_error(_args(out, *new, steps=6), capsys)
    assert "not empty" in message and "--resume_from_checkpoint latest" in message
    assert "--overwrite_output_dir" in message and "checkpoint-4" in message
    other = str(checkpointed_run / "checkpoint-2")
    message = run_error(_args(out, "--resume_from_checkpoint", other, steps=6), capsys)
    assert "--output_dir" in message and "mix" in message and "--overwrite_output_dir" in message
    assert snapshot(out) == before


def test_resume_names_every_flag_that_differs(checkpointed_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    shutil.copytree(checkpointed_run, out)
    before = snapshot(out)
    resume = ["--resume_from_checkpoint", "latest"]
    other = [
        "--loss_weighting", "min_snr", "--block_out_channels", "8", "8",
        "--train_batch_size", "8", "--max_train_samples", "500", "--no_use_ema",
    ]  # fmt: skip
    message = run_error(_args(out, *other, *resume, steps=6), capsys)
    for expected in (
        "--loss_weighting",
        "--block_out_channels",
        "--train_batch_size",
        "--max_train_samples",
        "--use_ema",
    ):
        assert expected in message, message
    assert "--prediction_type" not in message and "--norm_num_groups" not in message
    message = run_error(_args(out, *resume, steps=1), capsys)
    assert "--max_train_steps" in message and "(2)" in message, message
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------------- non-finite
def test_non_finite_weights_are_never_checkpointed(tmp_path: Path, capsys, monkeypatch):
    real_adamw = torch.optim.AdamW

    class BlowsUpAtStep2(real_adamw):
        """AdamW whose 2nd update makes every weight NaN (as `--learning_rate inf` does), the loss still finite."""

        def step(self, closure=None):
            result = super().step(closure)
            self.updates = getattr(self, "updates", 0) + 1
            if self.updates == 2:
                with torch.no_grad():
                    for group in self.param_groups:
                        for p in group["params"]:
                            p.fill_(float("nan"))
            return result

    monkeypatch.setattr(torch.optim, "AdamW", BlowsUpAtStep2)
    out = tmp_path / "out"
    message = run_error(_args(out, "--checkpointing_steps", "1", steps=6), capsys)
    assert "NaN" in message and "step 2" in message and "stopping without saving weights" in message
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]
    assert not list(out.glob("*checkpoint-2*")) and not (out / UNET_WEIGHTS).exists()
    assert verify_checkpoint(out / "checkpoint-1")["prediction_type"] == "epsilon"  # complete: `latest` resumes it

    monkeypatch.undo()
    run_ok(_args(out, "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest", steps=3), capsys)
    assert_consistent(out, steps=3)

    # at the final save (the loss of the last step was finite): nothing saved, and the re-run needs no flag
    monkeypatch.setattr(torch.optim, "AdamW", BlowsUpAtStep2)
    out = tmp_path / "final"
    message = run_error(_args(out, steps=2), capsys)
    assert "NaN" in message and "step 2" in message and "stopping without saving weights" in message
    assert not list_checkpoints(out) and not (out / "model_index.json").exists()
    monkeypatch.undo()
    run_ok(_args(out, steps=2), capsys)
    assert_consistent(out, steps=2)


# ---------------------------------------------------------------------------------------------------- code in pickles
class _Payload:
    """Unpickling this calls ``open(sentinel, "w")``: code execution, visible as a file."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_code_in_any_checkpoint_file_is_never_run(checkpointed_run: Path, tmp_path: Path, capsys):
    sentinel = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(_Payload(sentinel), buffer)
    payload = buffer.getvalue()
    torch.load(io.BytesIO(payload), weights_only=False)  # the payload works when unpickled as accelerate would
    assert sentinel.exists()
    sentinel.unlink()

    names = sorted(p.name for p in (checkpointed_run / "checkpoint-2").iterdir())
    assert {"custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl", "model.safetensors"} <= set(names)
    for name in names:
        out = tmp_path / name
        out.mkdir()
        shutil.copy(checkpointed_run / RUN_MARKER, out)
        checkpoint = out / "checkpoint-2"
        shutil.copytree(checkpointed_run / "checkpoint-2", checkpoint)
        (checkpoint / name).write_bytes(payload)
        if name != COMPLETE_MARKER:  # the attacker rewrites the completion record to match
            record = json.loads((checkpoint / COMPLETE_MARKER).read_text())
            record["files"][name] = len(payload)
            (checkpoint / COMPLETE_MARKER).write_text(json.dumps(record))
        message = run_error(_args(out, "--resume_from_checkpoint", "latest", steps=4), capsys)
        assert "--resume_from_checkpoint" in message and name in message, message
        assert not sentinel.exists(), name


def test_leftovers_and_marker_are_never_uploaded():
    from huggingface_hub.utils import filter_repo_objects

    from ddpm_objectives_hf.training.hub import DEFAULT_IGNORE_PATTERNS

    files = [
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "README.md",
        RUN_MARKER,
        ".staging-final/unet/diffusion_pytorch_model.safetensors",
        ".staging-trash-staging-final/model_index.json",
        ".checkpoint-4.tmp/optimizer.bin",
        ".pipeline-1a2b3c4d/unet/config.json",
        ".tmp-training_config.json.abc123",
    ]
    kept = list(filter_repo_objects(files, ignore_patterns=[*DEFAULT_IGNORE_PATTERNS, *LOCAL_ONLY_PATTERNS]))
    assert kept == ["model_index.json", "unet/diffusion_pytorch_model.safetensors", "README.md"]
