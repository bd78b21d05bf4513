"""The training run's options: the data, model, objective and run flags of ``scripts/train.py`` as dataclasses (types,
defaults and ``--help`` in one place), parsed from flags or a JSON/YAML file, and every check made before any work:
one value (``__post_init__``), several values (:func:`check_arguments`), this machine (:func:`check_environment`),
and a pretrained model against the flags (:func:`check_pretrained`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..cli.arguments import build_scheduler, objective_arguments
from ..cli.validation import (
    check_existing_folder,
    check_hub_reachable,
    check_non_empty,
    check_ranges,
    check_repo_id,
    check_report_to,
    check_url,
    check_writable_folder,
)
from ..errors import ConfigError
from ..options import (
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
    from ..cli.parsing import parse_dataclasses

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
    from .models import read_pretrained

    _, config, scheduler, objective = read_pretrained(model_args)
    defaults = {name: scheduler.config[name] for name in scheduler.option_names()}
    size = config["sample_size"]
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
        from .models import check_resolution

        check_resolution(resolution_of(data_args), len(model_args.block_out_channels))


def resolution_of(data_args: DataArguments) -> int:
    """``--resolution``, or its default: 8 for the embedded digits, else 32."""
    default_resolution = 8 if not (data_args.dataset_name or data_args.train_data_dir) else 32
    return data_args.resolution or default_resolution


def check_pretrained(data_args: DataArguments, model_args: ModelArguments, scheduler) -> None:
    """A pretrained model that contradicts the flags: another image size, a learned variance the objective drops, a
    class embedding the run does not use (or the reverse), a learned variance its family cannot add."""
    from .models import read_pretrained

    family, config, _, _ = read_pretrained(model_args)
    size = config.get("sample_size")
    size = size if isinstance(size, int) else size[0]
    if resolution_of(data_args) != size:
        raise ConfigError(f"resolution {resolution_of(data_args)} differs from the pretrained model's sample_size {size}",
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


def check_environment(data_args: DataArguments, model_args: ModelArguments, run: RunArguments) -> None:
    """What must hold on this machine before any work: the folders exist or can be written, the trackers are
    installed, the model config reads, and the Hub answers when the run will push to it."""
    check_existing_folder("train_data_dir", data_args.train_data_dir)
    check_writable_folder("output_dir", run.output_dir)
    if data_args.cache_dir is not None:
        check_writable_folder("cache_dir", data_args.cache_dir)
    check_report_to("report_to", run.report_to, available=True)
    if model_args.model_config_name_or_path is not None:
        from .models import family_of, read_config

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
        family.check_resolution(config, resolution_of(data_args))
    if run.push_to_hub:
        check_hub_reachable("push_to_hub", run.hub_endpoint, run.hub_token)
