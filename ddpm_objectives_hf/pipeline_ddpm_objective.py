"""`DDPMObjectivePipeline`: sampling for the models that diffusers' `DDPMPipeline` cannot serve with every scheduler.

That is, models with a learned variance (``out_channels = 2 × in_channels``), models trained on the posterior mean
μ̃ of q(x_{t−1} | x_t, x0), and class-conditional models with classifier-free guidance
([Ho & Salimans 2022](https://arxiv.org/abs/2207.12598)).

This file stands alone: it imports only torch, diffusers and the standard library. ``save_pretrained`` copies it into
the saved folder as ``pipeline.py`` and names it in ``model_index.json`` (``"_class_name": ["pipeline",
"DDPMObjectivePipeline"]``), so ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads and
samples without ddpm-objectives-hf installed.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

# What the network can be trained to predict, and what a diffusers scheduler can be given.
MODEL_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "mean")
SCHEDULER_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# DDPMScheduler's variance types that read variance channels after the prediction.
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
# The name this file has in a saved pipeline folder (the module of ``_class_name``).
REMOTE_CODE_FILE = "pipeline.py"
OUTPUT_TYPES = ("pil", "np", "pt")


def alpha_bar_at(alphas_cumprod: torch.Tensor, timestep: float) -> torch.Tensor:
    """ᾱ at a training timestep t in [−1, T − 1] (float64; ᾱ_{−1} = 1), fractional t included.

    Between integer steps, log σ (σ² = (1 − ᾱ)/ᾱ) is linear in t: the inverse of the ``_sigma_to_t`` by which diffusers'
    Karras-style schedulers (KDPM2, DPM-Solver-SDE, ...) turn a σ between two training noise levels into a float t.
    Where an end has ᾱ = 0 (zero terminal SNR) or t < 0, √ᾱ is linear instead.
    """
    table = alphas_cumprod.detach().cpu().double()  # float64 on the CPU (mps has none)
    last = len(table) - 1
    if not -1 <= timestep <= last:
        raise ValueError(f"timestep {timestep:g} is outside the training schedule 0 … {last}")
    if float(timestep).is_integer():
        return table[int(timestep)] if timestep >= 0 else torch.ones((), dtype=torch.float64)
    low = math.floor(timestep)
    w = timestep - low
    a_low = table[low] if low >= 0 else torch.ones((), dtype=torch.float64)
    a_high = table[low + 1]
    if low >= 0 and 0 < a_low < 1 and 0 < a_high < 1:
        log_sigma = (1 - w) * 0.5 * torch.log((1 - a_low) / a_low) + w * 0.5 * torch.log((1 - a_high) / a_high)
        return 1.0 / (1.0 + torch.exp(2 * log_sigma))
    return ((1 - w) * a_low.sqrt() + w * a_high.sqrt()) ** 2


def convert_prediction(
    prediction: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor | float,
    alphas_cumprod: torch.Tensor,
    from_type: str,
    to_type: str,
    clip_sample_range: float | None = None,
) -> torch.Tensor:
    """Convert a prediction of one target into another, through the same x_t at training timestep t.

    With a = √ᾱ_t, s = √(1 − ᾱ_t): x_t = a x0 + s ε, v = a ε − s x0 (so ε = a v + s x_t, x0 = a x_t − s v), and
    μ̃ = c1 x0 + c2 x_t with the posterior coefficients of the training schedule c1 = √ᾱ_{t−1} β_t / (1 − ᾱ_t),
    c2 = √(1 − β_t) (1 − ᾱ_{t−1}) / (1 − ᾱ_t), β_t = 1 − ᾱ_t / ᾱ_{t−1}. Coefficients are computed in float64 from
    ``alphas_cumprod`` (at a fractional t by :func:`alpha_bar_at`) and applied in the sample's dtype.

    These are the formulas of ``DDPMObjectiveScheduler.convert_prediction`` in ddpm-objectives-hf, repeated here
    because this file must run without that package (tests/test_pipeline.py checks that the two agree).

    Args:
        prediction (`torch.Tensor`): the prediction, of type ``from_type``.
        sample (`torch.Tensor`): x_t.
        timestep (`torch.Tensor` or `float`): the training timestep t (one for the batch; fractional allowed).
        alphas_cumprod (`torch.Tensor`): ᾱ of the training schedule (a diffusers scheduler's ``alphas_cumprod``).
        from_type (`str`): `"epsilon"`, `"sample"`, `"v_prediction"` or `"mean"`.
        to_type (`str`): `"epsilon"`, `"sample"`, `"v_prediction"` or `"mean"`.
        clip_sample_range (`float`, *optional*): clip the implied x0 to [−r, r] before converting on (as DDPM's
            ``clip_sample``); `None` converts exactly.

    Returns:
        `torch.Tensor`: the prediction of type ``to_type``.
    """
    for name, value in (("from_type", from_type), ("to_type", to_type)):
        if value not in MODEL_PREDICTION_TYPES:
            raise ValueError(f"{name} must be one of {', '.join(MODEL_PREDICTION_TYPES)}, got {value!r}")
    if from_type == to_type and clip_sample_range is None:
        return prediction
    t = float(timestep)
    ac, ac_prev = alpha_bar_at(alphas_cumprod, t), alpha_bar_at(alphas_cumprod, max(t - 1, -1.0))
    beta = 1.0 - ac / ac_prev
    coefficients = {
        "a": ac.sqrt(),
        "s": (1.0 - ac).sqrt(),
        "c1": ac_prev.sqrt() * beta / (1.0 - ac),
        "c2": (1.0 - beta).sqrt() * (1.0 - ac_prev) / (1.0 - ac),
    }
    a, s, c1, c2 = (coefficients[k].to(device=sample.device, dtype=sample.dtype) for k in ("a", "s", "c1", "c2"))
    xt = sample
    if from_type == "epsilon":
        eps = prediction
        x0 = (xt - s * eps) / a
    elif from_type == "v_prediction":
        x0, eps = a * xt - s * prediction, a * prediction + s * xt
    else:
        x0 = prediction if from_type == "sample" else (prediction - c2 * xt) / c1
        eps = (xt - a * x0) / s
    if clip_sample_range is not None:
        x0 = x0.clamp(-clip_sample_range, clip_sample_range)
        eps = (xt - a * x0) / s
    if to_type == "epsilon":
        return eps
    if to_type == "sample":
        return x0
    if to_type == "v_prediction":
        return a * eps - s * x0
    return c1 * x0 + c2 * xt


def _embedded_classes(config) -> int | None:
    """How many labels a denoiser embeds: a `UNet2DModel`'s ``num_class_embeds``, or a `DiTTransformer2DModel`'s
    ``num_embeds_ada_norm`` classes plus the null class its label embedding adds (as ddpm-objectives-hf's model
    families say, repeated here because this file runs without that package)."""
    if getattr(config, "num_class_embeds", None) is not None:
        return config.num_class_embeds
    classes = getattr(config, "num_embeds_ada_norm", None)
    return None if classes is None else classes + 1


class DDPMObjectivePipeline(DiffusionPipeline):
    """Image generation for DDPM models of any training target, learned variance and class conditioning.

    Each step splits the model output into its prediction (the first C channels) and, for a model with
    ``out_channels = 2 × in_channels``, its variance values (the other C); converts the prediction from the model's
    training target into the target that the scheduler's ``config.prediction_type`` expects (:func:`convert_prediction`
    with the scheduler's ``alphas_cumprod``); and hands the variance values on only to a `DDPMScheduler` with a learned
    ``variance_type``. So any diffusers scheduler with integer timesteps can be swapped in::

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)

    Class-conditional models get classifier-free guidance ([Ho & Salimans 2022](https://arxiv.org/abs/2207.12598))
    through their learned null class: ε̂ = ε̂(x_t, ∅) + s (ε̂(x_t, y) − ε̂(x_t, ∅)), one batched forward of
    [conditional; unconditional]. A learned variance is the conditional branch's (so at s = 0 the mean is
    unconditional, the variance conditional).

    Args:
        unet ([`UNet2DModel`] or [`DiTTransformer2DModel`]): the denoising network (with a class embedding for a
            class-conditional model), called as ``unet(x_t, t, class_labels=y).sample`` with one t per image.
        scheduler ([`SchedulerMixin`]): a diffusers scheduler with ``alphas_cumprod`` and a ``prediction_type`` of
            `"epsilon"`, `"sample"` or `"v_prediction"`.
        prediction_type (`str`, defaults to `"epsilon"`): what the network was trained to predict: the noise ε
            (`"epsilon"`), the clean sample x0 (`"sample"`), the velocity v = √ᾱ ε − √(1 − ᾱ) x0 (`"v_prediction"`)
            or the posterior mean μ̃ of q(x_{t−1} | x_t, x0) (`"mean"`).
        num_classes (`int`, *optional*): the number of classes K of a class-conditional model (labels 0 … K − 1);
            `None` for an unconditional model.
        null_class_label (`int`, *optional*): the label of the learned null class ∅ (K for a model trained with label
            dropout); `None` when the model has none (then neither unconditional samples nor guidance).
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: SchedulerMixin,
        prediction_type: str = "epsilon",
        num_classes: int | None = None,
        null_class_label: int | None = None,
    ):
        super().__init__()
        if prediction_type not in MODEL_PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {', '.join(MODEL_PREDICTION_TYPES)}, got {prediction_type!r}"
            )
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        if null_class_label is not None:
            if num_classes is None:
                raise ValueError("null_class_label needs a class-conditional model (num_classes is None)")
            if isinstance(null_class_label, bool) or not isinstance(null_class_label, int) or null_class_label < 0:
                raise ValueError(f"null_class_label must be a non-negative int or None, got {null_class_label!r}")
            if null_class_label < num_classes:
                raise ValueError(
                    f"null_class_label {null_class_label} is one of the classes 0 … {num_classes - 1}; "
                    f"the null class is outside them (num_classes = {num_classes})"
                )
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            prediction_type=prediction_type, num_classes=num_classes, null_class_label=null_class_label
        )

    # ------------------------------------------------------------------ saving: this file travels with the folder
    def to_json_string(self) -> str:
        """``model_index.json`` naming this class in the folder's ``pipeline.py``: ``["pipeline", class name]`` (and
        not the local path it was loaded from)."""
        config = json.loads(super().to_json_string())
        config.pop("_name_or_path", None)
        config["_class_name"] = [Path(REMOTE_CODE_FILE).stem, type(self).__name__]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        """Write ``model_index.json`` and, beside it, this class's source file as ``pipeline.py``."""
        os.makedirs(save_directory, exist_ok=True)
        source, target = Path(inspect.getfile(type(self))), Path(save_directory) / REMOTE_CODE_FILE
        if not (target.exists() and os.path.samefile(source, target)):
            shutil.copyfile(source, target)
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    # ------------------------------------------------------------------ checks
    @property
    def learned_variance(self) -> bool:
        """Whether the UNet outputs variance values after its prediction (``out_channels = 2 × in_channels``)."""
        return self.unet.config.out_channels == 2 * self.unet.config.in_channels

    def _scheduler_takes_variance(self) -> bool:
        return isinstance(self.scheduler, DDPMScheduler) and (
            getattr(self.scheduler.config, "variance_type", None) in LEARNED_VARIANCE_TYPES
        )

    def _check_model_and_scheduler(self) -> str:
        """The scheduler's prediction type, after checking that this pipeline can serve it and the UNet."""
        config = self.scheduler.config
        target = getattr(config, "prediction_type", "epsilon")
        if target not in SCHEDULER_PREDICTION_TYPES or not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError(
                f"scheduler: {type(self.scheduler).__name__} with prediction_type={target!r} cannot be served; "
                f"use a scheduler with alphas_cumprod and prediction_type in {', '.join(SCHEDULER_PREDICTION_TYPES)}"
            )
        channels, out_channels = self.unet.config.in_channels, self.unet.config.out_channels
        if out_channels not in (channels, 2 * channels):
            raise ValueError(
                f"unet: out_channels must be in_channels ({channels}) or 2 × in_channels with variance values, "
                f"got {out_channels}"
            )
        if self._scheduler_takes_variance() and not self.learned_variance:
            raise ValueError(
                f"scheduler: variance_type={config.variance_type!r} needs variance values, but the UNet outputs "
                f"{out_channels} channels (no variance); use variance_type='fixed_small'"
            )
        embeds = _embedded_classes(self.unet.config)
        num_classes, null = self.config.num_classes, self.config.null_class_label
        if num_classes is None and embeds is not None:
            raise ValueError(f"num_classes: the UNet embeds {embeds} classes, but the pipeline has num_classes=None")
        if num_classes is not None and (
            embeds is None or embeds < num_classes or (null is not None and null >= embeds)
        ):
            raise ValueError(
                f"num_classes: the UNet embeds {embeds} classes, too few for num_classes={num_classes} "
                f"and null_class_label={null}"
            )
        return target

    def _labels(self, class_labels, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """The batch's class labels ([batch_size] long), the null class where ``class_labels`` is None."""
        num_classes, null = self.config.num_classes, self.config.null_class_label
        if num_classes is None:
            if class_labels is not None:
                raise ValueError("class_labels: this model is unconditional (num_classes=None); pass no class_labels")
            return None
        if class_labels is None:
            if null is None:
                raise ValueError(
                    "class_labels is required: this class-conditional model has no null class for unconditional "
                    "samples (null_class_label=None)"
                )
            return torch.full((batch_size,), null, dtype=torch.long, device=device)
        if isinstance(class_labels, bool) or (
            isinstance(class_labels, torch.Tensor) and class_labels.dtype == torch.bool
        ):
            raise ValueError(f"class_labels must be integers in 0 … {num_classes - 1}, got {class_labels!r}")
        if isinstance(class_labels, numbers.Integral):
            labels = torch.tensor([int(class_labels)])
        elif isinstance(class_labels, torch.Tensor):
            if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.ndim > 1:
                raise ValueError(f"class_labels must be integers in 0 … {num_classes - 1}, got {class_labels!r}")
            labels = class_labels.reshape(-1).long()
        elif isinstance(class_labels, Sequence) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in class_labels
        ):
            labels = torch.tensor([int(v) for v in class_labels], dtype=torch.long)
        else:
            raise ValueError(f"class_labels must be integers in 0 … {num_classes - 1}, got {class_labels!r}")
        if len(labels) not in (1, batch_size):
            raise ValueError(f"class_labels: {len(labels)} labels for batch_size={batch_size}; give 1 or {batch_size}")
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
            raise ValueError(f"class_labels must be in 0 … {num_classes - 1}, got {bad}")
        return labels.expand(batch_size).to(device)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        class_labels: int | Sequence[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        num_inference_steps: int = 1000,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample images: x_T ~ N(0, I), then ``num_inference_steps`` steps of the scheduler.

        Args:
            batch_size (`int`, *optional*): the number of images; by default one per label of ``class_labels`` (as
                diffusers' `DiTPipeline`), else 1.
            class_labels (`int`, list of `int` or `torch.Tensor`, *optional*): the class of each image (one label for
                all, or ``batch_size`` labels) of a class-conditional model; `None` samples unconditionally through
                the null class.
            guidance_scale (`float`, defaults to 1.0): the classifier-free guidance scale s: 1 samples p(x | y), 0
                samples p(x), s > 1 sharpens the class; s ≠ 1 needs ``class_labels`` and a null class.
            num_inference_steps (`int`, defaults to 1000): the number of denoising steps.
            generator (`torch.Generator`, *optional*): makes sampling deterministic.
            output_type (`str`, defaults to `"pil"`): `"pil"` (PIL images), `"np"` (a [N, H, W, C] array in [0, 1])
                or `"pt"` (a [N, C, H, W] tensor in [0, 1]).
            return_dict (`bool`, defaults to `True`): return an [`ImagePipelineOutput`] instead of a tuple.

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the images (a tuple's first element).
        """
        if batch_size is None:  # one image per label, as DiTPipeline
            several = isinstance(class_labels, torch.Tensor) and class_labels.ndim == 1
            several = several or (isinstance(class_labels, Sequence) and not isinstance(class_labels, str))
            batch_size = max(len(class_labels), 1) if several else 1
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        guided = guidance_scale != 1
        if guided and self.config.num_classes is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs a class-conditional model; use 1")
        if guided and class_labels is None:
            raise ValueError(f"guidance_scale={guidance_scale} needs class_labels (guidance toward a class)")
        if guided and self.config.null_class_label is None:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a null class, and this model has none "
                "(trained without label dropout); use 1"
            )
        scheduler_target = self._check_model_and_scheduler()

        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        device = self._execution_device
        if device.type == "mps":  # randn is not reproducible on mps
            image = randn_tensor(shape, generator=generator, dtype=self.unet.dtype).to(device)
        else:
            image = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps)  # first: init_noise_sigma (Euler, LMS, ...) depends on it
        image = image * self.scheduler.init_noise_sigma
        labels = self._labels(class_labels, batch_size, device)
        if guided:
            null = torch.full_like(labels, self.config.null_class_label)
            labels = torch.cat([labels, null])
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        channels = self.unet.config.in_channels
        model_target = self.config.prediction_type
        # a μ̃ model's x̂0 = (μ̂ − c2 x_t)/c1 divides by c1 ≈ 1e-4 at high t: clipped to the data range as DDPM's step
        # does, else its error reaches ε̂ 1e4-fold (and schedulers that do not clip x̂0 diverge)
        clip_range = getattr(self.scheduler.config, "clip_sample_range", 1.0) if model_target == "mean" else None

        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(image, t)
            unet_input = torch.cat([model_input, model_input]) if guided else model_input
            kwargs = {} if labels is None else {"class_labels": labels}
            timestep = torch.as_tensor(t, device=device).reshape(-1).expand(len(unet_input))  # DiT needs one per image
            model_output = self.unet(unet_input, timestep, **kwargs).sample
            prediction, variance = model_output[:, :channels], model_output[:, channels:]
            if guided:
                # the guidance is affine with weights 1 − s and s, so it is the same in every target's space (all
                # are affine in ε̂ through the same x_t): applied to the native prediction it is the ε-space formula
                cond, uncond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
                variance = variance.chunk(2)[0]  # the conditional branch's variance
            prediction = convert_prediction(
                prediction, model_input, t, self.scheduler.alphas_cumprod, model_target, scheduler_target, clip_range
            )
            if self.learned_variance and self._scheduler_takes_variance():
                prediction = torch.cat([prediction, variance], dim=1)
            image = self.scheduler.step(prediction, t, image, **step_kwargs).prev_sample

        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
