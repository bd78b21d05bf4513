#!/usr/bin/env python
"""Train a diffusers denoiser with any DDPM objective: a `UNet2DModel`, a DiT, or a pretrained pipeline's.

    accelerate launch --quiet scripts/train.py --prediction_type v_prediction --loss_weighting min_snr --output_dir out
    python scripts/train.py run.yaml           # the same flags as a JSON or YAML file

The loop is DDPM's training algorithm (Ho et al. 2020, Algorithm 1): x0 ~ data, t ~ sampler, ε ~ N(0, I), x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε,
predict, weighted loss, gradient step (+ EMA). With no data flag it trains on scikit-learn's digits (offline).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ddpm_objectives_hf.cli import run_main
from ddpm_objectives_hf.cli.arguments import build_scheduler
from ddpm_objectives_hf.errors import CheckpointError, TrainingError
from ddpm_objectives_hf.training.arguments import (
    DataArguments,
    ModelArguments,
    ObjectiveArguments,
    RunArguments,
    check_environment,
    check_pretrained,
    parse_args,
    resolution_of,
)
from ddpm_objectives_hf.training.models import build_model
from ddpm_objectives_hf.training.saving import push_run, sample_images, save_run
from ddpm_objectives_hf.training.state import Classes, DataStream, TrainState

logger = logging.getLogger("ddpm_objectives_hf.train")


def _adamw_implementation(device: torch.device) -> dict:
    """``fused=True`` where torch has a fused AdamW kernel for ``device`` (CPU and CUDA among them: one kernel per
    parameter instead of a dozen multi-tensor passes, ~3x faster on CPU), else ``foreach=True``. The same AdamW
    update either way."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        fused = device.type in _get_fused_kernels_supported_devices()
    except ImportError:  # a torch without the helper
        fused = device.type in ("cpu", "cuda")
    return {"fused": True} if fused else {"foreach": True}


# ---------------------------------------------------------------------------------------------------- main
def train(data_args: DataArguments, model_args: ModelArguments, obj: ObjectiveArguments, run: RunArguments) -> Path:
    """Train and save the run; its output folder is held from the first write until this returns or raises."""
    with contextlib.ExitStack() as folder_lock:
        return _train(data_args, model_args, obj, run, folder_lock)


def _train(
    data_args: DataArguments,
    model_args: ModelArguments,
    obj: ObjectiveArguments,
    run: RunArguments,
    folder_lock: contextlib.ExitStack,
) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from ddpm_objectives_hf import diffusion_loss, make_timestep_sampler
    from ddpm_objectives_hf.cli import flag
    from ddpm_objectives_hf.files import atomic_write
    from ddpm_objectives_hf.training.checkpointing import (
        check_finite_weights,
        check_same_run,
        load_checkpoint,
        resolve_checkpoint,
        run_identity,
        save_checkpoint,
    )
    from ddpm_objectives_hf.training.run_folder import (
        FINAL_OUTPUTS,
        check_output_dir,
        hold_run_folder,
        prepare_output_dir,
        staged_outputs,
    )

    # 0. Objective, output folder, processes
    scheduler = build_scheduler(obj)
    check_output_dir(
        run.output_dir,
        overwrite_output_dir=run.overwrite_output_dir,
        resume_from_checkpoint=run.resume_from_checkpoint,
        name_of=flag,
    )
    report_to = None if run.report_to in ("none", "", None) else run.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        mixed_precision=run.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(
            project_dir=run.output_dir, logging_dir=os.path.join(run.output_dir, run.logging_dir)
        ),
    )
    if accelerator.state.deepspeed_plugin is not None:
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = run.train_batch_size
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    # accelerate logs each file of a checkpoint at INFO (seven lines through the progress bar): one line of ours
    for name in ("accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(name).setLevel(logging.WARNING)
    set_seed(run.seed)
    if accelerator.device.type == "cpu":
        # VLB/KL gradients reach denormal magnitudes, which run ~50x slower on CPUs; flush them to zero.
        torch.set_flush_denormal(True)
    if accelerator.is_main_process:
        logger.info("training with %d process(es) on %s", accelerator.num_processes, accelerator.device)

    # 1. Data: x0 ~ p_data (with its class y for a class-conditional model)
    resolution = resolution_of(data_args)
    stream = DataStream(data_args, run, accelerator, resolution, model_args.class_conditional)
    classes = None
    if model_args.class_conditional:
        classes = Classes(stream.num_classes, model_args.condition_dropout, stream.label_column)

    # 2. Model ε_θ(x_t, t[, y]): a UNet with sinusoidal time embedding (and a class embedding), its EMA, optimizer
    # and LR schedule
    model = build_model(
        model_args,
        resolution,
        stream.channels,
        scheduler.learned_variance,
        classes.num_classes if classes else None,
        classes is not None and classes.null_class_label is not None,
    )
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = None
    if run.use_ema:
        ema = EMAModel(
            model.parameters(),
            decay=run.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=run.ema_inv_gamma,
            power=run.ema_power,
            foreach=True,
            model_cls=type(model),
            model_config=model.config,
        )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=run.learning_rate,
        betas=(run.adam_beta1, run.adam_beta2),
        weight_decay=run.adam_weight_decay,
        eps=run.adam_epsilon,
        **_adamw_implementation(accelerator.device),
    )
    # check_arguments built this schedule already (it cannot fail here): get_scheduler only checks that the step
    # counts are given and, for polynomial, that lr_end < learning_rate; the × num_processes (the prepared scheduler
    # steps once per process) changes neither.
    lr_scheduler = get_scheduler(
        run.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=run.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=run.max_train_steps * accelerator.num_processes,
    )
    if run.compile:
        model = torch.compile(model)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
    sampler = make_timestep_sampler(
        obj.timestep_sampler,
        scheduler.config.num_train_timesteps,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        logit_mean=obj.logit_mean,
        logit_std=obj.logit_std,
    )
    state = TrainState(stream)
    for obj_to_save in ([ema] if ema is not None else []) + [sampler, state]:
        accelerator.register_for_checkpointing(obj_to_save)

    # 3. Resume: only a checkpoint of this same run, read without running code; then claim the output folder
    unet_config = getattr(accelerator.unwrap_model(model), "_orig_mod", accelerator.unwrap_model(model)).config
    identity = run_identity(
        scheduler,
        unet_config,
        timestep_sampler=obj.timestep_sampler,
        use_ema=run.use_ema,
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_data_dir=data_args.train_data_dir,
        resolution=resolution,
        channels=stream.channels,
        label_column=stream.label_column,
        condition_dropout=classes.dropout if classes else 0.0,
        num_images=stream.num_images,
        train_batch_size=run.train_batch_size,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        num_processes=accelerator.num_processes,
    )
    resumed_here = None  # the step of the checkpoint of --output_dir this run continues
    if run.resume_from_checkpoint:
        path = resolve_checkpoint(run.resume_from_checkpoint, run.output_dir)
        step = check_same_run(path, identity, max_train_steps=run.max_train_steps, name_of=flag)
        load_checkpoint(accelerator, path)
        if state.step != step:
            raise CheckpointError(
                f"resume_from_checkpoint {str(path)!r} holds the state of step {state.step}, not {step}",
                parameter="resume_from_checkpoint",
            )
        logger.info("resumed from %s at step %d", path, state.step)
        if path.resolve().parent == Path(run.output_dir).resolve():
            resumed_here = step
    if accelerator.is_main_process:
        # the folder is this run's until train() ends: a second run on it (plain, resume or overwrite) stops here
        folder_lock.callback(hold_run_folder(run.output_dir).close)
        # the marker first, interrupted saves finished or removed, a replaced run's outputs removed
        prepare_output_dir(run.output_dir, replace=run.overwrite_output_dir, resumed_step=resumed_here)
        config = {"data": asdict(data_args), "model": asdict(model_args), "objective": asdict(obj), "run": asdict(run)}
        config["run"].pop("hub_token", None)
        atomic_write(Path(run.output_dir) / "training_config.json", json.dumps(config, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if report_to:
        run_config = {
            k: v for k, v in {**asdict(obj), **asdict(run)}.items() if isinstance(v, (int, float, str, bool))
        }
        run_config.pop("hub_token", None)
        accelerator.init_trackers("ddpm-objectives-hf", config=run_config)

    # 4. Train: DDPM's Algorithm 1
    T = scheduler.config.num_train_timesteps
    quartile_sum = torch.zeros(4, device=accelerator.device)
    quartile_count = torch.zeros(4, device=accelerator.device)
    loss_sum = torch.zeros((), device=accelerator.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=accelerator.device)
    bad_timesteps = torch.zeros(run.train_batch_size, dtype=torch.long, device=accelerator.device)
    progress = tqdm(
        range(state.step, run.max_train_steps),
        initial=state.step,
        total=run.max_train_steps,
        disable=not accelerator.is_local_main_process,
        desc="training",
    )
    window_start, window_steps = time.perf_counter(), 0
    model.train()
    for step in progress:
        for micro in range(run.gradient_accumulation_steps):
            with accelerator.accumulate(model):
                x0, y = stream.batch(step * run.gradient_accumulation_steps + micro)  # x0 (, y) ~ p_data
                if run.channels_last:
                    x0 = x0.contiguous(memory_format=torch.channels_last)
                # y → ∅ with probability --condition_dropout: one model for p(x|y) and p(x)
                model_kwargs = {"class_labels": classes.drop(y, stream.generator)} if classes else None
                # t ~ sampler, ε ~ N(0, I), x_t, prediction and the weighted objective
                out = diffusion_loss(
                    model,
                    x0,
                    scheduler,
                    timestep_sampler=sampler,
                    generator=stream.generator,
                    model_kwargs=model_kwargs,
                )
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and run.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), run.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            sampler.update(out.timesteps, out.per_sample_loss, accelerator)
            # bookkeeping on the device (no host synchronisation per step)
            finite = torch.isfinite(out.loss)
            bad_timesteps = torch.where((first_bad < 0) & ~finite, out.timesteps, bad_timesteps)
            first_bad = torch.where(
                (first_bad < 0) & ~finite, torch.tensor(step + 1, device=first_bad.device), first_bad
            )
            quartile = (out.timesteps * 4 // T).clamp(max=3)
            quartile_sum.scatter_add_(0, quartile, out.per_sample_loss.detach().float())
            quartile_count.scatter_add_(0, quartile, torch.ones_like(out.per_sample_loss, dtype=torch.float))
            loss_sum += out.loss.detach().float()
        if ema is not None:
            ema.step(model.parameters())
        state.step = step + 1
        window_steps += 1

        last = state.step == run.max_train_steps
        if state.step % run.logging_steps == 0 or last or state.step % run.checkpointing_steps == 0:
            if int(first_bad) >= 0:
                raise TrainingError(
                    f"loss became NaN/inf at step {int(first_bad)} (timesteps {bad_timesteps.tolist()}); "
                    "stopping without saving weights: lower --learning_rate or check --loss_weighting"
                )
            elapsed = time.perf_counter() - window_start
            mean_loss = float(loss_sum) / (window_steps * run.gradient_accumulation_steps)
            images_per_s = (
                window_steps * run.gradient_accumulation_steps * x0.shape[0] * accelerator.num_processes / elapsed
            )
            logs = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "images_per_s": images_per_s}
            for q in range(4):
                if quartile_count[q] > 0:
                    logs[f"loss_q{q}"] = float(quartile_sum[q] / quartile_count[q])
            if ema is not None:
                logs["ema_decay"] = ema.cur_decay_value
            progress.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}")
            accelerator.log(logs, step=state.step)
            state.history.append({"step": state.step, "loss": mean_loss, "images_per_s": images_per_s})
            quartile_sum.zero_(), quartile_count.zero_(), loss_sum.zero_()
            window_start, window_steps = time.perf_counter(), 0

        if state.step % run.checkpointing_steps == 0 and not last:
            check_finite_weights(model, ema, state.step, name_of=flag)  # the loss was checked above
            save_checkpoint(accelerator, run.output_dir, state.step, run.checkpoints_total_limit, identity=identity)
            if accelerator.is_main_process:
                logger.info("saved checkpoint-%d", state.step)

        if run.save_images_steps and state.step % run.save_images_steps == 0 and not last:
            if accelerator.is_main_process:
                grid = _sample_with_ema(accelerator, model, ema, scheduler, run, classes)
                path = Path(run.output_dir) / "samples" / f"step_{state.step:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                grid.save(path)
            accelerator.wait_for_everyone()

    # 5. Save the EMA weights as a diffusers pipeline, with the model card; push if asked. Everything is built in
    # one staging folder and swapped in as a whole: a failure leaves the previous outputs.
    accelerator.wait_for_everyone()
    output_dir = Path(run.output_dir)
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(model)
        unet = getattr(unet, "_orig_mod", unet)
        if ema is not None:
            ema.copy_to(unet.parameters())
        unet = unet.to(memory_format=torch.contiguous_format).float()
        check_finite_weights(unet, None, state.step, name_of=flag)
        with staged_outputs(output_dir, remove=FINAL_OUTPUTS) as staging:
            write_card = save_run(
                unet, scheduler, state, data_args, obj, run, staging, classes, model_args.pretrained_model_name_or_path
            )
        logger.info("saved the pipeline, samples and model card to %s", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if run.push_to_hub and accelerator.is_main_process:
        push_run(run, output_dir, write_card)
    return output_dir


def _sample_with_ema(accelerator, model, ema, scheduler, run: RunArguments, classes: Classes | None):
    unet = accelerator.unwrap_model(model)
    unet = getattr(unet, "_orig_mod", unet)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    try:
        return sample_images(
            unet,
            scheduler,
            run.num_sample_images,
            run.num_inference_steps,
            run.seed,
            accelerator.device,
            classes,
            run.guidance_scale,
        )
    finally:
        unet.train()
        if ema is not None:
            ema.restore(unet.parameters())


def main(argv: list[str] | None = None) -> int:
    """The command line: any error is one line ``train.py: error: ...`` (exit 2; ``--debug`` shows the traceback)."""
    return run_main("train.py", _main, argv)


def _main(argv: list[str]) -> None:
    data_args, model_args, obj, run = parse_args(argv)
    check_environment(data_args, model_args, run)  # before any work: nothing is read, built or written yet
    if model_args.pretrained_model_name_or_path:
        check_pretrained(data_args, model_args, build_scheduler(obj))
    train(data_args, model_args, obj, run)


if __name__ == "__main__":
    sys.exit(main())
