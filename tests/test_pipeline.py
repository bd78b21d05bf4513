"""DDPMObjectivePipeline and the saved pipelines: every kind of model saves, loads with plain diffusers (the remote
pipeline without this package), samples with swapped schedulers, and follows the objective scheduler's own steps."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    UNet2DModel,
)
from diffusers.utils.torch_utils import randn_tensor
from hub_server import FakeHub, hub_server  # noqa: F401

import ddpm_objectives_hf.pipeline_ddpm_objective as pipeline_module
from ddpm_objectives_hf import DDPMObjectiveScheduler
from ddpm_objectives_hf.errors import PipelineError
from ddpm_objectives_hf.pipeline_ddpm_objective import DDPMObjectivePipeline, convert_prediction
from ddpm_objectives_hf.training.pipelines import (
    diffusers_scheduler,
    load_for_evaluation,
    needs_remote_code,
    sampling_pipeline,
    save_pipeline,
)

T = 20  # training timesteps: full DDPM sampling is 20 network calls
STEPS = 5  # inference steps with the respaced and swapped schedulers
SWAPS = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler, "DPMSolver": DPMSolverMultistepScheduler}
# every scheduler that can take a DDPM model's place (EDM Euler samples a σ-space model only), by name
ALL_SWAPS = {
    c.__name__: c for c in sorted(DDPMScheduler().compatibles, key=lambda c: c.__name__) if c is not EDMEulerScheduler
}


def diffusers_ddpm_pipeline_serves(scheduler_class) -> bool:
    """Whether diffusers' own `DDPMPipeline` can run the scheduler: it passes ``generator`` to `step` and calls
    neither `scale_model_input` nor scales x_T by ``init_noise_sigma`` (so σ-space schedulers, Euler and friends,
    need `DDPMObjectivePipeline`, which does both)."""
    scheduler = scheduler_class.from_config(DDPMScheduler().config)
    scheduler.set_timesteps(STEPS)
    x = torch.ones(1, 1, 2, 2)
    return (
        "generator" in inspect.signature(scheduler.step).parameters
        and float(scheduler.init_noise_sigma) == 1
        and torch.equal(scheduler.scale_model_input(x, scheduler.timesteps[0]), x)
    )


def swaps_for(name: str) -> list[str]:
    """The schedulers a saved kind samples with, package blocked: all for a `DDPMObjectivePipeline`, those diffusers'
    `DDPMPipeline` serves for a plain one."""
    return [n for n, c in ALL_SWAPS.items() if name not in PLAIN or diffusers_ddpm_pipeline_serves(c)]


# Tolerance of the pipeline's trajectory against DDPMObjectiveScheduler.step's (same noise): float32 round-off only.
# diffusers' DDPMScheduler computes its coefficients in float32 from a float32 ᾱ, the objective scheduler in
# float64 cast to float32, so each step differs by a few ulp of |x_t| ≈ 2.5 (ulp 2.4e-7); a μ̃ model's
# x̂0 = (μ̃ − c2 x_t) / c1 amplifies that by 1/c1 (up to ~10 here) and its ε̂ makes one more float32 round trip.
# Over 20 steps of a random UNet this measured ≤ 2.4e-6 (ε, x0, v) and ≤ 5e-5 (μ̃); a conversion at the wrong
# training timestep (off by one) differs by ≥ 5e-2.
TRAJECTORY_ATOL = {"mean": 1e-4}
DEFAULT_TRAJECTORY_ATOL = 1e-5


@dataclasses.dataclass(frozen=True)
class Kind:
    options: dict
    num_classes: int | None = None
    null_class_label: int | None = None
    labels: tuple[int, ...] | None = None  # what a conditional sample asks for

    @property
    def learned(self) -> bool:
        return self.options.get("variance_type") == "learned_range"

    @property
    def num_class_embeds(self) -> int | None:
        if self.num_classes is None:
            return None
        return self.num_classes + (self.null_class_label is not None)

    def scheduler(self) -> DDPMObjectiveScheduler:
        return DDPMObjectiveScheduler(num_train_timesteps=T, **self.options)

    def unet(self) -> UNet2DModel:
        torch.manual_seed(0)
        return UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=2 if self.learned else 1,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            num_class_embeds=self.num_class_embeds,
        ).eval()

    def call_kwargs(self) -> dict:
        return {} if self.labels is None else {"class_labels": list(self.labels)}


LEARNED = {"variance_type": "learned_range", "loss_type": "hybrid"}
KINDS = {
    "eps": Kind({"prediction_type": "epsilon"}),
    "x0": Kind({"prediction_type": "sample"}),
    "v": Kind({"prediction_type": "v_prediction"}),
    "eps-learned": Kind({"prediction_type": "epsilon", **LEARNED}),
    "x0-learned": Kind({"prediction_type": "sample", **LEARNED}),  # saved speaking ε: 5 schedulers lack `sample`
    "mean": Kind({"prediction_type": "mean"}),
    "cond-null": Kind({"prediction_type": "v_prediction", **LEARNED}, 3, 3, (0, 2)),
    "cond-no-null": Kind({"prediction_type": "epsilon"}, 3, None, (1, 2)),
}
PLAIN = ("eps", "x0", "v")  # saved as diffusers' DDPMPipeline


def atol(kind: Kind) -> float:
    return TRAJECTORY_ATOL.get(kind.options["prediction_type"], DEFAULT_TRAJECTORY_ATOL)


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_pipeline(kind: Kind) -> DDPMObjectivePipeline | DDPMPipeline:
    return quiet(sampling_pipeline(kind.unet(), kind.scheduler(), kind.num_classes, kind.null_class_label))


def sample(pipe, steps: int = STEPS, **kwargs) -> torch.Tensor:
    return pipe(
        batch_size=2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs
    ).images


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    folders = {}
    for name, kind in KINDS.items():
        folders[name] = root / name
        extra = {"timestep_sampler": "uniform", "train_steps": 0}
        save_pipeline(
            kind.unet(),
            kind.scheduler(),
            folders[name],
            extra=extra,
            num_classes=kind.num_classes,
            null_class_label=kind.null_class_label,
        )
    return folders


# ---------------------------------------------------------------------------------------------------- the folders
@pytest.mark.parametrize("name", list(KINDS))
def test_saved_folder_is_of_its_kind(saved, name):
    kind, folder = KINDS[name], saved[name]
    index = json.loads((folder / "model_index.json").read_text())
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    objective = json.loads((folder / "objective.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert needs_remote_code(kind.scheduler(), kind.num_classes) is (name not in PLAIN)
    if name in PLAIN:
        assert index["_class_name"] == "DDPMPipeline" and not (folder / "pipeline.py").exists()
        assert scheduler_config["prediction_type"] == kind.options["prediction_type"]
    else:
        assert index["_class_name"] == ["pipeline", "DDPMObjectivePipeline"] and "_name_or_path" not in index
        assert (folder / "pipeline.py").read_bytes() == Path(pipeline_module.__file__).read_bytes()
        assert index["prediction_type"] == kind.options["prediction_type"]
        assert (index["num_classes"], index["null_class_label"]) == (kind.num_classes, kind.null_class_label)
    # the saved scheduler is fed ε̂ for μ̃ (diffusers has no such target) and, in a DDPMObjectivePipeline, for x0 (five
    # schedulers lack `sample`): the true target is the pipeline's prediction_type (and objective.json's for μ̃)
    speaks_eps = name == "mean" or (name not in PLAIN and kind.options["prediction_type"] == "sample")
    assert scheduler_config["prediction_type"] == ("epsilon" if speaks_eps else kind.options["prediction_type"])
    assert objective.get("prediction_type", kind.options["prediction_type"]) == kind.options["prediction_type"]
    assert scheduler_config["variance_type"] == kind.options.get("variance_type", "fixed_small")
    assert "plugin_scheduler" not in objective


def test_pipeline_file_imports_only_torch_diffusers_and_the_standard_library():
    tree = ast.parse(Path(pipeline_module.__file__).read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    top = {m.split(".")[0] for m in modules}
    assert top - set(sys.stdlib_module_names) == {"torch", "diffusers"}


# The standalone user: no ddpm_objectives_hf (a meta-path finder refuses it even where it is installed in the
# environment), isolated mode (-I: no PYTHONPATH, no script folder on sys.path), cwd outside the repository.
STANDALONE = r"""
import json, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ddpm_objectives_hf":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, Refuse())
try:
    import ddpm_objectives_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("ddpm_objectives_hf is importable")

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, EDMEulerScheduler

torch.set_num_threads(1)
all_swaps = {c.__name__: c for c in DDPMScheduler().compatibles}
report = {}
for job in json.loads(sys.argv[1]):
    pipe = DiffusionPipeline.from_pretrained(job["folder"], trust_remote_code=job["remote"])
    pipe.set_progress_bar_config(disable=True)
    report[job["name"]] = [type(pipe).__name__, type(pipe).__module__]
    config = pipe.scheduler.config
    for swap in job["swaps"]:
        pipe.scheduler = all_swaps[swap].from_config({**config, "noise_sampler_seed": 0})  # DPM-Solver-SDE: a fixed Brownian tree
        images = pipe(
            batch_size=2,
            num_inference_steps=job["steps"],
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **job["kwargs"],
        ).images
        np.save(f"{job['out']}-{swap}.npy", images)
    if job["remote"]:  # the loaded pipeline saves a folder that loads again (pipeline.py copied along)
        pipe.save_pretrained(f"{job['out']}-resaved")
        again = DiffusionPipeline.from_pretrained(f"{job['out']}-resaved", trust_remote_code=True)
        again.set_progress_bar_config(disable=True)
        resampled = again(
            batch_size=2,
            num_inference_steps=job["steps"],
            generator=torch.Generator().manual_seed(0),
            output_type="np",
            **job["kwargs"],
        ).images
        report[job["name"]].append(type(again.scheduler).__name__)
        report[job["name"]].append(bool(np.array_equal(resampled, images)))
assert not [m for m in sys.modules if m.split(".")[0] == "ddpm_objectives_hf"]
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def standalone(saved, tmp_path_factory) -> tuple[dict, Path]:
    """Every saved folder loaded with plain ``DiffusionPipeline.from_pretrained`` in a Python without this package,
    sampled with every scheduler of ``DDPMScheduler.compatibles`` (EDM Euler aside): ``(pipeline class per kind,
    folder of the .npy samples)``."""
    work = tmp_path_factory.mktemp("standalone")
    jobs = [
        {
            "name": name,
            "folder": str(saved[name]),
            "remote": name not in PLAIN,
            "steps": STEPS,
            "kwargs": KINDS[name].call_kwargs(),
            "out": str(work / name),
            "swaps": swaps_for(name),
        }
        for name in KINDS
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DIFFUSERS_DISABLE_REMOTE"))}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work / "modules"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, json.dumps(jobs)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), work


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_loads_and_samples_without_the_package(standalone, name):
    """The standalone samples, with each scheduler, are the package pipeline's with the same seed."""
    report, work = standalone
    kind = KINDS[name]
    cls, module, *resaved = report[name]
    if name in PLAIN:
        assert (cls, module) == ("DDPMPipeline", "diffusers.pipelines.ddpm.pipeline_ddpm")
    else:
        assert cls == "DDPMObjectivePipeline" and module.startswith("diffusers_modules.")
        assert resaved == [swaps_for(name)[-1], True]  # re-saved with the last swap, same samples
        index = json.loads((work / f"{name}-resaved" / "model_index.json").read_text())
        assert index["_class_name"] == ["pipeline", "DDPMObjectivePipeline"] and "_name_or_path" not in index
        assert (work / f"{name}-resaved" / "pipeline.py").read_bytes() == Path(pipeline_module.__file__).read_bytes()
    pipe = model_pipeline(kind)
    config = pipe.scheduler.config
    # DDPMPipeline serves DDPM, DDIM and the two DPM-Solvers; DDPMObjectivePipeline all 14
    assert len(swaps_for(name)) == (4 if name in PLAIN else 14)
    for swap in swaps_for(name):
        pipe.scheduler = ALL_SWAPS[swap].from_config({**config, "noise_sampler_seed": 0})
        expected = sample(pipe, **kind.call_kwargs()).permute(0, 2, 3, 1).numpy()
        images = np.load(work / f"{name}-{swap}.npy")
        assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()
        np.testing.assert_allclose(images, expected, atol=1e-6, err_msg=swap)


@pytest.mark.parametrize("name", ["cond-null", "mean"])
def test_a_pushed_model_loads_by_its_hub_id_without_the_package(
    standalone,
    saved,
    hub_server: FakeHub,  # noqa: F811
    tmp_path,
    name,
):
    """Pushed to a Hub (the test server), the folder loads by its repo id with plain diffusers and
    ``trust_remote_code=True`` (pipeline.py comes down with the weights) and samples as the local folder does."""
    from ddpm_objectives_hf.training.hub import push_to_hub

    repo_id = f"{hub_server.user}/ddpm-{name}"
    push_to_hub(saved[name], repo_id, private=False, token="hf_fake", endpoint=hub_server.endpoint)
    _, work = standalone
    job = {"name": name, "folder": repo_id, "remote": True, "steps": STEPS, "kwargs": KINDS[name].call_kwargs(),
           "swaps": ["DDPMScheduler", "EulerDiscreteScheduler", "KDPM2DiscreteScheduler"]}  # fmt: skip
    job["out"] = str(tmp_path / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DIFFUSERS_DISABLE_REMOTE"))}
    env.update(
        HF_ENDPOINT=hub_server.endpoint,  # read when huggingface_hub is imported in the subprocess
        HF_HUB_OFFLINE="0",
        HF_HOME=str(tmp_path / "hf-home"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        OMP_NUM_THREADS="1",
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", STANDALONE, json.dumps([job])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report[name][0] == "DDPMObjectivePipeline"
    assert any(
        r.path.startswith(f"/{repo_id}/resolve/") and r.path.endswith("/pipeline.py") for r in hub_server.requests
    )
    for swap in job["swaps"]:
        from_hub, from_folder = np.load(tmp_path / f"{name}-{swap}.npy"), np.load(work / f"{name}-{swap}.npy")
        np.testing.assert_allclose(from_hub, from_folder, atol=1e-6, err_msg=swap)


# ---------------------------------------------------------------------------------------------------- the steps
def objective_trajectory(kind: Kind, steps: int = T, guidance_scale: float = 1.0, labels=None) -> torch.Tensor:
    """Sampling by hand with ``DDPMObjectiveScheduler.step`` on the model's own output (same noise as the pipeline);
    guidance by its formula in ε-space, ε̂ = ε̂_∅ + s (ε̂_y − ε̂_∅), through the objective scheduler's conversions."""
    unet, objective = kind.unet(), kind.scheduler()
    objective.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x = randn_tensor((2, 1, 8, 8), generator=generator, dtype=torch.float32)
    labels = None if labels is None else torch.tensor(labels)
    with torch.no_grad():
        for t in objective.timesteps:
            kwargs = {} if labels is None else {"class_labels": labels}
            out = unet(x, t, **kwargs).sample
            if guidance_scale != 1:
                null = torch.full_like(labels, kind.null_class_label)
                out_null = unet(x, t, class_labels=null).sample
                t_vec = torch.full((2,), int(t))
                eps = objective.predict_noise(out[:, :1], x, t_vec)
                eps_null = objective.predict_noise(out_null[:, :1], x, t_vec)
                guided = eps_null + guidance_scale * (eps - eps_null)
                prediction = objective.convert_prediction(guided, x, t_vec, from_type="epsilon")
                out = torch.cat([prediction, out[:, 1:]], dim=1)  # the conditional branch's variance
            x = objective.step(out, t, x, generator=generator).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("scheduler_target", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("name", list(KINDS))
def test_full_ddpm_trajectory_is_the_objective_schedulers(name, scheduler_target):
    """The package pipeline, for every model target, fed to a DDPMScheduler of any target, follows
    ``DDPMObjectiveScheduler.step`` on the raw model output."""
    kind = KINDS[name]
    sampler = DDPMScheduler.from_config(diffusers_scheduler(kind.scheduler()).config, prediction_type=scheduler_target)
    pipe = quiet(
        DDPMObjectivePipeline(
            kind.unet(), sampler, kind.options["prediction_type"], kind.num_classes, kind.null_class_label
        )
    )
    images = sample(pipe, steps=T, **kind.call_kwargs())
    expected = objective_trajectory(kind, labels=kind.labels)
    torch.testing.assert_close(images, expected, atol=atol(kind), rtol=0)


def test_the_saved_pipelines_follow_the_objective_scheduler_too():
    for name in ("eps-learned", "mean", "cond-null"):
        kind = KINDS[name]
        images = sample(model_pipeline(kind), steps=T, **kind.call_kwargs())
        torch.testing.assert_close(images, objective_trajectory(kind, labels=kind.labels), atol=atol(kind), rtol=0)


@pytest.mark.parametrize("swap", ["DDIMScheduler", "DPMSolver"])
@pytest.mark.parametrize("name", ["eps-learned", "mean", "cond-null"])
def test_swapped_scheduler_gets_the_target_it_expects(name, swap):
    """DDIM and DPM-Solver get the prediction converted to their own target by the objective scheduler (C channels)."""
    kind = KINDS[name]
    pipe = model_pipeline(kind)
    config = dict(pipe.scheduler.config, prediction_type="sample" if swap == "DPMSolver" else "v_prediction")
    pipe.scheduler = SWAPS[swap].from_config(config)
    images = sample(pipe, **kind.call_kwargs())

    unet, objective, scheduler = kind.unet(), kind.scheduler(), SWAPS[swap].from_config(config)
    scheduler.set_timesteps(STEPS)
    generator = torch.Generator().manual_seed(0)
    x = randn_tensor((2, 1, 8, 8), generator=generator, dtype=torch.float32)
    kwargs = {} if kind.labels is None else {"class_labels": torch.tensor(kind.labels)}
    with torch.no_grad():
        for t in scheduler.timesteps:
            prediction = unet(x, t, **kwargs).sample[:, :1]
            t_vec = torch.full((2,), int(t))
            if kind.options["prediction_type"] == "mean":  # a μ̃ model's x̂0 is clipped to the data range
                x0 = objective.convert_prediction(prediction, x, t_vec, to_type="sample").clamp(-1, 1)
                prediction = objective.convert_prediction(x0, x, t_vec, from_type="sample", to_type="mean")
            target = objective.convert_prediction(prediction, x, t_vec, to_type=config["prediction_type"])
            x = scheduler.step(target, t, x, generator=generator).prev_sample
    tolerance = atol(kind) if kind.options["prediction_type"] == "mean" else 1e-6  # μ̃: 1/c1 amplifies round-off
    torch.testing.assert_close(images, (x / 2 + 0.5).clamp(0, 1), atol=tolerance, rtol=0)


def test_guidance_scale_one_is_conditional_zero_unconditional_else_the_eps_space_formula():
    kind = KINDS["cond-null"]  # a v model with a learned variance: guided in ε-space, the conditional variance
    pipe = model_pipeline(kind)
    labels = list(kind.labels)
    for scale in (1.0, 0.0, 3.0):
        images = sample(pipe, steps=T, class_labels=labels, guidance_scale=scale)
        expected = objective_trajectory(kind, guidance_scale=scale, labels=labels)
        torch.testing.assert_close(images, expected, atol=atol(kind), rtol=0, msg=f"guidance_scale={scale}")
    assert (sample(pipe, steps=T, class_labels=labels) - sample(pipe, steps=T)).abs().max() > 1e-2  # y matters

    # with a fixed variance, scale 0 (one batched forward of [y; ∅]) is unconditional sampling through ∅
    fixed = Kind({"prediction_type": "sample"}, 3, 3, (0, 2))
    pipe = model_pipeline(fixed)
    unconditional = sample(pipe, steps=T)
    torch.testing.assert_close(sample(pipe, steps=T, class_labels=labels, guidance_scale=0.0), unconditional)
    torch.testing.assert_close(unconditional, objective_trajectory(fixed, labels=[3, 3]), atol=atol(fixed), rtol=0)


SCHEDULES = {
    "linear-20": {"num_train_timesteps": 20},
    "cosine-1000": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"},
    "zero-snr-1000": {"num_train_timesteps": 1000, "rescale_betas_zero_snr": True},
}
TARGETS = ("epsilon", "sample", "v_prediction", "mean")


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_conversions_agree_with_the_objective_scheduler(schedule):
    scheduler = DDPMObjectiveScheduler(**SCHEDULES[schedule])
    n = scheduler.config.num_train_timesteps
    generator = torch.Generator().manual_seed(0)
    x, prediction = torch.randn(2, 3, 2, 2, 4, generator=generator).unbind(0)
    last = n - 2 if scheduler.config.rescale_betas_zero_snr else n - 1  # SNR = 0: no x0 from ε there
    for t in (0, 1, n // 2, last):
        t_vec = torch.full((3,), t)
        for from_type in TARGETS:
            for to_type in TARGETS:
                ours = convert_prediction(prediction, x, t, scheduler.alphas_cumprod, from_type, to_type)
                theirs = scheduler.convert_prediction(prediction, x, t_vec, from_type=from_type, to_type=to_type)
                torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6, msg=f"{from_type}→{to_type} t={t}")


# ---------------------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("name", list(KINDS))
def test_load_for_evaluation_reads_every_kind(saved, name):
    kind = KINDS[name]
    unet, scheduler, objective = load_for_evaluation(str(saved[name]))
    assert type(scheduler) is DDPMObjectiveScheduler
    for option, value in kind.options.items():
        assert scheduler.config[option] == value, option
    assert unet.config.num_class_embeds == kind.num_class_embeds
    assert (objective["num_classes"], objective["null_class_label"]) == (kind.num_classes, kind.null_class_label)
    assert (
        objective["prediction_type"] == kind.options["prediction_type"] and objective["timestep_sampler"] == "uniform"
    )


def test_load_for_evaluation_reads_a_folder_saved_with_the_plugin_scheduler(tmp_path):
    """Folders of earlier versions named the plugin scheduler in model_index.json for μ̃ models."""
    kind = KINDS["mean"]
    DDPMPipeline(unet=kind.unet(), scheduler=kind.scheduler()).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"][1] == "DDPMObjectiveScheduler"
    _, scheduler, objective = load_for_evaluation(str(tmp_path))
    assert scheduler.config.prediction_type == "mean" and objective["num_classes"] is None


def test_resaving_another_kind_leaves_no_pipeline_file(tmp_path):
    save_pipeline(KINDS["mean"].unet(), KINDS["mean"].scheduler(), tmp_path)
    assert (tmp_path / "pipeline.py").is_file()
    save_pipeline(KINDS["eps"].unet(), KINDS["eps"].scheduler(), tmp_path)
    assert not (tmp_path / "pipeline.py").exists()
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"


# ---------------------------------------------------------------------------------------------------- bad input
BAD_CALLS = [
    ("cond-null", {"class_labels": [3]}, "class_labels must be in 0 … 2, got 3"),
    ("cond-null", {"class_labels": [0, -1]}, "got -1"),
    ("cond-null", {"class_labels": [0, 1, 2]}, "3 labels for batch_size=2"),
    ("cond-null", {"class_labels": torch.tensor([0.0, 1.0])}, "class_labels must be integers"),
    ("cond-null", {"class_labels": [0, True]}, "class_labels must be integers"),
    ("cond-null", {"guidance_scale": 2.0}, "needs class_labels"),
    ("cond-null", {"class_labels": [0], "guidance_scale": float("nan")}, "guidance_scale must be a finite"),
    ("cond-no-null", {}, "class_labels is required"),
    ("cond-no-null", {"class_labels": [0], "guidance_scale": 2.0}, "needs a null class"),
    ("mean", {"class_labels": [0]}, "this model is unconditional"),
    ("mean", {"guidance_scale": 2.0}, "needs a class-conditional model"),
    ("mean", {"output_type": "latent"}, "output_type must be one of"),
    ("mean", {"batch_size": 0}, "batch_size must be a positive int"),
]


@pytest.mark.parametrize(("name", "kwargs", "message"), BAD_CALLS, ids=[m for _, _, m in BAD_CALLS])
def test_bad_call_is_a_one_line_value_error(name, kwargs, message):
    pipe = model_pipeline(KINDS[name])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        pipe(**{"batch_size": 2, "num_inference_steps": 2, **kwargs})
    assert "\n" not in str(info.value)


def test_the_batch_comes_from_the_labels_when_no_batch_size_is_given():
    """As diffusers' DiTPipeline: one image per label; one label (or none) gives one image."""
    pipe = model_pipeline(KINDS["cond-null"])
    for labels, count in (([0, 1, 2, 1, 0], 5), (torch.tensor([2, 0]), 2), (1, 1), ([2], 1)):
        images = pipe(class_labels=labels, num_inference_steps=2, output_type="pt").images
        assert images.shape[0] == count, labels
    assert pipe(num_inference_steps=2, output_type="pt").images.shape[0] == 1  # the null class, one image


def test_a_scheduler_the_pipeline_cannot_serve():
    pipe = model_pipeline(KINDS["mean"])
    pipe.scheduler = DDPMObjectiveScheduler(num_train_timesteps=T, prediction_type="mean")
    with pytest.raises(ValueError, match="scheduler: DDPMObjectiveScheduler with prediction_type='mean'"):
        pipe(num_inference_steps=2)
    learned = DDPMScheduler(num_train_timesteps=T, variance_type="learned_range")
    pipe.scheduler = learned
    with pytest.raises(ValueError, match="needs variance values"):
        pipe(num_inference_steps=2)


@pytest.mark.parametrize(
    ("kind", "num_classes", "null_class_label", "parameter"),
    [
        ("eps", 3, None, "num_classes"),  # the UNet has no class embedding
        ("cond-null", None, None, "num_classes"),  # it has one
        ("cond-null", 5, None, "num_classes"),  # too few embeddings
        ("cond-null", 3, 1, "null_class_label"),  # one of the classes
        ("cond-null", 3, 4, "null_class_label"),  # not embedded
    ],
)
def test_save_refuses_classes_that_do_not_fit_the_unet(tmp_path, kind, num_classes, null_class_label, parameter):
    with pytest.raises(PipelineError) as info:
        save_pipeline(KINDS[kind].unet(), KINDS[kind].scheduler(), tmp_path / "out", num_classes=num_classes,
                      null_class_label=null_class_label)  # fmt: skip
    assert info.value.parameter == parameter and "\n" not in str(info.value)
    assert not (tmp_path / "out" / "model_index.json").exists()
