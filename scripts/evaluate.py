#!/usr/bin/env python
"""Evaluate a saved DDPM pipeline: bits/dim (full VLB and a fast estimator), the ELBO decomposition, FID, samples.

    python scripts/evaluate.py MODEL_DIR [--dataset_name ...] [--num_bpd_timesteps 25] [--fid_features digits]

MODEL_DIR is a pipeline folder (a training run's --output_dir) or a Hub id. Everything lands in one JSON report
(``--output_dir``, default ``MODEL_DIR/eval``) beside PNGs of the samples and of the ELBO terms over t.

A class-conditional model is evaluated on the labelled images: bits/dim of −log p(x | y) (and of −log p(x) through
the null class), and for each ``--guidance_scales`` s, samples of the held-out images' classes scored by FID against
those images and by the digits classifier's accuracy on the requested class (``guidance.png``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from ddpm_objectives_hf.cli import run_main
from ddpm_objectives_hf.evaluation.arguments import (
    EvalArguments,
    check_model,
    load_images,
    parse_args,
)

logger = logging.getLogger("ddpm_objectives_hf.evaluate")


def evaluate(args: EvalArguments) -> dict:
    from ddpm_objectives_hf.bpd import estimate_bpd, full_bpd, learn_proposal
    from ddpm_objectives_hf.elbo import slice_model_kwargs
    from ddpm_objectives_hf.training.pipelines import load_denoiser, read_pipeline

    device = torch.device(args.device)
    out_dir = Path(args.output_dir or Path(args.model_dir) / "eval")
    unet_class, config, scheduler, objective = read_pipeline(args.model_dir)  # configs: checked before the weights
    guidance_scales = check_model(args, config, scheduler, objective)
    unet = load_denoiser(args.model_dir, unet_class, device)
    num_classes, null_class_label = objective.get("num_classes"), objective.get("null_class_label")
    T = scheduler.config.num_train_timesteps
    resolution = unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]
    channels = unet.config.in_channels
    images, labels = load_images(args, channels, resolution, num_classes)
    images = images.to(device)
    report: dict = {
        "model_dir": args.model_dir,
        # the target and variance type the bound is computed under, named for a model trained elsewhere too
        "objective": {**objective, **{k: scheduler.config[k] for k in ("prediction_type", "variance_type")}},
        "data": {
            "dataset": args.dataset_name or args.train_data_dir or "sklearn-digits",
            "split": args.split,
            "num_images": images.shape[0],
            "resolution": resolution,
            "channels": channels,
        },
        "num_train_timesteps": T,
    }
    generator = torch.Generator(device=device).manual_seed(args.seed)
    all_images, images = images, images[: args.max_bpd_samples or len(images)]
    report["data"]["num_bpd_images"] = images.shape[0]
    # −log p(x | y) for a class-conditional model (its labels travel with the images), −log p(x) otherwise
    conditioning = None if labels is None else {"class_labels": labels[: len(images)].to(device)}
    if labels is not None:
        report["conditioning"] = {"num_classes": num_classes, "null_class_label": null_class_label}

    # 1. bits/dim: the full bound (calc_bpd_loop), then the fast estimator
    if args.full_bpd:
        start = time.perf_counter()
        full = full_bpd(
            unet, scheduler, images, batch_size=args.batch_size, generator=generator, model_kwargs=conditioning
        )
        terms_mean = full["terms"].double().mean(0)
        report["bpd_full"] = {
            "bpd": float(full["total"].double().mean()),
            "stderr": float(full["total"].double().std() / math.sqrt(len(images))),
            "prior_bpd": float(full["prior"].double().mean()),
            "decoder_bpd": float(terms_mean[0]),
            "kl_sum_bpd": float(terms_mean[1:].sum()),
            "network_evaluations": int(images.shape[0] * T),
            "seconds": time.perf_counter() - start,
        }
    pilot = slice(0, max(1, min(args.pilot_images, len(images))))

    def fast_bpd(model_kwargs: dict | None) -> tuple[dict, torch.Tensor]:
        """The fast estimate (proposal learned on the pilot images) as a report entry, and per image."""
        start = time.perf_counter()
        pilot_kwargs = slice_model_kwargs(model_kwargs, pilot, len(images))
        proposal, pilot_evals = learn_proposal(
            unet, scheduler, images[pilot], grid_size=args.pilot_grid, generator=generator, model_kwargs=pilot_kwargs
        )
        fast = estimate_bpd(
            unet,
            scheduler,
            images,
            num_timesteps=args.num_bpd_timesteps,
            proposal=proposal,
            control_variates=args.bpd_control_variates,
            batch_size=args.batch_size,
            generator=generator,
            model_kwargs=model_kwargs,
        )
        evaluations = fast["evaluations_per_image"] * images.shape[0] + pilot_evals
        return {
            "bpd": fast["bpd"],
            "stderr": fast["stderr"],
            "ci95": list(fast["ci95"]),
            "network_calls_per_image": fast["evaluations_per_image"],
            "control_variates": fast["control_variates"],
            "pilot_evaluations": pilot_evals,
            "network_evaluations": evaluations,
            "seconds": time.perf_counter() - start,
        }, fast["per_image"]

    report["bpd_fast"], fast_per_image = fast_bpd(conditioning)
    if args.full_bpd:
        report["bpd_fast"]["abs_error_vs_full"] = abs(report["bpd_fast"]["bpd"] - report["bpd_full"]["bpd"])
        report["bpd_fast"]["evaluation_saving"] = (
            report["bpd_full"]["network_evaluations"] / report["bpd_fast"]["network_evaluations"]
        )
        low, high = report["bpd_fast"]["ci95"]
        report["bpd_fast"]["ci_covers_full"] = low <= report["bpd_full"]["bpd"] <= high
    if labels is not None and null_class_label is not None:  # −log p(x) of the same model, through the null class
        null = torch.full((len(images),), null_class_label, dtype=torch.long, device=device)
        report["bpd_fast_unconditional"] = fast_bpd({"class_labels": null})[0]

    if args.ode_bpd:
        bounds = {"fast": fast_per_image}
        if args.full_bpd:
            bounds["full"] = full["total"]
        report["bpd_ode"] = _ode_bpd(args, unet, scheduler, images, conditioning, generator, bounds)

    # 2. the ELBO decomposition: L_T, L_0 and L_{t−1} over t, beside the objective's weighting
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.full_bpd:
        report["elbo_decomposition"] = _elbo_decomposition(scheduler, report["bpd_full"], terms_mean, out_dir)

    # 3. samples with the saved pipeline's sampler, per guidance scale for a class-conditional model, and
    # 4. FID (pluggable features) and the digits classifier's view of them
    reference = None
    if args.fid_features != "none":
        from ddpm_objectives_hf.evaluation.fid import FIDReference

        reference = FIDReference((all_images.float() + 1) / 2, args.fid_features, device=device)
    # the classes of the held-out images, in turn: the samples' class mix is that of the FID's reference set
    requested = None if labels is None else labels[torch.arange(args.num_samples) % len(labels)]
    from ddpm_objectives_hf.training.pipelines import sampling_pipeline

    pipeline = sampling_pipeline(unet, scheduler, num_classes=num_classes, null_class_label=null_class_label).to(
        device
    )  # the kind the model was saved as
    sweep = [_sample_and_score(args, pipeline, reference, requested, s, out_dir, device) for s in guidance_scales]
    first = next((e for e in sweep if e["guidance_scale"] in (None, 1.0)), sweep[0])
    report["sampling"] = {k: v for k, v in first.items() if k not in ("fid", "classifier_view")}
    for key in ("fid", "classifier_view"):
        if key in first:
            report[key] = first[key]
    if labels is not None:
        report["guidance_sweep"] = _guidance_sweep(sweep, reference, out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    logger.info("wrote %s", out_dir / "report.json")
    from ddpm_objectives_hf.training.model_card import add_evaluation_to_model_card

    if add_evaluation_to_model_card(args.model_dir, report) is not None:
        logger.info("added the evaluation to %s", Path(args.model_dir) / "README.md")
    return report


def _ode_bpd(args: EvalArguments, unet, scheduler, images, conditioning, generator, bounds: dict) -> dict:
    """Bits/dim by the probability-flow ODE (``ddpm_objectives_hf.ode.ode_bpd``) as a report entry, with the gap
    ``bound − ODE`` of each bound, paired over the same images (mean and 95% interval)."""
    from ddpm_objectives_hf.bpd import mean_with_interval
    from ddpm_objectives_hf.elbo import slice_model_kwargs
    from ddpm_objectives_hf.ode import ode_bpd

    n = min(args.max_ode_samples or len(images), len(images))
    ode = ode_bpd(
        unet,
        scheduler,
        images[:n],
        draws=args.ode_draws,
        divergence=args.ode_divergence,
        rtol=args.ode_rtol,
        atol=args.ode_atol,
        method=args.ode_method,
        batch_size=args.batch_size,
        generator=generator,
        model_kwargs=slice_model_kwargs(conditioning, slice(0, n), len(images)),
    )
    entry = {
        "bpd": ode["bpd"],
        "stderr": ode["stderr"],
        "ci95": list(ode["ci95"]),
        "estimator_stderr": ode["estimator_stderr"],
        "num_images": n,
        "network_calls_per_image": ode["evaluations_per_image"] * ode["draws"],
        "vjp_per_call": 1 if ode["divergence"] == "hutchinson" else int(images[0].numel()),
        "seconds_per_image": ode["seconds_per_image"] * ode["draws"],
        **{k: ode[k] for k in ("draws", "divergence", "rtol", "atol", "method")},
    }
    for name, bound in bounds.items():
        gap = mean_with_interval(bound[:n].double().cpu() - ode["per_image"])
        entry[f"gap_{name}_bound"] = {"bpd": gap["bpd"], "ci95": list(gap["ci95"])}
    return entry


def _elbo_decomposition(scheduler, bpd_full: dict, terms_mean: torch.Tensor, out_dir: Path) -> dict:
    """``elbo_decomposition.json`` (L_T, L_0, L_{t−1} over t and the weights) and its plot ``elbo_terms.png``."""
    from ddpm_objectives_hf.training.plots import plot_elbo_terms

    t = torch.arange(scheduler.config.num_train_timesteps)
    decomposition = {
        "prior_L_T": bpd_full["prior_bpd"],
        "decoder_L_0": bpd_full["decoder_bpd"],
        "terms_L_t_minus_1": terms_mean.tolist(),
        # ε-units weights are infinite where SNR = 0 (zero terminal SNR): null in the JSON
        "effective_weight_eps_units": _finite_or_none(scheduler.effective_weight(t)),
        "vlb_weight_eps_units": _finite_or_none(scheduler.vlb_weight(t)),
    }
    (out_dir / "elbo_decomposition.json").write_text(json.dumps(decomposition) + "\n")
    plot_elbo_terms(
        t.numpy(),
        terms_mean.numpy(),
        out_dir / "elbo_terms.png",
        weighting=scheduler.effective_weight(t).numpy(),
        weighting_label=f"{scheduler.config.loss_weighting} ({scheduler.config.loss_type})",
        vlb_weighting=scheduler.vlb_weight(t).numpy(),
        prior_bpd=decomposition["prior_L_T"],
        decoder_bpd=decomposition["decoder_L_0"],
    )
    return {"json": "elbo_decomposition.json", "plot": "elbo_terms.png"}


@torch.no_grad()
def _sample_and_score(args: EvalArguments, pipeline, reference, requested, scale, out_dir: Path, device) -> dict:
    """``--num_samples`` samples from ``pipeline`` (of the ``requested`` classes at guidance ``scale``, for a
    class-conditional model), their grid, and their FID and digits-classifier view."""
    from ddpm_objectives_hf.training.plots import sample_grid

    start = time.perf_counter()
    samples = []
    sample_generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    for first in range(0, args.num_samples, args.batch_size):
        n = min(args.batch_size, args.num_samples - first)
        kwargs = {}
        if requested is not None:
            kwargs = {"class_labels": requested[first : first + n].tolist(), "guidance_scale": scale}
        images_np = pipeline(
            batch_size=n,
            generator=sample_generator,
            num_inference_steps=args.num_inference_steps,
            output_type="np",
            **kwargs,
        ).images
        samples.append(torch.from_numpy(images_np).permute(0, 3, 1, 2))
    samples01 = torch.cat(samples).float().clamp(0, 1)
    grid = "samples.png" if scale in (None, 1.0) else f"samples_guidance_{scale:g}.png"
    sample_grid(samples01, max_images=64, min_side=256).save(out_dir / grid)
    entry = {
        "guidance_scale": scale,
        "sampler": type(pipeline.scheduler).__name__,
        "num_inference_steps": args.num_inference_steps,
        "num_samples": len(samples01),
        "seconds": time.perf_counter() - start,
        "grid": grid,
    }
    if reference is not None:
        entry["fid"] = {"fid": reference(samples01.to(device)), **reference.info}
        if reference.info["feature"] == "digits" and pipeline.unet.config.in_channels == 1:
            from ddpm_objectives_hf.evaluation.features import classifier_view

            # the FID's feature network is the digits classifier: loaded once, for both
            entry["classifier_view"] = classifier_view(
                reference.feature_network, samples01.to(device), requested_labels=requested
            )
    return entry


def _guidance_sweep(sweep: list[dict], reference, out_dir: Path) -> dict:
    """FID and class accuracy per guidance scale, and their plot ``guidance.png`` (with FID features)."""
    from ddpm_objectives_hf.training.plots import plot_guidance_sweep

    rows = []
    for entry in sweep:
        view = entry.get("classifier_view", {})
        rows.append(
            {
                "guidance_scale": entry["guidance_scale"],
                "fid": entry["fid"]["fid"] if "fid" in entry else None,
                "accuracy": view.get("accuracy"),
                "per_class_accuracy": view.get("per_class_accuracy"),
                "mean_confidence": view.get("mean_confidence"),
                "grid": entry["grid"],
            }
        )
    result = {"scales": rows, "num_samples": sweep[0]["num_samples"], "sampler": sweep[0]["sampler"]}
    result["num_inference_steps"] = sweep[0]["num_inference_steps"]
    if reference is not None:
        accuracy = [r["accuracy"] for r in rows] if all(r["accuracy"] is not None for r in rows) else None
        plot_guidance_sweep(
            [r["guidance_scale"] for r in rows],
            [r["fid"] for r in rows],
            accuracy,
            out_dir / "guidance.png",
            fid_label=f"FID ({reference.info['feature']} features)",
        )
        result["plot"] = "guidance.png"
    return result


def _finite_or_none(values: torch.Tensor) -> list:
    return [v if math.isfinite(v) else None for v in values.tolist()]


def main(argv: list[str] | None = None) -> int:
    """The command line: any error is one line ``evaluate.py: error: ...`` (exit 2; ``--debug``: the traceback)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    return run_main("evaluate.py", _main, argv)


def _main(argv: list[str]) -> None:
    args = parse_args(argv)  # every flag and this machine checked; the model's configs in evaluate(), first
    threads = torch.get_num_threads()
    torch.set_num_threads(args.num_threads or int(os.environ.get("OMP_NUM_THREADS") or 1))
    try:
        report = evaluate(args)
    finally:
        torch.set_num_threads(threads)  # as it was, for a caller in the same process
    summary = {k: report[k] for k in ("bpd_full", "bpd_fast", "fid", "classifier_view") if k in report}
    print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    sys.exit(main())
