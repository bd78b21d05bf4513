#!/usr/bin/env python
"""Train a diffusers `UNet2DModel` with any DDPM objective.

    accelerate launch --quiet scripts/train.py --prediction_type v_prediction --loss_weighting min_snr --output_dir out
    python scripts/train.py run.yaml           # the same flags as a JSON or YAML file

The loop is DDPM's training algorithm (Ho et al. 2020, Algorithm 1): x0 ~ data, t ~ sampler, ε ~ N(0, I), x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε,
predict, weighted loss, gradient step (+ EMA). With no data flag it trains on scikit-learn's digits (offline).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ddpm_objectives_hf.cli import run_main
from ddpm_objectives_hf.cli.arguments import build_scheduler, objective_arguments
from ddpm_objectives_hf.cli.validation import (
    check_existing_folder,
    check_hub_reachable,
    check_non_empty,
    check_ranges,
    check_repo_id,
    check_report_to,
    check_url,
    check_writable_folder,
)
from ddpm_objectives_hf.errors import CheckpointError, ConfigError, TrainingError
from ddpm_objectives_hf.options import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    OPTIONAL_POSITIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    UNIT_INTERVAL_OPEN_TOP,
    Range,
    check_choice,
    check_range,
)

logger = logging.getLogger("ddpm_objectives_hf.train")
DEFAULT_CONDITION_DROPOUT = 0.1  # the label dropout of classifier-free guidance (Ho & Salimans 2022: 0.1–0.2)


# ---------------------------------------------------------------------------------------------------- arguments
@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, a save_to_disk folder or a parquet file. Default: embedded digits."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of the Hub dataset."})
    train_data_dir: str | None = field(default=None, metadata={"help": "A folder of images (imagefolder)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (found automatically if unset)."})
    label_column: str | None = field(
        default=None,
        metadata={"help": "Class-label column for --class_conditional (default: the data set's one ClassLabel)."},
    )
    use_default_data: bool = field(
        default=True, metadata={"help": "With no data flag, train on scikit-learn's digits (shipped, offline)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache folder."})
    resolution: int | None = field(default=None, metadata={"help": "Image size (default: 8 for digits, else 32)."})
    channels: int | None = field(default=None, metadata={"help": "1 or 3 (default: from the images)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N images."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for decoding."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Workers for data that do not fit in memory."})

    def __post_init__(self):
        for name in (
            "dataset_name",
            "dataset_config_name",
            "train_data_dir",
            "image_column",
            "label_column",
            "cache_dir",
        ):
            check_non_empty(name, getattr(self, name))
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ConfigError("pass either --dataset_name or --train_data_dir, not both", parameter="train_data_dir")
        check_ranges(
            self,
            resolution=OPTIONAL_POSITIVE_INT,
            max_train_samples=OPTIONAL_POSITIVE_INT,
            preprocessing_num_workers=OPTIONAL_POSITIVE_INT,
            dataloader_num_workers=NON_NEGATIVE_INT,
        )
        if self.channels is not None:
            check_choice("channels", self.channels, (1, 3))


@dataclass
class ModelArguments:
    pretrained_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune a diffusers pipeline (local folder or Hub id) with a DDPM-family scheduler: its denoiser "
            "and its scheduler config (and image size, classes) are the starting point; the objective flags given "
            "override them (--learn_variance widens the output layer, starting from the fixed variance)."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --pretrained_model_name_or_path."})
    variant: str | None = field(
        default=None, metadata={"help": "Weights variant of --pretrained_model_name_or_path (e.g. fp16)."}
    )
    model_config_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A model config.json (local) to use instead of the UNet flags below: its _class_name picks the "
            "model class (UNet2DModel or DiTTransformer2DModel, which is class-conditional)."
        },
    )
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_resolution_index: int = field(
        default=1, metadata={"help": "Which down block gets self-attention (-1: none)."}
    )
    norm_num_groups: int = 8
    dropout: float = 0.0
    class_conditional: bool = field(
        default=False, metadata={"help": "Condition the UNet on class labels (a class embedding; see --label_column)."}
    )
    condition_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Probability of replacing a label by a learned null class, for unconditional and guided samples "
            "(classifier-free guidance). Default with --class_conditional: 0.1."
        },
    )

    def __post_init__(self):
        for name in ("pretrained_model_name_or_path", "revision", "variant", "model_config_name_or_path"):
            check_non_empty(name, getattr(self, name))
        if self.pretrained_model_name_or_path and self.model_config_name_or_path:
            raise ConfigError(
                "pretrained_model_name_or_path brings its own model: drop --model_config_name_or_path",
                parameter="pretrained_model_name_or_path",
            )
        for name in ("revision", "variant"):
            if getattr(self, name) is not None and not self.pretrained_model_name_or_path:
                raise ConfigError(f"{name} is of --pretrained_model_name_or_path, which is not given", parameter=name)
        check_ranges(
            self,
            layers_per_block=POSITIVE_INT,
            norm_num_groups=POSITIVE_INT,
            dropout=UNIT_INTERVAL_OPEN_TOP,
            condition_dropout=Range(ge=0, lt=1, optional=True),
        )
        if self.condition_dropout is not None and not self.class_conditional:
            raise ConfigError(
                "condition_dropout drops class labels: it needs --class_conditional", parameter="condition_dropout"
            )
        if self.class_conditional and self.condition_dropout is None:
            self.condition_dropout = DEFAULT_CONDITION_DROPOUT
        channels = self.block_out_channels
        if not isinstance(channels, (list, tuple)) or not channels:
            raise ConfigError(
                f"block_out_channels must be one or more integers >= 1, got {channels!r}",
                parameter="block_out_channels",
            )
        for value in channels:
            check_range("block_out_channels", value, POSITIVE_INT)
        check_range(
            "attention_resolution_index", self.attention_resolution_index, ge=-1, le=len(channels) - 1, integer=True
        )
        if any(c % self.norm_num_groups for c in channels):
            raise ConfigError(
                f"norm_num_groups {self.norm_num_groups} must divide every --block_out_channels {list(channels)} "
                "(GroupNorm splits each block's channels into that many groups)",
                parameter="norm_num_groups",
            )


# The objective's flags: every option of `DDPMObjectiveScheduler.__init__` (type, default and help from its signature
# and docstring) and the command-line-only ones (--learn_variance, the timestep sampler); `parse_args` makes it again
# when a weighting was registered since (see ddpm_objectives_hf.cli.arguments).
ObjectiveArguments = objective_arguments()


@dataclass
class RunArguments:
    output_dir: str = "ddpm-digits"
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into a non-empty --output_dir of another run."}
    )
    seed: int = 0
    train_batch_size: int = 64
    max_train_steps: int = 2000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler: str = field(default="cosine", metadata={"help": "Any diffusers get_scheduler name."})
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    use_ema: bool = True
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    ema_max_decay: float = 0.999
    channels_last: bool = False
    compile: bool = field(default=False, metadata={"help": "torch.compile the UNet (GPU)."})
    logging_steps: int = 20
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, trackio, all or none."})
    logging_dir: str = "logs"
    save_images_steps: int = field(default=0, metadata={"help": "Sample a grid every N steps (0: only at the end)."})
    num_sample_images: int = 16
    num_inference_steps: int = 1000
    guidance_scale: float | None = field(
        default=None,
        metadata={
            "help": "Classifier-free guidance scale of the saved samples of a --class_conditional model "
            "(1: conditional, 0: unconditional; default 1)."
        },
    )
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = False
    hub_token: str | None = field(default=None, metadata={"help": "Defaults to the logged-in token."})
    hub_endpoint: str | None = field(
        default=None, metadata={"help": "Hub URL (default: HF_ENDPOINT or huggingface.co)."}
    )

    def __post_init__(self):
        for name in ("output_dir", "logging_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name} must be a non-empty path, got {getattr(self, name)!r}", parameter=name)
        for name in ("resume_from_checkpoint", "hub_model_id", "hub_token", "hub_endpoint"):
            check_non_empty(name, getattr(self, name))
        check_ranges(
            self,
            seed=SEED,
            train_batch_size=POSITIVE_INT,
            max_train_steps=POSITIVE_INT,
            gradient_accumulation_steps=POSITIVE_INT,
            learning_rate=POSITIVE,
            lr_warmup_steps=NON_NEGATIVE_INT,
            adam_beta1=UNIT_INTERVAL_OPEN_TOP,
            adam_beta2=UNIT_INTERVAL_OPEN_TOP,
            adam_weight_decay=NON_NEGATIVE,
            adam_epsilon=POSITIVE,
            max_grad_norm=NON_NEGATIVE,  # 0: no clipping
            ema_inv_gamma=POSITIVE,
            ema_power=POSITIVE,
            ema_max_decay=UNIT_INTERVAL_OPEN_TOP,
            logging_steps=POSITIVE_INT,
            save_images_steps=NON_NEGATIVE_INT,  # 0: only at the end
            num_sample_images=POSITIVE_INT,
            num_inference_steps=POSITIVE_INT,
            guidance_scale=Range(ge=0, optional=True),
            checkpointing_steps=POSITIVE_INT,
            checkpoints_total_limit=OPTIONAL_POSITIVE_INT,
        )
        from diffusers.optimization import SchedulerType

        # piecewise_constant needs step rules that no flag gives
        check_choice(
            "lr_scheduler", self.lr_scheduler, [s.value for s in SchedulerType if s.value != "piecewise_constant"]
        )
        check_choice("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16", None))
        check_report_to("report_to", self.report_to)
        check_repo_id("hub_model_id", self.hub_model_id)
        check_url("hub_endpoint", self.hub_endpoint)


def parse_args(argv: list[str] | None = None):
    """Flags, or a JSON/YAML file of them (then flags that override it), as the four option dataclasses.

    Every value and combination is checked here, before any work (:func:`check_arguments`).

    Raises:
        ConfigError: One line naming the flag at fault and what is valid.
    """
    from ddpm_objectives_hf.cli.parsing import parse_dataclasses

    argv = sys.argv[1:] if argv is None else argv
    types = (DataArguments, ModelArguments, objective_arguments(), RunArguments)
    parsed = parse_dataclasses(types, argv, prog="train.py")
    if parsed[1].pretrained_model_name_or_path:  # its objective and image size are the defaults the flags override
        parsed = parse_dataclasses(types, argv, prog="train.py", defaults=pretrained_defaults(parsed[1]))
    check_arguments(*parsed)
    return parsed


def pretrained_defaults(model_args: ModelArguments) -> dict:
    """The flag defaults of a pretrained pipeline: its scheduler's options (with its ``objective.json`` where it has
    one), its image size and its class conditioning."""
    from ddpm_objectives_hf.errors import PipelineError
    from ddpm_objectives_hf.training.pipelines import load_for_evaluation

    try:
        unet, scheduler, objective = load_for_evaluation(
            model_args.pretrained_model_name_or_path, revision=model_args.revision, variant=model_args.variant,
            parameter="pretrained_model_name_or_path",
        )  # fmt: skip
    except PipelineError as err:
        raise ConfigError(str(err), parameter="pretrained_model_name_or_path") from err
    defaults = {name: scheduler.config[name] for name in scheduler.option_names()}
    size = unet.config.sample_size
    defaults["resolution"] = size if isinstance(size, int) else size[0]
    if objective.get("num_classes") is not None:
        defaults["class_conditional"] = True
        defaults["condition_dropout"] = objective.get(
            "condition_dropout", 0.1 if objective["null_class_label"] else 0.0
        )
        if objective.get("label_column"):
            defaults["label_column"] = objective["label_column"]
    return defaults


def check_arguments(data_args: DataArguments, model_args: ModelArguments, obj, run: RunArguments) -> None:
    """The checks that need several flags: the objective builds, its final sampling and LR schedule work."""
    from diffusers.optimization import get_scheduler

    if data_args.label_column is not None and not model_args.class_conditional:
        raise ConfigError(
            "label_column names the class labels: it needs --class_conditional", parameter="label_column"
        )
    if run.guidance_scale is not None:
        if not model_args.class_conditional:
            raise ConfigError(
                "guidance_scale needs a class-conditional model (--class_conditional); this one is unconditional",
                parameter="guidance_scale",
            )
        if run.guidance_scale != 1 and model_args.condition_dropout == 0:
            raise ConfigError(
                f"guidance_scale {run.guidance_scale} needs the unconditional model: --condition_dropout > 0 "
                "(with 0 there is no null class; use --guidance_scale 1)",
                parameter="guidance_scale",
            )

    scheduler = build_scheduler(obj)  # every objective flag, as the scheduler checks them
    T = scheduler.config.num_train_timesteps
    check_range("num_inference_steps", run.num_inference_steps, ge=1, le=T, integer=True)
    if getattr(obj, "timestep_sampler", None) == "logit_normal":
        check_range("logit_std", getattr(obj, "logit_std", None), gt=0)
        check_range("logit_mean", getattr(obj, "logit_mean", None))
    try:
        scheduler.set_timesteps(run.num_inference_steps)  # the final sampling's schedule
    except ValueError as err:
        raise ConfigError(
            f"num_inference_steps {run.num_inference_steps}: {err}", parameter="num_inference_steps"
        ) from err
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=run.learning_rate)
    try:
        get_scheduler(
            run.lr_scheduler, optimizer, num_warmup_steps=run.lr_warmup_steps, num_training_steps=run.max_train_steps
        )
    except (ValueError, TypeError, AttributeError) as err:
        message = " ".join(str(err).split())
        raise ConfigError(
            f"lr_scheduler {run.lr_scheduler!r} with these flags: {message}", parameter="lr_scheduler"
        ) from err
    if model_args.model_config_name_or_path is None:
        from ddpm_objectives_hf.training.data import check_resolution

        check_resolution(_resolution(data_args), len(model_args.block_out_channels))


def _resolution(data_args: DataArguments) -> int:
    """``--resolution``, or its default: 8 for the embedded digits, else 32."""
    default_resolution = 8 if not (data_args.dataset_name or data_args.train_data_dir) else 32
    return data_args.resolution or default_resolution


def check_pretrained(data_args: DataArguments, model_args: ModelArguments, scheduler) -> None:
    """A pretrained model that contradicts the flags: another image size, a learned variance the objective drops, a
    class embedding the run does not use (or the reverse), a learned variance its family cannot add."""
    from ddpm_objectives_hf.training.models import family_of, read_config

    config = read_config(_pretrained_unet(model_args))
    family = family_of(config, parameter="pretrained_model_name_or_path")
    size = config.get("sample_size")
    size = size if isinstance(size, int) else size[0]
    if _resolution(data_args) != size:
        raise ConfigError(f"resolution {_resolution(data_args)} differs from the pretrained model's sample_size {size}",
                          parameter="resolution")  # fmt: skip
    channels, out = config["in_channels"], config.get("out_channels") or config["in_channels"]
    if out == 2 * channels and not scheduler.learned_variance:
        raise ConfigError(
            f"variance_type {scheduler.config.variance_type!r}: the pretrained model outputs a learned variance "
            f"({out} = 2 × {channels} channels); use learned_range or learned",
            parameter="variance_type",
        )
    if out == channels and scheduler.learned_variance:
        if scheduler.config.variance_type != "learned_range":
            raise ConfigError("variance_type 'learned' cannot start from a fixed variance: use learned_range to "
                              "add a learned variance to a pretrained model", parameter="variance_type")  # fmt: skip
        if not family.widens_output:
            raise ConfigError(f"learn_variance: adding output channels to a pretrained {family.class_name} is not "
                              "supported", parameter="learn_variance")  # fmt: skip
    embeds = family.embedded_classes(config) is not None
    if embeds != model_args.class_conditional:
        raise ConfigError(
            "class_conditional: the pretrained model "
            + ("embeds class labels; keep --class_conditional" if embeds else "has no class embedding to train"),
            parameter="class_conditional",
        )


def _pretrained_unet(model_args: ModelArguments):
    """The pretrained denoiser's config location: a local ``unet/`` folder, or the Hub file."""
    from ddpm_objectives_hf.training.data import local_path

    source = model_args.pretrained_model_name_or_path
    local = local_path(source)
    if local is not None:
        return str(local / "unet")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, "unet/config.json", revision=model_args.revision)


def check_environment(data_args: DataArguments, model_args: ModelArguments, run: RunArguments) -> None:
    """What must hold on this machine before any work: the folders exist or can be written, the trackers are
    installed, the model config reads, and the Hub answers when the run will push to it."""
    check_existing_folder("train_data_dir", data_args.train_data_dir)
    check_writable_folder("output_dir", run.output_dir)
    if data_args.cache_dir is not None:
        check_writable_folder("cache_dir", data_args.cache_dir)
    check_report_to("report_to", run.report_to, available=True)
    if model_args.model_config_name_or_path is not None:
        from ddpm_objectives_hf.training.models import family_of, read_config

        path = model_args.model_config_name_or_path
        try:
            config = read_config(path)
        except (OSError, ValueError) as err:
            message = " ".join(str(err).split())[:300]
            raise ConfigError(
                f"model_config_name_or_path {path!r} is not a readable model config: {message}",
                parameter="model_config_name_or_path",
            ) from err
        family = family_of(config)
        if not family.unconditional and not model_args.class_conditional:
            raise ConfigError(
                f"model_config_name_or_path: {family.class_name} is class-conditional; add --class_conditional",
                parameter="model_config_name_or_path",
            )
        family.check_resolution(config, _resolution(data_args))
    if run.push_to_hub:
        check_hub_reachable("push_to_hub", run.hub_endpoint, run.hub_token)


# ---------------------------------------------------------------------------------------------------- building blocks
# build_scheduler(obj): the scheduler of the parsed objective flags (ddpm_objectives_hf.cli.arguments); an invalid
# option raises the scheduler's ConfigError, which names it.


def build_model(
    args: ModelArguments,
    resolution: int,
    channels: int,
    learned_variance: bool,
    num_classes: int | None = None,
    null_class: bool = False,
):
    """The denoiser: a `UNet2DModel` from the flags (sinusoidal time embedding, as in DDPM), or the model class of
    ``--model_config_name_or_path`` (:mod:`ddpm_objectives_hf.training.models`); ``out_channels`` 2C with a learned
    variance, and a class embedding of ``num_classes`` (plus the null class) for a class-conditional model."""
    from ddpm_objectives_hf.training.models import family_of, read_config

    if args.pretrained_model_name_or_path:
        return _pretrained_model(args, channels, learned_variance)
    if args.model_config_name_or_path:
        config = read_config(args.model_config_name_or_path)
    else:
        n = len(args.block_out_channels)
        down = ["AttnDownBlock2D" if i == args.attention_resolution_index else "DownBlock2D" for i in range(n)]
        up = ["AttnUpBlock2D" if n - 1 - i == args.attention_resolution_index else "UpBlock2D" for i in range(n)]
        config = dict(
            _class_name="UNet2DModel",
            block_out_channels=tuple(args.block_out_channels),
            layers_per_block=args.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=args.norm_num_groups,
            dropout=args.dropout,
            time_embedding_type="positional",  # sinusoidal time embedding, as in DDPM (Ho et al. 2020)
        )
    family = family_of(config)
    out_channels = 2 * channels if learned_variance else channels
    if config.get("out_channels") not in (None, out_channels):
        raise ConfigError(
            f"model_config_name_or_path: out_channels={config['out_channels']} does not fit the variance "
            f"(needs {out_channels}: {'2 × ' if learned_variance else ''}{channels} channels)",
            parameter="model_config_name_or_path",
        )
    config = family.configure(config, resolution=resolution, channels=channels, out_channels=out_channels,
                              num_classes=num_classes, null_class=null_class)  # fmt: skip
    family.check_resolution(config, resolution)
    model = family.model_class.from_config(config)
    return family.prepare_for_training(model)


def _pretrained_model(args: ModelArguments, channels: int, learned_variance: bool):
    """The pretrained denoiser, its output layer widened for a learned variance that starts as its fixed one
    (learned_range's v = −1 is β̃_t, +1 is β_t)."""
    from ddpm_objectives_hf.training.models import family_of, read_config

    family = family_of(read_config(_pretrained_unet(args)), parameter="pretrained_model_name_or_path")
    source, kwargs = args.pretrained_model_name_or_path, {"revision": args.revision, "variant": args.variant}
    model = family.model_class.from_pretrained(source, subfolder="unet", **kwargs)
    if model.config.in_channels != channels:
        raise ConfigError(
            f"pretrained_model_name_or_path: the model takes {model.config.in_channels} channels, the data has "
            f"{channels}",
            parameter="pretrained_model_name_or_path",
        )
    if learned_variance and model.config.out_channels == channels:
        from diffusers import DDPMScheduler

        fixed = DDPMScheduler.load_config(source, subfolder="scheduler", revision=args.revision)["variance_type"]
        model = family.widen_output(model, 2 * channels, 1.0 if fixed.startswith("fixed_large") else -1.0)
    return family.prepare_for_training(model)


class DataStream:
    """Batches of x0 in [−1, 1] (and their class labels, or `None`) for optimizer step ``i`` and micro-batch ``j``,
    the same on resume.

    In memory (the data fit): one permutation per epoch (seeded, shared by all processes), each process takes its
    own slice: no PIL work and no host synchronisation in the loop. Otherwise a DataLoader prepared by accelerate.
    """

    def __init__(
        self, data_args: DataArguments, run: RunArguments, accelerator, resolution: int, class_conditional: bool
    ):
        from ddpm_objectives_hf.training.data import (
            InMemoryImageData,
            OnTheFlyTransform,
            find_label_column,
            fits_in_memory,
            infer_channels,
            labels_to_tensor,
            load_image_dataset,
        )

        with accelerator.main_process_first():
            dataset, column = load_image_dataset(
                dataset_name=data_args.dataset_name,
                dataset_config_name=data_args.dataset_config_name,
                train_data_dir=data_args.train_data_dir,
                image_column=data_args.image_column,
                cache_dir=data_args.cache_dir,
                use_default_digits=data_args.use_default_data,
            )
        if data_args.max_train_samples:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
        self.label_column, self.num_classes, labels = None, None, None
        if class_conditional:
            self.label_column, self.num_classes = find_label_column(dataset, data_args.label_column)
            labels = labels_to_tensor(dataset, self.label_column, self.num_classes)  # every label in 0 … K − 1
        self.channels = data_args.channels or infer_channels(dataset, column)
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}", parameter="channels")
        self.accelerator = accelerator
        self.batch_size = run.train_batch_size
        self.random_flip = data_args.random_flip
        self.seed = run.seed
        self.num_images = len(dataset)
        per_step = self.batch_size * accelerator.num_processes
        if self.num_images < per_step:
            raise ConfigError(
                f"train_batch_size {self.batch_size} × {accelerator.num_processes} processes needs at least "
                f"{per_step} images; the data set has {self.num_images}",
                parameter="train_batch_size",
            )
        self.in_memory = fits_in_memory(self.num_images, self.channels, resolution)
        self.generator = torch.Generator(device=accelerator.device).manual_seed(run.seed + accelerator.process_index)
        if self.in_memory:
            self.data = InMemoryImageData.from_dataset(
                dataset,
                column,
                resolution,
                self.channels,
                device=accelerator.device,
                num_proc=data_args.preprocessing_num_workers,
                labels=labels,
            )
            self.batches_per_epoch = self.num_images // per_step
            self._epoch, self._order = -1, None
        else:
            transform = OnTheFlyTransform(
                column, resolution, self.channels, random_flip=data_args.random_flip, label_column=self.label_column
            )
            loader = torch.utils.data.DataLoader(
                transform.apply_to(dataset),
                batch_size=self.batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=data_args.dataloader_num_workers,
            )
            self.loader = accelerator.prepare(loader)
            self.batches_per_epoch = len(self.loader)
            self._iterator = None

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``index``-th batch of this run (counting micro-batches from the start of training): images and
        labels (`None` for an unconditional model)."""
        epoch, position = divmod(index, self.batches_per_epoch)
        if not self.in_memory:
            if self._iterator is None or position == 0:
                from accelerate import skip_first_batches

                if hasattr(self.loader, "set_epoch"):  # a new shuffle per epoch, reproducible on resume
                    self.loader.set_epoch(epoch)
                loader = skip_first_batches(self.loader, position) if position else self.loader
                self._iterator = iter(loader)
            batch = next(self._iterator)
            return batch["pixel_values"], batch.get("class_labels")
        if epoch != self._epoch:
            self._order = self.data.epoch_order(
                epoch, self.seed, self.accelerator.process_index, self.accelerator.num_processes
            )
            self._epoch = epoch
        indices = self._order[position * self.batch_size : (position + 1) * self.batch_size]
        images = self.data.batch(indices, random_flip=self.random_flip, generator=self.generator)
        return images, (self.data.labels_at(indices) if self.label_column is not None else None)


class TrainState:
    """Step counter, data/noise generators and loss history, checkpointed with ``accelerator.save_state``: plain
    tensors only, so resuming reads them with ``torch.load(weights_only=True)`` (``checkpointing.load_checkpoint``)."""

    def __init__(self, stream: DataStream):
        self.step = 0
        self.stream = stream
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {
            "step": torch.tensor(self.step),
            "generator": self.stream.generator.get_state(),
            "history": torch.tensor(
                [[h["step"], h["loss"], h["images_per_s"]] for h in self.history], dtype=torch.float64
            ).reshape(-1, 3),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.stream.generator.set_state(state["generator"])
        self.history = [{"step": int(s), "loss": v, "images_per_s": r} for s, v, r in state["history"].tolist()]


@dataclass
class Classes:
    """The class conditioning of a run: K classes, and the null class of classifier-free guidance (Ho & Salimans
    2022) when labels are dropped with probability ``dropout`` (its label is K; the UNet embeds K + 1 classes)."""

    num_classes: int
    dropout: float
    label_column: str

    @property
    def null_class_label(self) -> int | None:
        return self.num_classes if self.dropout > 0 else None

    def drop(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """y → ∅ with probability ``dropout`` (the training of classifier-free guidance)."""
        if self.dropout == 0:
            return labels
        dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < self.dropout
        return torch.where(dropped, self.num_classes, labels)


@torch.no_grad()
def sample_images(
    unet,
    scheduler,
    num_images: int,
    num_inference_steps: int,
    seed: int,
    device,
    classes: Classes | None = None,
    guidance_scale: float | None = None,
):
    """A grid of samples through the pipeline that is saved (diffusers' DDPMPipeline, or the package's pipeline for
    learned variances, μ̃ and class-conditional models: then image i has the class i mod K)."""
    from ddpm_objectives_hf.training.pipelines import sampling_pipeline
    from ddpm_objectives_hf.training.plots import sample_grid

    pipeline = sampling_pipeline(
        unet,
        scheduler,
        num_classes=classes.num_classes if classes else None,
        null_class_label=classes.null_class_label if classes else None,
    )
    pipeline.set_progress_bar_config(desc="sampling", leave=False)
    generator = torch.Generator(device=device).manual_seed(seed)
    kwargs = {}
    if classes is not None:
        kwargs = {"class_labels": [i % classes.num_classes for i in range(num_images)]}
        kwargs["guidance_scale"] = 1.0 if guidance_scale is None else guidance_scale
    images = pipeline(
        batch_size=num_images,
        generator=generator,
        num_inference_steps=num_inference_steps,
        output_type="pil",
        **kwargs,
    ).images
    return sample_grid(images, min_side=128)


def _adamw_implementation(device: torch.device) -> dict:
    """``fused=True`` where torch has a fused AdamW kernel for ``device`` (CPU and CUDA among them: one kernel per
    parameter instead of a dozen multi-tensor passes, ~3x faster on CPU), else ``foreach=True``. The same AdamW
    update either way."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        fused = device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # a torch without the helper
        fused = device.type in ("cpu", "cuda")
    return {"fused": True} if fused else {"foreach": True}


# ---------------------------------------------------------------------------------------------------- main
def train(data_args: DataArguments, model_args: ModelArguments, obj: ObjectiveArguments, run: RunArguments) -> Path:
    """Train and save the run; its output folder is held from the first write until this returns or raises."""
    with contextlib.ExitStack() as folder_lock:
        return _train(data_args, model_args, obj, run, folder_lock)


def _train(
    data_args: DataArguments,
    model_args: ModelArguments,
    obj: ObjectiveArguments,
    run: RunArguments,
    folder_lock: contextlib.ExitStack,
) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from ddpm_objectives_hf import diffusion_loss, make_timestep_sampler
    from ddpm_objectives_hf.cli import flag
    from ddpm_objectives_hf.training.checkpointing import (
        check_finite_weights,
        check_same_run,
        load_checkpoint,
        resolve_checkpoint,
        run_identity,
        save_checkpoint,
    )
    from ddpm_objectives_hf.training.run_folder import (
        FINAL_OUTPUTS,
        atomic_write,
        check_output_dir,
        hold_run_folder,
        prepare_output_dir,
        staged_outputs,
    )

    # 0. Objective, output folder, processes
    scheduler = build_scheduler(obj)
    check_output_dir(
        run.output_dir,
        overwrite_output_dir=run.overwrite_output_dir,
        resume_from_checkpoint=run.resume_from_checkpoint,
        name_of=flag,
    )
    report_to = None if run.report_to in ("none", "", None) else run.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        mixed_precision=run.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(
            project_dir=run.output_dir, logging_dir=os.path.join(run.output_dir, run.logging_dir)
        ),
    )
    if accelerator.state.deepspeed_plugin is not None:
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = run.train_batch_size
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    # accelerate logs each file of a checkpoint at INFO (seven lines through the progress bar): one line of ours
    for name in ("accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(name).setLevel(logging.WARNING)
    set_seed(run.seed)
    if accelerator.device.type == "cpu":
        # VLB/KL gradients reach denormal magnitudes, which run ~50x slower on CPUs; flush them to zero.
        torch.set_flush_denormal(True)
    if accelerator.is_main_process:
        logger.info("training with %d process(es) on %s", accelerator.num_processes, accelerator.device)

    # 1. Data: x0 ~ p_data (with its class y for a class-conditional model)
    resolution = _resolution(data_args)
    stream = DataStream(data_args, run, accelerator, resolution, model_args.class_conditional)
    classes = None
    if model_args.class_conditional:
        classes = Classes(stream.num_classes, model_args.condition_dropout, stream.label_column)

    # 2. Model ε_θ(x_t, t[, y]): a UNet with sinusoidal time embedding (and a class embedding), its EMA, optimizer
    # and LR schedule
    model = build_model(
        model_args,
        resolution,
        stream.channels,
        scheduler.learned_variance,
        classes.num_classes if classes else None,
        classes is not None and classes.null_class_label is not None,
    )
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if run.use_ema:
        ema = EMAModel(
            model.parameters(),
            decay=run.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=run.ema_inv_gamma,
            power=run.ema_power,
            foreach=True,
            model_cls=type(model),
            model_config=model.config,
        )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=run.learning_rate,
        betas=(run.adam_beta1, run.adam_beta2),
        weight_decay=run.adam_weight_decay,
        eps=run.adam_epsilon,
        **_adamw_implementation(accelerator.device),
    )
    # check_arguments built this schedule already (it cannot fail here): get_scheduler only checks that the step
    # counts are given and, for polynomial, that lr_end < learning_rate; the × num_processes (the prepared scheduler
    # steps once per process) changes neither.
    lr_scheduler = get_scheduler(
        run.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=run.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=run.max_train_steps * accelerator.num_processes,
    )
    if run.compile:
        model = torch.compile(model)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    sampler = make_timestep_sampler(
        obj.timestep_sampler,
        scheduler.config.num_train_timesteps,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        logit_mean=obj.logit_mean,
        logit_std=obj.logit_std,
    )
    state = TrainState(stream)
    for obj_to_save in ([ema] if ema is not None else []) + [sampler, state]:
        accelerator.register_for_checkpointing(obj_to_save)

    # 3. Resume: only a checkpoint of this same run, read without running code; then claim the output folder
    unet_config = getattr(accelerator.unwrap_model(model), "_orig_mod", accelerator.unwrap_model(model)).config
    identity = run_identity(
        scheduler,
        unet_config,
        timestep_sampler=obj.timestep_sampler,
        use_ema=run.use_ema,
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_data_dir=data_args.train_data_dir,
        resolution=resolution,
        channels=stream.channels,
        label_column=stream.label_column,
        condition_dropout=classes.dropout if classes else 0.0,
        num_images=stream.num_images,
        train_batch_size=run.train_batch_size,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        num_processes=accelerator.num_processes,
    )
    resumed_here = None  # the step of the checkpoint of --output_dir this run continues
    if run.resume_from_checkpoint:
        path = resolve_checkpoint(run.resume_from_checkpoint, run.output_dir)
        step = check_same_run(path, identity, max_train_steps=run.max_train_steps, name_of=flag)
        load_checkpoint(accelerator, path)
        if state.step != step:
            raise CheckpointError(
                f"resume_from_checkpoint {str(path)!r} holds the state of step {state.step}, not {step}",
                parameter="resume_from_checkpoint",
            )
        logger.info("resumed from %s at step %d", path, state.step)
        if path.resolve().parent == Path(run.output_dir).resolve():
            resumed_here = step
    if accelerator.is_main_process:
        # the folder is this run's until train() ends: a second run on it (plain, resume or overwrite) stops here
        folder_lock.callback(hold_run_folder(run.output_dir).close)
        # the marker first, interrupted saves finished or removed, a replaced run's outputs removed
        prepare_output_dir(run.output_dir, replace=run.overwrite_output_dir, resumed_step=resumed_here)
        config = {"data": asdict(data_args), "model": asdict(model_args), "objective": asdict(obj), "run": asdict(run)}
        config["run"].pop("hub_token", None)
        atomic_write(Path(run.output_dir) / "training_config.json", json.dumps(config, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if report_to:
        run_config = {
            k: v for k, v in {**asdict(obj), **asdict(run)}.items() if isinstance(v, (int, float, str, bool))
        }
        run_config.pop("hub_token", None)
        accelerator.init_trackers("ddpm-objectives-hf", config=run_config)

    # 4. Train: DDPM's Algorithm 1
    T = scheduler.config.num_train_timesteps
    quartile_sum = torch.zeros(4, device=accelerator.device)
    quartile_count = torch.zeros(4, device=accelerator.device)
    loss_sum = torch.zeros((), device=accelerator.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=accelerator.device)
    bad_timesteps = torch.zeros(run.train_batch_size, dtype=torch.long, device=accelerator.device)
    progress = tqdm(
        range(state.step, run.max_train_steps),
        initial=state.step,
        total=run.max_train_steps,
        disable=not accelerator.is_local_main_process,
        desc="training",
    )
    window_start, window_steps = time.perf_counter(), 0
    model.train()
    for step in progress:
        for micro in range(run.gradient_accumulation_steps):
            with accelerator.accumulate(model):
                x0, y = stream.batch(step * run.gradient_accumulation_steps + micro)  # x0 (, y) ~ p_data
                if run.channels_last:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                # y → ∅ with probability --condition_dropout: one model for p(x|y) and p(x)
                model_kwargs = {"class_labels": classes.drop(y, stream.generator)} if classes else None
                # t ~ sampler, ε ~ N(0, I), x_t, prediction and the weighted objective
                out = diffusion_loss(
                    model,
                    x0,
                    scheduler,
                    timestep_sampler=sampler,
                    generator=stream.generator,
                    model_kwargs=model_kwargs,
                )
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and run.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), run.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            sampler.update(out.timesteps, out.per_sample_loss, accelerator)
            # bookkeeping on the device (no host synchronisation per step)
            finite = torch.isfinite(out.loss)
            bad_timesteps = torch.where((first_bad < 0) & ~finite, out.timesteps, bad_timesteps)
            first_bad = torch.where(
                (first_bad < 0) & ~finite, torch.tensor(step + 1, device=first_bad.device), first_bad
            )
            quartile = (out.timesteps * 4 // T).clamp(max=3)
            quartile_sum.scatter_add_(0, quartile, out.per_sample_loss.detach().float())
            quartile_count.scatter_add_(0, quartile, torch.ones_like(out.per_sample_loss, dtype=torch.float))
            loss_sum += out.loss.detach().float()
        if ema is not None:
            ema.step(model.parameters())
        state.step = step + 1
        window_steps += 1

        last = state.step == run.max_train_steps
        if state.step % run.logging_steps == 0 or last or state.step % run.checkpointing_steps == 0:
            if int(first_bad) >= 0:
                raise TrainingError(
                    f"loss became NaN/inf at step {int(first_bad)} (timesteps {bad_timesteps.tolist()}); "
                    "stopping without saving weights: lower --learning_rate or check --loss_weighting"
                )
            elapsed = time.perf_counter() - window_start
            mean_loss = float(loss_sum) / (window_steps * run.gradient_accumulation_steps)
            images_per_s = (
                window_steps * run.gradient_accumulation_steps * x0.shape[0] * accelerator.num_processes / elapsed
            )
            logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "images_per_s": images_per_s}
            for q in range(4):
                if quartile_count[q] > 0:
                    logs[f"loss_q{q}"] = float(quartile_sum[q] / quartile_count[q])
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            progress.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}")
            accelerator.log(logs, step=state.step)
            state.history.append({"step": state.step, "loss": mean_loss, "images_per_s": images_per_s})
            quartile_sum.zero_(), quartile_count.zero_(), loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0

        if state.step % run.checkpointing_steps == 0 and not last:
            check_finite_weights(model, ema, state.step, name_of=flag)  # the loss was checked above
            save_checkpoint(accelerator, run.output_dir, state.step, run.checkpoints_total_limit, identity=identity)
            if accelerator.is_main_process:
                logger.info("saved checkpoint-%d", state.step)

        if run.save_images_steps and state.step % run.save_images_steps == 0 and not last:
            if accelerator.is_main_process:
                grid = _sample_with_ema(accelerator, model, ema, scheduler, run, classes)
                path = Path(run.output_dir) / "samples" / f"step_{state.step:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                grid.save(path)
            accelerator.wait_for_everyone()

    # 5. Save the EMA weights as a diffusers pipeline, with the model card; push if asked. Everything is built in
    # one staging folder and swapped in as a whole: a failure leaves the previous outputs.
    accelerator.wait_for_everyone()
    output_dir = Path(run.output_dir)
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(model)
        unet = getattr(unet, "_orig_mod", unet)
        if ema is not None:
            ema.copy_to(unet.parameters())
        unet = unet.to(memory_format=torch.contiguous_format).float()
        check_finite_weights(unet, None, state.step, name_of=flag)
        with staged_outputs(output_dir, remove=FINAL_OUTPUTS) as staging:
            write_card = _save_everything(
                unet, scheduler, state, data_args, obj, run, staging, classes, model_args.pretrained_model_name_or_path
            )
        logger.info("saved the pipeline, samples and model card to %s", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if run.push_to_hub and accelerator.is_main_process:
        _push(run, output_dir, write_card)
    return output_dir


def _sample_with_ema(accelerator, model, ema, scheduler, run: RunArguments, classes: Classes | None):
    unet = accelerator.unwrap_model(model)
    unet = getattr(unet, "_orig_mod", unet)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    try:
        return sample_images(
            unet,
            scheduler,
            run.num_sample_images,
            run.num_inference_steps,
            run.seed,
            accelerator.device,
            classes,
            run.guidance_scale,
        )
    finally:
        unet.train()
        if ema is not None:
            ema.restore(unet.parameters())


def _save_everything(
    unet,
    scheduler,
    state: TrainState,
    data_args,
    obj,
    run: RunArguments,
    output_dir: Path,
    classes: Classes | None,
    base_model: str | None = None,
):
    """Pipeline, samples, plots, loss history and model card into ``output_dir``; returns the card's writer
    ``write_card(folder, repo_id=...)`` (the push renders it again once the Hub gives the full repo id)."""
    import functools

    from ddpm_objectives_hf.training.model_card import write_model_card
    from ddpm_objectives_hf.training.pipelines import needs_remote_code, objective_config, save_pipeline
    from ddpm_objectives_hf.training.plots import plot_loss_curve, plot_weighting

    unet.eval()
    dataset = data_args.dataset_name or data_args.train_data_dir or "sklearn-digits"
    final_loss = state.history[-1]["loss"] if state.history else float("nan")
    from ddpm_objectives_hf.training.data import local_path

    extra = {"timestep_sampler": obj.timestep_sampler, "dataset": dataset, "train_steps": state.step}
    hub_base_model = base_model if base_model and local_path(base_model) is None else None
    if base_model:  # a local folder by its name only (never an absolute path)
        extra["base_model"] = hub_base_model or Path(base_model).resolve().name
    conditioning = {}
    if classes is not None:
        conditioning = {
            "class_conditional": True,
            "label_column": classes.label_column,
            "num_classes": classes.num_classes,
            "condition_dropout": classes.dropout,
        }
        extra.update(conditioning)
    save_pipeline(
        unet,
        scheduler,
        output_dir,
        extra=extra,
        num_classes=classes.num_classes if classes else None,
        null_class_label=classes.null_class_label if classes else None,
    )
    grid = sample_images(
        unet,
        scheduler,
        run.num_sample_images,
        run.num_inference_steps,
        run.seed,
        unet.device,
        classes,
        run.guidance_scale,
    )
    grid.save(output_dir / "samples.png")
    t = torch.arange(scheduler.config.num_train_timesteps)
    curves = {f"{obj.loss_weighting} ({scheduler.config.loss_type})": scheduler.effective_weight(t).numpy()}
    if obj.loss_weighting != "simple":
        curves["simple (L_simple)"] = torch.ones(len(t)).numpy()
    curves["vlb (the ELBO's λ_t)"] = scheduler.vlb_weight(t).numpy()
    plot_weighting(t.numpy(), curves, output_dir / "weighting.png")
    if state.history:
        plot_loss_curve(
            [h["step"] for h in state.history], [h["loss"] for h in state.history], output_dir / "loss.png"
        )
    (output_dir / "loss_history.json").write_text(json.dumps(state.history) + "\n")  # output_dir: the staging folder
    images = {"samples": "samples.png", "weighting": "weighting.png"}
    if state.history:
        images["loss"] = "loss.png"
    write_card = functools.partial(
        write_model_card,
        objective={**objective_config(scheduler), "timestep_sampler": obj.timestep_sampler},
        folder_name=Path(run.output_dir).resolve().name,  # output_dir is the staging folder
        dataset_name=dataset,
        metrics={"final_loss": final_loss},
        images=images,
        training={
            "train_steps": state.step,
            "train_batch_size": run.train_batch_size,
            "learning_rate": run.learning_rate,
            "lr_scheduler": run.lr_scheduler,
            "use_ema": run.use_ema,
            "seed": run.seed,
            "mixed_precision": run.mixed_precision or "no",
            "num_inference_steps": run.num_inference_steps,  # of the samples, and the card's snippet
            **conditioning,
        },
        remote_code=needs_remote_code(scheduler, classes.num_classes if classes else None),
        base_model=hub_base_model,
        num_classes=classes.num_classes if classes else None,
        guidance_scale=(1.0 if run.guidance_scale is None else run.guidance_scale)
        if classes and classes.null_class_label is not None
        else None,
    )
    write_card(output_dir, repo_id=run.hub_model_id if run.push_to_hub else None)  # None: the folder's name
    return write_card


def _push(run: RunArguments, output_dir: Path, write_card) -> None:
    from ddpm_objectives_hf.training.hub import DEFAULT_IGNORE_PATTERNS, push_to_hub, resolve_repo_id
    from ddpm_objectives_hf.training.run_folder import LOCAL_ONLY_PATTERNS

    def name_repo_in_card(full_id: str) -> None:
        """A bare --hub_model_id (or none) gets its namespace from the Hub: the pushed card's snippet loads it."""
        if full_id != run.hub_model_id:
            write_card(output_dir, repo_id=full_id)  # README.md, replaced atomically

    repo_id = resolve_repo_id(run.hub_model_id, str(output_dir))  # a bare name gets its namespace from the Hub
    url = push_to_hub(
        output_dir,
        repo_id,
        private=run.hub_private_repo,
        token=run.hub_token,
        endpoint=run.hub_endpoint,
        ignore_patterns=(*DEFAULT_IGNORE_PATTERNS, *LOCAL_ONLY_PATTERNS),  # leftovers of interrupted saves, the marker
        before_upload=name_repo_in_card,
    )
    logger.info("pushed to %s", url)


def main(argv: list[str] | None = None) -> int:
    """The command line: any error is one line ``train.py: error: ...`` (exit 2; ``--debug`` shows the traceback)."""
    return run_main("train.py", _main, argv)


def _main(argv: list[str]) -> None:
    data_args, model_args, obj, run = parse_args(argv)
    check_environment(data_args, model_args, run)  # before any work: nothing is read, built or written yet
    if model_args.pretrained_model_name_or_path:
        check_pretrained(data_args, model_args, build_scheduler(obj))
    train(data_args, model_args, obj, run)


if __name__ == "__main__":
    sys.exit(main())
