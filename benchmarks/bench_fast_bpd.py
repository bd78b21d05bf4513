#!/usr/bin/env python
"""Fast bits/dim estimator vs the full variational bound on a trained pipeline.

    python -m benchmarks.bench_fast_bpd MODEL_DIR [--images 360] [--configs 18 18:nocv 10 40] [--repeats 10]

Computes the full bound (N × T network calls, one noise draw per t, as improved-diffusion's ``calc_bpd_loop``) once,
and a reference with its Monte Carlo noise averaged away (``--reference_draws`` draws at the small t where that noise
sits); then the fast estimator ``--repeats`` times for each K (``K:nocv`` without control variates), and prints
|fast − reference|, the spread over repeats, how often the 95% interval covers the full value, and the saving in
network calls (pilot included). Target (issue): within 0.01 bits/dim with ≥ 50× fewer calls (≤ 20 per image for T = 1000),
the interval covering the full value.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from ddpm_objectives_hf import variational_bound
from ddpm_objectives_hf.bpd import estimate_bpd, full_bpd, learn_proposal
from ddpm_objectives_hf.data import InMemoryImageData, digits_dataset
from ddpm_objectives_hf.training.pipelines import load_for_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--images", type=int, default=360, help="held-out digits (at most 360)")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["18", "18:nocv", "10", "40"],
        help="K network calls per image (K:nocv: without control variates)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--reference_draws", type=int, default=16)
    parser.add_argument("--reference_small_t", type=int, default=20)
    parser.add_argument("--pilot_images", type=int, default=16)
    parser.add_argument("--pilot_grid", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args()

    unet, scheduler, _ = load_for_evaluation(args.model_dir)
    T = scheduler.config.num_train_timesteps
    data = digits_dataset("test").select(range(args.images))
    images = InMemoryImageData.from_dataset(data, "image", unet.config.sample_size, unet.config.in_channels)
    x0 = images.batch(torch.arange(len(images)))
    g = torch.Generator().manual_seed(args.seed)
    full = full_bpd(unet, scheduler, x0, generator=g)
    full_value = float(full["total"].double().mean())
    # the full bound's own Monte Carlo noise sits at small t: average `reference_draws` draws there
    small_t = torch.arange(args.reference_small_t)
    draws = torch.stack(
        [
            variational_bound(unet, scheduler, x0, timesteps=small_t, generator=g, progress=False)["terms"].double()
            for _ in range(args.reference_draws)
        ]
    )
    full_noise = float((draws.var(0).mean(0).sum() / len(x0)).sqrt())
    terms = full["terms"].double().clone()
    terms[:, : args.reference_small_t] = draws.mean(0)
    reference = float((full["prior"].double() + terms.sum(1)).mean())
    rows = []
    for config in args.configs:
        k, _, option = config.partition(":")
        k, cv = int(k), option != "nocv"
        runs = []
        for _ in range(args.repeats):  # the pilot is drawn anew each time: its own noise is part of the spread
            proposal, pilot_calls = learn_proposal(
                unet, scheduler, x0[: args.pilot_images], grid_size=args.pilot_grid, generator=g
            )
            runs.append(
                estimate_bpd(unet, scheduler, x0, num_timesteps=k, proposal=proposal, control_variates=cv, generator=g)
            )
        values = [r["bpd"] for r in runs]
        calls = k * len(x0) + pilot_calls
        rows.append(
            {
                "K": k,
                "control_variates": cv,
                "mean_abs_error": statistics.mean(abs(v - reference) for v in values),
                "max_abs_error": max(abs(v - reference) for v in values),
                "within_0.01": sum(abs(v - reference) <= 0.01 for v in values),
                "spread_over_repeats": statistics.stdev(values) if len(values) > 1 else float("nan"),
                "ci_covers": sum(r["ci95"][0] <= full_value <= r["ci95"][1] for r in runs),
                "repeats": len(runs),
                "calls_per_image": calls / len(x0),
                "saving": len(x0) * T / calls,
            }
        )
    print(f"full bound: {full_value:.4f} bits/dim over {len(x0)} images ({len(x0) * T} network calls)")
    print(f"its own Monte Carlo std (t < {args.reference_small_t}, one draw per t): {full_noise:.4f} bits/dim")
    print(f"reference (full bound, {args.reference_draws} draws at t < {args.reference_small_t}): {reference:.4f}")
    print(
        "| K | control variates | calls per image | fewer calls | mean abs error | max abs error | within 0.01 | "
        "spread over repeats | CI covers |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['K']} | {'yes' if r['control_variates'] else 'no'} | {r['calls_per_image']:.1f} | "
            f"{r['saving']:.0f}× | {r['mean_abs_error']:.4f} | {r['max_abs_error']:.4f} | "
            f"{r['within_0.01']}/{r['repeats']} | {r['spread_over_repeats']:.4f} | {r['ci_covers']}/{r['repeats']} |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "full_bpd": full_value,
                    "full_mc_std": full_noise,
                    "reference_bpd": reference,
                    "reference_draws": args.reference_draws,
                    "reference_small_t": args.reference_small_t,
                    "images": len(x0),
                    "pilot_images": args.pilot_images,
                    "rows": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
