#!/usr/bin/env python
"""The objective of docs/objective.md, measured on the quick-start model: writes docs/walkthrough.md and its pictures.

    python examples/walkthrough.py                                   # trains the quick-start model first (~6–10 min)
    python examples/walkthrough.py --model_dir /tmp/walkthrough-model  # reuses (or trains into) that folder

The model is the README's quick start: ``scripts/train.py`` with its defaults (the embedded digits, 2,000 steps),
trained by ``python scripts/train.py --output_dir MODEL_DIR`` unless ``MODEL_DIR`` already holds a pipeline. On it:

1. the terms of the variational bound over t on held-out digits (`variational_bound`): L_T, L_{t−1}, L_0 and their
   sum, the bits/dim, beside the exact likelihood of the same digits by the probability-flow ODE and the gap; and the mean-matching identity L_{t−1} = λ_t · ‖ε − ε̂‖² checked on the model;
2. the weight every registered weighting puts on each t, in ε-units (`effective_weight`, the same for the four
   targets) and in each target's own units (`loss_weight(t, units=...)`);
3. one reverse step x_t → x_{t−1} decomposed into x̂0, μ̃ and σ_t at a few t of a sampling chain.

Every number on the page is written by this script from what it measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ddpm_objectives_hf import DDPMObjectiveScheduler, variational_bound
from ddpm_objectives_hf.likelihood import LOG2
from ddpm_objectives_hf.weighting import WEIGHTINGS

ROOT = Path(__file__).resolve().parents[1]

TARGETS = ("epsilon", "sample", "v_prediction", "mean")
TARGET_ERROR = {"epsilon": "‖ε − ε̂‖²", "sample": "‖x0 − x̂0‖²", "v_prediction": "‖v − v̂‖²", "mean": "‖μ̃ − μ̂‖²"}
# papers' t (1 … T) shown in the tables and the reverse-step picture; code index = t − 1
TABLE_T = (1, 2, 10, 100, 250, 500, 750, 1000)
STEP_T = (1000, 800, 600, 400, 200, 50, 10, 1)


def default_model_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "ddpm-objectives-hf" / "walkthrough-model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model_dir",
        type=Path,
        default=default_model_dir(),
        help="A trained quick-start pipeline folder; trained into it when it holds none (default: a cache folder).",
    )
    parser.add_argument(
        "--out_dir", type=Path, default=ROOT / "docs", help="Where walkthrough.md goes (pictures in walkthrough/)."
    )
    parser.add_argument("--num_images", type=int, default=128, help="Held-out digits for the variational bound.")
    parser.add_argument("--num_chain_images", type=int, default=4, help="Samples of the reverse chain shown.")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------- model
def ensure_model(model_dir: Path) -> dict:
    """Train the quick-start model into ``model_dir`` unless it already holds a pipeline; return how it was made."""
    if not (model_dir / "model_index.json").is_file():
        print(f"training the quick-start model into {model_dir} (scripts/train.py defaults, ~6–10 min on 2 cores)")
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--output_dir", str(model_dir)])
        if code.returncode:
            raise SystemExit(code.returncode)
        print(f"trained in {time.perf_counter() - start:.0f} s")
    config = json.loads((model_dir / "training_config.json").read_text())
    return {"objective": config["objective"], "run": config["run"], "model": config["model"]}


def load_model(model_dir: Path):
    from ddpm_objectives_hf.training.pipelines import load_for_evaluation

    unet, scheduler, _ = load_for_evaluation(str(model_dir))
    unet.eval().requires_grad_(False)
    return unet, scheduler


def held_out_digits(n: int) -> torch.Tensor:
    """The first ``n`` held-out digits as float [n, 1, 8, 8] in [−1, 1], as `scripts/evaluate.py` reads them."""
    from ddpm_objectives_hf.data import InMemoryImageData, digits_dataset

    data = InMemoryImageData.from_dataset(digits_dataset("test"), "image", resolution=8, channels=1)
    return data.batch(torch.arange(min(n, len(data))))


# ---------------------------------------------------------------------------------------------------------- 1. ELBO
def mean_matching_error(unet, scheduler: DDPMObjectiveScheduler, x0: torch.Tensor, seed: int) -> float:
    """Largest relative deviation from L_{t−1} · ln 2 = λ_t · SNR · ‖x0 − x̂0‖² (per dim; t ≥ 2, σ² = β̃, §6 and §8).

    In float64 (a float32 KL loses digits to the cancellation in μ̃ − μ_θ at large t), on a few t and images.
    """
    unet64 = copy.deepcopy(unet).double()
    code_t = [k - 1 for k in TABLE_T if 2 <= k <= scheduler.config.num_train_timesteps]
    generator = torch.Generator().manual_seed(seed + 1)
    vb = variational_bound(unet64, scheduler, x0.double(), timesteps=code_t, generator=generator)
    predicted = scheduler.vlb_weight(code_t) * scheduler.snr(code_t) * vb["mse"] / LOG2
    return float(((predicted - vb["terms"]).abs() / vb["terms"]).max())


def elbo_section(unet, scheduler: DDPMObjectiveScheduler, x0: torch.Tensor, figures: Path, seed: int) -> dict:
    from ddpm_objectives_hf.training.plots import plot_elbo_terms

    T = scheduler.config.num_train_timesteps
    print(f"1/3 the variational bound: {x0.shape[0]} held-out digits × {T} steps")
    start = time.perf_counter()
    vb = variational_bound(unet, scheduler, x0, generator=torch.Generator().manual_seed(seed), progress=True)
    seconds = time.perf_counter() - start
    terms = vb["terms"].double()  # [N, T] bits/dim; column k is the papers' L_k
    n = x0.shape[0]
    t = torch.arange(T)
    mean_terms = terms.mean(0)
    prior, decoder = vb["prior"].double(), terms[:, 0]
    kl_sum = terms[:, 1:].sum(1)
    total = vb["total"].double()

    def stat(values: torch.Tensor) -> tuple[float, float]:
        return float(values.mean()), float(1.96 * values.std() / math.sqrt(n))

    snr, lam = scheduler.snr(t), scheduler.vlb_weight(t)
    eps_mse = vb["mse"].double() * snr  # ‖ε − ε̂‖² per dim, from the x0 error of the same x_t
    identity_error = mean_matching_error(unet, scheduler, x0[:8], seed)

    # where the bound lives
    share = {}
    for lo, hi in ((1, 1), (2, 10), (11, 100), (101, 1000)):
        cols = slice(lo - 1, min(hi, T))
        share[(lo, hi)] = float(terms[:, cols].sum(1).mean() / total.mean())
    share_prior = float(prior.mean() / total.mean())

    plot_elbo_terms(
        t[1:].numpy() + 1,
        mean_terms[1:].numpy(),
        figures / "elbo_terms.png",
        weighting=scheduler.effective_weight(t[1:]).numpy(),
        weighting_label=f"{scheduler.config.loss_weighting} (the model's weighting)",
        prior_bpd=float(prior.mean()),
        decoder_bpd=float(decoder.mean()),
        vlb_weighting=lam[1:].numpy(),
        title=f"Variational bound terms over t ({n} held-out digits)",
    )
    fig = Figure(figsize=(7.2, 3.6))
    ax = fig.add_subplot()
    ax.plot(
        t.numpy() + 1,
        eps_mse.mean(0).numpy(),
        color="tab:purple",
        label="mean ‖ε − ε̂‖² per dim (what L_simple weights 1)",
    )
    ax.plot(t.numpy() + 1, (vb["mse"].double().mean(0)).numpy(), color="tab:gray", label="mean ‖x0 − x̂0‖² per dim")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t (papers' indexing, 1 … T)")
    ax.set_ylabel("error per dimension")
    ax.set_title("The model's regression errors over t")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(figures / "errors_over_t.png", dpi=120, bbox_inches="tight")

    return {
        "n": n,
        "T": T,
        "seconds": seconds,
        "per_image": total,
        "prior": stat(prior),
        "decoder": stat(decoder),
        "kl_sum": stat(kl_sum),
        "total": stat(total),
        "terms_at": {k: float(mean_terms[k - 1]) for k in TABLE_T if k <= T},
        "eps_mse_at": {k: float(eps_mse[:, k - 1].mean()) for k in TABLE_T if k <= T},
        "lambda_at": {k: float(lam[k - 1]) for k in TABLE_T if k <= T},
        "identity_error": identity_error,
        "share": share,
        "share_prior": share_prior,
        "argmax_t": int(mean_terms[1:].argmax()) + 2,
    }


def likelihood_section(
    unet, scheduler: DDPMObjectiveScheduler, x0: torch.Tensor, elbo: dict, figures: Path, seed: int
):
    """The exact likelihood of the same images by the probability-flow ODE (objective.md §14), and the bound's gap."""
    from ddpm_objectives_hf.ode import ode_bpd

    print(f"1b/3 the exact likelihood by the probability-flow ODE: {x0.shape[0]} held-out digits")
    ode = ode_bpd(unet, scheduler, x0, draws=2, generator=torch.Generator().manual_seed(seed))
    n = x0.shape[0]
    gap = elbo["per_image"] - ode["per_image"]
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.add_subplot()
    ax.scatter(ode["per_image"].numpy(), elbo["per_image"].numpy(), s=10, alpha=0.6, color="tab:blue")
    low = float(min(ode["per_image"].min(), elbo["per_image"].min()))
    high = float(max(ode["per_image"].max(), elbo["per_image"].max()))
    ax.plot([low, high], [low, high], color="gray", linestyle=":", label="bound = ODE")
    ax.set_xlabel("ODE bits/dim (exact up to solver and dequantisation)")
    ax.set_ylabel("variational bound, bits/dim")
    ax.set_title(f"Per image: the bound against the exact likelihood ({n} digits)", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    fig.savefig(figures / "bound_vs_ode.png", dpi=120, bbox_inches="tight")
    return {
        "ode": (ode["bpd"], 1.96 * ode["stderr"]),
        "gap": (float(gap.mean()), float(1.96 * gap.std() / math.sqrt(n))),
        "below": float((gap < 0).double().mean()),
        "estimator_stderr": ode["estimator_stderr"],
        "calls": ode["evaluations_per_image"],
        "seconds_per_image": ode["seconds_per_image"],
        "rtol": ode["rtol"],
        "draws": ode["draws"],
    }


# ---------------------------------------------------------------------------------------------------------- 2. weights
def weights_section(scheduler: DDPMObjectiveScheduler, figures: Path) -> dict:
    """Effective ε-units weight of every registered weighting, for the four targets, and each target's own units."""
    print("2/3 the weights of every registered weighting")
    base = {k: scheduler.config[k] for k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")}
    T = base["num_train_timesteps"]
    t = torch.arange(T)
    names = sorted(WEIGHTINGS)
    eps_units, native, same_across_targets = {}, {target: {} for target in TARGETS}, 0.0
    for name in tqdm(names, desc="weightings", leave=False):
        per_target = []
        for target in TARGETS:
            sched = DDPMObjectiveScheduler(**base, prediction_type=target, loss_weighting=name)
            per_target.append(sched.effective_weight(t))
            native[target][name] = sched.loss_weight(t, target)
        finite = torch.isfinite(per_target[0])
        for other in per_target[1:]:
            same_across_targets = max(same_across_targets, float((other - per_target[0])[finite].abs().max()))
        eps_units[name] = per_target[0]
    kl = DDPMObjectiveScheduler(**base, loss_type="kl").effective_weight(t)
    styles = {name: {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"} for i, name in enumerate(names)}
    styles["loss_type='kl'"] = {"color": "black", "linestyle": ":"}

    fig = Figure(figsize=(8.0, 4.6))
    ax = fig.add_subplot()
    plot_weights(ax, t, {**eps_units, "loss_type='kl'": kl}, styles)
    ax.set_title("Effective weight w(t) in ε-units: the loss is w(t) · ‖ε − ε̂‖² for every target")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), title="loss_weighting")
    fig.savefig(figures / "weights_eps_units.png", dpi=120, bbox_inches="tight")

    fig = Figure(figsize=(12.0, 8.0))
    axes = fig.subplots(2, 2, sharex=True)
    for ax, target in zip(axes.flat, TARGETS):
        plot_weights(ax, t, {name: native[target][name] for name in names}, styles)
        ax.set_title(f"prediction_type={target!r}: weight on {TARGET_ERROR[target]}", fontsize="medium")
    for ax in axes[0]:
        ax.set_xlabel("")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize="small", loc="center left", bbox_to_anchor=(0.91, 0.5))
    fig.suptitle("The same weightings in each target's own units: loss_weight(t, units=target) = w · SNR / c_target")
    fig.savefig(figures / "weights_by_target.png", dpi=120, bbox_inches="tight")

    at = [k for k in TABLE_T if k <= T]
    return {
        "names": names,
        "eps_at": {name: [float(eps_units[name][k - 1]) for k in at] for name in names},
        "kl_at": [float(kl[k - 1]) for k in at],
        "native_at": {
            target: {name: [float(native[target][name][k - 1]) for k in at] for name in names} for target in TARGETS
        },
        "same_across_targets": same_across_targets,
        "snr_at": [float(scheduler.snr(k - 1)) for k in at],
        "at": at,
        "options": {k: scheduler.config[k] for k in ("snr_gamma", "p2_k", "p2_gamma", "sigma_data", "sigmoid_bias")},
    }


def plot_weights(ax, t: torch.Tensor, curves: dict[str, torch.Tensor], styles: dict[str, dict]) -> None:
    """Weights over the papers' t on log–log axes (non-positive and infinite values not drawn)."""
    for name, w in curves.items():
        w = w.double().numpy()
        ax.plot(
            t.numpy() + 1, np.where(np.isfinite(w) & (w > 0), w, np.nan), linewidth=1.4, label=name, **styles[name]
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t (1 … T)")
    ax.grid(True, which="both", alpha=0.25)


# ---------------------------------------------------------------------------------------------------------- 3. a step
@torch.no_grad()
def step_section(unet, scheduler: DDPMObjectiveScheduler, figures: Path, num_images: int, seed: int) -> dict:
    """Run the full reverse chain and decompose the steps at `STEP_T` into x̂0, μ̃ and σ_t."""
    T = scheduler.config.num_train_timesteps
    print(f"3/3 a reverse chain of {T} steps for {num_images} samples")
    scheduler.set_timesteps(T)  # the training grid: each step is t → t − 1
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_images, 1, 8, 8, generator=generator)
    shown, rows, worst = [k for k in STEP_T if k <= T], {}, 0.0
    for code_t in tqdm(scheduler.timesteps.tolist(), desc="reverse chain", leave=False):
        t_batch = torch.full((num_images,), code_t, dtype=torch.long)
        out = unet(x, t_batch).sample
        state = generator.get_state()
        step = scheduler.step(out, code_t, x, generator=generator)
        if code_t + 1 in shown:
            x0_hat = step.pred_original_sample  # clipped to [−1, 1] (clip_sample)
            mu = scheduler.posterior_mean(x0_hat, x, t_batch)
            sigma = float(scheduler.posterior_variance(code_t).sqrt()) if code_t > 0 else 0.0
            z = (
                torch.randn(x.shape, generator=torch.Generator().set_state(state))
                if code_t > 0
                else torch.zeros_like(x)
            )
            worst = max(worst, float((step.prev_sample - (mu + sigma * z)).abs().max()))
            coef1, coef2 = scheduler.posterior_mean_coefficients(code_t)
            rows[code_t + 1] = {
                "x_t": x.clone(),
                "x0_hat": x0_hat,
                "mu": mu,
                "x_prev": step.prev_sample,
                "sigma": sigma,
                "coef1": float(coef1),
                "coef2": float(coef2),
                "snr": float(scheduler.snr(code_t)),
                "clipped": float((scheduler.predict_original_sample(out, x, t_batch).abs() > 1).double().mean()),
            }
        x = step.prev_sample

    columns = (("x_t", "$x_t$"), ("x0_hat", r"$\hat x_0$"), ("mu", r"$\tilde\mu_t$"), ("x_prev", "$x_{t-1}$"))
    fig = Figure(figsize=(2.0 * len(columns) * max(1, num_images / 2), 1.25 * len(shown) + 0.6))
    axes = fig.subplots(len(shown), len(columns), squeeze=False)
    for i, k in enumerate(shown):
        row = rows[k]
        for j, (key, label) in enumerate(columns):
            strip = torch.cat(list(row[key][:, 0]), dim=1).numpy()  # the samples side by side
            ax = axes[i, j]
            ax.imshow(strip, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label)
        axes[i, 0].set_ylabel(
            f"$t$ = {k}\n$\\sigma_t$ = {row['sigma']:.3g}", rotation=0, ha="right", va="center", fontsize="small"
        )
    fig.suptitle(
        r"One reverse step $x_t \to x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sigma_t z$ at several $t$"
        r" (grey scale clipped to $[-1, 1]$)"
    )
    fig.savefig(figures / "reverse_step.png", dpi=120, bbox_inches="tight")

    return {
        "num_images": num_images,
        "shown": shown,
        "rows": {k: {key: v for key, v in r.items() if not isinstance(v, torch.Tensor)} for k, r in rows.items()},
        "x_t_std": {k: float(rows[k]["x_t"].std()) for k in shown},
        "worst": worst,
    }


# ---------------------------------------------------------------------------------------------------------- the page
def fmt(value: float) -> str:
    if not math.isfinite(value):
        return "∞" if value > 0 else str(value)
    if value == 0:
        return "0"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def write_page(
    out: Path, made: dict, elbo: dict, exact: dict, weights: dict, step: dict, seconds: float, argv: list[str]
) -> None:
    obj, run = made["objective"], made["run"]
    T = elbo["T"]
    pm = lambda s: f"{fmt(s[0])} ± {fmt(s[1])}" if abs(s[0]) < 1e-3 else f"{s[0]:.4f} ± {s[1]:.4f}"  # noqa: E731
    at = weights["at"]
    lines = [
        "# Walkthrough: the objective on the quick-start model",
        "",
        "<!-- Written by examples/walkthrough.py; do not edit by hand: rerun it. -->",
        "",
        f"Generated by `python examples/walkthrough.py{' ' + ' '.join(argv) if argv else ''}` in {seconds / 60:.1f} min "
        "(the model's training not included). The derivation behind every quantity is in [objective.md](objective.md); "
        "section numbers (§) refer to it.",
        "",
        "**The model** is the README's quick start: `scripts/train.py` with its defaults, trained by "
        "`python scripts/train.py --output_dir MODEL_DIR`: the embedded digits (8×8, 1,437 training images), "
        f"{run['max_train_steps']:,} steps of batch {run['train_batch_size']}, "
        f"`prediction_type={obj['prediction_type']!r}`, `loss_weighting={obj['loss_weighting']!r}` "
        f"(L_simple), `loss_type={obj['loss_type']!r}`, `variance_type={obj['variance_type']!r}`, "
        f"`beta_schedule={obj['beta_schedule']!r}` with T = {T}{', EMA weights' if run.get('use_ema') else ''}. Timesteps below are the papers' "
        "t = 1 … T (code index t − 1, §0).",
        "",
        "## 1. The terms of the variational bound over t",
        "",
        f"`ddpm_objectives_hf.elbo.variational_bound` on the first {elbo['n']} held-out digits, all {T} steps, one "
        f"noise draw per step ({elbo['seconds']:.0f} s). Means over the images, ± 1.96 standard errors, in bits/dim (§2):",
        "",
        "| term | bits/dim |",
        "|---|---|",
        f"| $L_T$ (prior, `prior_bpd`) | {pm(elbo['prior'])} |",
        f"| $\\sum_{{t=2}}^{{T}} L_{{t-1}}$ (the KL terms) | {pm(elbo['kl_sum'])} |",
        f"| $L_0$ (discretized decoder, §12) | {pm(elbo['decoder'])} |",
        f"| **total: the bound on bits/dim** | **{pm(elbo['total'])}** |",
        "",
        "![ELBO terms over t](walkthrough/elbo_terms.png)",
        "",
        "**The likelihood the bound stands in for** (§14). The same images by the model's probability-flow ODE "
        f"(`ddpm_objectives_hf.ode.ode_bpd`: RK45 at rtol = atol = {exact['rtol']:g}, one Rademacher probe, "
        f"{exact['draws']} dequantisation draws; {exact['calls']:.0f} network calls and {exact['seconds_per_image']:.2f} s "
        "per image and draw):",
        "",
        "| bits/dim | value |",
        "|---|---|",
        f"| the variational bound (above) | {pm(elbo['total'])} |",
        f"| the exact likelihood, ODE | {pm(exact['ode'])} |",
        f"| the gap, bound − ODE (paired over images) | {pm(exact['gap'])} |",
        "",
        f"The estimator's own noise (dequantisation and probes) is ± {exact['estimator_stderr']:.4f}; on "
        f"{exact['below']:.0%} of the images the bound is below the ODE's value — both are upper bounds of their own "
        "discrete model, and neither bounds the other per image.",
        "",
        "![The bound against the exact likelihood, per image](walkthrough/bound_vs_ode.png)",
        "",
        f"The KL terms are largest at small t (the largest at t = {elbo['argmax_t']}) and fall by orders of magnitude "
        "towards t = T. Share of the total:",
        "",
        "| part of the bound | share |",
        "|---|---|",
        f"| $L_0$ (t = 1) | {elbo['share'][(1, 1)]:.1%} |",
        f"| $L_1 \\dots L_9$ (t = 2 … 10) | {elbo['share'][(2, 10)]:.1%} |",
        f"| $L_{{10}} \\dots L_{{99}}$ (t = 11 … 100) | {elbo['share'][(11, 100)]:.1%} |",
        f"| $L_{{100}} \\dots L_{{T-1}}$ (t = 101 … T) | {elbo['share'][(101, 1000)]:.1%} |",
        f"| $L_T$ | {fmt(100 * elbo['share_prior'])}% |",
        "",
        "The twin axis of the figure is the point of §8: the ELBO's weight λ_t (`vlb_weight`, green) against the "
        "uniform weight of L_simple that trained this model (orange, on the dotted line): L_simple spends far less of "
        "its weight at small t, where the bound lives. Per t, the KL term is λ_t times the model's ε-error, in "
        "nats (÷ ln 2 for bits; mean matching, §6 and §8):",
        "",
        "| t | " + " | ".join(str(k) for k in at) + " |",
        "|---|" + "---|" * len(at),
        "| $L_{t-1}$ (bits/dim) | " + " | ".join(fmt(elbo["terms_at"][k]) for k in at) + " |",
        "| mean ‖ε − ε̂‖² | " + " | ".join(fmt(elbo["eps_mse_at"][k]) for k in at) + " |",
        "| λ_t (`vlb_weight`) | " + " | ".join(fmt(elbo["lambda_at"][k]) for k in at) + " |",
        "",
        "(at t = 1 the term is the decoder NLL, not λ_1 × the error.) The identity itself, "
        "`L_{t−1} · ln 2 = vlb_weight(t − 1) · SNR · ‖x0 − x̂0‖²` (`fixed_small` variance: no constant C_t), checked "
        "in float64 on 8 of the digits at the t ≥ 2 of this table: largest relative deviation "
        f"{elbo['identity_error']:.1e}.",
        "",
        "![regression errors over t](walkthrough/errors_over_t.png)",
        "",
        "## 2. The weight each objective puts on t",
        "",
        "Every registered weighting (`ddpm_objectives_hf.weighting.WEIGHTINGS`), with the scheduler's default "
        f"options ({', '.join(f'`{k}={v}`' for k, v in weights['options'].items())}) on the model's schedule. "
        "`DDPMObjectiveScheduler.effective_weight` gives the ε-units weight of the whole loss (§9): a scheduler was built "
        "for each weighting and each of the four targets, and the ε-units weights of the four "
        + (
            "are identical (largest difference over all t: 0)"
            if weights["same_across_targets"] == 0
            else f"agree to {weights['same_across_targets']:.1e} (largest absolute difference over all t)"
        )
        + ": a weighting is defined once. (`hybrid` has the weight of its weighting: its VLB part trains the "
        "variance only, §10.)",
        "",
        "![effective weights in ε-units](walkthrough/weights_eps_units.png)",
        "",
        'ε-units weight w(t) (`effective_weight`; `kl` is `loss_type="kl"`, T λ_t / ln 2, §10):',
        "",
        "| weighting | " + " | ".join(f"t = {k}" for k in at) + " |",
        "|---|" + "---|" * len(at),
        "| SNR(t) | " + " | ".join(fmt(v) for v in weights["snr_at"]) + " |",
    ]
    lines += [
        f"| `{name}` | " + " | ".join(fmt(v) for v in weights["eps_at"][name]) + " |" for name in weights["names"]
    ]
    lines += [
        "| `kl` | " + " | ".join(fmt(v) for v in weights["kl_at"]) + " |",
        "",
        "The same weightings in each target's own units, `loss_weight(t, units=target)` = w · SNR / c_target (§9), "
        "which is what `training_loss` multiplies the target's MSE by:",
        "",
        "![weights in each target's units](walkthrough/weights_by_target.png)",
        "",
    ]
    for target in ("sample", "v_prediction"):
        lines += [
            f"`prediction_type={target!r}` (weight on {TARGET_ERROR[target]}):",
            "",
            "| weighting | " + " | ".join(f"t = {k}" for k in at) + " |",
            "|---|" + "---|" * len(at),
        ]
        lines += [
            f"| `{name}` | " + " | ".join(fmt(v) for v in weights["native_at"][target][name]) + " |"
            for name in weights["names"]
        ]
        lines.append("")
    lines += [
        "## 3. One reverse step, decomposed",
        "",
        f"A sampling chain of all {T} steps (`DDPMObjectiveScheduler.step`, §13) for {step['num_images']} samples from "
        f"pure noise (seed {made['seed']}). "
        "At the steps shown, the model's output is turned into x̂0 (clipped to [−1, 1]), the posterior mean "
        "μ̃_t = c_1 x̂0 + c_2 x_t is formed (§3) and σ_t z is added, σ_t² = β̃_t (`fixed_small`; no noise at t = 1):",
        "",
        "![one reverse step at several t](walkthrough/reverse_step.png)",
        "",
        "| t | SNR(t) | $c_1$ | $c_2$ | σ_t | std of x_t | share of x̂0 clipped |",
        "|---|---|---|---|---|---|---|",
    ]
    top = step["shown"][0]
    rows_top = step["rows"][top]
    a_top = math.sqrt(rows_top["snr"] / (1 + rows_top["snr"]))
    for k in step["shown"]:
        r = step["rows"][k]
        lines.append(
            f"| {k} | {fmt(r['snr'])} | {fmt(r['coef1'])} | {fmt(r['coef2'])} | {fmt(r['sigma'])} | "
            f"{step['x_t_std'][k]:.3f} | {r['clipped']:.1%} |"
        )
    lines += [
        "",
        f"At t = {top}, a_t = √ᾱ_t = {a_top:.3g}: x̂0 = (x_t − s_t ε̂)/a_t magnifies the error of ε̂ by 1/a_t, and "
        f"{rows_top['clipped']:.0%} of its pixels fall outside [−1, 1] and are clipped; μ̃ = c_1 x̂0 + c_2 x_t is then "
        f"almost x_t (c_1 = {fmt(rows_top['coef1'])}, c_2 = {fmt(rows_top['coef2'])}), and one step changes little. "
        "As t falls, c_1 grows and σ_t shrinks; x̂0 is a recognisable digit long before x_t is, and at t = 1 "
        "(c_1 = 1, c_2 = 0, no noise) the sample is x̂0 itself. The step's x_{t−1} is μ̃ + σ_t z with z drawn from "
        "the generator state the step used: "
        + (
            "bit for bit equal at every step shown."
            if step["worst"] == 0
            else f"largest absolute difference {step['worst']:.1e} over the steps shown."
        ),
        "",
    ]
    (out / "walkthrough.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    start = time.perf_counter()
    made = ensure_model(args.model_dir)
    made["seed"] = args.seed
    load_start = time.perf_counter()
    torch.manual_seed(args.seed)
    unet, scheduler = load_model(args.model_dir)
    figures = args.out_dir / "walkthrough"
    figures.mkdir(parents=True, exist_ok=True)
    digits = held_out_digits(args.num_images)
    elbo = elbo_section(unet, scheduler, digits, figures, args.seed)
    exact = likelihood_section(unet, scheduler, digits, elbo, figures, args.seed)
    weights = weights_section(scheduler, figures)
    step = step_section(unet, scheduler, figures, args.num_chain_images, args.seed)
    shown_argv = [a if not a.startswith(("/", str(Path.home()))) else "MODEL_DIR" for a in argv]
    write_page(args.out_dir, made, elbo, exact, weights, step, time.perf_counter() - load_start, shown_argv)
    print(f"wrote {args.out_dir / 'walkthrough.md'} and {figures}/ in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
