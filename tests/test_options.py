"""Each objective option is declared once, in the scheduler's ``__init__`` signature (and its docstring line).

The promise tested here: a weighting with a new parameter is its function plus one keyword in the scheduler; the
flag, its help, the built scheduler, ``objective.json`` and the reloaded scheduler follow with nothing else edited.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from diffusers.configuration_utils import register_to_config
from tiny import tiny_unet
from transformers import HfArgumentParser

from ddpm_objectives_hf import DDPMObjectiveScheduler, diffusion_loss, register_weighting
from ddpm_objectives_hf.bpd import full_bpd
from ddpm_objectives_hf.cli import error_line
from ddpm_objectives_hf.cli.arguments import build_scheduler, objective_arguments
from ddpm_objectives_hf.errors import ConfigError
from ddpm_objectives_hf.scheduling_ddpm_objective import NonNegative, Positive, PositiveInt, PredictionType
from ddpm_objectives_hf.timestep_sampling import TIMESTEP_SAMPLERS
from ddpm_objectives_hf.training.pipelines import load_for_evaluation, save_pipeline
from ddpm_objectives_hf.weighting import WEIGHTINGS, WeightingFn

ROOT = Path(__file__).resolve().parents[1]
EXTRA = {"timestep_sampler", "dataset", "train_steps"}  # objective.json's run information

# The objective flags of scripts/train.py and their defaults before they were derived from the signature.
TODAY = {
    "prediction_type": "epsilon",
    "loss_type": "mse",
    "loss_weighting": "simple",
    "snr_gamma": 5.0,
    "p2_k": 1.0,
    "p2_gamma": 1.0,
    "sigma_data": 0.5,
    "sigmoid_bias": 0.0,
    "hybrid_lambda": 0.001,
    "variance_type": "fixed_small",
    "learn_variance": False,
    "timestep_sampler": "uniform",
    "logit_mean": 0.0,
    "logit_std": 1.0,
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "rescale_betas_zero_snr": False,
}


# ---------------------------------------------------------------------------------------------- a new weighting
def tilted(snr: torch.Tensor, tilt: float) -> torch.Tensor:
    """``w = (1 + SNR)^(−κ)``: a weighting with a parameter no scheduler had."""
    return (1.0 + snr) ** -tilt


class TiltedScheduler(DDPMObjectiveScheduler):
    """`DDPMObjectiveScheduler` with the one keyword the `tilted` weighting needs.

    Args:
        tilt (`float` > 0, defaults to 0.5): κ of the `tilted` weighting ``w = (1 + SNR)^(−κ)``.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: PositiveInt = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: typing.Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: typing.Literal["fixed_small", "fixed_large", "learned_range"] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: typing.Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        loss_type: typing.Literal["mse", "kl", "hybrid"] = "mse",
        loss_weighting: str | WeightingFn = "simple",
        snr_gamma: Positive = 5.0,
        p2_k: Positive = 1.0,
        p2_gamma: Positive = 1.0,
        sigma_data: Positive = 0.5,
        sigmoid_bias: float = 0.0,
        hybrid_lambda: NonNegative = 0.001,
        tilt: Positive = 0.5,
    ):
        options = {k: v for k, v in locals().items() if k not in ("self", "tilt", "__class__")}
        super().__init__(**options)


@pytest.fixture
def tilted_registered():
    register_weighting("tilted", tilted)
    yield
    WEIGHTINGS.pop("tilted", None)


def _parser(scheduler_class=DDPMObjectiveScheduler) -> HfArgumentParser:
    return HfArgumentParser(objective_arguments(scheduler_class))


def _actions(parser: HfArgumentParser) -> dict:
    return {a.dest: a for a in parser._actions if f"--{a.dest}" in a.option_strings}


def _parse(argv: list[str], scheduler_class=DDPMObjectiveScheduler):
    (args,) = _parser(scheduler_class).parse_args_into_dataclasses(args=argv)
    return args


def _signature_names(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def test_new_weighting_parameter_is_one_keyword(tilted_registered, tmp_path: Path):
    # the flag, with its default and its help from the subclass's docstring
    actions = _actions(_parser(TiltedScheduler))
    assert actions["tilt"].default == 0.5 and actions["tilt"].type is float
    assert "κ of the `tilted` weighting" in actions["tilt"].help
    assert "tilted" in actions["loss_weighting"].choices
    assert "tilt" not in _actions(_parser())  # the base class has no such option

    # a run parsed from argv builds the subclass with it, and the weighting sees the parsed value
    argv = ["--loss_weighting", "tilted", "--tilt", "0.25", "--num_train_timesteps", "20"]
    args = _parse([*argv, "--prediction_type", "v_prediction"], TiltedScheduler)
    scheduler = build_scheduler(args)
    assert type(scheduler) is TiltedScheduler and scheduler.config.tilt == 0.25
    t = torch.arange(20)
    torch.testing.assert_close(scheduler.loss_weight(t), (1.0 + scheduler.snr(t)) ** -0.25, rtol=1e-12, atol=0)
    assert not torch.allclose(scheduler.loss_weight(t), (1.0 + scheduler.snr(t)) ** -0.5)

    # trains a few steps
    unet = tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 8, 8), generator=generator).float() / 127.5 - 1  # 8-bit data in [−1, 1]
    for _ in range(3):
        out = diffusion_loss(unet, images, scheduler, generator=generator)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(before[k], v) for k, v in unet.state_dict().items())

    # saves: objective.json holds the new key (the options DDPMScheduler does not have, and the run's information)
    save_pipeline(unet, scheduler, tmp_path, extra={"timestep_sampler": args.timestep_sampler, "train_steps": 3})
    objective = json.loads((tmp_path / "objective.json").read_text())
    assert objective["tilt"] == 0.25 and objective["loss_weighting"] == "tilted"
    assert set(objective) - EXTRA == _signature_names(TiltedScheduler) - _signature_names(DDPMScheduler)

    # reloads as the subclass with the same weights table, and evaluates
    unet2, reloaded, info = load_for_evaluation(str(tmp_path), scheduler_class=TiltedScheduler)
    assert type(reloaded) is TiltedScheduler and reloaded.config.tilt == 0.25
    assert reloaded.config.prediction_type == "v_prediction" and info["timestep_sampler"] == "uniform"
    for units in (None, "epsilon", "sample", "v_prediction", "mean"):
        assert torch.equal(reloaded.loss_weight(t, units), scheduler.loss_weight(t, units)), units
    bpd = full_bpd(unet2, reloaded, images[:4], batch_size=4, progress=False)
    assert bpd["total"].shape == (4,) and torch.isfinite(bpd["total"]).all() and (bpd["total"] > 0).all()

    # the base class has no `tilt` option: its weighting cannot be evaluated, and the error says why
    with pytest.raises(ConfigError, match="tilt") as info:
        load_for_evaluation(str(tmp_path))
    assert info.value.parameter == "loss_weighting"


def test_readme_objective_flags_exist_with_todays_defaults():
    readme = (ROOT / "README.md").read_text()
    listed = re.search(r"\*\*Objective\*\* \((.*?)\)[.:]", readme, re.S)
    assert listed, "README has no **Objective** (...) flag list"
    flags = re.findall(r"`--(\w+)`", listed.group(1))
    assert set(TODAY) <= set(flags)
    actions = _actions(_parser())
    for name in flags:
        assert name in actions, f"--{name} is in README but not a flag"
        if name in TODAY:
            assert actions[name].default == TODAY[name], name
    defaults = _parse([])
    assert {name: getattr(defaults, name) for name in TODAY} == TODAY


def test_train_parses_the_derived_flags():
    from ddpm_objectives_hf.training.arguments import parse_args

    obj = parse_args([])[2]
    assert [f.name for f in dataclasses.fields(obj)] == [f.name for f in dataclasses.fields(objective_arguments())]
    assert type(build_scheduler(obj)) is DDPMObjectiveScheduler


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"timestep_spacing": "leading", "variance_type": "fixed_small", "loss_type": "mse"}),
        (["--rescale_betas_zero_snr"], {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}),
        (["--rescale_betas_zero_snr", "--timestep_spacing", "linspace"], {"timestep_spacing": "linspace"}),
        (["--learn_variance"], {"variance_type": "learned_range", "loss_type": "hybrid"}),
        (["--learn_variance", "--loss_type", "kl"], {"variance_type": "learned_range", "loss_type": "kl"}),
        (["--snr_gamma", "3", "--steps_offset", "1"], {"snr_gamma": 3.0, "steps_offset": 1}),
    ],
)
def test_flags_build_the_scheduler(argv: list[str], expected: dict):
    config = build_scheduler(_parse(argv)).config
    assert {k: config[k] for k in expected} == expected


def test_saved_keys_are_the_config_minus_ddpm_schedulers(tmp_path: Path):
    expected = _signature_names(DDPMObjectiveScheduler) - _signature_names(DDPMScheduler)
    assert expected and set(DDPMObjectiveScheduler.objective_option_names()) == expected
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=20, loss_weighting="p2", p2_k=2.0)
    save_pipeline(tiny_unet(), scheduler, tmp_path)
    objective = json.loads((tmp_path / "objective.json").read_text())
    assert set(objective) - EXTRA == expected
    assert {k: objective[k] for k in expected} == {k: scheduler.config[k] for k in expected}
    # the rest of the objective is the saved diffusers scheduler's config, and the reload is the same scheduler
    _, reloaded, info = load_for_evaluation(str(tmp_path))
    assert {k: reloaded.config[k] for k in scheduler.option_names()} == {
        k: scheduler.config[k] for k in scheduler.option_names()
    }
    assert info["p2_k"] == 2.0 and info["num_train_timesteps"] == 20


@pytest.mark.parametrize("variance_type", ["learned_range", "learned", "fixed_large_log", "fixed_small_log"])
def test_a_pipeline_from_elsewhere_keeps_its_variance_type(tmp_path: Path, variance_type: str):
    """Evaluated under the model's own variance type (nothing substituted); the loss options are the defaults."""
    learned = variance_type.startswith("learned")
    pipeline = DDPMPipeline(
        unet=tiny_unet(2 if learned else 1),
        scheduler=DDPMScheduler(num_train_timesteps=20, variance_type=variance_type),
    )
    pipeline.save_pretrained(tmp_path)
    _, scheduler, _ = load_for_evaluation(str(tmp_path))
    assert scheduler.config.variance_type == variance_type
    assert scheduler.learned_variance == learned and scheduler.config.loss_type == "mse"
    assert DDPMObjectiveScheduler.with_learned_variance({"loss_type": "mse"}) == {
        "loss_type": "hybrid",
        "variance_type": "learned_range",
    }
    assert DDPMObjectiveScheduler.with_learned_variance({"variance_type": "learned"})["variance_type"] == "learned"


def test_choices_come_from_the_literals(tilted_registered):
    hints = typing.get_type_hints(DDPMObjectiveScheduler.__init__)
    literals = {name: hint for name, hint in hints.items() if typing.get_origin(hint) is typing.Literal}
    actions = _actions(_parser())
    assert {"prediction_type", "variance_type", "loss_type", "beta_schedule", "timestep_spacing"} <= set(literals)
    for name, hint in literals.items():
        assert list(actions[name].choices) == list(typing.get_args(hint)), name
    assert "laplace" in actions["beta_schedule"].choices  # every schedule of DDPMScheduler
    assert list(actions["timestep_sampler"].choices) == list(TIMESTEP_SAMPLERS)
    assert list(actions["loss_weighting"].choices) == sorted(WEIGHTINGS)  # the registry, "tilted" included
    with pytest.raises(SystemExit):
        _parse(["--beta_schedule", "cosine"])


@pytest.mark.parametrize(
    ("argv", "parameter"),
    [
        (["--snr_gamma", "0"], "snr_gamma"),
        (["--p2_k", "-1"], "p2_k"),
        (["--sigma_data", "nan"], "sigma_data"),
        (["--hybrid_lambda", "-0.1"], "hybrid_lambda"),
        (["--hybrid_lambda", "inf"], "hybrid_lambda"),
        (["--sigmoid_bias", "nan"], "sigmoid_bias"),
        (["--num_train_timesteps", "0"], "num_train_timesteps"),
        (["--beta_start", "0"], "beta_start"),
        (["--beta_end", "1.5"], "beta_end"),
        (["--beta_start", "0.03", "--beta_end", "0.02"], "beta_end"),
        (["--loss_type", "hybrid"], "loss_type"),
        (["--variance_type", "fixed_large", "--loss_type", "hybrid"], "loss_type"),
        (["--loss_weighting", "tilted", "--tilt", "0"], "tilt"),
    ],
)
def test_bad_value_names_the_parameter(argv: list[str], parameter: str, tilted_registered):
    with pytest.raises(ConfigError) as info:
        build_scheduler(_parse(argv, TiltedScheduler))
    assert isinstance(info.value, ValueError) and info.value.parameter == parameter
    line = error_line(info.value)
    assert line.startswith(f"--{parameter}") and "\n" not in line


def test_beta_range_is_not_checked_where_the_schedule_ignores_it():
    scheduler = build_scheduler(_parse(["--beta_schedule", "squaredcos_cap_v2", "--beta_start", "0"]))
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"


@pytest.mark.parametrize("prediction_type", typing.get_args(PredictionType))
def test_remote_pipeline_exactly_where_diffusers_lacks_the_value(prediction_type: str):
    from ddpm_objectives_hf.training.pipelines import needs_remote_code, saved_objective

    diffusers_targets = typing.get_args(typing.get_type_hints(DDPMScheduler.__init__)["prediction_type"])
    scheduler = DDPMObjectiveScheduler(num_train_timesteps=20, prediction_type=prediction_type)
    assert needs_remote_code(scheduler) is (prediction_type not in diffusers_targets)
    assert ("prediction_type" in saved_objective(scheduler)) is (prediction_type not in diffusers_targets)


def test_choice_descriptions_cover_exactly_the_signature_choices():
    """The described choices (model card, help) are the signature's Literals: a new target cannot miss its text."""
    from ddpm_objectives_hf.scheduling_ddpm_objective import LOSS_TYPES, PREDICTION_TYPES, VARIANCE_TYPES

    hints = typing.get_type_hints(DDPMObjectiveScheduler.__init__)
    for name, described in (
        ("prediction_type", PREDICTION_TYPES),
        ("loss_type", LOSS_TYPES),
        ("variance_type", VARIANCE_TYPES),
    ):
        assert typing.get_args(hints[name]) == tuple(described), name
        assert all(text.strip() for text in described.values()), name
