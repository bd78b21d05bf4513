#!/usr/bin/env python
"""Evaluate a saved DDPM pipeline: bits/dim (full VLB and a fast estimator), the ELBO decomposition, FID, samples.

    python scripts/evaluate.py MODEL_DIR [--dataset_name ...] [--num_bpd_timesteps 25] [--fid_features digits]

MODEL_DIR is a pipeline folder (a training run's --output_dir) or a Hub id. Everything lands in one JSON report
(``--output_dir``, default ``MODEL_DIR/eval``) beside PNGs of the samples and of the ELBO terms over t.
"""

from __future__ import annotations

import json
import logging
import math
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
from ddpm_objectives_hf.options import (
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
    split: str = field(default="test", metadata={"help": "Split of the data set (digits: train or test)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate the first N images only."})
    max_bpd_samples: int | None = field(
        default=None, metadata={"help": "Bits/dim on the first N of those only (FID still uses all)."}
    )
    batch_size: int = 256
    full_bpd: bool = field(default=True, metadata={"help": "Compute the full VLB over all T steps (N × T calls)."})
    num_bpd_timesteps: int = field(default=25, metadata={"help": "K network calls per image for the fast estimate."})
    bpd_exact_draws: int = field(
        default=4, metadata={"help": "Noise draws averaged for the exact small-t terms of the fast estimate."}
    )
    pilot_images: int = field(default=8, metadata={"help": "Images used to learn the fast estimator's proposal."})
    pilot_grid: int = field(default=64, metadata={"help": "Timesteps of the pilot grid."})
    num_samples: int = field(default=360, metadata={"help": "Generated images for FID and the classifier's view."})
    num_inference_steps: int = 1000
    fid_features: str = field(
        default="auto",
        metadata={"choices": [*FID_FEATURES, "none"], "help": "FID feature network (auto: Inception if local)."},
    )
    seed: int = 0
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu")

    def __post_init__(self):
        for name in ("model_dir", "split", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}", parameter=name)
        for name in ("output_dir", "dataset_name", "dataset_config_name", "train_data_dir", "image_column"):
            check_non_empty(name, getattr(self, name))
        if self.dataset_name is not None and self.train_data_dir is not None:
            raise ConfigError("pass either --dataset_name or --train_data_dir, not both", parameter="train_data_dir")
        at_least_two = Range(ge=2, integer=True, optional=True)  # a mean and its standard error
        check_ranges(
            self,
            max_eval_samples=at_least_two,
            max_bpd_samples=at_least_two,
            batch_size=POSITIVE_INT,
            num_bpd_timesteps=Range(ge=2, integer=True),
            bpd_exact_draws=POSITIVE_INT,
            pilot_images=POSITIVE_INT,
            pilot_grid=POSITIVE_INT,
            num_samples=POSITIVE_INT if self.fid_features == "none" else Range(ge=2, integer=True),
            num_inference_steps=POSITIVE_INT,
            seed=SEED,
        )
        check_choice("fid_features", self.fid_features, (*FID_FEATURES, "none"))


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


def _num_train_timesteps(model_dir: str) -> int | None:
    """T of a pipeline folder's scheduler, or `None` if it cannot be read here (the loader then says why)."""
    config = Path(model_dir) / "scheduler" / "scheduler_config.json"
    try:
        T = json.loads(config.read_text())["num_train_timesteps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return T if isinstance(T, int) and not isinstance(T, bool) and T >= 1 else None


def load_images(args: EvalArguments, channels: int, resolution: int) -> torch.Tensor:
    """The evaluation images as float [N, C, R, R] in [−1, 1]."""
    from ddpm_objectives_hf.training.data import InMemoryImageData, infer_channels, load_image_dataset

    dataset, column = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        split=args.split,
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
    data = InMemoryImageData.from_dataset(dataset, column, resolution, channels)
    return data.batch(torch.arange(len(data)))


def evaluate(args: EvalArguments) -> dict:
    from diffusers import DDPMPipeline

    from ddpm_objectives_hf.bpd import estimate_bpd, full_bpd, learn_proposal
    from ddpm_objectives_hf.training.pipelines import load_for_evaluation, sampling_scheduler
    from ddpm_objectives_hf.training.plots import plot_elbo_terms, sample_grid

    device = torch.device(args.device)
    out_dir = Path(args.output_dir or Path(args.model_dir) / "eval")
    unet, scheduler, objective = load_for_evaluation(args.model_dir, device)
    T = scheduler.config.num_train_timesteps
    if not 2 <= args.num_bpd_timesteps <= T:
        raise ConfigError(f"--num_bpd_timesteps must be between 2 and T = {T}, got {args.num_bpd_timesteps}")
    resolution = unet.config.sample_size if isinstance(unet.config.sample_size, int) else unet.config.sample_size[0]
    channels = unet.config.in_channels
    expected_out = 2 * channels if scheduler.config.variance_type == "learned_range" else channels
    if unet.config.out_channels != expected_out:
        raise ConfigError(
            f"MODEL_DIR: the UNet has {unet.config.out_channels} output channels but variance_type="
            f"{scheduler.config.variance_type!r} needs {expected_out}"
        )
    images = load_images(args, channels, resolution).to(device)
    report: dict = {
        "model_dir": args.model_dir,
        "objective": objective or {k: scheduler.config[k] for k in ("prediction_type", "variance_type")},
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

    # 1. bits/dim: the full bound (calc_bpd_loop), then the fast estimator
    if args.full_bpd:
        start = time.perf_counter()
        full = full_bpd(unet, scheduler, images, batch_size=args.batch_size, generator=generator)
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
    start = time.perf_counter()
    pilot = images[: max(1, min(args.pilot_images, len(images)))]
    proposal, pilot_evals = learn_proposal(unet, scheduler, pilot, grid_size=args.pilot_grid, generator=generator)
    fast = estimate_bpd(
        unet,
        scheduler,
        images,
        num_timesteps=args.num_bpd_timesteps,
        proposal=proposal,
        exact_draws=args.bpd_exact_draws,
        batch_size=args.batch_size,
        generator=generator,
    )
    evaluations = fast["evaluations_per_image"] * images.shape[0] + pilot_evals
    report["bpd_fast"] = {
        "bpd": fast["bpd"],
        "stderr": fast["stderr"],
        "ci95": list(fast["ci95"]),
        "network_calls_per_image": fast["evaluations_per_image"],
        "exact_draws": args.bpd_exact_draws,
        "pilot_evaluations": pilot_evals,
        "network_evaluations": evaluations,
        "seconds": time.perf_counter() - start,
    }
    if args.full_bpd:
        report["bpd_fast"]["abs_error_vs_full"] = abs(fast["bpd"] - report["bpd_full"]["bpd"])
        report["bpd_fast"]["evaluation_saving"] = report["bpd_full"]["network_evaluations"] / evaluations
        report["bpd_fast"]["ci_covers_full"] = fast["ci95"][0] <= report["bpd_full"]["bpd"] <= fast["ci95"][1]

    # 2. the ELBO decomposition: L_T, L_0 and L_{t−1} over t, beside the objective's weighting
    out_dir.mkdir(parents=True, exist_ok=True)
    t = torch.arange(T)
    if args.full_bpd:
        decomposition = {
            "prior_L_T": report["bpd_full"]["prior_bpd"],
            "decoder_L_0": report["bpd_full"]["decoder_bpd"],
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
        report["elbo_decomposition"] = {"json": "elbo_decomposition.json", "plot": "elbo_terms.png"}

    # 3. samples with the pipeline's own sampler
    start = time.perf_counter()
    pipeline = DDPMPipeline(unet=unet, scheduler=sampling_scheduler(scheduler)).to(device)
    samples = []
    sample_generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    for first in range(0, args.num_samples, args.batch_size):
        n = min(args.batch_size, args.num_samples - first)
        images_np = pipeline(
            batch_size=n, generator=sample_generator, num_inference_steps=args.num_inference_steps, output_type="np"
        ).images
        samples.append(torch.from_numpy(images_np).permute(0, 3, 1, 2))
    samples01 = torch.cat(samples).float().clamp(0, 1)
    sample_grid(samples01, max_images=64, min_side=256).save(out_dir / "samples.png")
    report["sampling"] = {
        "sampler": type(pipeline.scheduler).__name__,
        "num_inference_steps": args.num_inference_steps,
        "num_samples": len(samples01),
        "seconds": time.perf_counter() - start,
        "grid": "samples.png",
    }

    # 4. FID (pluggable features) and the digits classifier's view of the samples
    if args.fid_features != "none":
        from ddpm_objectives_hf.evaluation.fid import FIDReference

        reference = FIDReference((all_images.float() + 1) / 2, args.fid_features, device=device)
        report["fid"] = {"fid": reference(samples01.to(device)), **reference.info}
        if reference.info["feature"] == "digits" and channels == 1:
            from ddpm_objectives_hf.evaluation.features import classifier_view

            # the FID's feature network is the digits classifier: loaded once, for both
            report["classifier_view"] = classifier_view(reference.feature_network, samples01.to(device))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    logger.info("wrote %s", out_dir / "report.json")
    from ddpm_objectives_hf.training.model_card import add_evaluation_to_model_card

    if add_evaluation_to_model_card(args.model_dir, report) is not None:
        logger.info("added the evaluation to %s", Path(args.model_dir) / "README.md")
    return report


def _finite_or_none(values: torch.Tensor) -> list:
    return [v if math.isfinite(v) else None for v in values.tolist()]


def main(argv: list[str] | None = None) -> int:
    """The command line: any error is one line ``evaluate.py: error: ...`` (exit 2; ``--debug``: the traceback)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    return run_main("evaluate.py", _main, argv)


def _main(argv: list[str]) -> None:
    args = parse_args(argv)
    check_environment(args)  # before any work: nothing is loaded or written yet
    report = evaluate(args)
    summary = {k: report[k] for k in ("bpd_full", "bpd_fast", "fid", "classifier_view") if k in report}
    print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    sys.exit(main())
