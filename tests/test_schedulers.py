"""Every scheduler of `DDPMScheduler.compatibles` samples every kind of model through `DDPMObjectivePipeline`.

The model is the exact denoiser of a known distribution (a few 4×4 patterns, each with a class): E[x0 | x_t] in
closed form, so sample quality is known exactly. Each kind (ε, x0, v, μ̃; fixed and learned variance; class-
conditional) answers in its own target; the pipeline must convert it for the scheduler (at float timesteps too) and
give the samples that a hand-written loop gets from the same denoiser's ε with the same scheduler; those samples
must land on the patterns (and on the requested class).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, EulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.utils.torch_utils import randn_tensor

from ddpm_objectives_hf.pipeline_ddpm_objective import DDPMObjectivePipeline, alpha_bar_at

SCHEDULERS = [c for c in DDPMScheduler().compatibles if c is not EDMEulerScheduler]  # EDM: a σ-space model only
STEPS = 25
SIZE, CLASSES = 4, 3
PATTERNS = 0.5 * torch.randn(6, SIZE * SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64).sign()
SPREAD = 0.1  # each pattern is the mean of a Gaussian N(pattern, SPREAD² I): the data is a mixture of 6
LABELS = torch.arange(len(PATTERNS)) % CLASSES


class ExactDenoiser(ModelMixin, ConfigMixin):
    """The posterior mean denoiser E[x0 | x_t] of the equal mixture of N(pattern, SPREAD² I) (the patterns of class
    ``y`` when one is given; the null class ``CLASSES`` is all of them), answering in ``target`` (and, with
    ``learned``, variance channels that make `learned_range` the posterior variance β̃)."""

    @register_to_config
    def __init__(self, target: str = "epsilon", learned: bool = False, conditional: bool = False, T: int = 1000):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device and dtype for the pipeline
        self.register_to_config(in_channels=1, out_channels=2 if learned else 1, sample_size=SIZE,
                                num_class_embeds=CLASSES + 1 if conditional else None)  # fmt: skip
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=T).alphas_cumprod.double()

    def forward(self, x, t, class_labels=None):
        t = float(torch.as_tensor(t).reshape(-1)[0])  # one t for the batch (the pipeline passes one per image)
        ac = alpha_at(self.alphas_cumprod, t)
        ac_prev = alpha_at(self.alphas_cumprod, t - 1)
        a, s = math.sqrt(ac), math.sqrt(1 - ac)
        xt = x.double().flatten(1)
        # x_t | k ~ N(a μ_k, (a² τ² + s²) I), and E[x0 | x_t, k] = μ_k + a τ² (x_t − a μ_k) / (a² τ² + s²)
        variance = a * a * SPREAD**2 + s * s
        distance = ((xt[:, None, :] - a * PATTERNS[None]) ** 2).sum(-1) / (2 * variance)  # [N, K]
        if class_labels is not None:
            allowed = (LABELS[None, :] == class_labels[:, None]) | (class_labels[:, None] == CLASSES)
            distance = torch.where(allowed, distance, torch.full_like(distance, math.inf))
        means = PATTERNS[None] + a * SPREAD**2 * (xt[:, None, :] - a * PATTERNS[None]) / variance  # [N, K, D]
        x0 = torch.einsum("nk,nkd->nd", torch.softmax(-distance, dim=1), means)
        eps = (xt - a * x0) / s
        beta = 1 - ac / ac_prev
        c1, c2 = math.sqrt(ac_prev) * beta / (1 - ac), math.sqrt(1 - beta) * (1 - ac_prev) / (1 - ac)
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0, "mean": c1 * x0 + c2 * xt}
        out = out[self.config.target].reshape(x.shape)
        if self.config.learned:
            out = torch.cat([out, -torch.ones_like(out)], dim=1)  # f = 0: log σ² = log β̃
        return UNet2DOutput(sample=out.to(x.dtype))


def alpha_at(table: torch.Tensor, t: float) -> float:
    """ᾱ at a float training timestep, from σ: log σ linear between integer steps (diffusers' ``_sigma_to_t``)."""
    if t < 0:
        return 1.0
    low = min(int(math.floor(t)), len(table) - 2)
    w = t - low
    log_sigma = [0.5 * math.log((1 - float(table[i])) / float(table[i])) for i in (low, low + 1)]
    sigma2 = math.exp(2 * ((1 - w) * log_sigma[0] + w * log_sigma[1]))
    return 1 / (1 + sigma2)


KINDS = {
    "eps": dict(target="epsilon"),
    "x0": dict(target="sample"),
    "v": dict(target="v_prediction"),
    "mean": dict(target="mean"),
    "eps-learned": dict(target="epsilon", learned=True),
    "v-learned": dict(target="v_prediction", learned=True),
    "cond-v": dict(target="v_prediction", conditional=True),
    "cond-mean-learned": dict(target="mean", learned=True, conditional=True),
}


def _scheduler_config(kind: dict) -> dict:
    """A saved pipeline's scheduler config (every key written out: an in-memory config's ``_use_default_values``
    would give another scheduler class its own defaults, e.g. Heun's β from 0.00085 to 0.012)."""
    config = dict(DDPMScheduler(clip_sample=False).config)
    config.pop("_use_default_values", None)
    config["variance_type"] = "learned_range" if kind.get("learned") else "fixed_small"
    config["noise_sampler_seed"] = 0  # DPM-Solver-SDE's Brownian tree (a random seed by default); others ignore it
    return config


def hand_written(scheduler, kind: dict, labels, generator) -> torch.Tensor:
    """The loop a user writes: x_T ~ N(0, σ_init²), then scale_model_input, the denoiser's ε (guidance 1), step."""
    eps_model = ExactDenoiser(target="epsilon", conditional=kind.get("conditional", False))
    scheduler.set_timesteps(STEPS)
    x = randn_tensor((len(labels), 1, SIZE, SIZE), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = eps_model(model_input, t, class_labels=labels if kind.get("conditional") else None).sample
        if kind.get("learned") and isinstance(scheduler, DDPMScheduler):  # only DDPM reads variance channels
            eps = torch.cat([eps, -torch.ones_like(eps)], dim=1)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        x = scheduler.step(eps, t, x, **({"generator": generator} if takes_generator else {})).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("scheduler_class", SCHEDULERS, ids=[c.__name__ for c in SCHEDULERS])
def test_every_scheduler_samples_every_kind(scheduler_class, name):
    kind = KINDS[name]
    conditional = kind.get("conditional", False)
    config = _scheduler_config(kind)
    pipe = DDPMObjectivePipeline(
        ExactDenoiser(**kind), scheduler_class.from_config(config), prediction_type=kind["target"],
        num_classes=CLASSES if conditional else None, null_class_label=CLASSES if conditional else None,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(12) % CLASSES
    call = {"class_labels": labels} if conditional else {"batch_size": len(labels)}  # the batch from the labels
    images = pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="pt", **call)
    images = images.images.double()
    want = hand_written(scheduler_class.from_config(config), kind, labels, torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, want.double(), atol=2e-4, rtol=0)
    # quality: every sample is in one of the mixture's components (RMS distance ≈ SPREAD from its pattern, ≈ 0.7
    # from the others), of the requested class
    x = (images * 2 - 1).flatten(1)
    distance = torch.cdist(x, PATTERNS) / math.sqrt(SIZE * SIZE)
    nearest = distance.argmin(1)
    assert distance.min(1).values.max() < 3 * SPREAD, scheduler_class.__name__
    if conditional:
        assert torch.equal(LABELS[nearest], labels)


def test_fractional_timesteps_are_diffusers_sigmas():
    """A float t (KDPM2, DPM-Solver-SDE, ...) means the σ that diffusers' ``_sigma_to_t`` maps to it."""
    scheduler = EulerDiscreteScheduler.from_config(DDPMScheduler().config)
    table = scheduler.alphas_cumprod.double()
    log_sigmas = ((1 - table) / table).sqrt().log().numpy()
    for t in (0.25, 1.5, 17.3, 500.5, 998.9):
        ac = alpha_bar_at(scheduler.alphas_cumprod, t)
        sigma = ((1 - ac) / ac).sqrt().numpy()
        back = scheduler._sigma_to_t(sigma.reshape(1), log_sigmas)
        assert abs(float(back[0]) - t) < 1e-6, t
        assert abs(float(ac) - alpha_at(table, t)) < 1e-12
    assert float(alpha_bar_at(scheduler.alphas_cumprod, 300)) == float(table[300])
