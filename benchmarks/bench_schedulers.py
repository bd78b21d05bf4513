#!/usr/bin/env python
"""Every scheduler of `DDPMScheduler.compatibles` on trained digits models, 25 steps: FID (and, for the class-
conditional model, how often the digits classifier reads the requested class), through `DDPMObjectivePipeline` and,
for the ε models, through the hand-written loop a user would write (`scale_model_input`, the model, guidance,
`step`) with the same scheduler and noise: the pipeline must match the loop's quality.

    python benchmarks/bench_schedulers.py --model eps=ddpm-digits --model cond=ddpm-digits-cond \\
        --model v=runs/v --model x0=runs/x0 --model mean=runs/mean --model eps-learned=runs/eps-learned

FID is on the digits classifier's 128-d features against the 360 held-out digits (``benchmarks/study``), its own
noise the bootstrap standard deviation over the generated images. Results: ``benchmarks/results_schedulers.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.study.measure import bootstrap_fid, features_of, fid_from_features, load_reference  # noqa: E402


def schedulers() -> dict[str, type]:
    from diffusers import DDPMScheduler, EDMEulerScheduler

    found = {c.__name__: c for c in DDPMScheduler().compatibles if c is not EDMEulerScheduler}
    return dict(sorted(found.items()))


def load(path: str):
    """``(DDPMObjectivePipeline, scheduler config)`` of a saved pipeline (a plain `DDPMPipeline` too)."""
    from diffusers import DiffusionPipeline

    from ddpm_objectives_hf.pipeline_ddpm_objective import DDPMObjectivePipeline

    saved = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
    config = {k: v for k, v in saved.scheduler.config.items() if k != "_use_default_values"}
    conditioning = {k: saved.config.get(k) for k in ("num_classes", "null_class_label")}
    target = saved.config.get("prediction_type") or config["prediction_type"]
    pipe = DDPMObjectivePipeline(saved.unet, saved.scheduler, prediction_type=target, **conditioning)
    pipe.set_progress_bar_config(disable=True)
    return pipe, config


@torch.no_grad()
def hand_written(pipe, scheduler, num_samples, labels, guidance_scale, steps, generator) -> torch.Tensor:
    """The user's loop for an ε model with a fixed variance, as in diffusers' examples."""
    unet = pipe.unet
    scheduler.set_timesteps(steps)
    x = torch.randn((num_samples, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size),
                    generator=generator) * scheduler.init_noise_sigma  # fmt: skip
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        if labels is None:
            eps = unet(model_input, t).sample
        else:
            null = torch.full_like(labels, pipe.config.null_class_label)
            cond, uncond = unet(torch.cat([model_input] * 2), t, class_labels=torch.cat([labels, null])).sample.chunk(
                2
            )
            eps = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(eps, t, x, **({"generator": generator} if takes_generator else {})).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


def score(images01, reference, labels=None) -> dict:
    from ddpm_objectives_hf.evaluation.features import classifier_view

    features = features_of(reference.extractor, images01)
    out = {
        "fid": fid_from_features(reference.heldout_stats, features),
        "fid_noise": bootstrap_fid(reference.heldout_stats, features, 50)["std"],
        "finite": bool(torch.isfinite(images01).all()),
    }
    if labels is not None:
        out["accuracy"] = classifier_view(reference.extractor, images01, requested_labels=labels)["accuracy"]
    return out


def table(results: dict) -> str:
    """The Markdown table of a results file: FID [± its noise] per scheduler (rows) and model (columns), the class-
    conditional model's classifier accuracy beside its FID, and the hand-written loop's FID for the ε models."""
    models = results["models"]
    names = list(next(iter(models.values()))["rows"])
    header = ["scheduler"]
    for kind, entry in models.items():
        header.append(f"{kind} ({entry['prediction_type']})")
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in names:
        cells = [name.replace("Scheduler", "").replace("-1000", " (1000 steps)")]
        for entry in models.values():
            row = entry["rows"].get(name)
            if row is None:
                cells.append("")
                continue
            p = row["pipeline"]
            cell = f"{p['fid']:.1f} ± {p['fid_noise']:.1f}" if p["finite"] else "not finite"
            if "accuracy" in p:
                cell += f", acc {p['accuracy']:.2f}"
            if "hand_written" in row:
                cell += f" (loop {row['hand_written']['fid']:.1f})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="KIND=PATH of a saved pipeline")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --out and stop")
    parser.add_argument("--num_samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance_scale", type=float, default=3.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results_schedulers.json"))
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return 0
    if not args.model:
        parser.error("--model KIND=PATH is required (or --table)")
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    from diffusers.utils import logging

    logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    reference = load_reference()
    results = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    results.setdefault("settings", {}).update(
        num_samples=args.num_samples,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        threads=torch.get_num_threads(),
    )
    for spec in args.model:
        kind, path = spec.split("=", 1)
        pipe, config = load(path)
        conditional = pipe.config.num_classes is not None
        labels = torch.arange(args.num_samples) % pipe.config.num_classes if conditional else None
        call = {"class_labels": labels, "guidance_scale": args.guidance_scale} if conditional else {}
        entry = results.setdefault("models", {}).setdefault(kind, {"path": path, "prediction_type":
                                                                   pipe.config.prediction_type, "rows": {}})  # fmt: skip
        plain_eps = (
            pipe.config.prediction_type == "epsilon" and pipe.unet.config.out_channels == pipe.unet.config.in_channels
        )
        for name, cls in [("DDPMScheduler-1000", schedulers()["DDPMScheduler"]), *schedulers().items()]:
            if name in entry["rows"]:
                continue
            steps = 1000 if name.endswith("-1000") else args.steps
            scheduler_config = {**config, "noise_sampler_seed": 0}
            if config["prediction_type"] == "sample":  # five schedulers implement no `sample`; the pipeline converts
                scheduler_config["prediction_type"] = "epsilon"  # (as a saved DDPMObjectivePipeline's scheduler says)
            pipe.scheduler = cls.from_config(scheduler_config)
            start = time.perf_counter()
            images = pipe(batch_size=args.num_samples, num_inference_steps=steps, output_type="pt",
                          generator=torch.Generator().manual_seed(0), **call).images  # fmt: skip
            row = {"pipeline": score(images, reference, labels), "seconds": time.perf_counter() - start}
            if plain_eps and steps == args.steps:
                loop = hand_written(pipe, cls.from_config({**config, "noise_sampler_seed": 0}), args.num_samples, labels,
                                    args.guidance_scale, steps, torch.Generator().manual_seed(0))  # fmt: skip
                row["hand_written"] = score(loop, reference, labels)
                row["max_abs_difference"] = float((loop - images).abs().max())
            entry["rows"][name] = row
            print(kind, name, json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
