"""Statistics over seeds: t-intervals, paired differences, verdicts, the "steps to reach" ratio and loss noise.

Every interval is a two-sided Student-t interval over independent training seeds,
``mean ± t_{1−α/2, n−1} · s / √n`` (s the sample standard deviation), so it covers everything that changes
with the seed: initialisation, data order, t and ε draws, and the sampling noise of each seed's evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

HOLDS, FAILS, UNRESOLVED, NO_DATA = "holds", "does not hold", "not resolved at this size", "not run"


def t_quantile(confidence: float, dof: int) -> float:
    """The ``(1 + confidence) / 2`` quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf((1 + confidence) / 2, dof))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean and Student-t interval of ``values`` (one per seed); non-finite values are dropped.

    Returns:
        `dict` with ``mean``, ``lo``, ``hi``, ``n``, ``std`` (sample standard deviation) and ``values``; with one
        value the interval is ``(-inf, inf)``, with none every number is ``nan``.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "std": math.nan, "values": []}
    mean = sum(finite) / n
    if n == 1:
        return {"mean": mean, "lo": -math.inf, "hi": math.inf, "n": 1, "std": math.nan, "values": finite}
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "std": std, "values": finite}


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], confidence: float = 0.95) -> dict:
    """t-interval of ``a[s] − b[s]`` over the seeds ``s`` both have (same seed: same initialisation and data order,
    so the pairing removes what the two runs share); ``seeds`` lists them."""
    seeds = sorted(set(a) & set(b), key=str)
    pairs = [(a[s], b[s]) for s in seeds if _finite(a[s]) and _finite(b[s])]
    out = t_interval([x - y for x, y in pairs], confidence)
    out["seeds"] = [s for s in seeds if _finite(a[s]) and _finite(b[s])]
    return out


def verdict(interval: Mapping, expected_sign: int) -> str:
    """Whether the claim "the difference has sign ``expected_sign``" (−1: negative, +1: positive) holds.

    ``holds`` when the whole interval is on the claimed side of 0, ``does not hold`` when it is wholly on the other
    side, ``not resolved at this size`` when it contains 0 (or has fewer than 2 seeds), ``not run`` without data.
    """
    if expected_sign not in (-1, 1):
        raise ValueError(f"expected_sign must be -1 or 1, got {expected_sign!r}")
    if interval.get("n", 0) == 0 or not _finite(interval.get("mean")):
        return NO_DATA
    lo, hi = interval["lo"], interval["hi"]
    if expected_sign < 0:
        lo, hi = -hi, -lo
    if lo > 0:
        return HOLDS
    if hi < 0:
        return FAILS
    return UNRESOLVED


def seeds_to_resolve(interval: Mapping, confidence: float = 0.95, most: int = 1000) -> int | None:
    """The number of seeds at which a paired difference with the measured mean and seed-to-seed spread would have
    its t-interval clear of 0: the smallest n with ``t_{(1+c)/2, n−1} · s / √n < |mean|`` (``None`` without a
    spread or beyond ``most`` seeds: not resolvable at any size worth running)."""
    mean, std = interval.get("mean"), interval.get("std")
    if not (_finite(mean) and _finite(std)) or std <= 0 or mean == 0:
        return None
    for n in range(2, most + 1):
        if t_quantile(confidence, n - 1) * std / math.sqrt(n) < abs(mean):
            return n
    return None


def steps_to_reach(steps: Sequence[int], values: Sequence[float], target: float) -> tuple[float | None, str]:
    """The first training step at which a decreasing-is-better curve reaches ``target``, interpolated linearly
    between the two curve points around the first crossing.

    Returns:
        ``(step, how)``: ``how`` is ``"interpolated"``, ``"at_or_before"`` (already at or below ``target`` at the
        first point: ``step`` is an upper bound) or ``"not_reached"`` (``step`` is `None`).
    """
    points = sorted((s, v) for s, v in zip(steps, values) if _finite(v))
    if not points:
        return None, "not_reached"
    if points[0][1] <= target:
        return float(points[0][0]), "at_or_before"
    for (s0, v0), (s1, v1) in zip(points[:-1], points[1:]):
        if v1 <= target:
            return s0 + (s1 - s0) * (v0 - target) / (v0 - v1), "interpolated"
    return None, "not_reached"


def reach_ratio(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    targets: Mapping[str, float],
    final_step: int,
    confidence: float = 0.95,
) -> dict:
    """Per seed, (steps the curve needs to reach that seed's ``targets[seed]``) / ``final_step``, and the t-interval
    of those ratios. A seed that never reaches its target gives no ratio (counted in ``not_reached``; with any such
    seed the claim ratio < 1 cannot hold and the interval is over the others only); ``upper_bounds`` counts seeds
    already at the target at the first curve point (their ratio is an upper bound)."""
    ratios, not_reached, upper_bounds = {}, [], []
    for seed, (steps, values) in curves.items():
        if seed not in targets or not _finite(targets[seed]):
            continue
        step, how = steps_to_reach(steps, values, targets[seed])
        if step is None:
            not_reached.append(seed)
            continue
        ratios[seed] = step / final_step
        if how == "at_or_before":
            upper_bounds.append(seed)
    out = t_interval(list(ratios.values()), confidence)
    out.update(per_seed=ratios, not_reached=not_reached, upper_bounds=upper_bounds)
    return out


def ratio_verdict(ratio: Mapping, below: float = 1.0) -> str:
    """ "The ratio is below ``below``": ``holds`` when every seed reached the target and the interval is below it,
    ``does not hold`` when no seed reached it within training or the interval is above it, else not resolved."""
    n_total = ratio.get("n", 0) + len(ratio.get("not_reached", []))
    if n_total == 0:
        return NO_DATA
    if ratio.get("n", 0) == 0:
        return FAILS
    if ratio["hi"] < below and not ratio["not_reached"]:
        return HOLDS
    if ratio["lo"] > below:
        return FAILS
    return UNRESOLVED


def step_noise(losses: Sequence[float]) -> float:
    """The standard deviation of one step's loss estimate around a slowly moving mean, from successive differences:
    ``σ² ≈ mean((l_{i+1} − l_i)²) / 2`` (the differences cancel the trend to first order; independent draws from
    step to step). ``nan`` with fewer than 3 losses."""
    finite = [float(v) for v in losses if _finite(v)]
    if len(finite) < 3:
        return math.nan
    diffs = [(b - a) ** 2 for a, b in zip(finite[:-1], finite[1:])]
    return math.sqrt(sum(diffs) / len(diffs) / 2)


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
