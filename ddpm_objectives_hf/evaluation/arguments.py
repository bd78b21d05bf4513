"""The evaluation's options: the flags of ``scripts/evaluate.py`` as a dataclass (types, defaults and ``--help`` in one
place), parsed from flags or a JSON/YAML file, the checks made before any work, and the evaluation images."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cli.validation import (
    check_device,
    check_existing_folder,
    check_non_empty,
    check_ranges,
    check_writable_folder,
)
from ..errors import ConfigError
from ..evaluation.fid import FID_FEATURES
from ..ode import DIVERGENCES, METHODS, check_ode_options
from ..options import (
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    SEED,
    Range,
    check_choice,
    check_range,
)


@dataclass
class EvalArguments:
    model_dir: str = field(metadata={"help": "Pipeline folder or Hub id (also accepted as the first argument)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the report goes (default MODEL_DIR/eval)."})
    dataset_name: str | None = field(default=None, metadata={"help": "As in train.py; default: held-out digits."})
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = field(
        default=None, metadata={"help": "Class labels for a class-conditional model (default: the one ClassLabel)."}
    )
    split: str = field(default="test", metadata={"help": "Split of the data set (digits: train or test)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N images only."})
    max_bpd_samples: int | None = field(
        default=None, metadata={"help": "Bits/dim on the first N of those only (FID still uses all)."}
    )
    batch_size: int = 256
    full_bpd: bool = field(default=True, metadata={"help": "Compute the full VLB over all T steps (N × T calls)."})
    num_bpd_timesteps: int = field(default=18, metadata={"help": "K network calls per image for the fast estimate."})
    bpd_control_variates: bool = field(
        default=True, metadata={"help": "Regress each noise draw out of the fast estimate (from 70 images on)."}
    )
    ode_bpd: bool = field(
        default=True, metadata={"help": "Also the exact likelihood: bits/dim by the probability-flow ODE."}
    )
    ode_draws: int = field(default=2, metadata={"help": "Dequantisation (and probe) draws per image for the ODE."})
    ode_divergence: str = field(
        default="hutchinson",
        metadata={"choices": list(DIVERGENCES), "help": "The ODE's divergence: one Rademacher probe, or exact."},
    )
    ode_rtol: float = field(default=1e-5, metadata={"help": "Relative tolerance of the ODE solver."})
    ode_atol: float = field(default=1e-5, metadata={"help": "Absolute tolerance of the ODE solver."})
    ode_method: str = field(
        default="RK45", metadata={"choices": list(METHODS), "help": "scipy solve_ivp method of the ODE solver."}
    )
    max_ode_samples: int | None = field(
        default=None, metadata={"help": "ODE bits/dim on the first N of the bits/dim images only."}
    )
    pilot_images: int = field(default=16, metadata={"help": "Images used to learn the fast estimator's proposal."})
    pilot_grid: int = field(default=32, metadata={"help": "Timesteps of the pilot grid."})
    num_samples: int = field(default=360, metadata={"help": "Generated images for FID and the classifier's view."})
    num_inference_steps: int = 1000
    guidance_scales: list[float] | None = field(
        default=None,
        metadata={
            "help": "Classifier-free guidance scales to sample a class-conditional model with (0: unconditional, "
            "1: conditional; default 0 1 2 3 5 with a null class, else 1)."
        },
    )
    fid_features: str = field(
        default="auto",
        metadata={"choices": [*FID_FEATURES, "none"], "help": "FID feature network (auto: Inception if local)."},
    )
    seed: int = 0
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu")
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch's CPU threads (default: $OMP_NUM_THREADS, else 1, as `accelerate launch` gives train.py: "
            "with other work on the cores, several threads stall each other, a network call 180x slower measured)."
        },
    )

    def __post_init__(self):
        for name in ("model_dir", "split", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}", parameter=name)
        for name in (
            "output_dir",
            "dataset_name",
            "dataset_config_name",
            "train_data_dir",
            "image_column",
            "label_column",
        ):
            check_non_empty(name, getattr(self, name))
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ConfigError("pass either --dataset_name or --train_data_dir, not both", parameter="train_data_dir")
        at_least_two = Range(ge=2, integer=True, optional=True)  # a mean and its standard error
        check_ranges(
            self,
            num_threads=OPTIONAL_POSITIVE_INT,
            max_eval_samples=at_least_two,
            max_bpd_samples=at_least_two,
            max_ode_samples=at_least_two,
            batch_size=POSITIVE_INT,
            num_bpd_timesteps=Range(ge=2, integer=True),
            pilot_images=POSITIVE_INT,
            pilot_grid=POSITIVE_INT,
            num_samples=POSITIVE_INT if self.fid_features == "none" else Range(ge=2, integer=True),
            num_inference_steps=POSITIVE_INT,
            seed=SEED,
        )
        check_choice("fid_features", self.fid_features, (*FID_FEATURES, "none"))
        check_ode_options(
            rtol=self.ode_rtol,
            atol=self.ode_atol,
            divergence=self.ode_divergence,
            method=self.ode_method,
            draws=self.ode_draws,
        )
        if self.guidance_scales is not None:
            if not self.guidance_scales:
                raise ConfigError("guidance_scales needs at least one scale", parameter="guidance_scales")
            for scale in self.guidance_scales:
                check_range("guidance_scales", scale, ge=0)


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    """Flags (MODEL_DIR may come first, without ``--model_dir``), or a JSON/YAML file of them then flags, every value
    checked and then this machine (:func:`check_environment`); against the model, by :func:`check_model` once its
    configs are read, before its weights.

    Raises:
        ConfigError: One line naming the flag at fault and what is valid.
    """
    from ..cli.parsing import CONFIG_SUFFIXES, parse_dataclasses

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and not argv[0].endswith(CONFIG_SUFFIXES):
        argv = ["--model_dir", argv[0], *argv[1:]]
    args = parse_dataclasses((EvalArguments,), argv, prog="evaluate.py")[0]
    check_environment(args)
    return args


def check_environment(args: EvalArguments) -> None:
    """What must hold on this machine before any work: the device is present, the report's folder can be written,
    the data folder exists. The flags are checked against the model's configs by :func:`check_model`."""
    check_device("device", args.device)
    check_writable_folder("output_dir", args.output_dir or Path(args.model_dir) / "eval")
    check_existing_folder("train_data_dir", args.train_data_dir)


def check_model(args: EvalArguments, config: Mapping, scheduler, objective: dict) -> list[float]:
    """The flags against the model's configs, read before its weights (``read_pipeline``: the denoiser's ``config``,
    the objective scheduler, ``objective``): its T, output channels and conditioning. Returns the guidance scales
    to sample with (``[None]``: an unconditional model)."""
    T = scheduler.config.num_train_timesteps
    check_range("num_inference_steps", args.num_inference_steps, ge=1, le=T, integer=True)
    check_range("num_bpd_timesteps", args.num_bpd_timesteps, ge=2, le=T, integer=True)
    channels = config["in_channels"]
    out_channels = config.get("out_channels") or channels
    expected_out = 2 * channels if scheduler.learned_variance else channels
    if out_channels != expected_out:
        raise ConfigError(
            f"model_dir: the UNet has {out_channels} output channels but variance_type="
            f"{scheduler.config.variance_type!r} needs {expected_out}",
            parameter="model_dir",
        )
    return check_conditioning(args, objective.get("num_classes"), objective.get("null_class_label"))


def check_conditioning(args: EvalArguments, num_classes: int | None, null_class_label: int | None) -> list[float]:
    """The guidance scales to sample with (``[None]``: an unconditional model), checked against the model."""
    if num_classes is None:
        for name in ("guidance_scales", "label_column"):
            if getattr(args, name) is not None:
                raise ConfigError(
                    f"{name}: the model at MODEL_DIR {args.model_dir!r} is unconditional (no class labels)",
                    parameter=name,
                )
        return [None]
    if args.guidance_scales is None:
        return [0.0, 1.0, 2.0, 3.0, 5.0] if null_class_label is not None else [1.0]
    if null_class_label is None and any(s != 1 for s in args.guidance_scales):
        raise ConfigError(
            f"guidance_scales {args.guidance_scales}: the model at MODEL_DIR was trained without label dropout "
            "(no null class), so only the conditional scale 1 exists",
            parameter="guidance_scales",
        )
    return list(args.guidance_scales)


def load_images(
    args: EvalArguments, channels: int, resolution: int, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The evaluation images as float [N, C, R, R] in [−1, 1], and their labels (for a model of ``num_classes``)."""
    from ..data import (
        InMemoryImageData,
        find_label_column,
        infer_channels,
        labels_to_tensor,
        load_image_dataset,
    )

    dataset, column = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        split=args.split,
        split_parameter="split",
    )
    if args.max_eval_samples:
        dataset = dataset.select(range(min(args.max_eval_samples, len(dataset))))
    data_channels = infer_channels(dataset, column)
    if data_channels != channels:
        raise ConfigError(
            f"the model takes {channels}-channel images but the data (--dataset_name/--train_data_dir) have "
            f"{data_channels} channels"
        )
    if len(dataset) < 2:
        raise ConfigError(f"the evaluation data have {len(dataset)} image(s); at least 2 are needed")
    label_column = None
    if num_classes is not None:
        label_column, data_classes = find_label_column(dataset, args.label_column)
        if data_classes > num_classes:
            raise ConfigError(
                f"label_column {label_column!r} has {data_classes} classes; the model knows {num_classes}",
                parameter="label_column",
            )
    labels = None if label_column is None else labels_to_tensor(dataset, label_column, num_classes)
    data = InMemoryImageData.from_dataset(dataset, column, resolution, channels)
    return data.batch(torch.arange(len(data))), labels
