"""The study page: figures and tables from the results dictionary alone (whatever exists), and a discussion whose
every sentence is generated from the numbers and verdicts."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from . import claims as C
from . import stats

FIXED, LEARNED = "eps-simple", "eps-hybrid"
# the other published page of docs/ (both pages live there)
SEE_ALSO = {
    "converged": " All nine objectives (v, x0, P2 and EDM's weighting too) at the CPU profile's 300 steps, far from "
    "converged: [study_cpu.md](study_cpu.md).",
    "cpu": " The claims judged on models trained to their plateau (4,000 steps, with the exact likelihood): "
    "[study.md](study.md).",
}


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


def fmt_interval(summary: Mapping, digits: int = 3) -> str:
    """``mean [lo, hi]`` (n seeds); a single seed has no interval."""
    if not summary or summary.get("n", 0) == 0:
        return "–"
    if summary["n"] == 1:
        return f"{fmt(summary['mean'], digits)} (1 seed)"
    return f"{fmt(summary['mean'], digits)} [{fmt(summary['lo'], digits)}, {fmt(summary['hi'], digits)}]"


def _objectives(results: Mapping) -> list[str]:
    order = list(results["profile"]["objectives"])
    return [o for o in order if o in results.get("runs", {})] + [o for o in results.get("runs", {}) if o not in order]


# ---------------------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, tight: bool = True) -> Path:
    """Write a figure as a PNG (110 dpi) and close it."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _band(ax, xs, per_seed: Mapping[str, tuple[list, list]], label: str, style: str = "-", color=None) -> bool:
    """Mean over seeds with its 95% t-band at each x that any seed has."""
    points = sorted({x for steps, _ in per_seed.values() for x in steps})
    mean, lo, hi, used = [], [], [], []
    for x in points:
        values = [v for steps, vals in per_seed.values() for s, v in zip(steps, vals) if s == x]
        summary = stats.t_interval(values)
        if summary["n"] == 0:
            continue
        used.append(x)
        mean.append(summary["mean"])
        lo.append(summary["lo"] if math.isfinite(summary["lo"]) else summary["mean"])
        hi.append(summary["hi"] if math.isfinite(summary["hi"]) else summary["mean"])
    if not used:
        return False
    (line,) = ax.plot(used, mean, style, marker="o", ms=3, label=label, color=color)
    ax.fill_between(used, lo, hi, alpha=0.2, color=line.get_color())
    return True


def _log_ticks(ax, ticks) -> None:
    """A log x axis with a tick at each of ``ticks``, labelled with plain integers where the labels do not collide
    (the last one always; another only 1.4× or more from the previous labelled one)."""
    ticks = sorted(ticks)
    labelled, last = set(), None
    for t in reversed(ticks):
        if last is None or last / t >= 1.4:
            labelled.add(t)
            last = t
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(t) if t in labelled else "" for t in ticks])
    ax.minorticks_off()


def plot_finals(results: Mapping, path: Path, metric: str) -> Path | None:
    plt = _plt()
    objectives = _objectives(results)
    getter = (lambda o: C.final_fid(results, o)) if metric == "fid" else (lambda o: C.bpd(results, o))
    data = [(o, getter(o)) for o in objectives]
    data = [(o, v) for o, v in data if v]
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(data) + 2), 3.6))
    for i, (_, values) in enumerate(data):
        s = stats.t_interval(list(values.values()))
        ax.bar(i, s["mean"], color="C0", alpha=0.5)
        if s["n"] > 1:
            ax.errorbar(i, s["mean"], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], color="k", capsize=4)
        ax.plot([i] * len(values), list(values.values()), "k.", ms=5)
    ax.set_xticks(range(len(data)), [o for o, _ in data], rotation=30, ha="right")
    ax.set_ylabel("FID (digits features)" if metric == "fid" else "bits/dim (fast estimate)")
    ax.set_title("mean, 95% t-interval over seeds, and each seed")
    return _save(fig, path)


def plot_curves(results: Mapping, path: Path) -> Path | None:
    plt = _plt()
    objectives = [o for o in results["profile"]["curve_objectives"] if o in results.get("runs", {})]
    if not objectives:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    drawn = False
    for i, o in enumerate(objectives):
        for ax, metric in zip(axes, ("fid", "bpd")):
            drawn |= _band(ax, None, C.curve(results, o, metric), o, color=f"C{i}")
    if not drawn:
        plt.close(fig)
        return None
    for ax, label in zip(axes, ("FID (digits features)", "bits/dim (fast estimate)")):
        _log_ticks(ax, results["profile"]["curve_points"])
        ax.set_xlabel("training step (EMA weights)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[0].set_title("mean and 95% t-band over seeds")
    return _save(fig, path)


def plot_sweep(results: Mapping, path: Path) -> Path | None:
    plt = _plt()
    p = results["profile"]
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for i, (o, label) in enumerate(((FIXED, "fixed variance (eps-simple)"), (LEARNED, "learned (eps-hybrid)"))):
        for sampler, style in (("ddpm", "-"), ("ddim", "--")):
            per_seed = {}
            for k in p["sweep_steps"]:
                for seed, v in C.sweep_fid(results, o, sampler, k).items():
                    per_seed.setdefault(seed, ([], []))
                    per_seed[seed][0].append(k)
                    per_seed[seed][1].append(v)
            drawn |= _band(ax, None, per_seed, f"{label}, {sampler.upper()}", style, color=f"C{i}")
    if not drawn:
        plt.close(fig)
        return None
    _log_ticks(ax, p["sweep_steps"])
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID (digits features)")
    ax.set_title("FID vs sampling steps: mean, 95% t-band over seeds")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_importance(results: Mapping, path: Path) -> Path | None:
    plt = _plt()
    runs = results.get("runs", {})
    traces = {o: runs[o]["seeds"] for o in ("eps-kl-uniform", "eps-kl") if o in runs}
    if not traces:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (o, seeds) in enumerate(traces.items()):
        first = sorted(seeds, key=str)[0]
        losses = seeds[first].get("loss") or []
        if losses:
            ax.plot(range(1, len(losses) + 1), losses, lw=0.6, color=f"C{i}", label=f"{o} (seed {first})")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("per-step L_vlb estimate")
    ax.set_title("uniform vs importance-sampled t")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_memorization(results: Mapping, path: Path) -> Path | None:
    """Per objective: quantiles (5–95%) of the samples' nearest-training-digit distance beside the held-out digits'."""
    plt = _plt()
    objectives = [o for o in _objectives(results) if C.memorization(results, o, "pixel", "nn_train_median")]
    if not objectives:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, space in zip(axes, ("pixel", "feature")):
        held = None
        for i, o in enumerate(objectives):
            entries = [e for es in C._evals(results, o).values() for e in es if e.get("kind") == "mem"]
            q = [sum(e[space]["nn_train_quantiles"][j] for e in entries) / len(entries) for j in range(5)]
            held = entries[0][space]["heldout_nn_train_quantiles"]
            ax.plot([i, i], [q[0], q[4]], color="C0", lw=1)
            ax.plot([i, i], [q[1], q[3]], color="C0", lw=5)
            ax.plot(i, q[2], "wo", ms=3)
        if held is not None:
            ax.axhspan(held[1], held[3], color="C1", alpha=0.2, label="held-out digits, 25–75%")
            ax.axhline(held[2], color="C1", label="held-out digits, median")
        ax.set_xticks(range(len(objectives)), objectives, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(objectives) - 0.4)
        ax.set_ylabel(f"distance to nearest training digit ({space})")
        ax.legend(fontsize=7)
    axes[0].set_title("samples: 5/25/50/75/95% (mean over seeds)")
    return _save(fig, path)


def plot_closest_pairs(results: Mapping, path: Path) -> Path | None:
    import numpy as np

    plt = _plt()
    rows = []
    for o in _objectives(results):
        seeds = C._evals(results, o)
        for seed in sorted(seeds, key=str):
            mem = next((e for e in seeds[seed] if e.get("kind") == "mem"), None)
            if mem is not None:
                rows.append((f"{o} (seed {seed})", mem["closest_pairs"]))
                break
    if not rows:
        return None
    cols = max(len(pairs) for _, pairs in rows)
    fig, axes = plt.subplots(2 * len(rows), cols, figsize=(1.0 * cols, 2.1 * len(rows)), squeeze=False)
    for r, (label, pairs) in enumerate(rows):
        for c in range(cols):
            for k, key in enumerate(("sample", "train")):
                ax = axes[2 * r + k][c]
                ax.set_xticks([]), ax.set_yticks([])
                if c < len(pairs):
                    ax.imshow(np.array(pairs[c][key]).reshape(8, 8), cmap="gray", vmin=0, vmax=1)
                    if k == 0:
                        ax.set_title(f"{pairs[c]['distance']:.2f}", fontsize=7)
                else:
                    ax.axis("off")
        axes[2 * r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
        axes[2 * r + 1][0].set_ylabel("nearest train", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("closest samples to a training digit (top) and that digit (below); pixel distance above", fontsize=8)
    fig.subplots_adjust(left=0.22, right=0.98, top=0.9, bottom=0.02, wspace=0.1, hspace=0.4)
    return _save(fig, path, tight=False)


# ---------------------------------------------------------------------------------------------------- page
def plot_exact_likelihood(results: Mapping, path: Path) -> Path | None:
    """Per objective: the bound's and the exact likelihood's bits/dim (mean and 95% interval over seeds)."""
    gaps = C.bound_gaps(results)
    if not gaps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.4 * len(gaps) + 2, 3.6))
    for i, g in enumerate(gaps):
        for offset, key, label, color in ((-0.17, "bound", "variational bound", "tab:blue"),
                                          (0.17, "exact", "exact (probability-flow ODE)", "tab:orange")):  # fmt: skip
            summary = g[key]
            err = [[summary["mean"] - summary["lo"]], [summary["hi"] - summary["mean"]]] if summary["n"] > 1 else None
            ax.bar(i + offset, summary["mean"], width=0.34, color=color, yerr=err, capsize=3,
                   label=label if i == 0 else None)  # fmt: skip
    ax.set_xticks(range(len(gaps)), [g["objective"] for g in gaps], rotation=20)
    lows = [min(g["bound"]["mean"], g["exact"]["mean"]) for g in gaps]
    ax.set_ylim(min(lows) - 0.3, max(g["bound"]["mean"] for g in gaps) + 0.2)
    ax.set_ylabel("bits/dim (held-out digits)")
    ax.legend(fontsize=8)
    ax.set_title("The bound and the exact likelihood of each objective's final model")
    return _save(fig, path)


def _summary(values: Mapping[str, float]) -> dict:
    return stats.t_interval(list(values.values()))


def _rel(path: Path, page: Path) -> str:
    return Path(os.path.relpath(path, page.parent)).as_posix()


def _extra_seeds_note(p: Mapping) -> str:
    """The second stage of seeds of the sweep objectives, where the profile has one."""
    extra = p.get("sweep_extra_seeds") or ()
    if not extra:
        return ""
    return (f"{' and '.join(p['sweep_objectives'])} (the fixed- vs learned-variance comparison) also have the seeds "
            f"{', '.join(map(str, extra))}: a second stage, sized from the spread of the first three seeds, for the "
            "claims whose FID differences stayed within their noise (their intervals are over these "
            f"{len(p['seeds']) + len(extra)} seeds; choosing a second stage from the first makes them somewhat "
            "optimistic). ")  # fmt: skip


def _gap_summary(gaps: list[dict]) -> str:
    """What the bound-vs-exact table says, in words from its numbers: the best exact likelihood, the sign of the gaps
    and which objective's bound is nearest to and farthest from its exact likelihood."""
    best = min(gaps, key=lambda g: g["exact"]["mean"])
    nearest = min(gaps, key=lambda g: abs(g["gap"]["mean"]))
    farthest = max(gaps, key=lambda g: abs(g["gap"]["mean"]))
    text = f"Best exact likelihood: {best['objective']} ({fmt_interval(best['exact'])} bits/dim). "
    below = [g["gap"]["n"] > 1 and g["gap"]["hi"] < 0 for g in gaps]
    above = [g["gap"]["n"] > 1 and g["gap"]["lo"] > 0 for g in gaps]
    if all(below):
        text += ("For every objective the bound lies below the exact likelihood (each gap's interval is below 0): "
                 "the stochastic DDPM chain the bound scores models the held-out digits better than the deterministic "
                 "ODE model of the same denoiser, so here the bound does not approach the ODE's likelihood from "
                 "above. ")  # fmt: skip
    elif all(above):
        text += "For every objective the bound lies above the exact likelihood (each gap's interval is above 0). "
    else:
        text += "The gaps' signs differ by objective. "
    return text + (f"The bound is nearest to the exact likelihood for {nearest['objective']} (gap "
                   f"{fmt_interval(nearest['gap'])}) and farthest from it for {farthest['objective']} (gap "
                   f"{fmt_interval(farthest['gap'])}).")  # fmt: skip


def write_page(results: Mapping, fig_dir: Path, page: Path, notes: Mapping | None = None) -> Path:
    """Write the figures into ``fig_dir`` and the page to ``page``; returns ``page``."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    p = results["profile"]
    notes = dict(notes or {})
    objectives = _objectives(results)
    figures = {
        "final_fid": plot_finals(results, fig_dir / "final_fid.png", "fid"),
        "final_bpd": plot_finals(results, fig_dir / "final_bpd.png", "bpd"),
        "curves": plot_curves(results, fig_dir / "curves.png"),
        "sweep": plot_sweep(results, fig_dir / "sampling_steps.png"),
        "importance": plot_importance(results, fig_dir / "importance.png"),
        "memorization": plot_memorization(results, fig_dir / "memorization.png"),
        "pairs": plot_closest_pairs(results, fig_dir / "closest_pairs.png"),
        "exact": plot_exact_likelihood(results, fig_dir / "exact_likelihood.png"),
    }

    def image(key: str, alt: str) -> list[str]:
        return [f"![{alt}]({_rel(figures[key], page)})", ""] if figures.get(key) else ["(no data yet)", ""]

    all_claims = C.claims(results)
    mem_checks = C.memorization_checks(results)
    lines = [
        "# Study v2: DDPM objectives on digits, over seeds",
        "",
        f"Generated by `python -m benchmarks.study_objectives{'' if p['name'] == 'cpu' else ' --' + p['name']}` "
        f"(profile `{p['name']}`) from `results.json`; every number, figure and verdict below is computed from "
        "it, nothing is tuned or selected per objective." + SEE_ALSO.get(p["name"], ""),
        "",
        "**Setup.** scikit-learn's 8×8 digits: 1,437 training images, the fixed held-out split of 360. "
        f"Every objective is trained with the same UNet, {p['steps']} steps of batch {p['batch_size']} and the "
        f"seeds {', '.join(map(str, p['seeds']))} (a seed fixes initialisation, data order and noise; the sample "
        "noise of a seed is shared by all objectives, so comparisons are paired by seed). Intervals are 95% "
        "Student-t intervals over seeds (a difference: over the per-seed differences). "
        + _extra_seeds_note(p)
        + f"**FID**: {p['fid_samples']} generated images (respaced DDPM, {p['sampling_steps']} steps, EMA weights) "
        "against all 360 held-out digits, on the digits classifier's 128-d features (not comparable with Inception "
        "FIDs); its own sampling noise is the standard deviation over "
        f'{p["bootstrap"]} bootstrap resamples of the generated images ("FID noise"). **Bits/dim**: the fast '
        f"unbiased estimator (`bpd.estimate_bpd`, {p['num_bpd_timesteps']} network calls per image, a proposal "
        f"learned on 8 images) on {p['bpd_images']} held-out digits"
        + (", and the full bound over all T steps at the end" if p.get("full_bpd") else "")
        + ": the full bound costs N × T calls, too many for curves."
        + (
            f" **Exact likelihood**: the probability-flow ODE's bits/dim of each final model on {p['ode_images']} "
            f"held-out digits (`ode.ode_bpd`: RK45 at rtol = atol = 1e-5, Hutchinson divergence, "
            f"{p.get('ode_draws', 1)} dequantisation draw(s) per image)."
            if p.get("ode_images")
            else ""
        ),
        "",
    ]
    if notes.get("elapsed_s") is not None:
        lines += [f"The last session took {notes['elapsed_s'] / 60:.1f} min, reusing what the run cache held "
                  f"({notes.get('jobs', 1)} job(s), "
                  f"{notes.get('threads', 1)} thread(s) each, {notes.get('device', 'cpu')}).", ""]  # fmt: skip
    planned = [(o, s) for o in p["objectives"] for s in p["seeds"]]
    planned += [(o, s) for o in p.get("sweep_objectives", ()) if o in p["objectives"]
                for s in p.get("sweep_extra_seeds", ())]  # fmt: skip
    missing = [
        f"{o} seed {s}" for o, s in planned if str(s) not in results.get("runs", {}).get(o, {}).get("seeds", {})
    ]
    if missing:
        lines += [f"**Incomplete**: no results yet for {', '.join(missing)}.", ""]

    # final table
    lines += ["## Final models", "",
              "| objective | flags | seeds | bits/dim (fast) | FID | FID noise | classifier confidence | s/step |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for o in objectives:
        fid = _summary(C.final_fid(results, o))
        noise = _summary(C.fid_noise(results, o))
        seeds = results["runs"][o].get("seeds", {})
        confidence = _summary(
            {s: e["classifier_confidence"] for s, es in C._evals(results, o).items()
             for e in es if e.get("kind") == "fid" and e["step"] == p["steps"] and e["num_samples"] == p["fid_samples"]
             and e["num_steps"] == p["sampling_steps"] and e["sampler"] == "ddpm"}
        )  # fmt: skip
        speed = _summary({s: e.get("train", {}).get("seconds_per_step") for s, e in seeds.items()})
        full = _summary(C.bpd(results, o, full=True))
        bpd_text = fmt_interval(_summary(C.bpd(results, o)))
        if full["n"]:
            bpd_text += f"; full {fmt_interval(full)}"
        lines.append(
            f"| {o} | `{' '.join(results['runs'][o].get('flags', []))}` | {len(seeds)} | {bpd_text} | "
            f"{fmt_interval(fid, 2)} | {fmt(noise['mean'], 2)} | {fmt_interval(confidence)} | "
            f"{fmt(speed['mean'], 2)} |"
        )
    lines += ["", *image("final_bpd", "bits/dim"), *image("final_fid", "FID")]

    # exact likelihood
    gaps = C.bound_gaps(results)
    if gaps or p.get("ode_images"):
        lines += ["## The exact likelihood beside the bound", "",
                  "The variational bound is an upper bound of −log p(x) under the stochastic (DDPM) model; the "
                  "probability-flow ODE gives the exact −log p(x) of the deterministic model built from the same "
                  "denoiser, uniformly dequantised (itself an upper bound of the discrete likelihood, by Jensen). With "
                  "a perfect denoiser both models have the data's marginals, so the gap bound − exact measures how "
                  "loose the bound is; with a learned one the two models also differ, and the gap can have either "
                  "sign. Gap per seed (paired), 95% interval over seeds.", "",
                  "| objective | bound (bits/dim) | exact (bits/dim) | gap bound − exact |", "|---|---|---|---|"]  # fmt: skip
        for g in gaps:
            lines.append(f"| {g['objective']} | {fmt_interval(g['bound'])} | {fmt_interval(g['exact'])} | "
                         f"{fmt_interval(g['gap'])} |")  # fmt: skip
        if gaps:
            lines += ["", _gap_summary(gaps)]
        lines += ["", *image("exact", "bound and exact likelihood per objective")]

    # claims
    lines += ["## The papers' claims", "",
              "Each claim is an ordering; it **holds** when the 95% interval of the paired difference is entirely on "
              "the claimed side of 0, **does not hold** when it is entirely on the other side, and is **not resolved "
              "at this size** otherwise. For FID claims, \"FID noise\" is the FIDs' own sampling noise in the "
              "difference, √(σ_a² + σ_b²) with σ the bootstrap standard deviation of each FID (median over seeds): a "
              "difference below it is within that noise.", "",
              "| source | claim | estimate [95% CI] | seeds | FID noise | verdict |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for c in all_claims:
        est = c["estimate"]
        lines.append(
            f"| [{c['source']}]({c['url']}) | {c['statement']} | {fmt_interval(est)} {c['unit']} | "
            f"{est.get('n', 0)} | "
            f"{fmt(c.get('fid_noise'), 2) if 'fid_noise' in c and est.get('n') else ''} | **{c['verdict']}** |"
        )
    lines.append("")

    # curves
    lines += ["## Convergence curves", "",
              f"EMA weights at steps {', '.join(map(str, p['curve_points']))} of the same runs (one run per objective "
              "and seed, evaluated at its checkpoints; the learning-rate schedule is that of the whole run). "
              "Bits/dim is the fast estimator (its own 95% interval over images is in `results.json`).", "",
              *image("curves", "convergence curves")]  # fmt: skip
    header = "| objective | metric | " + " | ".join(f"step {s}" for s in p["curve_points"]) + " |"
    lines += [header, "|---|---|" + "---|" * len(p["curve_points"])]
    for o in p["curve_objectives"]:
        if o not in results.get("runs", {}):
            continue
        for metric, getter, digits in (("FID", C.final_fid, 2), ("bits/dim", C.bpd, 3)):
            cells = [fmt_interval(_summary(getter(results, o, s)), digits) for s in p["curve_points"]]
            lines.append(f"| {o} | {metric} | " + " | ".join(cells) + " |")
    flat = C.plateau(results)
    if flat:
        lines += ["", "**Plateau.** Training has reached its plateau where the mean FID of the last two curve points "
                  "differs by less than the FID noise of that difference and the mean bits/dim by less than 0.05:", "",
                  "| objective | steps | FID change | FID noise | bits/dim change | plateau |", "|---|---|---|---|---|---|"]  # fmt: skip
        for f in flat:
            lines.append(f"| {f['objective']} | {f['from_step']} → {f['to_step']} | {fmt_interval(f['fid_change'], 2)} "
                         f"| {fmt(f['fid_noise'], 2)} | {fmt_interval(f['bpd_change'])} | "
                         f"{'yes' if f['flat'] else '**no**'} |")  # fmt: skip
    reach = next(c for c in all_claims if c["id"] == "hang-reach")
    est = reach["estimate"]
    lines += ["", f"Steps for eps-min_snr5 to reach eps-simple's final FID (same seed), over {p['steps']}: "
              f"{fmt_interval(est)} over {est.get('n', 0)} seed(s); not reached within training: "
              f"{len(est.get('not_reached', []))} seed(s); already reached at the first point (upper bound): "
              f"{len(est.get('upper_bounds', []))} — **{reach['verdict']}**.", ""]  # fmt: skip

    # sweep
    lines += ["## Sampling steps: fixed vs learned variances", "",
              f"The final EMA weights of eps-simple (fixed σ²_t = β̃_t) and eps-hybrid (learned Σ, Nichol & Dhariwal "
              f"2021) sampled with diffusers' DDPMScheduler respaced to K steps and DDIMScheduler (η = 0), "
              f"{p['sweep_samples']} images per FID.", "", *image("sweep", "FID vs sampling steps")]  # fmt: skip
    lines += ["| objective | sampler | " + " | ".join(f"K={k}" for k in p["sweep_steps"]) + " |",
              "|---|---|" + "---|" * len(p["sweep_steps"])]  # fmt: skip
    for o in (FIXED, LEARNED):
        if o not in results.get("runs", {}):
            continue
        for sampler in ("ddpm", "ddim"):
            cells = [fmt_interval(_summary(C.sweep_fid(results, o, sampler, k)), 2) for k in p["sweep_steps"]]
            lines.append(f"| {o} | {sampler.upper()} | " + " | ".join(cells) + " |")
    lines.append("")

    # importance sampling
    lines += ["## Importance sampling for L_vlb", "",
              "Same weights, two samplers: for each L_vlb run's final model, the standard deviation over "
              f"{p.get('noise_batches', 64)} minibatches of batch {p['batch_size']} of one training step's loss "
              "estimate mean(w · L_t) with uniform t and with importance-sampled t (p_t ∝ √E[L_t²] from 10 losses "
              "at every t of this model, weights 1 / (T p_t): the same objective). During training the importance "
              f"sampler stays uniform until every t has 10 losses (at least {10 * 1000 // p['batch_size']} steps of "
              f"batch {p['batch_size']} with T = 1000), so the two runs differ only after that; the training-log "
              "σ is √(mean((l_{i+1} − l_i)²) / 2) over the second half of training.", "",
              *image("importance", "loss traces"),
              "| run | σ, uniform t | σ, importance t | σ ratio | training-log σ | final bits/dim |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for o in ("eps-kl-uniform", "eps-kl"):
        if o in results.get("runs", {}):
            noise = C.is_noise(results, o)
            uniform = _summary({s: e["uniform"]["std"] for s, e in noise.items()})
            importance = _summary({s: e["importance"]["std"] for s, e in noise.items()})
            ratio = _summary({s: e["std_ratio"] for s, e in noise.items()})
            lines.append(f"| {o} | {fmt_interval(uniform, 4)} | {fmt_interval(importance, 4)} | "
                         f"{fmt_interval(ratio)} | {fmt_interval(_summary(C.loss_noise(results, o)), 4)} | "
                         f"{fmt_interval(_summary(C.bpd(results, o)))} |")  # fmt: skip
    lines.append("")

    # memorization
    lines += ["## Memorization", "",
              "Distances to the nearest training digit of the final FID's samples, beside those of the held-out "
              "digits (pixel space in [0, 1], and the classifier's feature space). \"Closer to train\" is the "
              "fraction of samples nearer to a random training subset of 360 digits than to any of the 360 held-out digits: ½ "
              "for samples that copy nothing; \"fresh\" is the same fraction for other training digits (the "
              "finite-sample reference). A positive difference would be a sign of copying.", "",
              *image("memorization", "nearest-neighbour distances"), *image("pairs", "closest pairs"),
              "| objective | space | sample→train (median) | held-out→train (median) | closer to train | fresh | "
              "difference [95% CI] | copying? |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for check in mem_checks:
        o, space = check["objective"], check["space"]
        lines.append(
            f"| {o} | {space} | {fmt_interval(_summary(C.memorization(results, o, space, 'nn_train_median')))} | "
            f"{fmt(_summary(C.memorization(results, o, space, 'heldout_nn_train_median'))['mean'])} | "
            f"{fmt_interval(_summary(C.memorization(results, o, space, 'closer_to_train')))} | "
            f"{fmt(_summary(C.memorization(results, o, space, 'closer_to_train_fresh'))['mean'])} | "
            f"{fmt_interval(check['estimate'])} | {check['verdict']} |"
        )
    lines.append("")

    # cost
    lines += ["## Cost", "", *cost_lines(results), ""]
    lines += ["## Discussion (generated from the numbers above)", "", *discussion(all_claims, mem_checks), ""]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n")
    return page


def cost_lines(results: Mapping) -> list[str]:
    """Measured seconds per training step and per 1,000 image-evaluations of the network (sampling, bits/dim)."""
    step_times, per_eval, train_total, eval_total = [], [], 0.0, 0.0
    for run in results.get("runs", {}).values():
        for entry in run.get("seeds", {}).values():
            sps = entry.get("train", {}).get("seconds_per_step")
            if sps:
                step_times.append(sps)
            train_total += entry.get("train", {}).get("train_seconds") or 0.0
            for e in entry.get("evals", {}).values():
                eval_total += e.get("seconds") or 0.0
                if e.get("network_evaluations") and e.get("seconds") and e.get("kind") in ("fid", "bpd"):
                    per_eval.append(1000 * e["seconds"] / e["network_evaluations"])
    if not step_times and not per_eval:
        return ["(no timings yet)"]

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else None

    return [
        f"Median over the runs: {fmt(median(step_times), 3)} s per training step (batch "
        f"{results['profile']['batch_size']}; {len(step_times)} runs timed), {fmt(median(per_eval), 3)} s per 1,000 "
        f"image-evaluations of the network when sampling or estimating bits/dim ({len(per_eval)} measurements). "
        f"Compute recorded in the run cache for these results: {train_total / 60:.1f} min of training and "
        f"{eval_total / 60:.1f} min of measurements (summed over runs; each run in one process)."
    ]


def discussion(all_claims: list[dict], mem_checks: list[dict]) -> list[str]:
    """One sentence per claim from its estimate and verdict, then the counts, the FID-noise check and memorization."""
    out = []
    counts: dict[str, int] = {}
    for c in all_claims:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
        est = c["estimate"]
        if c["verdict"] == stats.NO_DATA:
            out.append(f"- **{c['source']}** — {c['statement']}: not run in this profile.")
            continue
        text = f"- **{c['source']}** — {c['statement']}: **{c['verdict']}** ({fmt_interval(est)} {c['unit']}"
        n = est.get("n", 0)
        text += f", {n} seed{'' if n == 1 else 's'})."
        if c.get("fid_noise") is not None and math.isfinite(est.get("mean", math.nan)):
            relation = "smaller" if c["fid_noise"] < abs(est["mean"]) else "not smaller"
            text += f" The FIDs' own noise ({fmt(c['fid_noise'], 2)}) is {relation} than the difference."
        if c["verdict"] == stats.UNRESOLVED and "seeds_to_resolve" in c:
            need = c["seeds_to_resolve"]
            text += (f" At the measured spread, {need} seeds would resolve it." if need else
                     " The difference is too small against the seeds' spread to resolve at any practical size.")  # fmt: skip
        if c["id"] == "hang-reach" and est.get("not_reached"):
            text += f" {len(est['not_reached'])} seed(s) did not reach the target within training."
        out.append(text)
    tested = sum(v for k, v in counts.items() if k != stats.NO_DATA)
    out += ["", f"Of {tested} claims with data: {counts.get(stats.HOLDS, 0)} hold, {counts.get(stats.FAILS, 0)} "
            f"do not hold, {counts.get(stats.UNRESOLVED, 0)} are not resolved at this size."]  # fmt: skip
    copying = [f"{m['objective']} ({m['space']})" for m in mem_checks if m["verdict"] == stats.HOLDS]
    clear = [m for m in mem_checks if m["verdict"] == stats.FAILS]
    if mem_checks:
        out.append(
            "Memorization: samples are closer to the training digits than fresh digits are for "
            + (", ".join(copying) if copying else "no objective")
            + f"; {len(clear)} of {len(mem_checks)} (objective, space) pairs are resolved as less close, the rest "
            "are within the seeds' noise."
        )
    return out
