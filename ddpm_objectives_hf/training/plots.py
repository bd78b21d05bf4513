"""Figures for model cards and studies: sample grids, loss weightings over t, training loss, ELBO terms in bits/dim,
bar charts.

Every plot draws on a stand-alone `matplotlib.figure.Figure` rendered by the Agg canvas: no pyplot state, no
window is ever shown, nothing is left open. Each writes a PNG (creating parent folders) and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "normalise_mean_one",
    "plot_bar",
    "plot_elbo_terms",
    "plot_guidance_sweep",
    "plot_loss_curve",
    "plot_weighting",
    "sample_grid",
]

_DPI = 120


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """Convert a sequence or tensor-like to a flat float64 numpy array."""
    if hasattr(values, "detach"):  # torch tensor without importing torch
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _check_same_length(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{x_name} has {x.size} entries but {y_name} has {y.size}")


def _save(fig: Figure, path: str | Path) -> Path:
    """Write `fig` to `path` (parent folders created) and release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight")
    fig.clear()
    return path


def _positive_or_nan(values: np.ndarray) -> np.ndarray:
    """Mask non-positive and non-finite values (for log axes)."""
    out = values.astype(np.float64, copy=True)
    out[~np.isfinite(out) | (out <= 0)] = np.nan
    return out


def normalise_mean_one(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Scale a weighting so that its mean over the finite entries is 1 (shapes become comparable).

    Args:
        values: Weights over t.

    Returns:
        The rescaled weights; returned unchanged (as float64) when the finite mean is not positive.
    """
    arr = _as_1d(values, "values")
    finite = arr[np.isfinite(arr)]
    mean = float(finite.mean()) if finite.size else float("nan")
    if not math.isfinite(mean) or mean <= 0:
        return arr
    return arr / mean


def sample_grid(
    images: Sequence[PIL.Image.Image] | Any, *, max_images: int | None = None, min_side: int = 128
) -> PIL.Image.Image:
    """A grid of samples with diffusers' `make_image_grid`, enlarged for small images.

    The grid has `rows` = the largest divisor of N that is ≤ √N and `cols` = N / rows (square when N is a square),
    and is enlarged by the integer factor `max(1, min_side // longer side)` with nearest-neighbour resampling, so
    that 8×8 samples stay visible and pixel-exact.

    Args:
        images: PIL images, or a float tensor / array `[N, C, H, W]` in [0, 1] (converted with diffusers'
            `numpy_to_pil`; values outside [0, 1] are clipped).
        max_images (`int`, *optional*): Use only the first `max_images` images.
        min_side (`int`, defaults to 128): The longer side the grid is enlarged towards.

    Returns:
        The grid as an RGB `PIL.Image.Image`.
    """
    from diffusers.utils import make_image_grid, numpy_to_pil

    if not isinstance(images, Sequence):
        array = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images)
        images = numpy_to_pil(np.clip(array, 0.0, 1.0).transpose(0, 2, 3, 1))
    images = list(images)[:max_images]
    if not images:
        raise ValueError("sample_grid needs at least one image")
    n = len(images)
    rows = math.isqrt(n)
    while n % rows:
        rows -= 1
    grid = make_image_grid(images, rows=rows, cols=n // rows)
    scale = max(1, min_side // max(grid.size))
    return grid.resize((grid.width * scale, grid.height * scale), resample=0) if scale > 1 else grid


def plot_weighting(
    timesteps: Sequence[float] | np.ndarray,
    curves: Mapping[str, Sequence[float] | np.ndarray],
    path: str | Path,
    *,
    title: str = "Effective loss weighting over t",
    ylabel: str = "weight (ε-units, normalised)",
    logy: bool = True,
) -> Path:
    """Plot effective loss weightings over t, each normalised to mean 1 so that only their shapes are compared.

    Args:
        timesteps: The t axis.
        curves: Name → weight per timestep (same length as `timesteps`).
        path: Output PNG path.
        title: Figure title.
        ylabel: y-axis label.
        logy: Logarithmic y axis (non-positive values are not drawn).

    Returns:
        `path` as a `Path`.
    """
    t = _as_1d(timesteps, "timesteps")
    if not curves:
        raise ValueError("curves is empty")
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    any_positive = False
    for name, values in curves.items():
        w = normalise_mean_one(values)
        _check_same_length(t, w, "timesteps", f"curve {name!r}")
        if logy:
            w = _positive_or_nan(w)
            any_positive |= bool(np.isfinite(w).any())
        ax.plot(t, w, label=str(name), linewidth=1.6)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    if logy and any_positive:
        ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _ema(values: np.ndarray, smooth: float) -> np.ndarray:
    """Bias-corrected exponential moving average that skips non-finite values."""
    out = np.full_like(values, np.nan)
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        if math.isfinite(v):
            acc = smooth * acc + (1.0 - smooth) * v
            norm = smooth * norm + (1.0 - smooth)
        if norm > 0:
            out[i] = acc / norm
    return out


def plot_loss_curve(
    steps: Sequence[float] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    path: str | Path,
    *,
    smooth: float = 0.95,
    title: str = "Training loss",
    logy: bool = False,
) -> Path:
    """Plot the training loss: the raw values faint, and their exponential moving average on top.

    Args:
        steps: Optimisation steps.
        losses: Loss at every step.
        path: Output PNG path.
        smooth: EMA coefficient in [0, 1); 0 disables smoothing.
        title: Figure title.
        logy: Logarithmic y axis.

    Returns:
        `path` as a `Path`.
    """
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    x = _as_1d(steps, "steps")
    y = _as_1d(losses, "losses")
    _check_same_length(x, y, "steps", "losses")
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    ax.plot(x, y, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    if smooth > 0:
        ax.plot(x, _ema(y, smooth), color="tab:blue", linewidth=1.8, label=f"EMA ({smooth:g})")
    if logy and np.isfinite(_positive_or_nan(y)).any():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_elbo_terms(
    timesteps: Sequence[float] | np.ndarray,
    terms_bpd: Sequence[float] | np.ndarray,
    path: str | Path,
    *,
    weighting: Sequence[float] | np.ndarray | None = None,
    weighting_label: str | None = None,
    prior_bpd: float | None = None,
    decoder_bpd: float | None = None,
    vlb_weighting: Sequence[float] | np.ndarray | None = None,
    title: str = "Variational bound terms over t",
) -> Path:
    """Plot the KL terms L_{t-1} over t in bits/dim (log y) with, on a twin axis, the objective's weighting.

    The twin axis shows the objective's effective weighting next to the VLB weights (both normalised to mean 1,
    uniform = 1 drawn dotted), as in the "VLB weights vs uniform" comparison of the DDPM derivation. The VLB
    weights are `vlb_weighting` (e.g. `DDPMObjectiveScheduler.vlb_weight(t)`) when given.

    Args:
        timesteps: The t axis of `terms_bpd`.
        terms_bpd: L_{t-1} per timestep in bits/dim.
        path: Output PNG path.
        weighting: The objective's effective weighting per timestep (ε-units), optional.
        weighting_label: Legend label of `weighting`.
        prior_bpd: The prior term L_T in bits/dim, annotated at the largest t.
        decoder_bpd: The decoder term L_0 in bits/dim, annotated at the smallest t.
        vlb_weighting: The VLB weights per timestep, optional.
        title: Figure title.

    Returns:
        `path` as a `Path`.
    """
    t = _as_1d(timesteps, "timesteps")
    terms = _as_1d(terms_bpd, "terms_bpd")
    _check_same_length(t, terms, "timesteps", "terms_bpd")
    vlb = None if vlb_weighting is None else _as_1d(vlb_weighting, "vlb_weighting")

    fig = Figure(figsize=(7.2, 4.4))
    ax = fig.add_subplot()
    terms_pos = _positive_or_nan(terms)
    ax.plot(t, terms_pos, color="tab:blue", linewidth=1.8, label=r"$L_{t-1}$ (bits/dim)")
    t_min, t_max = float(np.nanmin(t)), float(np.nanmax(t))
    for value, x, name, ha in ((prior_bpd, t_max, "L_T", "right"), (decoder_bpd, t_min, "L_0", "left")):
        if value is None or not math.isfinite(float(value)):
            continue
        value = float(value)
        if value > 0:
            ax.plot([x], [value], marker="o", color="tab:red", linestyle="none")
            ax.annotate(
                f"${name}$ = {value:.3g} bpd",
                xy=(x, value),
                xytext=(0, 8),
                textcoords="offset points",
                ha=ha,
                fontsize="small",
                color="tab:red",
            )
        else:
            ax.annotate(
                f"${name}$ = {value:.3g} bpd",
                xy=(x, 0.02),
                xycoords=("data", "axes fraction"),
                ha=ha,
                fontsize="small",
                color="tab:red",
            )
    if np.isfinite(terms_pos).any():
        ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("bits/dim", color="tab:blue")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()

    if weighting is not None or vlb is not None:
        ax2 = ax.twinx()
        positive = False
        if vlb is not None:
            _check_same_length(t, vlb, "timesteps", "vlb_weighting")
            v = _positive_or_nan(normalise_mean_one(vlb))
            positive |= bool(np.isfinite(v).any())
            ax2.plot(t, v, color="tab:green", linewidth=1.3, linestyle="--", label="VLB weights")
        if weighting is not None:
            w = _positive_or_nan(normalise_mean_one(weighting))
            _check_same_length(t, w, "timesteps", "weighting")
            positive |= bool(np.isfinite(w).any())
            ax2.plot(t, w, color="tab:orange", linewidth=1.5, label=weighting_label or "objective weighting")
        ax2.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="uniform")
        if positive:
            ax2.set_yscale("log")
        ax2.set_ylabel("weight (ε-units, normalised)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize="small", loc="best")
    return _save(fig, path)


def plot_bar(
    labels: Sequence[str],
    values: Sequence[float] | np.ndarray,
    path: str | Path,
    ylabel: str,
    *,
    title: str | None = None,
    errors: Sequence[float] | np.ndarray | None = None,
    logy: bool = False,
) -> Path:
    """Bar chart for study tables (one bar per run/objective), values printed on the bars.

    Args:
        labels: Bar labels.
        values: Bar heights.
        path: Output PNG path.
        ylabel: y-axis label.
        title: Figure title.
        errors: Optional error bar half-widths.
        logy: Logarithmic y axis.

    Returns:
        `path` as a `Path`.
    """
    labels = [str(label) for label in labels]
    vals = _as_1d(values, "values")
    if len(labels) != vals.size:
        raise ValueError(f"{len(labels)} labels but {vals.size} values")
    yerr = None if errors is None else _as_1d(errors, "errors")
    fig = Figure(figsize=(max(4.0, 0.8 * len(labels) + 2.0), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    bars = ax.bar(x, np.nan_to_num(vals, nan=0.0), yerr=yerr, color="tab:blue", alpha=0.85, capsize=3)
    for bar, v in zip(bars, vals):
        ax.annotate(
            f"{v:.3g}" if math.isfinite(v) else "n/a",
            xy=(bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="x-small",
        )
    ax.set_xticks(x)
    rotate = max(map(len, labels), default=0) > 8
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    if logy and np.isfinite(_positive_or_nan(vals)).any():
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_guidance_sweep(
    guidance_scales: Sequence[float] | np.ndarray,
    fid: Sequence[float] | np.ndarray,
    accuracy: Sequence[float] | np.ndarray | None,
    path: str | Path,
    *,
    fid_label: str = "FID",
    title: str = "Classifier-free guidance: sample quality vs class fidelity",
) -> Path:
    """FID (left axis, lower is better) and the classifier's accuracy on the requested classes (right axis) against
    the guidance scale s of ε̂ = ε̂(x_t, ∅) + s (ε̂(x_t, y) − ε̂(x_t, ∅)): the trade-off guidance is tuned on.

    Args:
        guidance_scales: The scales s (0: unconditional, 1: conditional).
        fid: FID of the samples at each scale.
        accuracy: Fraction of samples classified as their requested class, at each scale (optional).
        path: Output PNG path.
        fid_label: Axis label of `fid` (e.g. naming the feature network).
        title: Figure title.

    Returns:
        `path` as a `Path`.
    """
    s = _as_1d(guidance_scales, "guidance_scales")
    f = _as_1d(fid, "fid")
    _check_same_length(s, f, "guidance_scales", "fid")
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(s, f, color="tab:blue", marker="o", label=fid_label)
    ax.set_xlabel("guidance scale s")
    ax.set_ylabel(fid_label, color="tab:blue")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if accuracy is not None:
        a = _as_1d(accuracy, "accuracy")
        _check_same_length(s, a, "guidance_scales", "accuracy")
        ax2 = ax.twinx()
        ax2.plot(s, a, color="tab:orange", marker="s", label="classifier accuracy on the requested class")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("accuracy", color="tab:orange")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize="small", loc="best")
    return _save(fig, path)
