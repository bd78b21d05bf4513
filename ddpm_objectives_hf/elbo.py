"""The variational bound −log p(x0) ≤ L_T + Σ_t L_{t−1} + L_0, term by term, in bits/dim."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .errors import ConfigError
from .scheduling_ddpm_objective import DDPMObjectiveScheduler


def call_model(
    model: Callable,
    noisy_samples: torch.Tensor,
    timesteps: torch.Tensor,
    model_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """The model's prediction at ``(x_t, t)`` as a tensor, with the conditioning ``model_kwargs`` passed on.

    The rule, read off the signature of ``model.forward`` (or of the callable): x_t goes in positionally; t goes in
    as ``timestep=t`` when the signature has a parameter named ``timestep``, else as the second positional argument;
    ``model_kwargs`` go in as keywords. This calls every diffusers denoiser the same way, whatever the position of
    ``timestep`` (``Transformer2DModel.forward(hidden_states, encoder_hidden_states=None, timestep=None, ...)``), and
    plain callables ``model(x, t)``. Wrappers whose ``forward`` takes only ``*args, **kwargs`` (DDP's ``.module``,
    ``torch.compile``'s ``._orig_mod``) are read through. A diffusers output's ``.sample`` (or a tuple's first item)
    is returned.

    Conditioning the model would ignore or cannot take raises a `ConfigError` (a `ValueError`) naming the keyword:
    a keyword its ``forward`` does not have, a required one that is missing, ``class_labels`` for a model built
    without a class embedding, ``encoder_hidden_states`` for a model without cross-attention, ``added_cond_kwargs``
    for a UNet without an addition embedding.

    Args:
        model (`Callable`): a diffusers model or any callable ``model(x_t, t, **model_kwargs)``.
        noisy_samples (`torch.Tensor`): x_t, ``[N, C, H, W]``.
        timesteps (`torch.Tensor`): t, ``[N]``.
        model_kwargs (`dict`, *optional*): keyword arguments of the model's forward, e.g. ``{"class_labels": y}``,
            ``{"encoder_hidden_states": h}`` or ``{"encoder_hidden_states": h, "added_cond_kwargs": {...}}``.
    """
    kwargs = dict(model_kwargs or {})
    module, signature = _forward_signature(model)
    by_keyword = False
    if signature is not None:
        by_keyword = _check_model_kwargs(module, signature, kwargs)
    if by_keyword:
        out = model(noisy_samples, timestep=timesteps, **kwargs)
    else:
        out = model(noisy_samples, timesteps, **kwargs)
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def slice_model_kwargs(model_kwargs: dict[str, Any] | None, rows: slice, num_samples: int) -> dict[str, Any] | None:
    """The conditioning of the samples ``rows`` of a batch of ``num_samples``: every tensor whose first dimension is
    ``num_samples`` is sliced, nested dicts (``added_cond_kwargs``) recursively, other values are kept as they are
    (shared conditioning: give such a tensor a leading dimension of 1, or any other than ``num_samples``)."""
    if model_kwargs is None:
        return None
    out = {}
    for key, value in model_kwargs.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == num_samples:
            out[key] = value[rows]
        elif isinstance(value, dict):
            out[key] = slice_model_kwargs(value, rows, num_samples)
        else:
            out[key] = value
    return out


def _forward_signature(model: Callable) -> tuple[Any, inspect.Signature | None]:
    """``(module, signature)`` of what ``model(...)`` runs, read through ``*args, **kwargs`` wrappers; `None` when
    the signature cannot be read (then t is passed positionally and the keywords unchecked)."""
    for _ in range(8):
        forward = model.forward if isinstance(model, torch.nn.Module) else model
        try:
            signature = inspect.signature(forward)
        except (TypeError, ValueError):
            return model, None
        kinds = {p.kind for p in signature.parameters.values()}
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} and isinstance(
            inner, torch.nn.Module
        ):
            model = inner
            continue
        return model, signature
    return model, None


def _check_model_kwargs(model: Any, signature: inspect.Signature, kwargs: dict[str, Any]) -> bool:
    """Check the conditioning against the model (see :func:`call_model`); return whether t goes as ``timestep=``."""
    P = inspect.Parameter
    params = list(signature.parameters.values())
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    named = {p.name: p for p in params if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    by_keyword = "timestep" in named
    name = type(model).__name__ if isinstance(model, torch.nn.Module) else getattr(model, "__name__", "the model")
    # what call_model passes itself: x_t (first positional) and t (`timestep`, or the second positional)
    own = {p.name for p in positional[:1]} | ({"timestep"} if by_keyword else {p.name for p in positional[1:2]})
    for key in kwargs:
        if key in own:
            raise ConfigError(f"model_kwargs[{key!r}] is x_t or t, which call_model passes itself", "model_kwargs")
        if key not in named and not any(p.kind == P.VAR_KEYWORD for p in params):
            accepted = ", ".join(n for n in named if n not in own and n != "return_dict") or "none"
            raise ConfigError(
                f"model_kwargs[{key!r}]: {name} does not take {key!r} (its forward takes: {accepted})", "model_kwargs"
            )
    missing = [n for n, p in named.items() if n not in own and p.default is P.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"model_kwargs[{missing[0]!r}]: missing; {name} needs it", "model_kwargs")
    problem = _ignored_conditioning(model, name, kwargs)
    if problem:
        key, reason = problem
        raise ConfigError(f"model_kwargs[{key!r}]: {reason}", "model_kwargs")
    return by_keyword


def _ignored_conditioning(model: Any, name: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """``(keyword, why)`` where a diffusers model would ignore (or fail unclearly on) the conditioning."""
    unused = "; the model would not use it"
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get"):
        return None
    unet = hasattr(model, "class_embedding")  # the UNets embed labels in class_embedding
    transformer = "norm_type" in config and hasattr(model, "transformer_blocks")  # DiT, Transformer2DModel
    label_norm = transformer and config["norm_type"] == "ada_norm_zero"  # labels enter AdaLN-Zero with t
    if kwargs.get("class_labels") is not None:
        if unet and model.class_embedding is None:
            return (
                "class_labels",
                f"{name} has no class embedding (num_class_embeds / class_embed_type unset)" + unused,
            )
        if transformer and not label_norm:
            return (
                "class_labels",
                f"{name} uses labels only with norm_type='ada_norm_zero', not {config['norm_type']!r}" + unused,
            )
    elif label_norm:
        return "class_labels", f"missing: {name} with norm_type='ada_norm_zero' embeds class labels with t"
    if kwargs.get("encoder_hidden_states") is not None and "cross_attention_dim" in config:
        if config["cross_attention_dim"] is None and not config.get("double_self_attention"):
            return "encoder_hidden_states", f"{name} has no cross-attention (cross_attention_dim=None)" + unused
    if kwargs.get("added_cond_kwargs") and "addition_embed_type" in config and config["addition_embed_type"] is None:
        return "added_cond_kwargs", f"{name} has no addition embedding (addition_embed_type=None)" + unused
    return None


@torch.no_grad()
def variational_bound(
    model: Callable,
    scheduler: DDPMObjectiveScheduler,
    x0: torch.Tensor,
    *,
    timesteps: torch.Tensor | list[int] | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_denoised: bool = False,
    progress: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sample terms of the variational bound in bits/dim, as improved-diffusion's ``calc_bpd_loop``.

    For each evaluated t, one x_t ~ q(x_t | x0) is drawn and ``L_{t−1} = KL(q(x_{t−1}|x_t,x0) ‖ p_θ(x_{t−1}|x_t))``
    (t > 0) or the discretized decoder NLL ``L_0 = −log p_θ(x0|x_1)`` (t = 0) is evaluated. Runs without gradients.

    Args:
        model (`Callable`): a diffusers model or ``model(x_t, t, **model_kwargs)`` returning the prediction (a tensor
            or an output with ``.sample``), called by :func:`call_model`.
        scheduler ([`DDPMObjectiveScheduler`]): the schedule, target and variance the model was trained with.
        x0 (`torch.Tensor`): data in [−1, 1] on the 8-bit grid, ``[N, C, H, W]``.
        timesteps (`torch.Tensor` or `list[int]`, *optional*): the t to evaluate; all T when `None`.
        noise (`torch.Tensor`, *optional*): ε, either shaped like ``x0`` (the same ε for every t) or
            ``[K, *x0.shape]`` (one per evaluated t). Drawn with ``generator`` when `None`.
        generator (`torch.Generator`, *optional*): for the noise draws.
        clip_denoised (`bool`, defaults to `False`): clip x̂0 to [−1, 1] before forming the mean.
        progress (`bool`, defaults to `False`): show a progress bar over t.
        model_kwargs (`dict`, *optional*): the conditioning of the N samples, passed to the model at every t, as its
            forward takes it: e.g. ``{"class_labels": y}``, ``{"encoder_hidden_states": h}``,
            ``{"encoder_hidden_states": h, "added_cond_kwargs": {"text_embeds": e, "time_ids": i}}``.

    Returns:
        `dict`: ``prior`` [N] (L_T), ``terms`` [N, K] (column k is the term at ``timesteps[k]``; with all T steps
        index 0 is the decoder L_0), ``total`` [N] (prior + Σ of the evaluated terms: the full bound when all T
        steps are evaluated), ``mse`` [N, K] (‖x0 − x̂0‖² per dim), and ``timesteps`` [K].
    """
    T = scheduler.config.num_train_timesteps
    if timesteps is None:
        timesteps = torch.arange(T, device=x0.device)
    timesteps = torch.as_tensor(timesteps, device=x0.device, dtype=torch.long).flatten()
    if timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= T):
        raise ValueError(f"timesteps must lie in 0 … {T - 1}")
    if noise is not None and noise.shape not in (x0.shape, (len(timesteps), *x0.shape)):
        raise ValueError(
            f"noise must have shape {tuple(x0.shape)} or {(len(timesteps), *x0.shape)}, got {tuple(noise.shape)}"
        )
    n = x0.shape[0]
    terms = x0.new_zeros((n, len(timesteps)))
    mse = x0.new_zeros((n, len(timesteps)))
    for k, t in enumerate(tqdm(timesteps.tolist(), desc="variational bound", disable=not progress, leave=False)):
        if noise is None:
            eps = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        else:
            eps = noise if noise.shape == x0.shape else noise[k]
        t_batch = torch.full((n,), t, device=x0.device, dtype=torch.long)
        xt = scheduler.add_noise(x0, eps, t_batch)
        out = call_model(model, xt, t_batch, model_kwargs)
        vb = scheduler.vlb_terms(out, x0, xt, t_batch, clip_denoised=clip_denoised)
        terms[:, k] = vb["vb"]
        mse[:, k] = ((vb["pred_xstart"] - x0) ** 2).flatten(1).mean(1)
    prior = scheduler.prior_bpd(x0)
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(dim=1), "mse": mse, "timesteps": timesteps}
