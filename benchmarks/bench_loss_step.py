#!/usr/bin/env python
"""Cost of the DDPM objectives in one training step, against bare ``F.mse_loss`` on ε in the same run.

One step = draw t and ε, ``x_t = add_noise(x0, ε, t)``, ``model(x_t, t)``, the loss, ``backward()``, ``zero_grad``.

* baseline: ``F.mse_loss(model(x_t, t).sample, ε)`` with diffusers' ``DDPMScheduler``;
* candidate: ``ddpm_objectives_hf.diffusion_loss(model, x0, scheduler)`` with a ``DDPMObjectiveScheduler`` for one
  target × loss type × weighting.

Both run on the same UNet (``out_channels`` doubled for ``learned_range``/hybrid; the baseline then regresses only the
first C channels on ε), interleaved round by round (ABAB…, the order alternating every round) so that drift of a
shared machine hits both alike. Reported per case: median time per step of each, the median of the per-round ratios
(candidate / baseline) and, much less noisy, the same steps without the UNet (its output replaced by a fixed tensor:
t, ε, ``add_noise``, the loss and its backward, also interleaved) turned into a step ratio:
``ratio* = 1 + (loss_candidate − loss_baseline) / step_baseline``.

    python -m benchmarks.bench_loss_step --threads 1 --out results.json   # --threads 1 on a shared CPU
    python -m benchmarks.bench_loss_step --quick               # smoke check: 3 cases, few rounds
    python -m benchmarks.bench_loss_step --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

TARGETS = ("epsilon", "sample", "v_prediction", "mean")
MSE_WEIGHTINGS = ("simple", "min_snr", "p2", "vlb", "edm", "truncated_snr")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TARGET_RATIO = {"mse": 1.02, "kl": 1.05, "hybrid": 1.05}


def all_cases() -> list[dict]:
    cases = [{"loss_type": "mse", "prediction_type": p, "loss_weighting": w} for p in TARGETS for w in MSE_WEIGHTINGS]
    cases += [{"loss_type": "kl", "prediction_type": p, "loss_weighting": "simple"} for p in TARGETS]
    cases += [{"loss_type": "hybrid", "prediction_type": p, "loss_weighting": "simple"} for p in TARGETS]
    return cases


QUICK_CASES = [
    {"loss_type": "mse", "prediction_type": "epsilon", "loss_weighting": "simple"},
    {"loss_type": "kl", "prediction_type": "epsilon", "loss_weighting": "simple"},
    {"loss_type": "hybrid", "prediction_type": "v_prediction", "loss_weighting": "min_snr"},
]


def case_name(case: dict) -> str:
    return f"{case['loss_type']}/{case['prediction_type']}/{case['loss_weighting']}"


def build_unet(args, out_channels: int):
    from diffusers import UNet2DModel

    n = len(args.block_out_channels)
    # the layout of scripts/train.py: self-attention in the second down block (and its up block)
    down = tuple("AttnDownBlock2D" if i == 1 else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if n - 1 - i == 1 else "UpBlock2D" for i in range(n))
    model = UNet2DModel(
        sample_size=args.resolution,
        in_channels=args.channels,
        out_channels=out_channels,
        block_out_channels=tuple(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=8,
        time_embedding_type="positional",
    )
    dtype = DTYPES[args.dtype]
    model = model.to(device=args.device) if dtype == torch.float32 else model.to(device=args.device, dtype=dtype)
    return model.train()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_steps(model, x0, scheduler, baseline_scheduler, channels: int):
    """``(baseline_step, candidate_step)``: each one full training step without the optimizer."""
    from ddpm_objectives_hf import diffusion_loss

    T = baseline_scheduler.config.num_train_timesteps

    def baseline_step():
        t = torch.randint(0, T, (x0.shape[0],), device=x0.device)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        xt = baseline_scheduler.add_noise(x0, noise, t)
        out = model(xt, t).sample[:, :channels]
        loss = F.mse_loss(out.float(), noise.float())
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    def candidate_step():
        loss = diffusion_loss(model, x0, scheduler).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss

    return baseline_step, candidate_step


def make_loss_only(x0, scheduler, baseline_scheduler, out_channels: int, channels: int):
    """The steps without the UNet: the "model" returns a fixed output (a leaf with ``requires_grad``), so what is
    timed is drawing t and ε, ``add_noise``, the loss and its backward, for baseline and candidate."""
    from ddpm_objectives_hf import diffusion_loss

    n = x0.shape[0]
    T = baseline_scheduler.config.num_train_timesteps
    output = torch.randn((n, out_channels, *x0.shape[2:]), device=x0.device, dtype=x0.dtype, requires_grad=True)

    def fixed_model(xt, t):
        return output

    def baseline_loss():
        t = torch.randint(0, T, (n,), device=x0.device)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        xt = baseline_scheduler.add_noise(x0, noise, t)
        F.mse_loss(fixed_model(xt, t)[:, :channels].float(), noise.float()).backward()
        output.grad = None

    def candidate_loss():
        diffusion_loss(fixed_model, x0, scheduler).loss.backward()
        output.grad = None

    return baseline_loss, candidate_loss


def interleave(fa, fb, rounds: int, reps: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Per-call seconds of ``fa`` and ``fb``: ``rounds`` rounds of ``reps`` calls each, the order alternating."""
    ta, tb = [], []
    for r in range(rounds):
        order = ((fa, ta), (fb, tb)) if r % 2 == 0 else ((fb, tb), (fa, ta))
        for f, out in order:
            _sync(device)
            start = time.perf_counter()
            for _ in range(reps):
                f()
            _sync(device)
            out.append((time.perf_counter() - start) / reps)
    return ta, tb


def run_case(case: dict, args, models: dict, x0: torch.Tensor) -> dict:
    from diffusers import DDPMScheduler

    from ddpm_objectives_hf import DDPMObjectiveScheduler

    learned = case["loss_type"] == "hybrid"
    scheduler = DDPMObjectiveScheduler(
        prediction_type=case["prediction_type"],
        loss_type=case["loss_type"],
        loss_weighting=case["loss_weighting"],
        variance_type="learned_range" if learned else "fixed_small",
    )
    baseline_scheduler = DDPMScheduler()
    out_channels = 2 * args.channels if learned else args.channels
    model = models[out_channels]
    base_step, cand_step = make_steps(model, x0, scheduler, baseline_scheduler, args.channels)
    for _ in range(args.warmup):
        base_step(), cand_step()
    tb, tc = interleave(base_step, cand_step, args.rounds, args.steps_per_round, x0.device)
    ratios = [c / b for b, c in zip(tb, tc)]

    base_loss, cand_loss = make_loss_only(x0, scheduler, baseline_scheduler, out_channels, args.channels)
    for _ in range(3):
        base_loss(), cand_loss()
    lb, lc = interleave(base_loss, cand_loss, args.loss_rounds, args.loss_reps, x0.device)
    step_base = statistics.median(tb)
    loss_delta = statistics.median(lc) - statistics.median(lb)
    return {
        "case": case_name(case),
        **case,
        "baseline_ms": 1e3 * step_base,
        "candidate_ms": 1e3 * statistics.median(tc),
        "ratio": statistics.median(ratios),
        "ratio_of_medians": statistics.median(tc) / step_base,
        "loss_baseline_ms": 1e3 * statistics.median(lb),
        "loss_candidate_ms": 1e3 * statistics.median(lc),
        "loss_delta_ms": 1e3 * loss_delta,
        "ratio_from_loss": 1.0 + loss_delta / step_base,
        "target": TARGET_RATIO[case["loss_type"]],
    }


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'case':34s} {'base ms':>8s} {'cand ms':>8s} {'ratio':>6s} "
        f"{'loss base':>9s} {'loss cand':>9s} {'Δ ms':>6s} {'ratio*':>6s} {'target':>6s}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = "" if min(r["ratio"], r["ratio_from_loss"]) <= r["target"] else "  !"
        print(
            f"{r['case']:34s} {r['baseline_ms']:8.1f} {r['candidate_ms']:8.1f} {r['ratio']:6.3f} "
            f"{r['loss_baseline_ms']:9.3f} {r['loss_candidate_ms']:9.3f} {r['loss_delta_ms']:6.2f} "
            f"{r['ratio_from_loss']:6.3f} {r['target']:6.2f}{ok}"
        )
    print(
        "ratio: median over rounds of (candidate step / baseline step); ratio*: 1 + (loss-only candidate − "
        "baseline) / baseline step.\n"
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64, 64])
    p.add_argument("--layers_per_block", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds of baseline and candidate per case")
    p.add_argument("--steps_per_round", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each per case")
    p.add_argument("--loss_rounds", type=int, default=30, help="interleaved rounds of the loss-only timing")
    p.add_argument("--loss_reps", type=int, default=10)
    p.add_argument(
        "--cases", nargs="*", default=None, help="subset as loss_type/target/weighting, e.g. kl/mean/simple"
    )
    p.add_argument("--quick", action="store_true", help="3 cases, 4 rounds: a smoke check")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds, args.loss_rounds, args.warmup = min(args.rounds, 4), min(args.loss_rounds, 6), 1
    cases = QUICK_CASES if args.quick else all_cases()
    if args.cases:
        wanted = set(args.cases)
        cases = [c for c in all_cases() + QUICK_CASES if case_name(c) in wanted]
        cases = list({case_name(c): c for c in cases}.values())
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    # x0 on the 8-bit grid of [-1, 1] (the decoder NLL of the kl/hybrid losses expects it)
    x0 = torch.randint(0, 256, (args.batch_size, args.channels, args.resolution, args.resolution)) / 127.5 - 1.0
    x0 = x0.to(device=device, dtype=dtype)
    models = {c: build_unet(args, c) for c in {args.channels, 2 * args.channels}}
    info = {
        "device": str(device),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "channels": args.channels,
        "block_out_channels": args.block_out_channels,
        "layers_per_block": args.layers_per_block,
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
    }
    print(json.dumps(info))
    rows = []
    for i, case in enumerate(cases):
        row = run_case(case, args, models, x0)
        rows.append(row)
        print(
            f"[{i + 1}/{len(cases)}] {row['case']}: ratio {row['ratio']:.3f} (loss-only estimate "
            f"{row['ratio_from_loss']:.3f}, Δloss {row['loss_delta_ms']:.2f} ms of {row['baseline_ms']:.0f} ms)",
            flush=True,
        )
    print()
    print_table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
