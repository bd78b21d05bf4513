"""Model families: the denoiser classes the command line trains, each in one place.

A family knows how its model is configured for a run (sample size, channels, a learned variance's extra output
channels, the class embedding), how many class labels a config embeds, and how its output layer is widened to add
a learned variance to a pretrained model. Everything else (the loss, sampling, the bound, saving) calls the model as
``model(x_t, t, class_labels=y).sample`` with a batch of t. A new model class is one new :class:`ModelFamily`
subclass registered in :data:`FAMILIES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError


class ModelFamily:
    """One diffusers denoiser class (``class_name``, as in a config's ``_class_name``)."""

    class_name: str
    #: whether the model can be unconditional (no class labels)
    unconditional: bool = True
    #: whether :meth:`widen_output` can add a learned variance's channels to a trained model
    widens_output: bool = False

    @property
    def model_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.class_name)

    def configure(self, config: Mapping[str, Any], *, resolution: int, channels: int, out_channels: int,
                  num_classes: int | None, null_class: bool) -> dict:  # fmt: skip
        """``config`` with this run's sample size, channels and class embedding."""
        raise NotImplementedError

    def embedded_classes(self, config: Mapping[str, Any]) -> int | None:
        """How many labels the model embeds (the classes, and the null class where there is one)."""
        raise NotImplementedError

    def check_resolution(self, config: Mapping[str, Any], resolution: int) -> None:
        """Raise a `ConfigError` naming ``--resolution`` where the model cannot take that image size."""

    def prepare_for_training(self, model: torch.nn.Module) -> torch.nn.Module:
        """What this family needs before training (nothing by default)."""
        return model

    def widen_output(self, model: torch.nn.Module, out_channels: int, variance_value: float) -> torch.nn.Module:
        """The model with ``out_channels`` output channels, the new ones constant at ``variance_value`` (so a learned
        variance starts as the fixed one it replaces); only where :attr:`widens_output`."""
        raise NotImplementedError


class UNetFamily(ModelFamily):
    """diffusers' `UNet2DModel` (sinusoidal time embedding; an optional class embedding table)."""

    class_name = "UNet2DModel"
    widens_output = True

    def configure(self, config, *, resolution, channels, out_channels, num_classes, null_class):
        embeds = None if num_classes is None else num_classes + int(null_class)
        return {**config, "sample_size": resolution, "in_channels": channels, "out_channels": out_channels,
                "num_class_embeds": embeds}  # fmt: skip

    def embedded_classes(self, config):
        return config.get("num_class_embeds")

    def check_resolution(self, config, resolution):
        blocks = config.get("block_out_channels")
        if not isinstance(blocks, (list, tuple)) or not blocks:
            raise ConfigError("model_config_name_or_path: a UNet2DModel config needs a block_out_channels list",
                              parameter="model_config_name_or_path")  # fmt: skip
        check_resolution(resolution, len(blocks))

    def widen_output(self, model, out_channels, variance_value):
        conv = model.conv_out
        wider = torch.nn.Conv2d(conv.in_channels, out_channels, conv.kernel_size, padding=conv.padding)
        with torch.no_grad():
            wider.weight.zero_()
            wider.bias.fill_(variance_value)
            wider.weight[: conv.out_channels] = conv.weight
            wider.bias[: conv.out_channels] = conv.bias
        model.conv_out = wider.to(conv.weight)
        model.register_to_config(out_channels=out_channels)
        return model


class DiTFamily(ModelFamily):
    """diffusers' `DiTTransformer2DModel` (Peebles & Xie 2023, https://arxiv.org/abs/2212.09748): patches, adaLN-Zero
    conditioned on t and a class label; always class-conditional. Its label embedding has the null class K built in
    and drops labels itself with probability 0.1 while training; the run's ``--condition_dropout`` replaces that
    (:meth:`prepare_for_training`), so a label is dropped once, with the run's seeded generator."""

    class_name = "DiTTransformer2DModel"
    unconditional = False

    def configure(self, config, *, resolution, channels, out_channels, num_classes, null_class):
        if num_classes is None:
            raise ConfigError(
                "DiTTransformer2DModel is class-conditional (adaLN-Zero on t and a class label): add "
                "--class_conditional",
                parameter="model_config_name_or_path",
            )
        return {**config, "sample_size": resolution, "in_channels": channels, "out_channels": out_channels,
                "num_embeds_ada_norm": num_classes}  # fmt: skip

    def embedded_classes(self, config):
        classes = config.get("num_embeds_ada_norm")
        return None if classes is None else classes + 1  # its LabelEmbedding adds the null class K

    def check_resolution(self, config, resolution):
        patch = config.get("patch_size", 2)
        if resolution % patch:
            raise ConfigError(f"resolution {resolution} must be a multiple of the DiT's patch_size {patch}",
                              parameter="resolution")  # fmt: skip

    def prepare_for_training(self, model):
        from diffusers.models.embeddings import LabelEmbedding

        for module in model.modules():
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0  # the run drops labels (Classes.drop); the table keeps its null row
        return model


FAMILIES: dict[str, ModelFamily] = {f.class_name: f for f in (UNetFamily(), DiTFamily())}


def read_config(path: str) -> dict:
    """A diffusers model config: a ``config.json`` or a folder holding one (any model class)."""
    from diffusers import UNet2DModel

    return dict(UNet2DModel.load_config(path))  # load_config reads the JSON whatever its _class_name


def read_pretrained(model_args) -> tuple[ModelFamily, dict, Any, dict]:
    """The configs of ``model_args.pretrained_model_name_or_path`` (no weights): ``(family, denoiser config,
    objective scheduler, objective)`` (:func:`~.pipelines.read_pipeline`)."""
    from ..errors import PipelineError
    from .pipelines import read_pipeline

    try:
        model_class, config, scheduler, objective = read_pipeline(
            model_args.pretrained_model_name_or_path, revision=model_args.revision,
            parameter="pretrained_model_name_or_path",
        )  # fmt: skip
    except PipelineError as err:
        raise ConfigError(str(err), parameter="pretrained_model_name_or_path") from err
    return FAMILIES[model_class.__name__], config, scheduler, objective


def family_of(config_or_model: Mapping[str, Any] | torch.nn.Module, parameter: str = "model_config_name_or_path"):
    """The family of a config (its ``_class_name``) or of a model; a class without one raises a `ConfigError`."""
    if isinstance(config_or_model, torch.nn.Module):
        name = type(config_or_model).__name__
    else:
        name = config_or_model.get("_class_name", "UNet2DModel")
    if name not in FAMILIES:
        raise ConfigError(
            f"{parameter}: {name!r} is not a model class this tool trains; valid: {', '.join(FAMILIES)}",
            parameter=parameter,
        )
    return FAMILIES[name]


# ---------------------------------------------------------------------------------------------------- building
def model_config(args) -> dict:
    """The config of a new model (no pretrained one): the file ``args.model_config_name_or_path``, or a `UNet2DModel`
    of the UNet options, with sinusoidal time embedding as in DDPM (Ho et al. 2020)."""
    if args.model_config_name_or_path:
        path = args.model_config_name_or_path
        try:
            return read_config(path)
        except (OSError, ValueError) as err:
            message = " ".join(str(err).split())[:300]
            raise ConfigError(
                f"model_config_name_or_path {path!r} is not a readable model config: {message}",
                parameter="model_config_name_or_path",
            ) from err
    n = len(args.block_out_channels)
    down = ["AttnDownBlock2D" if i == args.attention_resolution_index else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if n - 1 - i == args.attention_resolution_index else "UpBlock2D" for i in range(n)]
    return dict(
        _class_name="UNet2DModel",
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        norm_num_groups=args.norm_num_groups,
        dropout=args.dropout,
        time_embedding_type="positional",
    )


def build_model(
    args,
    resolution: int,
    channels: int,
    learned_variance: bool,
    num_classes: int | None = None,
    null_class: bool = False,
):
    """The denoiser of the model options ``args``: a pretrained pipeline's (``pretrained_model_name_or_path``), the
    family of a model config (``model_config_name_or_path``), or a `UNet2DModel` from the UNet options (sinusoidal
    time embedding, as in DDPM); ``out_channels`` 2C with a learned variance, and a class embedding of
    ``num_classes`` (plus the null class) for a class-conditional model."""
    if args.pretrained_model_name_or_path:
        return _pretrained_model(args, channels, learned_variance)
    config = model_config(args)
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
    model = family.model_class.from_config(config)
    return family.prepare_for_training(model)


def _pretrained_model(args, channels: int, learned_variance: bool):
    """The pretrained denoiser, its output layer widened for a learned variance that starts as its fixed one
    (learned_range's v = −1 is β̃_t, +1 is β_t)."""
    family, _, pretrained_scheduler, _ = read_pretrained(args)
    source, kwargs = args.pretrained_model_name_or_path, {"revision": args.revision, "variant": args.variant}
    model = family.model_class.from_pretrained(source, subfolder="unet", **kwargs)
    if model.config.in_channels != channels:
        raise ConfigError(
            f"pretrained_model_name_or_path: the model takes {model.config.in_channels} channels, the data has "
            f"{channels}",
            parameter="pretrained_model_name_or_path",
        )
    if learned_variance and model.config.out_channels == channels:
        fixed = pretrained_scheduler.config.variance_type
        model = family.widen_output(model, 2 * channels, 1.0 if fixed.startswith("fixed_large") else -1.0)
    return family.prepare_for_training(model)


def check_resolution(resolution: int, num_down_blocks: int) -> int:
    """Check that a `UNet2DModel` with `num_down_blocks` down blocks can take `resolution`×`resolution` images.

    Every down block but the last halves the size, so the resolution must be divisible by `2**(num_down_blocks-1)`.

    Args:
        resolution (`int`): The image side.
        num_down_blocks (`int`): The number of down blocks of the UNet.

    Returns:
        `resolution`.

    Raises:
        `DataError`: `parameter="resolution"`, with the nearest valid values.
    """
    if num_down_blocks < 1:
        raise ValueError(f"num_down_blocks must be >= 1, got {num_down_blocks}")
    factor = 2 ** (num_down_blocks - 1)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise DataError(
            f"resolution must be a positive integer divisible by {factor}, got {resolution!r}", parameter="resolution"
        )
    if resolution % factor:
        lower, upper = (resolution // factor) * factor, (resolution // factor + 1) * factor
        valid = f"{lower} or {upper}" if lower > 0 else str(upper)
        raise DataError(
            f"resolution {resolution} is not divisible by {factor} (2**({num_down_blocks}-1): a UNet with "
            f"{num_down_blocks} down blocks halves the size {num_down_blocks - 1} times); use e.g. {valid}",
            parameter="resolution",
        )
    return int(resolution)
