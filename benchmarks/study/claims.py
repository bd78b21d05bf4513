"""The published claims the study tests, each stated as an ordering and judged from t-intervals over seeds
(:mod:`.stats`): ``holds`` / ``does not hold`` / ``not resolved at this size`` / ``not run``.

Everything here reads the results dictionary of :func:`.runner.collect`; nothing is tuned to an outcome.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from . import stats

HO = ("Ho et al. 2020", "https://arxiv.org/abs/2006.11239")
ND = ("Nichol & Dhariwal 2021", "https://arxiv.org/abs/2102.09672")
HANG = ("Hang et al. 2023", "https://arxiv.org/abs/2303.09556")


# ---------------------------------------------------------------------------------------------------- reading results
def _evals(results: Mapping, objective: str) -> dict[str, list[dict]]:
    """seed -> that seed's measurements of ``objective``."""
    seeds = results.get("runs", {}).get(objective, {}).get("seeds", {})
    return {seed: list(entry.get("evals", {}).values()) for seed, entry in seeds.items()}


def _pick(entries: list[dict], **fields) -> dict | None:
    for entry in entries:
        if all(entry.get(k) == v for k, v in fields.items()):
            return entry
    return None


def _final_fids(results: Mapping, objective: str, step: int | None) -> dict[str, dict]:
    """seed -> the FID measurement of the profile's FID setting (DDPM with ``sampling_steps``, ``fid_samples``
    images) at ``step`` (default: the last)."""
    p = results["profile"]
    step = p["steps"] if step is None else step
    found = {}
    for seed, entries in _evals(results, objective).items():
        e = _pick(entries, kind="fid", step=step, sampler="ddpm", num_steps=p["sampling_steps"],
                  num_samples=p["fid_samples"])  # fmt: skip
        if e is not None:
            found[seed] = e
    return found


def final_fid(results: Mapping, objective: str, step: int | None = None) -> dict[str, float]:
    """seed -> FID of the profile's FID setting at ``step`` (default: the last)."""
    return {seed: e["fid"] for seed, e in _final_fids(results, objective, step).items()}


def fid_noise(results: Mapping, objective: str, step: int | None = None) -> dict[str, float]:
    """seed -> bootstrap standard deviation of that FID."""
    return {seed: e["fid_bootstrap"]["std"] for seed, e in _final_fids(results, objective, step).items()}


def bpd(results: Mapping, objective: str, step: int | None = None, full: bool = False) -> dict[str, float]:
    """seed -> bits/dim at ``step`` (the fast estimate, or the full bound with ``full``)."""
    p = results["profile"]
    step = p["steps"] if step is None else step
    out = {}
    for seed, entries in _evals(results, objective).items():
        e = _pick(entries, kind="fullbpd" if full else "bpd", step=step)
        if e is not None:
            out[seed] = e["bpd"]
    return out


def exact_bpd(results: Mapping, objective: str) -> dict[str, float]:
    """seed -> the exact likelihood's bits/dim (probability-flow ODE) of the final model."""
    out = {}
    for seed, entries in _evals(results, objective).items():
        e = _pick(entries, kind="ode")
        if e is not None:
            out[seed] = e["bpd"]
    return out


def sweep_fid(results: Mapping, objective: str, sampler: str, num_steps: int) -> dict[str, float]:
    p = results["profile"]
    out = {}
    for seed, entries in _evals(results, objective).items():
        e = _pick(entries, kind="fid", step=p["steps"], sampler=sampler, num_steps=num_steps,
                  num_samples=p["sweep_samples"])  # fmt: skip
        if e is not None:
            out[seed] = e["fid"]
    return out


def curve(results: Mapping, objective: str, metric: str) -> dict[str, tuple[list[int], list[float]]]:
    """seed -> (curve points, values) of ``metric`` (``fid`` or ``bpd``) at the points measured."""
    p = results["profile"]
    getter = final_fid if metric == "fid" else bpd
    per_step = {step: getter(results, objective, step) for step in p["curve_points"]}
    seeds = sorted({s for values in per_step.values() for s in values}, key=str)
    out = {}
    for seed in seeds:
        points = [(step, values[seed]) for step, values in per_step.items() if seed in values]
        out[seed] = ([s for s, _ in points], [v for _, v in points])
    return out


def memorization(results: Mapping, objective: str, space: str, key: str) -> dict[str, float]:
    out = {}
    for seed, entries in _evals(results, objective).items():
        e = _pick(entries, kind="mem")
        if e is not None and space in e:
            out[seed] = e[space][key]
    return out


def loss_noise(results: Mapping, objective: str) -> dict[str, float]:
    """seed -> the per-step loss estimate's noise (:func:`.stats.step_noise`) over the second half of training."""
    out = {}
    for seed, entry in results.get("runs", {}).get(objective, {}).get("seeds", {}).items():
        losses = entry.get("loss") or []
        if len(losses) >= 6:
            out[seed] = stats.step_noise(losses[len(losses) // 2 :])
    return out


def is_noise(results: Mapping, objective: str) -> dict[str, dict]:
    """seed -> the loss-estimate noise measurement (uniform vs importance t, same weights) of ``objective``."""
    out = {}
    for seed, entries in _evals(results, objective).items():
        e = _pick(entries, kind="isnoise")
        if e is not None:
            out[seed] = e
    return out


def is_noise_log_ratio(results: Mapping, objective: str) -> dict[str, float]:
    return {s: math.log(e["std_ratio"]) for s, e in is_noise(results, objective).items() if e.get("std_ratio", 0) > 0}


# ---------------------------------------------------------------------------------------------------- claims
def _difference_claim(cid, source, statement, a, b, sign, unit, noise=None) -> dict:
    diff = stats.paired_difference(a, b)
    claim = {
        "id": cid,
        "source": source[0],
        "url": source[1],
        "statement": statement,
        "estimate": diff,
        "unit": unit,
        "verdict": stats.verdict(diff, sign),
        "expected_sign": sign,
    }
    if claim["verdict"] == stats.UNRESOLVED:  # what size would resolve it, from the measured spread
        claim["seeds_to_resolve"] = stats.seeds_to_resolve(diff)
    if noise is not None:  # the FID noise of the difference: √(σ_a² + σ_b²) per seed (bootstrap σ), its median
        noise_a, noise_b = noise
        values = sorted(math.hypot(noise_a[s], noise_b[s]) for s in diff["seeds"] if s in noise_a and s in noise_b)
        claim["fid_noise"] = values[len(values) // 2] if values else None
    return claim


def claims(results: Mapping) -> list[dict]:
    """Every claim with its estimate (a paired t-interval over seeds) and verdict."""
    p = results["profile"]
    out = []
    noise = lambda a, b, step=None: (fid_noise(results, a, step), fid_noise(results, b, step))  # noqa: E731

    out.append(
        _difference_claim(
            "ho-nll",
            HO,
            "Training on the true bound (ε, L_vlb, uniform t as in the paper) gives better bits/dim than L_simple "
            "(bpd[eps-kl-uniform] − bpd[eps-simple] < 0)",
            bpd(results, "eps-kl-uniform"),
            bpd(results, "eps-simple"),
            -1,
            "bits/dim",
        )
    )
    out.append(
        _difference_claim(
            "ho-fid",
            HO,
            "… and worse samples than L_simple (FID[eps-kl-uniform] − FID[eps-simple] > 0)",
            final_fid(results, "eps-kl-uniform"),
            final_fid(results, "eps-simple"),
            +1,
            "FID",
            noise("eps-kl-uniform", "eps-simple"),
        )
    )
    out.append(
        _difference_claim(
            "nd-hybrid-nll",
            ND,
            "L_hybrid with learned variances gives better bits/dim than L_simple "
            "(bpd[eps-hybrid] − bpd[eps-simple] < 0)",
            bpd(results, "eps-hybrid"),
            bpd(results, "eps-simple"),
            -1,
            "bits/dim",
        )
    )
    out.append(
        _difference_claim(
            "nd-vlb-best-nll",
            ND,
            "L_vlb (importance-sampled t) gives better bits/dim than L_hybrid (bpd[eps-kl] − bpd[eps-hybrid] < 0)",
            bpd(results, "eps-kl"),
            bpd(results, "eps-hybrid"),
            -1,
            "bits/dim",
        )
    )
    # the likelihood claims again, judged on the exact likelihood (the bound is only an upper bound of −log p)
    for cid, statement, a, b in (
        (
            "ho-nll-exact",
            "The true bound's model has the better exact likelihood (ODE bits/dim[eps-kl-uniform] − [eps-simple] < 0)",
            "eps-kl-uniform",
            "eps-simple",
        ),
        (
            "nd-hybrid-nll-exact",
            "L_hybrid's model has a better exact likelihood than L_simple's (ODE bits/dim"
            "[eps-hybrid] − [eps-simple] < 0)",
            "eps-hybrid",
            "eps-simple",
        ),
        (
            "nd-vlb-best-nll-exact",
            "L_vlb's model has a better exact likelihood than L_hybrid's (ODE bits/dim[eps-kl] − [eps-hybrid] < 0)",
            "eps-kl",
            "eps-hybrid",
        ),
        (
            "nd-is-bpd-exact",
            "Importance-sampled t gives a better exact likelihood (ODE bits/dim[eps-kl] − [eps-kl-uniform] < 0)",
            "eps-kl",
            "eps-kl-uniform",
        ),
    ):
        if any(exact_bpd(results, o) for o in (a, b)) or p.get("ode_images"):
            source = HO if cid.startswith("ho") else ND
            out.append(_difference_claim(cid, source, statement, exact_bpd(results, a), exact_bpd(results, b), -1,
                                         "bits/dim"))  # fmt: skip
    sweep_steps = sorted(p.get("sweep_steps", []))
    for k in sweep_steps[:-1]:
        out.append(
            _difference_claim(
                f"nd-few-steps-{k}",
                ND,
                f"With learned variances, samples keep their quality with few steps: at {k} "
                f"respaced DDPM steps FID[eps-hybrid] − FID[eps-simple] < 0",
                sweep_fid(results, "eps-hybrid", "ddpm", k),
                sweep_fid(results, "eps-simple", "ddpm", k),
                -1,
                "FID",
                (_sweep_noise(results, "eps-hybrid", k), _sweep_noise(results, "eps-simple", k)),
            )
        )
    if len(sweep_steps) >= 2:
        k, top = sweep_steps[0], sweep_steps[-1]
        lost = {
            o: stats_sub(sweep_fid(results, o, "ddpm", k), sweep_fid(results, o, "ddpm", top))
            for o in ("eps-hybrid", "eps-simple")
        }
        out.append(
            _difference_claim(
                "nd-few-steps-loss",
                ND,
                f"… the FID lost going from {top} to {k} DDPM steps is smaller with learned "
                f"variances ([FID({k}) − FID({top})] of eps-hybrid minus that of eps-simple < 0)",
                lost["eps-hybrid"],
                lost["eps-simple"],
                -1,
                "FID",
            )
        )
    out.append(
        _difference_claim(
            "nd-is-noise",
            ND,
            "Importance-sampled t makes the L_vlb loss estimate less noisy than uniform t, for the same weights "
            "(log σ[importance] − log σ[uniform] < 0 on eps-kl's final model)",
            is_noise_log_ratio(results, "eps-kl"),
            {seed: 0.0 for seed in is_noise_log_ratio(results, "eps-kl")},
            -1,
            "log ratio",
        )
    )
    out.append(
        _difference_claim(
            "nd-is-bpd",
            ND,
            "… and improves the final bits/dim (bpd[eps-kl] − bpd[eps-kl-uniform] < 0)",
            bpd(results, "eps-kl"),
            bpd(results, "eps-kl-uniform"),
            -1,
            "bits/dim",
        )
    )
    out.append(reach_claim(results))
    points = p["curve_points"]
    out.append(
        _difference_claim(
            "hang-early",
            HANG,
            f"min-SNR-5 has a lower FID than L_simple early in training (step {points[0]}: "
            "FID[eps-min_snr5] − FID[eps-simple] < 0)",
            final_fid(results, "eps-min_snr5", points[0]),
            final_fid(results, "eps-simple", points[0]),
            -1,
            "FID",
            noise("eps-min_snr5", "eps-simple", points[0]),
        )
    )
    return out  # fmt: skip


def _sweep_noise(results: Mapping, objective: str, k: int) -> dict[str, float]:
    """seed -> bootstrap standard deviation of the sweep's DDPM FID at ``k`` steps."""
    p = results["profile"]
    out = {}
    for seed, entries in _evals(results, objective).items():
        e = _pick(entries, kind="fid", step=p["steps"], sampler="ddpm", num_steps=k, num_samples=p["sweep_samples"])
        if e is not None:
            out[seed] = e["fid_bootstrap"]["std"]
    return out


def stats_sub(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
    """seed -> a[seed] − b[seed] for the seeds both have."""
    return {s: a[s] - b[s] for s in a if s in b}


def reach_claim(results: Mapping, objective: str = "eps-min_snr5", baseline: str = "eps-simple") -> dict:
    """Hang et al. 2023: the steps ``objective`` needs to reach the FID ``baseline`` has at the end of training
    (same seed), as a fraction of the training steps; the claim is that the ratio is below 1."""
    p = results["profile"]
    targets = final_fid(results, baseline)
    ratio = stats.reach_ratio(curve(results, objective, "fid"), targets, p["steps"])
    return {
        "id": "hang-reach",
        "source": HANG[0],
        "url": HANG[1],
        "statement": f"min-SNR-5 converges faster: it reaches L_simple's final FID (same seed) in fewer steps "
        f"(steps to reach / {p['steps']} < 1)",
        "estimate": ratio,
        "unit": "ratio",
        "verdict": stats.ratio_verdict(ratio),
        "expected_sign": -1,
    }


def bound_gaps(results: Mapping) -> list[dict]:
    """Per objective: the bound's bits/dim, the exact likelihood's, and the gap bound − exact (a paired t-interval
    over seeds): how loose each objective's bound is."""
    out = []
    for objective in results.get("runs", {}):
        bound, exact = bpd(results, objective), exact_bpd(results, objective)
        if not exact:
            continue
        out.append({"objective": objective, "bound": stats.t_interval(list(bound.values())),
                    "exact": stats.t_interval(list(exact.values())), "gap": stats.paired_difference(bound, exact)})  # fmt: skip
    return out


def plateau(results: Mapping, bpd_tolerance: float = 0.05) -> list[dict]:
    """Per curve objective, whether training has reached its plateau: the mean FID of the last two curve points
    differs by less than the FID's own noise (the median bootstrap σ of the difference), and the mean bits/dim by
    less than ``bpd_tolerance``."""
    p = results["profile"]
    points = p["curve_points"]
    if len(points) < 2:
        return []
    before, last = points[-2], points[-1]
    out = []
    for objective in p.get("curve_objectives", []):
        fid_change = stats.paired_difference(
            final_fid(results, objective, last), final_fid(results, objective, before)
        )
        bpd_change = stats.paired_difference(bpd(results, objective, last), bpd(results, objective, before))
        noise_last, noise_before = fid_noise(results, objective, last), fid_noise(results, objective, before)
        noises = sorted(math.hypot(noise_last[s], noise_before[s]) for s in noise_last if s in noise_before)
        noise = noises[len(noises) // 2] if noises else math.nan
        if fid_change["n"] == 0 and bpd_change["n"] == 0:
            continue
        flat = abs(fid_change["mean"]) < noise and abs(bpd_change["mean"]) < bpd_tolerance
        out.append({"objective": objective, "from_step": before, "to_step": last, "fid_change": fid_change,
                    "fid_noise": noise, "bpd_change": bpd_change, "flat": bool(flat)})  # fmt: skip
    return out


def memorization_checks(results: Mapping) -> list[dict]:
    """Per objective: are samples nearer to the training digits than fresh digits are? (closer-to-train fraction
    minus the same fraction for fresh training digits, > 0 would be a sign of copying)."""
    out = []
    for objective in results.get("runs", {}):
        for space in ("pixel", "feature"):
            a = memorization(results, objective, space, "closer_to_train")
            b = memorization(results, objective, space, "closer_to_train_fresh")
            diff = stats.paired_difference(a, b)
            out.append({"objective": objective, "space": space, "estimate": diff, "verdict": stats.verdict(diff, +1)})
    return out
