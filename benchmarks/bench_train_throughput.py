#!/usr/bin/env python
"""Training throughput of ``scripts/train.py`` against a plain diffusers-style loop.

* baseline: a faithful, condensed copy of the hot loop of diffusers'
  ``examples/unconditional_image_generation/train_unconditional.py``: a `datasets` dataset with ``set_transform``
  doing the per-image PIL work of its torchvision pipeline (``convert("RGB")``, Resize, CenterCrop,
  RandomHorizontalFlip, ToTensor, Normalize — ``OnTheFlyTransform`` of ``ddpm_objectives_hf.data``, the same
  preprocessing with PIL + torch, as torchvision is not a dependency), a torch ``DataLoader`` (``num_workers=0``,
  shuffle), ``accelerate.Accelerator``, ``EMAModel`` (diffusers' default
  ``foreach=False``), ``torch.optim.AdamW`` (torch's default implementation choice), ``noise_scheduler.add_noise``,
  ``F.mse_loss``, ``accelerator.backward``, ``clip_grad_norm_``, the LR scheduler step and
  ``loss.detach().item()`` + progress bar + ``accelerator.log`` every step;
* candidate: ``scripts/train.py`` itself, run in a child process on the same data (the embedded digits), the
  same UNet (``build_model`` of train.py), batch size, optimizer hyper-parameters, EMA and LR schedule.

What is timed: only the training loop. Both are measured the same way, in windows of ``--window`` optimizer steps
(train.py's own ``images_per_s`` of each logging window, read back from its ``loss_history.json``; the baseline
timed identically around its loop); start-up (data decoding, model build) and the first window (warm-up) are left
out, and so is train.py's final save (pipeline, samples, model card). images/s of a run = images / seconds over the
timed windows. The runs are interleaved (baseline, train.py, train.py --channels_last, the bound, then the next
repeat in reverse order) and medians are reported, with the median of the per-repeat ratios. The bound is the same
UNet's forward + backward alone (no data, optimizer, clipping or EMA): the most any loop could reach.

On a shared CPU pass ``--threads 1``: with several OpenMP threads every parallel region waits for a descheduled
thread whenever another process holds a core, and the timings become meaningless.

    python -m benchmarks.bench_train_throughput --out throughput.json
    python -m benchmarks.bench_train_throughput --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# train_unconditional.py's defaults, used by both loops
TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
HYPER = {
    "learning_rate": 1e-4,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 500,
    "adam_beta1": 0.95,
    "adam_beta2": 0.999,
    "adam_weight_decay": 1e-6,
    "adam_epsilon": 1e-8,
    "ema_max_decay": 0.9999,
    "ema_inv_gamma": 1.0,
    "ema_power": 0.75,
    "max_grad_norm": 1.0,
}


# ---------------------------------------------------------------------------------------------------- baseline
def run_baseline(args, seed: int) -> dict:
    """train_unconditional.py's loop, condensed; returns the per-window (images, seconds)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from ddpm_objectives_hf.data import OnTheFlyTransform, digits_dataset
    from ddpm_objectives_hf.training.arguments import ModelArguments
    from ddpm_objectives_hf.training.models import build_model

    out = tempfile.mkdtemp(prefix="bench-baseline-")
    # train.py flushes denormals on CPU, process-wide; the diffusers example does not: restore torch's default
    # (or not, with --baseline_flush_denormal, to see how much of the difference that is)
    torch.set_flush_denormal(args.baseline_flush_denormal)
    accelerator = Accelerator(
        gradient_accumulation_steps=1,
        mixed_precision="no",
        log_with=None,
        project_config=ProjectConfiguration(project_dir=out, logging_dir=os.path.join(out, "logs")),
    )
    set_seed(seed)
    model = build_model(
        ModelArguments(block_out_channels=list(args.block_out_channels), layers_per_block=args.layers_per_block),
        args.resolution,
        args.channels,
        learned_variance=False,
    )
    ema_model = EMAModel(
        model.parameters(),
        decay=HYPER["ema_max_decay"],
        use_ema_warmup=True,
        inv_gamma=HYPER["ema_inv_gamma"],
        power=HYPER["ema_power"],
        model_cls=type(model),
        model_config=model.config,
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=HYPER["learning_rate"],
        betas=(HYPER["adam_beta1"], HYPER["adam_beta2"]),
        weight_decay=HYPER["adam_weight_decay"],
        eps=HYPER["adam_epsilon"],
    )
    dataset = digits_dataset("train")
    # datasets decodes the images, the transform converts, resizes, centre-crops, flips (torch's global RNG, as
    # torchvision) and normalises them per batch, as train_unconditional.py's `transform_images`
    dataset.set_transform(
        OnTheFlyTransform("image", args.resolution, args.channels, center_crop=True, random_flip=args.random_flip)
    )
    train_dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.dataloader_num_workers
    )
    lr_scheduler = get_scheduler(
        HYPER["lr_scheduler"],
        optimizer=optimizer,
        num_warmup_steps=HYPER["lr_warmup_steps"],
        num_training_steps=args.steps,
    )
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    ema_model.to(accelerator.device)
    weight_dtype = torch.float32
    T = noise_scheduler.config.num_train_timesteps

    windows = []
    global_step, epoch = 0, 0
    window_start, window_images, window_steps = time.perf_counter(), 0, 0
    while global_step < args.steps:
        model.train()
        progress_bar = tqdm(total=len(train_dataloader), disable=not accelerator.is_local_main_process)
        progress_bar.set_description(f"Epoch {epoch}")
        for batch in train_dataloader:
            clean_images = batch["pixel_values"].to(weight_dtype)
            noise = torch.randn(clean_images.shape, dtype=weight_dtype, device=clean_images.device)
            bsz = clean_images.shape[0]
            timesteps = torch.randint(0, T, (bsz,), device=clean_images.device).long()
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
            with accelerator.accumulate(model):
                model_output = model(noisy_images, timesteps).sample
                loss = F.mse_loss(model_output.float(), noise.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), HYPER["max_grad_norm"])
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema_model.step(model.parameters())
                progress_bar.update(1)
                global_step += 1
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0], "step": global_step}
            logs["ema_decay"] = ema_model.cur_decay_value
            progress_bar.set_postfix(**logs)
            accelerator.log(logs, step=global_step)
            # the benchmark's window, as train.py's logging window
            window_images += bsz
            window_steps += 1
            if window_steps == args.window:
                windows.append((window_images, time.perf_counter() - window_start))
                window_start, window_images, window_steps = time.perf_counter(), 0, 0
            if global_step >= args.steps:
                break
        progress_bar.close()
        epoch += 1
    accelerator.end_training()
    return {"windows": windows}


# ---------------------------------------------------------------------------------------------------- candidate
def train_py_argv(args, seed: int, output_dir: str, channels_last: bool) -> list[str]:
    argv = [
        "--resolution", str(args.resolution),
        "--channels", str(args.channels),
        "--block_out_channels", *map(str, args.block_out_channels),
        "--layers_per_block", str(args.layers_per_block),
        "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps),
        "--logging_steps", str(args.window),
        "--checkpointing_steps", str(10**9),
        "--report_to", "none",
        "--num_sample_images", "1",
        "--num_inference_steps", "1",
        "--seed", str(seed),
        "--output_dir", output_dir,
        "--overwrite_output_dir",
    ]  # fmt: skip
    for k, v in HYPER.items():
        argv += [f"--{k}", str(v)]
    if args.random_flip:
        argv.append("--random_flip")
    if channels_last:
        argv.append("--channels_last")
    return argv + list(args.train_py_args)


def run_train_py(args, seed: int, channels_last: bool = False) -> dict:
    """``python scripts/train.py`` in a child process with this process's torch threads; the windows from its logged
    images/s (so the child's start-up, which no window holds, is not timed)."""
    out = tempfile.mkdtemp(prefix="bench-train-py-")
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    argv = train_py_argv(args, seed, out, channels_last)
    subprocess.run([sys.executable, str(TRAIN_SCRIPT), *argv], env=env, check=True, capture_output=True)
    history = json.loads((Path(out) / "loss_history.json").read_text())
    windows, previous = [], 0
    for h in history:
        images = (h["step"] - previous) * args.batch_size
        windows.append((images, images / h["images_per_s"]))
        previous = h["step"]
    return {"windows": windows}


def run_unet_only(args, seed: int) -> dict:
    """The bound: only t, ε, ``add_noise``, the same UNet's forward + ``F.mse_loss`` + backward on a fixed batch, no
    data, optimizer, clipping or EMA (denormals flushed as train.py does); what no training loop can beat."""
    from diffusers import DDPMScheduler

    from ddpm_objectives_hf.training.arguments import ModelArguments
    from ddpm_objectives_hf.training.models import build_model

    torch.manual_seed(seed)
    torch.set_flush_denormal(True)
    model = build_model(
        ModelArguments(block_out_channels=list(args.block_out_channels), layers_per_block=args.layers_per_block),
        args.resolution,
        args.channels,
        learned_variance=False,
    ).train()
    scheduler = DDPMScheduler()
    x0 = torch.rand(args.batch_size, args.channels, args.resolution, args.resolution) * 2 - 1
    windows = []
    window_start = time.perf_counter()
    for step in range(1, args.steps + 1):
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],))
        noise = torch.randn_like(x0)
        loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if step % args.window == 0:
            windows.append((args.window * x0.shape[0], time.perf_counter() - window_start))
            window_start = time.perf_counter()
    return {"windows": windows}


# ---------------------------------------------------------------------------------------------------- driver
def images_per_s(windows: list[tuple[int, float]], skip: int) -> float:
    kept = windows[skip:] or windows
    return sum(n for n, _ in kept) / sum(s for _, s in kept)


VARIANTS = {
    "baseline": lambda args, seed: run_baseline(args, seed),
    "train.py": lambda args, seed: run_train_py(args, seed),
    "train.py --channels_last": lambda args, seed: run_train_py(args, seed, channels_last=True),
    "bound: UNet fwd+bwd only": lambda args, seed: run_unet_only(args, seed),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=16)
    p.add_argument("--channels", type=int, default=3, choices=(1, 3), help="3: the example's convert('RGB')")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64, 64])
    p.add_argument("--layers_per_block", type=int, default=1)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--window", type=int, default=10, help="steps per timing window (train.py's --logging_steps)")
    p.add_argument("--skip_windows", type=int, default=1, help="warm-up windows left out")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--random_flip", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dataloader_num_workers", type=int, default=0, help="the baseline's DataLoader workers")
    p.add_argument(
        "--baseline_flush_denormal", action="store_true", help="flush denormals in the baseline too (as train.py)"
    )
    p.add_argument("--no_bound", action="store_true", help="skip the UNet-only bound")
    p.add_argument("--no_channels_last", action="store_true", help="skip the train.py --channels_last variant")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="a smoke check: resolution 8, 6 steps, 1 repeat")
    p.add_argument("--train_py_args", nargs=argparse.REMAINDER, default=[], help="extra flags for train.py (last)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.resolution, args.batch_size, args.steps, args.window, args.repeats = 8, 8, 6, 2, 1
    variants = [v for v in VARIANTS if not (args.no_channels_last and "channels_last" in v)]
    variants = [v for v in variants if not (args.no_bound and v.startswith("bound"))]
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        **{k: getattr(args, k) for k in ("resolution", "channels", "batch_size", "block_out_channels")},
        **{k: getattr(args, k) for k in ("layers_per_block", "steps", "window", "skip_windows", "repeats")},
        "random_flip": args.random_flip,
    }
    print(json.dumps(info), flush=True)
    results: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for name in order:
            start = time.perf_counter()
            res = VARIANTS[name](args, seed=r)
            ips = images_per_s(res["windows"], args.skip_windows)
            results[name].append(ips)
            print(
                f"[repeat {r + 1}/{args.repeats}] {name:26s} {ips:8.1f} images/s "
                f"(windows: {', '.join(f'{n / s:.0f}' for n, s in res['windows'])}; run {time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    base = results["baseline"]
    rows = []
    for name in variants:
        ratios = [c / b for c, b in zip(results[name], base)]
        rows.append(
            {
                "variant": name,
                "images_per_s": results[name],
                "median_images_per_s": statistics.median(results[name]),
                "ratios": ratios,
                "median_ratio": statistics.median(ratios),
            }
        )
    print(f"\n{'variant':26s} {'median img/s':>12s} {'ratio':>7s}  per-repeat ratios")
    for row in rows:
        per = ", ".join(f"{x:.3f}" for x in row["ratios"])
        print(f"{row['variant']:26s} {row['median_images_per_s']:12.1f} {row['median_ratio']:7.3f}  {per}")
    print("ratio: images/s of the variant / images/s of the baseline in the same repeat (median over repeats)")
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(math.isfinite(r["median_ratio"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
