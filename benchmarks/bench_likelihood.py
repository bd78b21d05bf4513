#!/usr/bin/env python
"""Bits/dim three ways on a trained pipeline: the full bound, the fast bound, and the exact likelihood by the ODE.

    python -m benchmarks.bench_likelihood MODEL_DIR [--images 360] [--ode_draws 2] [--out results_likelihood.json]

On the held-out digits (their labels for a class-conditional model: −log p(x | y)): the full variational bound
(T network calls per image), the fast estimator (``--num_bpd_timesteps`` calls and a pilot), and the
probability-flow ODE (``ddpm_objectives_hf.ode.ode_bpd``, RK45 at ``--rtol``/``--atol``, Hutchinson divergence,
``--ode_draws`` dequantisation draws), each with its 95% interval over images, its network calls and seconds per
image; the paired gap bound − ODE; the ODE estimator's own noise (dequantisation and probes). Then, on the first
``--sweep_images`` images with the same dequantisation and probes, the ODE at other tolerances (the solver's own
error) and with the exact divergence (the probe's error).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ddpm_objectives_hf.bpd import estimate_bpd, full_bpd, learn_proposal, mean_with_interval
from ddpm_objectives_hf.data import InMemoryImageData, digits_dataset
from ddpm_objectives_hf.ode import ode_bpd
from ddpm_objectives_hf.training.pipelines import load_for_evaluation


def interval(values: torch.Tensor) -> dict:
    """Mean and its normal 95% interval over images (JSON-ready)."""
    out = mean_with_interval(values)
    return {**out, "ci95": list(out["ci95"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--images", type=int, default=360, help="held-out digits (at most 360)")
    parser.add_argument("--num_bpd_timesteps", type=int, default=18)
    parser.add_argument("--pilot_images", type=int, default=16)
    parser.add_argument("--ode_draws", type=int, default=2)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--sweep_images", type=int, default=32)
    parser.add_argument("--sweep_tolerances", type=float, nargs="*", default=[1e-3, 1e-4, 1e-6])
    parser.add_argument("--exact_images", type=int, default=8, help="images for the exact divergence (0: skip)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args()

    unet, scheduler, objective = load_for_evaluation(args.model_dir)
    T = scheduler.config.num_train_timesteps
    data = digits_dataset("test").select(range(args.images))
    x0 = InMemoryImageData.from_dataset(data, "image", unet.config.sample_size, unet.config.in_channels).batch(
        torch.arange(args.images)
    )
    conditional = objective.get("num_classes") is not None
    cond = {"class_labels": torch.tensor(data["label"])} if conditional else None
    g = torch.Generator().manual_seed(args.seed)
    rows = {}

    start = time.perf_counter()
    full = full_bpd(unet, scheduler, x0, batch_size=args.batch_size, generator=g, model_kwargs=cond)["total"]
    rows["full bound"] = {
        **interval(full),
        "calls_per_image": T,
        "seconds_per_image": (time.perf_counter() - start) / len(x0),
    }

    start = time.perf_counter()
    pilot = slice(0, args.pilot_images)
    pilot_cond = None if cond is None else {"class_labels": cond["class_labels"][pilot]}
    proposal, pilot_calls = learn_proposal(unet, scheduler, x0[pilot], generator=g, model_kwargs=pilot_cond)
    fast = estimate_bpd(
        unet, scheduler, x0, num_timesteps=args.num_bpd_timesteps, proposal=proposal, batch_size=args.batch_size,
        generator=g, model_kwargs=cond,
    )  # fmt: skip
    rows["fast bound"] = {
        **interval(fast["per_image"]),
        "calls_per_image": args.num_bpd_timesteps + pilot_calls / len(x0),
        "seconds_per_image": (time.perf_counter() - start) / len(x0),
    }

    ode = ode_bpd(
        unet, scheduler, x0, draws=args.ode_draws, rtol=args.rtol, atol=args.atol, batch_size=args.batch_size,
        generator=g, model_kwargs=cond,
    )  # fmt: skip
    rows["ODE"] = {
        **interval(ode["per_image"]),
        "calls_per_image": ode["evaluations_per_image"] * args.ode_draws,
        "seconds_per_image": ode["seconds_per_image"] * args.ode_draws,
        "estimator_stderr": ode["estimator_stderr"],
        "rtol": args.rtol,
        "atol": args.atol,
        "draws": args.ode_draws,
    }
    gaps = {
        name: interval(values - ode["per_image"]) for name, values in (("full", full), ("fast", fast["per_image"]))
    }

    # the solver's and the probe's own errors, on the same dequantisation and probes
    sweep = []
    subset, sub_cond = (
        x0[: args.sweep_images],
        None if cond is None else {"class_labels": cond["class_labels"][: args.sweep_images]},
    )
    for tol in [args.rtol, *args.sweep_tolerances]:
        for divergence in ("hutchinson", "exact"):
            n = args.sweep_images if divergence == "hutchinson" else args.exact_images
            if n == 0 or (divergence == "exact" and tol != args.rtol):
                continue
            result = ode_bpd(
                unet, scheduler, subset[:n], rtol=tol, atol=tol, divergence=divergence, batch_size=args.batch_size,
                generator=torch.Generator().manual_seed(args.seed + 1),
                model_kwargs=None if sub_cond is None else {"class_labels": sub_cond["class_labels"][:n]},
            )  # fmt: skip
            sweep.append(
                {
                    "tolerance": tol,
                    "divergence": divergence,
                    "images": n,
                    "per_image": result["per_image"].tolist(),
                    "bpd": result["bpd"],
                    "calls_per_image": result["evaluations_per_image"],
                    "seconds_per_image": result["seconds_per_image"],
                }
            )
    tightest = min(args.sweep_tolerances + [args.rtol])
    reference = next((s for s in sweep if s["tolerance"] == tightest and s["divergence"] == "hutchinson"), None)
    for s in sweep:
        diffs = [abs(a - b) for a, b in zip(s["per_image"], reference["per_image"])]
        s["max_abs_change_vs_tightest"] = max(diffs)

    print(f"model: {args.model_dir} ({'−log p(x | y)' if conditional else '−log p(x)'}), {len(x0)} held-out digits")
    print("| bits/dim | value [95% CI] | network calls per image | seconds per image |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['bpd']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['calls_per_image']:.0f} | "
            f"{r['seconds_per_image']:.3f} |"
        )
    for name, gap in gaps.items():
        print(f"gap {name} bound − ODE: {gap['bpd']:.3f} [{gap['ci95'][0]:.3f}, {gap['ci95'][1]:.3f}]")
    print(
        f"ODE estimator noise (dequantisation + probes, {args.ode_draws} draws): {rows['ODE']['estimator_stderr']:.4f}"
    )
    print("| tolerance | divergence | images | bits/dim | max change vs tightest | calls per image | s per image |")
    print("|---|---|---|---|---|---|---|")
    for s in sweep:
        print(
            f"| {s['tolerance']:g} | {s['divergence']} | {s['images']} | {s['bpd']:.4f} | "
            f"{s['max_abs_change_vs_tightest']:.4f} | {s['calls_per_image']:.0f} | {s['seconds_per_image']:.3f} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "model_dir": args.model_dir,
                    "conditional": conditional,
                    "images": len(x0),
                    "rows": rows,
                    "gaps": gaps,
                    "sweep": sweep,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
