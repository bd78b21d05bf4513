"""Model cards (README.md with Hub metadata) for pipelines trained with ddpm-objectives-hf.

The card is rendered offline from the Jinja template `model_cards/diffusion_model_card.md` (installed as
`ddpm_objectives_hf.model_cards`); nothing here touches the network.
"""

from __future__ import annotations

import importlib.resources
import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData

__all__ = ["TEMPLATE_NAME", "describe_objective", "objective_tags", "write_model_card"]

TEMPLATE_NAME = "diffusion_model_card.md"
BASE_TAGS = ("diffusers", "unconditional-image-generation", "diffusion", "ddpm-objectives-hf")

# Keys of the objective dict that describe the objective itself (everything else with a scalar value is treated as a
# parameter of the loss weighting or loss type, e.g. `snr_gamma`, `p2_k`, `vlb_lambda`).
_CORE_KEYS = {
    "prediction_type",
    "loss_type",
    "loss_weighting",
    "variance_type",
    "timestep_sampler",
    "num_train_timesteps",
    "beta_schedule",
    "beta_start",
    "beta_end",
    "clip_sample",
    "weighting_params",
    "loss_weighting_params",
}

_TARGETS = {
    "epsilon": ("the ε target", "the network predicts the noise ε added to x₀ (Ho et al., 2020)"),
    "sample": ("the x₀ target", "the network predicts the clean image x₀ directly"),
    "v_prediction": (
        "the v target",
        "the network predicts the velocity v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ (Salimans & Ho, 2022)",
    ),
    "mean": ("the μ target", "the network predicts the posterior mean μ̃_t(x_t, x₀) of q(x_{t−1} | x_t, x₀)"),
}
_TARGET_ALIASES = {
    "eps": "epsilon",
    "noise": "epsilon",
    "x0": "sample",
    "x_0": "sample",
    "x_start": "sample",
    "v": "v_prediction",
    "velocity": "v_prediction",
    "mu": "mean",
    "posterior_mean": "mean",
}

_WEIGHTINGS = {  # canonical name -> (short phrase for the summary, long phrase for the details)
    "uniform": ("uniform weighting", "uniform weighting of the ε-MSE over t (L_simple, Ho et al., 2020)"),
    "snr": ("SNR weighting", "SNR weighting, w_t = SNR(t) in ε-units"),
    "truncated_snr": (
        "truncated-SNR weighting",
        "truncated-SNR weighting, w_t = max(SNR(t), 1) in x₀-units, i.e. max(1, 1/SNR(t)) in ε-units "
        "(Salimans & Ho, 2022)",
    ),
    "min_snr": (
        "min-SNR-γ weighting",
        "min-SNR-γ weighting, w_t = min(SNR(t), γ) in x₀-units, i.e. min(1, γ/SNR(t)) in ε-units (Hang et al., 2023)",
    ),
    "soft_min_snr": (
        "soft-min-SNR weighting",
        "soft-min-SNR weighting, w_t = γ/(SNR(t) + γ) in ε-units (Crowson et al., 2024)",
    ),
    "p2": ("P2 weighting", "P2 weighting, w_t = 1/(k + SNR(t))^γ in ε-units (Choi et al., 2022)"),
    "edm": ("EDM weighting", "EDM weighting, w_t = 1 + 1/(σ_data²·SNR(t)) in ε-units (Karras et al., 2022)"),
    "debiased": ("debiased weighting", "debiased-estimation weighting, w_t = 1/√SNR(t) in ε-units (Yu et al., 2024)"),
    "sigmoid": ("sigmoid weighting", "sigmoid weighting of the log-SNR λ, w = sigmoid(b − λ) (Kingma & Gao, 2023)"),
    "vlb": (
        "variational-bound weighting",
        "the ELBO's own weighting λ_t = β_t²/(2σ_t²α_t(1−ᾱ_t)) (Ho et al., 2020, eq. 12): the true variational bound",
    ),
}
_WEIGHTING_ALIASES = {
    "simple": "uniform",
    "none": "uniform",
    "constant": "uniform",
    "eps": "uniform",
    "min_snr_gamma": "min_snr",
    "minsnr": "min_snr",
    "max_snr": "truncated_snr",
    "elbo": "vlb",
    "kl": "vlb",
}

_LOSSES = {  # canonical name -> (short phrase for the summary, long phrase for the details)
    "mse": ("MSE loss", "mean-squared error"),
    "l2": ("MSE loss", "mean-squared error"),
    "l1": ("L1 loss", "L1 (mean absolute) error"),
    "huber": ("Huber loss", "Huber (smooth-L1) error"),
    "hybrid": ("hybrid L_simple + λ·L_vlb loss", "the hybrid loss L_simple + λ·L_vlb (Nichol & Dhariwal, 2021)"),
    "vlb": ("full variational-bound loss", "the full variational bound (sum of KL terms, in bits/dim)"),
    "kl": ("full variational-bound loss", "the full variational bound (sum of KL terms, in bits/dim)"),
    "elbo": ("full variational-bound loss", "the full variational bound (sum of KL terms, in bits/dim)"),
}

_VARIANCES = {
    "fixed_small": "fixed reverse variance σ_t² = β̃_t (the posterior variance)",
    "fixed_large": "fixed reverse variance σ_t² = β_t",
    "fixed_small_log": "fixed reverse variance σ_t² = β̃_t (the posterior variance)",
    "fixed_large_log": "fixed reverse variance σ_t² = β_t",
    "learned": "learned reverse variance σ_t² (predicted by the network)",
    "learned_range": "learned reverse variance, interpolated between β_t and β̃_t in the log domain (Improved DDPM)",
}

_SAMPLERS = {
    "uniform": "t drawn uniformly from {1, …, T}",
    "stratified": "stratified t: one stratum of {1, …, T} per sample of the global batch (unbiased, lower variance)",
    "importance": "t importance-sampled ∝ √E[L_t²] from a history of per-timestep losses (Nichol & Dhariwal, 2021)",
    "loss_aware": "t importance-sampled ∝ √E[L_t²] from a history of per-timestep losses (Nichol & Dhariwal, 2021)",
    "logit_normal": "t = ⌊T·sigmoid(n)⌋ with n ~ N(μ, σ²), a logit-normal timestep density (Esser et al., 2024)",
}

_GREEK = {"gamma": "γ", "lambda": "λ", "lam": "λ", "sigma": "σ", "sigma_data": "σ_data", "bias": "b", "rho": "ρ"}

_IMAGE_CAPTIONS = {
    "samples": "Samples",
    "sample": "Samples",
    "weighting": "Effective loss weighting over t",
    "loss": "Training loss",
    "elbo": "Variational bound terms over t",
    "elbo_terms": "Variational bound terms over t",
}

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def _slug(value: Any) -> str:
    """Tag-friendly form of a value: lower case, `_`/spaces → `-`."""
    return re.sub(r"[^a-z0-9.]+", "-", str(value).lower()).strip("-")


def _plain(value: Any) -> Any:
    """Convert numpy/torch scalars, tuples, Paths… to YAML-safe builtins (recursively)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _fmt(value: Any) -> str:
    """Short human-readable form of a value for tables and sentences."""
    value = _plain(value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.4g}"
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return str(value)
    return str(value)


def _canonical(value: Any, aliases: Mapping[str, str]) -> str | None:
    if value is None:
        return None
    key = str(value).strip().lower().replace("-", "_")
    return aliases.get(key, key)


# Config keys (as in DDPMObjectiveScheduler's config) holding the parameters of each weighting / loss type; keys that
# start with `<name>_` (e.g. `min_snr_gamma`) are recognised too.
_WEIGHTING_PARAM_KEYS = {
    "min_snr": ("snr_gamma",),
    "soft_min_snr": ("snr_gamma",),
    "p2": ("p2_k", "p2_gamma"),
    "edm": ("sigma_data",),
    "sigmoid": ("sigmoid_bias",),
}
_LOSS_PARAM_KEYS = {"hybrid": ("hybrid_lambda", "vlb_lambda", "lambda_vlb")}


def _short_name(key: str) -> str:
    """`snr_gamma` → `gamma`, `p2_k` → `k`, `hybrid_lambda` → `lambda`, `sigma_data` stays."""
    if key in ("sigma_data", "lambda_vlb"):
        return {"lambda_vlb": "lambda"}.get(key, key)
    return key.rsplit("_", 1)[-1]


def _params(objective: Mapping[str, Any], owner: str | None, keys: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """Scalar parameters of the weighting/loss `owner` found in the objective dict, keyed by short name."""
    if not owner:
        return {}
    params: dict[str, Any] = {}
    if keys is _WEIGHTING_PARAM_KEYS:
        for key in ("weighting_params", "loss_weighting_params"):
            if isinstance(objective.get(key), Mapping):
                params.update({str(k): v for k, v in objective[key].items() if v is not None})
    for key, value in objective.items():
        if key in _CORE_KEYS or value is None or isinstance(value, bool):
            continue
        if not isinstance(_plain(value), (int, float)):
            continue
        own = keys.get(owner, ())
        known_elsewhere = any(key in other for name, other in keys.items() if name != owner)
        if key in own or (key.startswith(owner + "_") and not known_elsewhere):
            params.setdefault(_short_name(key), value)
    return params


def _param_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{_GREEK.get(k, k)}={_fmt(v)}" for k, v in params.items())


def describe_objective(objective: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Human-readable description of a training objective.

    Args:
        objective: The objective dict (prediction_type, loss_type, loss_weighting and its parameters, variance_type,
            timestep_sampler, num_train_timesteps, beta_schedule).

    Returns:
        `(summary, details)`: one sentence such as "Trained with the v target under min-SNR-γ weighting (γ=5).", and
        one sentence per option.
    """
    prediction = _canonical(objective.get("prediction_type"), _TARGET_ALIASES)
    weighting = _canonical(objective.get("loss_weighting"), _WEIGHTING_ALIASES)
    loss = _canonical(objective.get("loss_type"), {})
    param_text = _param_text(_params(objective, weighting, _WEIGHTING_PARAM_KEYS))
    loss_param_text = _param_text(_params(objective, loss, _LOSS_PARAM_KEYS))

    target_short, target_long = _TARGETS.get(prediction or "", (f"the {prediction} target", None))
    weighting_short, weighting_long = _WEIGHTINGS.get(weighting or "", (f"{weighting} weighting",) * 2)
    loss_short, loss_long = _LOSSES.get(loss or "", (f"{loss} loss", str(loss)))
    summary = "Trained with " + (target_short if prediction else "the default target")
    if weighting:
        summary += f" under {weighting_short}" + (f" ({param_text})" if param_text else "")
    if loss and loss not in ("mse", "l2"):
        summary += f", with the {loss_short}" + (f" ({loss_param_text})" if loss_param_text else "")
    summary += "."

    details: list[str] = []
    if prediction:
        details.append(
            f"**Target** (`prediction_type={objective.get('prediction_type')}`): {target_long or prediction}."
        )
    if loss:
        text = loss_long + (f", with {loss_param_text}" if loss_param_text else "")
        details.append(f"**Loss** (`loss_type={objective.get('loss_type')}`): {text}.")
    if weighting:
        text = weighting_long + (f", with {param_text}" if param_text else "")
        details.append(f"**Weighting** (`loss_weighting={objective.get('loss_weighting')}`): {text}.")
    variance = _canonical(objective.get("variance_type"), {})
    if variance:
        details.append(
            f"**Reverse variance** (`variance_type={objective.get('variance_type')}`): "
            f"{_VARIANCES.get(variance, variance)}."
        )
    sampler = _canonical(objective.get("timestep_sampler"), {})
    if sampler:
        text = _SAMPLERS.get(sampler, sampler)
        details.append(f"**Timesteps** (`timestep_sampler={objective.get('timestep_sampler')}`): {text}.")
    schedule = objective.get("beta_schedule")
    steps = objective.get("num_train_timesteps")
    if schedule is not None or steps is not None:
        parts = []
        if schedule is not None:
            parts.append(f"`{schedule}` β schedule")
        if steps is not None:
            parts.append(f"T = {_fmt(steps)} diffusion steps")
        details.append("**Noise schedule**: " + ", ".join(parts) + ".")
    return summary, details


def objective_tags(objective: Mapping[str, Any]) -> list[str]:
    """Hub tags for an objective: the base tags plus `prediction-…`, `loss-…`, `weighting-…`.

    Args:
        objective: The objective dict.

    Returns:
        The list of tags, without duplicates.
    """
    tags = list(BASE_TAGS)
    for prefix, key in (("prediction", "prediction_type"), ("loss", "loss_type"), ("weighting", "loss_weighting")):
        if objective.get(key) is not None:
            tags.append(f"{prefix}-{_slug(objective[key])}")
    return list(dict.fromkeys(tags))


def _is_hub_dataset_id(name: str) -> bool:
    """True for Hub-like ids (`mnist`, `user/data`); False for local paths and the embedded scikit-learn digits."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or os.path.exists(name):
        return False
    if name.lower() in ("digits", "sklearn-digits", "sklearn_digits") or name.lower().startswith("sklearn"):
        return False
    return bool(_HUB_ID_RE.match(name))


def _image_rows(images: Mapping[str, str] | None, output_dir: Path) -> list[dict[str, str]]:
    rows = []
    for key, raw in (images or {}).items():
        if not raw:
            continue
        path = Path(raw)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(output_dir.resolve())
            except ValueError:
                pass
        caption = _IMAGE_CAPTIONS.get(str(key).lower(), str(key).replace("_", " ").capitalize())
        rows.append({"caption": caption, "path": path.as_posix()})
    return rows


def _table(values: Mapping[str, Any] | None) -> list[dict[str, str]]:
    return [{"name": str(k), "value": _fmt(v).replace("|", "\\|")} for k, v in (values or {}).items() if v is not None]


def write_model_card(
    output_dir: str | Path,
    *,
    objective: Mapping[str, Any],
    repo_id: str | None = None,
    dataset_name: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    images: Mapping[str, str] | None = None,
    training: Mapping[str, Any] | None = None,
    plugin_scheduler: bool = False,
    license: str = "apache-2.0",
) -> ModelCard:
    """Render the model card of a trained pipeline and write it to `output_dir/README.md` (no network).

    Args:
        output_dir: The pipeline folder (created if missing).
        objective: The training objective (prediction_type, loss_type, loss_weighting and its parameters,
            variance_type, timestep_sampler, num_train_timesteps, beta_schedule); stored under `ddpm_objective`.
        repo_id: Hub repository id used in the "How to use" snippet; the local path is used when `None`.
        dataset_name: Training dataset; listed under `datasets` when it looks like a Hub id (not a local path).
        metrics: Scalar results, e.g. `{"bits_per_dim": 3.7, "final_loss": 0.03}`; stored under `ddpm_metrics`.
        images: Caption key → image path relative to `output_dir` (e.g. `{"samples": "samples.png"}`).
        training: Training hyper-parameters for the table (`num_inference_steps` also sets the snippet's value).
        plugin_scheduler: The pipeline's scheduler is the plugin's `DDPMObjectiveScheduler` (μ models): the card says
            that `pip install ddpm-objectives-hf` is needed to load it.
        license: License id for the metadata.

    Returns:
        The `huggingface_hub.ModelCard` that was written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    objective_plain = {str(k): _plain(v) for k, v in objective.items()}
    metrics_plain = {str(k): _plain(v) for k, v in (metrics or {}).items() if v is not None}

    tags = objective_tags(objective_plain)
    if plugin_scheduler:
        tags.append("custom-scheduler")
    card_data = ModelCardData(
        library_name="diffusers",
        license=license,
        tags=tags,
        pipeline_tag="unconditional-image-generation",
        datasets=[dataset_name] if dataset_name and _is_hub_dataset_id(dataset_name) else None,
        ddpm_objective=objective_plain,
        ddpm_metrics=metrics_plain or None,
    )

    summary, details = describe_objective(objective_plain)
    training = dict(training or {})
    steps = training.get("num_inference_steps") or objective_plain.get("num_train_timesteps") or 1000
    title = (repo_id or output_dir.resolve().name).split("/")[-1]
    template = (importlib.resources.files("ddpm_objectives_hf.model_cards") / TEMPLATE_NAME).read_text(
        encoding="utf-8"
    )
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    content = env.from_string(template).render(
        card_data=card_data.to_yaml(),
        title=title,
        dataset_name=dataset_name,
        plugin_scheduler=plugin_scheduler,
        objective_summary=summary,
        objective_details=details,
        images=_image_rows(images, output_dir),
        metrics=_table(metrics_plain),
        training=_table(training),
        model_path=repo_id or output_dir.resolve().as_posix(),
        num_inference_steps=int(steps),
    )
    content = re.sub(r"\n{3,}", "\n\n", content)
    card = ModelCard(content)
    card.save(output_dir / "README.md")
    return card
