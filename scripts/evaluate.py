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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ddpm_objectives_hf.cli import run_main
from ddpm_objectives_hf.cli.validation import (
    check_device,
    check_existing_folder,
    check_non_empty,
    check_ranges,
    check_writable_folder,
)
from ddpm_objectives_hf.errors import ConfigError
from ddpm_objectives_hf.evaluation.fid import FID_FEATURES
from ddpm_objectives_hf.ode import DIVERGENCES, METHODS, check_ode_options
from ddpm_objectives_hf.options import (
    OPTIONAL_POSITIVE_INT,
    POSITIVE_INT,
    SEED,
    Range,
    check_choice,
    check_range,
)

logger = logging.getLogger("ddpm_objectives_hf.evaluate")


@dataclass
class EvalArguments:
    model_dir: str = field(metadata={"help": "Pipeline folder or Hub id (also accepted as the first argument)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the report goes (default MODEL_DIR/eval)."})
    dataset_name: str | None = field(default=None, metadata={"help": "As in train.py; default: held-out digits."})
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = field(
        default=None, metadata={"help": "Class labels for a class-conditional model (default: the one ClassLabel)."}
    )
    split: str = field(default="test", metadata={"help": "Split of the data set (digits: train or test)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N images only."})
    max_bpd_samples: int | None = field(
        default=None, metadata={"help": "Bits/dim on the first N of those only (FID still uses all)."}
    )
    batch_size: int = 256
    full_bpd: bool = field(default=True, metadata={"help": "Compute the full VLB over all T steps (N × T calls)."})
    num_bpd_timesteps: int = field(default=18, metadata={"help": "K network calls per image for the fast estimate."})
    bpd_control_variates: bool = field(
        default=True, metadata={"help": "Regress each noise draw out of the fast estimate (from 70 images on)."}
    )
    ode_bpd: bool = field(
        default=True, metadata={"help": "Also the exact likelihood: bits/dim by the probability-flow ODE."}
    )
    ode_draws: int = field(default=2, metadata={"help": "Dequantisation (and probe) draws per image for the ODE."})
    ode_divergence: str = field(
        default="hutchinson",
        metadata={"choices": list(DIVERGENCES), "help": "The ODE's divergence: one Rademacher probe, or exact."},
    )
    ode_rtol: float = field(default=1e-5, metadata={"help": "Relative tolerance of the ODE solver."})
    ode_atol: float = field(default=1e-5, metadata={"help": "Absolute tolerance of the ODE solver."})
    ode_method: str = field(
        default="RK45", metadata={"choices": list(METHODS), "help": "scipy solve_ivp method of the ODE solver."}
    )
    max_ode_samples: int | None = field(
        default=None, metadata={"help": "ODE bits/dim on the first N of the bits/dim images only."}
    )
    pilot_images: int = field(default=16, metadata={"help": "Images used to learn the fast estimator's proposal."})
    pilot_grid: int = field(default=32, metadata={"help": "Timesteps of the pilot grid."})
    num_samples: int = field(default=360, metadata={"help": "Generated images for FID and the classifier's view."})
    num_inference_steps: int = 1000
    guidance_scales: list[float] | None = field(
        default=None,
        metadata={
            "help": "Classifier-free guidance scales to sample a class-conditional model with (0: unconditional, "
            "1: conditional; default 0 1 2 3 5 with a null class, else 1)."
        },
    )
    fid_features: str = field(
        default="auto",
        metadata={"choices": [*FID_FEATURES, "none"], "help": "FID feature network (auto: Inception if local)."},
    )
    seed: int = 0
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu")
    num_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch's CPU threads (default: $OMP_NUM_THREADS, else 1, as `accelerate launch` gives train.py: "
            "with other work on the cores, several threads stall each other, a network call 180x slower measured)."
        },
    )

    def __post_init__(self):
        for name in ("model_dir", "split", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}", parameter=name)
        for name in (
            "output_dir",
            "dataset_name",
            "dataset_config_name",
            "train_data_dir",
            "image_column",
            "label_column",
        ):
            check_non_empty(name, getattr(self, name))
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ConfigError("pass either --dataset_name or --train_data_dir, not both", parameter="train_data_dir")
        at_least_two = Range(ge=2, integer=True, optional=True)  # a mean and its standard error
        check_ranges(
            self,
            num_threads=OPTIONAL_POSITIVE_INT,
            max_eval_samples=at_least_two,
            max_bpd_samples=at_least_two,
            max_ode_samples=at_least_two,
            batch_size=POSITIVE_INT,
            num_bpd_timesteps=Range(ge=2, integer=True),
            pilot_images=POSITIVE_INT,
            pilot_grid=POSITIVE_INT,
            num_samples=POSITIVE_INT if self.fid_features == "none" else Range(ge=2, integer=True),
            num_inference_steps=POSITIVE_INT,
            seed=SEED,
        )
        check_choice("fid_features", self.fid_features, (*FID_FEATURES, "none"))
        check_ode_options(
            rtol=self.ode_rtol,
            atol=self.ode_atol,
            divergence=self.ode_divergence,
            method=self.ode_method,
            draws=self.ode_draws,
        )
        if self.guidance_scales is not None:
            if not self.guidance_scales:
                raise ConfigError("guidance_scales needs at least one scale", parameter="guidance_scales")
            for scale in self.guidance_scales:
                check_range("guidance_scales", scale, ge=0)


def parse_args(argv: list[str] | None = None) -> EvalArguments:
    """Flags (MODEL_DIR may come first, without ``--model_dir``), or a JSON/YAML file of them then flags.

    Raises:
        ConfigError: One line naming the flag at fault and what is valid.
    """
    from ddpm_objectives_hf.cli.parsing import CONFIG_SUFFIXES, parse_dataclasses

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and not argv[0].endswith(CONFIG_SUFFIXES):
        argv = ["--model_dir", argv[0], *argv[1:]]
    return parse_dataclasses((EvalArguments,), argv, prog="evaluate.py")[0]


def check_environment(args: EvalArguments) -> None:
    """What must hold before any work: the device is present, the report's folder can be written, the data folder
    exists, and the step counts fit the model's T (read from its scheduler config, a small file)."""
    check_device("device", args.device)
    check_writable_folder("output_dir", args.output_dir or Path(args.model_dir) / "eval")
    check_existing_folder("train_data_dir", args.train_data_dir)
    T = _num_train_timesteps(args.model_dir)
    if T is not None:
        check_range("num_inference_steps", args.num_inference_steps, ge=1, le=T, integer=True)
        check_range("num_bpd_timesteps", args.num_bpd_timesteps, ge=2, le=T, integer=True)
    index = Path(args.model_dir) / "model_index.json"
    if index.is_file():
        try:
            pipeline_config = json.loads(index.read_text())
        except ValueError:
            return  # the loader says why
        if isinstance(pipeline_config, dict):
            check_conditioning(args, pipeline_config.get("num_classes"), pipeline_config.get("null_class_label"))


def check_conditioning(args: EvalArguments, num_classes: int | None, null_class_label: int | None) -> list[float]:
    """The guidance scales to sample with (``[None]``: an unconditional model), checked against the model."""
    if num_classes is None:
        for name in ("guidance_scales", "label_column"):
            if getattr(args, name) is not None:
                raise ConfigError(
                    f"{name}: the model at MODEL_DIR {args.model_dir!r} is unconditional (no class labels)",
                    parameter=name,
                )
        return [None]
    if args.guidance_scales is None:
        return [0.0, 1.0, 2.0, 3.0, 5.0] if null_class_label is not None else [1.0]
    if null_class_label is None and any(s != 1 for s in args.guidance_scales):
        raise ConfigError(
            f"guidance_scales {args.guidance_scales}: the model at MODEL_DIR was trained without label dropout "
            "(no null class), so only the conditional scale 1 exists",
            parameter="guidance_scales",
        )
    return list(args.guidance_scales)


def _num_train_timesteps(model_dir: str) -> int | None:
    """T of a pipeline folder's scheduler, or `None` if it cannot be read here (the loader then says why)."""
    config = Path(model_dir) / "scheduler" / "scheduler_config.json"
    try:
        T = json.loads(config.read_text())["num_train_timesteps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return T if isinstance(T, int) and not isinstance(T, bool) and T >= 1 else None


def load_images(
    args: EvalArguments, channels: int, resolution: int, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The evaluation images as float [N, C, R, R] in [−1, 1], and their labels (for a model of ``num_classes``)."""
    from ddpm_objectives_hf.training.data import (
        InMemoryImageData,
        find_label_column,
        infer_channels,
        labels_to_tensor,
        load_image_dataset,
    )

    dataset, column = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        split=args.split,
        split_parameter="split",
    )
    if args.max_eval_samples:
        dataset = dataset.select(range(min(args.max_eval_samples, len(dataset))))
    data_channels = infer_channels(dataset, column)
    if data_channels != channels:
        raise ConfigError(
            f"the model takes {channels}-channel images but the data (--dataset_name/--train_data_dir) have "
            f"{data_channels} channels"
        )
    if len(dataset) < 2:
        raise ConfigError(f"the evaluation data have {len(dataset)} image(s); at least 2 are needed")
    label_column = None
    if num_classes is not None:
        label_column, data_classes = find_label_column(dataset, args.label_column)
        if data_classes > num_classes:
            raise ConfigError(
                f"label_column {label_column!r} has {data_classes} classes; the model knows {num_classes}",
                parameter="label_column",
            )
    labels = None if label_column is None else labels_to_tensor(dataset, label_column, num_classes)
    data = InMemoryImageData.from_dataset(dataset, column, resolution, channels)
    return data.batch(torch.arange(len(data))), labels


def evaluate(args: EvalArguments) -> dict:
    from ddpm_objectives_hf.bpd import estimate_bpd, full_bpd, learn_proposal
    from ddpm_objectives_hf.elbo import slice_model_kwargs
    from ddpm_objectives_hf.training.pipelines import load_for_evaluation

    device = torch.device(args.device)
    out_dir = Path(args.output_dir or Path(args.model_dir) / "eval")
    unet, scheduler, objective = load_for_evaluation(args.model_dir, device)
    num_classes, null_class_label = objective.get("num_classes"), objective.get("null_class_label")
    guidance_scales = check_conditioning(args, num_classes, null_class_label)
    T = scheduler.config.num_train_timesteps
    if not 2 <= args.num_bpd_timesteps <= T:
        raise ConfigError(f"--num_bpd_timesteps must be between 2 and T = {T}, got {args.num_bpd_timesteps}")
    resolution = unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]
    channels = unet.config.in_channels
    expected_out = 2 * channels if scheduler.learned_variance else channels
    if unet.config.out_channels != expected_out:
        raise ConfigError(
            f"MODEL_DIR: the UNet has {unet.config.out_channels} output channels but variance_type="
            f"{scheduler.config.variance_type!r} needs {expected_out}"
        )
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
    args = parse_args(argv)
    check_environment(args)  # before any work: nothing is loaded or written yet
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
