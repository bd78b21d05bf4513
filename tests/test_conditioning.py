"""Conditioning reaches every diffusers denoiser through `model_kwargs`: training losses and the bound equal the same
computation done here by hand (each model called with its own calling convention, the targets and the Gaussian
terms written out from the numpy schedule of `reference.np_schedule`), different conditioning changes them, and
conditioning a model would not use is refused with the keyword named.

Tiny random models of the four classes: a class-conditional `UNet2DModel`, an SDXL-style `UNet2DConditionModel`
(cross-attention plus ``added_cond_kwargs``), a `DiTTransformer2DModel` and a PixArt-style `Transformer2DModel`
(whose ``timestep`` is its third argument), on 8×8 images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel, Transformer2DModel, UNet2DConditionModel, UNet2DModel
from reference import np_schedule

from ddpm_objectives_hf import (
    DDPMObjectiveScheduler,
    DiffusionLossMixin,
    call_model,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    normal_kl,
    slice_model_kwargs,
    variational_bound,
)
from ddpm_objectives_hf.bpd import estimate_bpd, full_bpd, learn_proposal

pytestmark = pytest.mark.filterwarnings("ignore:.*Transformer2DModelOutput.*:FutureWarning")  # diffusers' own import

N = 4  # images per batch
T = 50  # training timesteps of the loss and bound tests
KINDS = ("unet", "unet_condition", "dit", "transformer")
TARGETS = ("epsilon", "sample", "v_prediction", "mean")
# parameters only the conditioning reaches: they get a gradient only if the conditioning is used
CONDITIONING_PARAMETERS = {
    "unet": ("class_embedding",),
    "unet_condition": ("attn2.to_k", "add_embedding"),
    "dit": ("class_embedder",),
    "transformer": ("attn2.to_k",),
}


def channels(kind: str) -> int:
    return 1 if kind == "unet" else 4


def build(kind: str, learned: bool = False, **overrides):
    """A seeded tiny model of ``kind``; 2C output channels for a learned variance."""
    torch.manual_seed(0)
    c = channels(kind)
    out = 2 * c if learned else c
    if kind == "unet":
        kw = dict(
            sample_size=8,
            in_channels=c,
            out_channels=out,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
            num_class_embeds=3,
        )
        return UNet2DModel(**{**kw, **overrides})
    if kind == "unet_condition":
        kw = dict(
            sample_size=8,
            in_channels=c,
            out_channels=out,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=4,
            cross_attention_dim=8,
            attention_head_dim=2,
            addition_embed_type="text_time",  # SDXL: added_cond_kwargs = {"text_embeds", "time_ids"}
            addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=6 + 6 * 4,
        )
        return UNet2DConditionModel(**{**kw, **overrides})
    if kind == "dit":
        kw = dict(
            num_attention_heads=2,
            attention_head_dim=4,
            in_channels=c,
            out_channels=out,
            num_layers=1,
            norm_num_groups=4,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=3,
        )
        return DiTTransformer2DModel(**{**kw, **overrides})
    kw = dict(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=c,
        out_channels=out,
        num_layers=1,
        norm_num_groups=4,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=8,
        norm_type="ada_norm_single",  # PixArt: t through AdaLN-single, text through cross-attention
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return Transformer2DModel(**{**kw, **overrides})


def conditioning(kind: str, seed: int, n: int = N) -> dict:
    """Per-sample conditioning of ``n`` samples, as the model's forward takes it."""
    g = torch.Generator().manual_seed(seed)
    if kind in ("unet", "dit"):
        return {"class_labels": torch.randint(0, 3, (n,), generator=g)}
    states = {"encoder_hidden_states": torch.randn(n, 3, 8, generator=g)}
    if kind == "unet_condition":
        added = {"text_embeds": torch.randn(n, 6, generator=g), "time_ids": torch.randn(n, 6, generator=g)}
        states["added_cond_kwargs"] = added
    return states


def other_conditioning(kind: str, cond: dict) -> dict:
    """The same kind of conditioning with every sample's value changed."""
    if "class_labels" in cond:
        return {"class_labels": (cond["class_labels"] + 1) % 3}
    return conditioning(kind, seed=99, n=cond["encoder_hidden_states"].shape[0])


def by_hand(kind: str, model, xt: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """Each model called the way its own forward is written."""
    if kind == "unet":  # forward(sample, timestep, class_labels=None, ...)
        return model(xt, t, class_labels=cond["class_labels"]).sample
    if kind == "unet_condition":  # forward(sample, timestep, encoder_hidden_states, ..., added_cond_kwargs=None)
        return model(xt, t, cond["encoder_hidden_states"], added_cond_kwargs=cond["added_cond_kwargs"]).sample
    if kind == "dit":  # forward(hidden_states, timestep=None, class_labels=None, ...)
        return model(xt, timestep=t, class_labels=cond["class_labels"]).sample
    return model(
        xt, cond["encoder_hidden_states"], t
    ).sample  # forward(hidden_states, encoder_hidden_states, timestep)


def images(kind: str, seed: int = 0, n: int = N) -> torch.Tensor:
    """x0 on the 8-bit grid in [−1, 1] (the decoder term needs it)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels(kind), 8, 8), generator=g).float() / 127.5 - 1


def col(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values[t.numpy()]).reshape(-1, 1, 1, 1)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def noisy(ref, x0, eps, t):
    return col(ref["a"], t) * x0 + col(ref["s"], t) * eps


def model_mean_and_logvar(ref, prediction_type, pred, variance, xt, t):
    """p_θ(x_{t−1} | x_t) from the model output, written out: x̂0 of the target, μ = coef1 x̂0 + coef2 x_t
    (the output itself for `mean`), log σ² learned in [log β̃, log β] or fixed at log β̃ (clipped)."""
    a, s, coef1, coef2 = (col(ref[k], t) for k in ("a", "s", "coef1", "coef2"))
    if prediction_type == "mean":
        mean = pred
    else:
        x0_hat = {
            "epsilon": lambda: (xt - s * pred) / a,
            "sample": lambda: pred,
            "v_prediction": lambda: a * xt - s * pred,
        }[prediction_type]()
        mean = coef1 * x0_hat + coef2 * xt
    min_log = col(ref["logvar_clipped"], t)
    if variance is None:
        return mean, min_log.expand_as(xt)
    frac = (variance + 1) / 2
    return mean, frac * col(np.log(ref["betas"]), t) + (1 - frac) * min_log


def vb_bits(ref, x0, xt, t, mean, logvar):
    """L_{t−1}: KL to the true posterior for t > 0, the discretized decoder NLL at t = 0, in bits/dim."""
    true_mean = col(ref["coef1"], t) * x0 + col(ref["coef2"], t) * xt
    kl = mean_flat(normal_kl(true_mean, col(ref["logvar_clipped"], t).expand_as(x0), mean, logvar))
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, means=mean, log_scales=0.5 * logvar))
    return torch.where(t == 0, nll, kl) / math.log(2)


def split(out: torch.Tensor, c: int, learned: bool):
    return (out[:, :c], out[:, c:]) if learned else (out, None)


def scheduler_for(objective: str, T: int = T) -> DDPMObjectiveScheduler:
    if objective == "learned":  # ε target, learned variance, hybrid loss
        return DDPMObjectiveScheduler(
            **DDPMObjectiveScheduler.with_learned_variance({"num_train_timesteps": T, "loss_weighting": "min_snr"})
        )
    return DDPMObjectiveScheduler(num_train_timesteps=T, prediction_type=objective, loss_weighting="min_snr")


# ---------------------------------------------------------------------------------------------- the calling rule
def test_call_model_rule_for_plain_callables():
    seen = {}

    def positional(x, t):
        seen["positional"] = t
        return x

    def keyword(x, timestep=None, class_labels=None):
        seen["keyword"] = (timestep, class_labels)
        return (x * 2,)

    x, t, y = torch.zeros(2, 1, 2, 2), torch.tensor([3, 4]), torch.tensor([1, 0])
    assert call_model(positional, x, t) is x and seen["positional"] is t
    assert torch.equal(call_model(keyword, x, t, {"class_labels": y}), x * 2)
    assert seen["keyword"][0] is t and seen["keyword"][1] is y
    assert call_model(lambda x, t, **kw: x + len(kw), x, t, {"anything": 1}).sum() == 8  # **kwargs takes all


@pytest.mark.parametrize("kind", KINDS)
def test_call_model_matches_each_models_own_convention(kind):
    model = build(kind).eval()
    x, t = torch.randn(N, channels(kind), 8, 8), torch.tensor([0, 7, 25, 49])
    cond, other = conditioning(kind, 1), other_conditioning(kind, conditioning(kind, 1))
    with torch.no_grad():
        out = call_model(model, x, t, cond)
        torch.testing.assert_close(out, by_hand(kind, model, x, t, cond), rtol=0, atol=0)
        # the conditioning reaches the model: other labels / states give another output
        assert (out - call_model(model, x, t, other)).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        # and t does (for the Transformer2DModel, t passed positionally would land in encoder_hidden_states)
        assert (out - call_model(model, x, t.flip(0), cond)).abs().max() > 1e-4


def test_call_model_reads_through_a_forward_wrapper():
    class Wrapper(torch.nn.Module):  # what DDP (`.module`) and torch.compile (`._orig_mod`) look like
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    model = build("transformer").eval()
    x, t, cond = torch.randn(N, 4, 8, 8), torch.tensor([1, 2, 3, 4]), conditioning("transformer", 2)
    with torch.no_grad():
        torch.testing.assert_close(call_model(Wrapper(model), x, t, cond), by_hand("transformer", model, x, t, cond))
    with pytest.raises(ValueError, match="'foo'"):
        call_model(Wrapper(model), x, t, {**cond, "foo": 1})


def test_slice_model_kwargs():
    h, shared, three = torch.randn(4, 3, 8), torch.randn(1, 3, 8), torch.arange(3)
    kwargs = {
        "encoder_hidden_states": h,
        "shared": shared,
        "three": three,
        "scale": torch.tensor(2.0),
        "added_cond_kwargs": {"text_embeds": torch.arange(8).reshape(4, 2), "nested": {"ids": torch.arange(4)}},
        "mask": None,
        "names": ["a", "b", "c", "d"],
    }
    out = slice_model_kwargs(kwargs, slice(1, 3), 4)
    assert torch.equal(out["encoder_hidden_states"], h[1:3])
    assert out["shared"] is shared and out["three"] is three and out["scale"] is kwargs["scale"]
    assert out["added_cond_kwargs"]["text_embeds"].tolist() == [[2, 3], [4, 5]]
    assert out["added_cond_kwargs"]["nested"]["ids"].tolist() == [1, 2]
    assert out["mask"] is None and out["names"] is kwargs["names"]
    assert slice_model_kwargs(None, slice(0, 2), 4) is None


# ---------------------------------------------------------------------------------------------- training losses
@pytest.mark.parametrize("objective", [*TARGETS, "learned"])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_with_conditioning_matches_by_hand_and_trains(kind, objective):
    learned = objective == "learned"
    sched = scheduler_for(objective)
    prediction_type = sched.config.prediction_type
    ref = np_schedule(sched)
    model = build(kind, learned=learned)
    c = channels(kind)
    x0 = images(kind)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 1, 24, T - 1])
    cond = conditioning(kind, 1)

    model.eval()  # no label dropout (DiT) while comparing
    out = diffusion_loss(model, x0, sched, timesteps=t, noise=eps, model_kwargs=cond)
    with torch.no_grad():
        x0_, eps_ = x0.double(), eps.double()
        xt = noisy(ref, x0_, eps_, t)
        pred, variance = split(by_hand(kind, model, xt.float(), t, cond).double(), c, learned)
        a, s = col(ref["a"], t), col(ref["s"], t)
        target = {
            "epsilon": eps_,
            "sample": x0_,
            "v_prediction": a * eps_ - s * x0_,
            "mean": col(ref["coef1"], t) * x0_ + col(ref["coef2"], t) * xt,
        }[prediction_type]
        expected = sched.loss_weight(t, units=prediction_type) * mean_flat((pred - target) ** 2)
        if learned:
            mean, logvar = model_mean_and_logvar(ref, prediction_type, pred, variance, xt, t)
            expected = expected + sched.config.hybrid_lambda * T * vb_bits(ref, x0_, xt, t, mean, logvar)
    torch.testing.assert_close(out.per_sample_loss.double(), expected, rtol=2e-4, atol=1e-6)
    # the conditioning changes the loss of every sample
    other = diffusion_loss(model, x0, sched, timesteps=t, noise=eps, model_kwargs=other_conditioning(kind, cond))
    assert ((other.per_sample_loss - out.per_sample_loss).abs() > 1e-7).all()

    # a few optimizer steps; the gradient reaches the parameters only the conditioning feeds
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(4)
    for step in range(2):
        loss = diffusion_loss(model, x0, sched, generator=g, model_kwargs=cond).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = [
                p.grad.abs().sum()
                for name, p in model.named_parameters()
                if any(key in name for key in CONDITIONING_PARAMETERS[kind]) and p.grad is not None
            ]
            assert grads and sum(grads) > 0
        optimizer.step()


def test_mixin_passes_model_kwargs():
    class Net(DiffusionLossMixin, UNet2DModel):
        pass

    torch.manual_seed(0)
    net = Net(**build("unet").config).eval()
    sched = scheduler_for("v_prediction")
    x0, cond, t = images("unet"), conditioning("unet", 1), torch.tensor([0, 5, 20, 49])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    out = net.diffusion_loss(x0, sched, timesteps=t, noise=eps, model_kwargs=cond)
    torch.testing.assert_close(
        out.loss, diffusion_loss(net, x0, sched, timesteps=t, noise=eps, model_kwargs=cond).loss
    )
    other = net.diffusion_loss(x0, sched, timesteps=t, noise=eps, model_kwargs=other_conditioning("unet", cond))
    assert not torch.allclose(out.per_sample_loss, other.per_sample_loss)


# ---------------------------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("kind", KINDS)
def test_bound_with_conditioning_matches_by_hand(kind):
    learned = kind in ("unet", "dit")  # learned variance on two models, the fixed β̃ on the other two
    sched = scheduler_for("learned" if learned else "epsilon")
    ref = np_schedule(sched)
    model = build(kind, learned=learned).eval()
    x0, cond = images(kind), conditioning(kind, 1)
    timesteps = [0, 1, 24, T - 1]
    noise = torch.randn(len(timesteps), *x0.shape, generator=torch.Generator().manual_seed(5))
    out = variational_bound(model, sched, x0, timesteps=timesteps, noise=noise, model_kwargs=cond)
    expected = []
    with torch.no_grad():
        for k, step in enumerate(timesteps):
            t = torch.full((N,), step)
            xt = noisy(ref, x0.double(), noise[k].double(), t)
            pred, variance = split(by_hand(kind, model, xt.float(), t, cond).double(), channels(kind), learned)
            mean, logvar = model_mean_and_logvar(ref, "epsilon", pred, variance, xt, t)
            expected.append(vb_bits(ref, x0.double(), xt, t, mean, logvar))
    torch.testing.assert_close(out["terms"].double(), torch.stack(expected, 1), rtol=2e-4, atol=1e-6)
    other = variational_bound(
        model, sched, x0, timesteps=timesteps, noise=noise, model_kwargs=other_conditioning(kind, cond)
    )
    assert ((other["terms"][:, 1:] - out["terms"][:, 1:]).abs() > 1e-7).all()


@pytest.mark.parametrize("kind", KINDS)
def test_bpd_splits_per_sample_conditioning_with_the_images(kind):
    """estimate_bpd and full_bpd in batches of 2 equal variational_bound on each half with its own conditioning.

    With K = T and no proposal every stratum is one timestep, so after its draw of the strata's positions the
    estimator draws ε exactly as `variational_bound` over all t.
    """
    T_small = 10
    sched = scheduler_for("epsilon", T=T_small)
    model = build(kind).eval()
    x0, cond = images(kind), conditioning(kind, 1)

    def by_halves(conditioning_of_half, fast=False):
        g = torch.Generator().manual_seed(7)
        if fast:
            torch.rand(4, T_small, dtype=torch.float64, generator=g)  # the estimator's positions in the strata
        halves = []
        for rows in (slice(0, 2), slice(2, 4)):
            bound = variational_bound(model, sched, x0[rows], generator=g, model_kwargs=conditioning_of_half(rows))
            halves.append(bound["total"])
        return torch.cat(halves).double()

    expected = by_halves(lambda rows: _index(cond, rows))
    expected_fast = by_halves(lambda rows: _index(cond, rows), fast=True)
    fast = estimate_bpd(
        model,
        sched,
        x0,
        num_timesteps=T_small,
        batch_size=2,
        generator=torch.Generator().manual_seed(7),
        progress=False,
        model_kwargs=cond,
    )
    assert fast["evaluations_per_image"] == T_small
    torch.testing.assert_close(fast["per_image"], expected_fast, rtol=1e-6, atol=1e-8)
    full = full_bpd(
        model, sched, x0, batch_size=2, generator=torch.Generator().manual_seed(7), progress=False, model_kwargs=cond
    )
    torch.testing.assert_close(full["total"].double(), expected, rtol=1e-6, atol=1e-8)
    # the split is by image: the conditioning of the wrong half gives other values
    swapped = by_halves(lambda rows: _index(cond, slice(2, 4) if rows.start == 0 else slice(0, 2)))
    assert not torch.allclose(swapped, expected)


def _index(cond: dict, rows: slice) -> dict:
    """The conditioning of ``rows``, written out for each kind (independent of `slice_model_kwargs`)."""
    if "class_labels" in cond:
        return {"class_labels": cond["class_labels"][rows]}
    out = {"encoder_hidden_states": cond["encoder_hidden_states"][rows]}
    if "added_cond_kwargs" in cond:
        added = cond["added_cond_kwargs"]
        out["added_cond_kwargs"] = {"text_embeds": added["text_embeds"][rows], "time_ids": added["time_ids"][rows]}
    return out


def test_learn_proposal_passes_model_kwargs():
    sched = scheduler_for("epsilon", T=20)
    model = build("unet").eval()
    x0, cond = images("unet"), conditioning("unet", 1)
    q, evaluations = learn_proposal(
        model, sched, x0, grid_size=4, generator=torch.Generator().manual_seed(0), model_kwargs=cond
    )
    q_other, _ = learn_proposal(
        model,
        sched,
        x0,
        grid_size=4,
        generator=torch.Generator().manual_seed(0),
        model_kwargs=other_conditioning("unet", cond),
    )
    assert evaluations == (4 + 1) * N  # the grid and t = 0
    assert torch.isclose(q.sum(), torch.tensor(1.0, dtype=q.dtype))
    assert not torch.allclose(q, q_other)


# ---------------------------------------------------------------------------------------------- refused conditioning
def _refused(model, x, cond, keyword):
    with pytest.raises(ValueError, match=f"model_kwargs\\['{keyword}'\\]"):
        call_model(model, x, torch.tensor([1, 2]), cond)


def test_conditioning_a_model_would_not_use_is_refused():
    x1, x4, y, h = torch.randn(2, 1, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([0, 1]), torch.randn(2, 3, 8)
    # UNet2DModel without a class embedding: diffusers' own error does not name the keyword
    plain_unet = build("unet", num_class_embeds=None)
    with pytest.raises(ValueError, match="class_embedding needs to be initialized"):
        plain_unet(x1, torch.tensor([1, 2]), class_labels=y)
    _refused(plain_unet, x1, {"class_labels": y}, "class_labels")
    # UNet2DConditionModel without a class embedding would drop the labels silently
    unet_condition = build("unet_condition", addition_embed_type=None).eval()
    with torch.no_grad():
        a = unet_condition(x4, torch.tensor([1, 2]), h).sample
        assert torch.equal(a, unet_condition(x4, torch.tensor([1, 2]), h, class_labels=y).sample)
    _refused(unet_condition, x4, {"encoder_hidden_states": h, "class_labels": y}, "class_labels")
    _refused(unet_condition, x4, {"class_labels": None}, "encoder_hidden_states")  # required by its forward
    _refused(unet_condition, x4, {"encoder_hidden_states": h, "added_cond_kwargs": {"a": h}}, "added_cond_kwargs")
    _refused(unet_condition, x4, {"encoder_hidden_states": h, "foo": 1}, "foo")  # not a parameter
    _refused(unet_condition, x4, {"encoder_hidden_states": h, "timestep": 3}, "timestep")  # call_model's own
    _refused(build("dit"), x4, {}, "class_labels")  # DiT cannot run without labels
    _refused(build("transformer"), x4, {"encoder_hidden_states": h, "class_labels": y}, "class_labels")
    _refused(build("transformer", cross_attention_dim=None), x4, {"encoder_hidden_states": h}, "encoder_hidden_states")
    # through the public entry points too
    with pytest.raises(ValueError, match="model_kwargs\\['class_labels'\\]"):
        diffusion_loss(plain_unet, images("unet"), scheduler_for("epsilon"), model_kwargs={"class_labels": y})
