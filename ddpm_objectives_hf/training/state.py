"""The state of a training run beside the model: the data stream (x0 and labels, batches in a seeded order), the
run's counters and history (saved in checkpoints), the class conditioning (labels and their dropout), and the loss
log between two log lines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from .arguments import DataArguments, RunArguments


class DataStream:
    """Batches of x0 in [−1, 1] (and their class labels, or `None`) for optimizer step ``i`` and micro-batch ``j``,
    the same on resume.

    In memory (the data fit): one permutation per epoch (seeded, shared by all processes), each process takes its
    own slice: no PIL work and no host synchronisation in the loop. Otherwise a DataLoader prepared by accelerate.
    """

    def __init__(
        self, data_args: DataArguments, run: RunArguments, accelerator, resolution: int, class_conditional: bool
    ):
        from ..data import (
            InMemoryImageData,
            OnTheFlyTransform,
            find_label_column,
            fits_in_memory,
            infer_channels,
            labels_to_tensor,
            load_image_dataset,
        )

        with accelerator.main_process_first():
            dataset, column = load_image_dataset(
                dataset_name=data_args.dataset_name,
                dataset_config_name=data_args.dataset_config_name,
                train_data_dir=data_args.train_data_dir,
                image_column=data_args.image_column,
                cache_dir=data_args.cache_dir,
                use_default_digits=data_args.use_default_data,
            )
        if data_args.max_train_samples:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
        self.label_column, self.num_classes, labels = None, None, None
        if class_conditional:
            self.label_column, self.num_classes = find_label_column(dataset, data_args.label_column)
            labels = labels_to_tensor(dataset, self.label_column, self.num_classes)  # every label in 0 … K − 1
        self.channels = data_args.channels or infer_channels(dataset, column)  # 1 or 3
        self.accelerator = accelerator
        self.batch_size = run.train_batch_size
        self.random_flip = data_args.random_flip
        self.seed = run.seed
        self.num_images = len(dataset)
        per_step = self.batch_size * accelerator.num_processes
        if self.num_images < per_step:
            raise ConfigError(
                f"train_batch_size {self.batch_size} × {accelerator.num_processes} processes needs at least "
                f"{per_step} images; the data set has {self.num_images}",
                parameter="train_batch_size",
            )
        self.in_memory = fits_in_memory(self.num_images, self.channels, resolution)
        self.generator = torch.Generator(device=accelerator.device).manual_seed(run.seed + accelerator.process_index)
        if self.in_memory:
            self.data = InMemoryImageData.from_dataset(
                dataset,
                column,
                resolution,
                self.channels,
                device=accelerator.device,
                num_proc=data_args.preprocessing_num_workers,
                labels=labels,
            )
            self.batches_per_epoch = self.num_images // per_step
            self._epoch, self._order = -1, None
        else:
            transform = OnTheFlyTransform(
                column, resolution, self.channels, random_flip=data_args.random_flip, label_column=self.label_column
            )
            loader = torch.utils.data.DataLoader(
                transform.apply_to(dataset),
                batch_size=self.batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=data_args.dataloader_num_workers,
            )
            self.loader = accelerator.prepare(loader)
            self.batches_per_epoch = len(self.loader)
            self._iterator = None

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``index``-th batch of this run (counting micro-batches from the start of training): images and
        labels (`None` for an unconditional model)."""
        epoch, position = divmod(index, self.batches_per_epoch)
        if not self.in_memory:
            if self._iterator is None or position == 0:
                from accelerate import skip_first_batches

                if hasattr(self.loader, "set_epoch"):  # a new shuffle per epoch, reproducible on resume
                    self.loader.set_epoch(epoch)
                loader = skip_first_batches(self.loader, position) if position else self.loader
                self._iterator = iter(loader)
            batch = next(self._iterator)
            return batch["pixel_values"], batch.get("class_labels")
        if epoch != self._epoch:
            self._order = self.data.epoch_order(
                epoch, self.seed, self.accelerator.process_index, self.accelerator.num_processes
            )
            self._epoch = epoch
        indices = self._order[position * self.batch_size : (position + 1) * self.batch_size]
        images = self.data.batch(indices, random_flip=self.random_flip, generator=self.generator)
        return images, (self.data.labels_at(indices) if self.label_column is not None else None)


class TrainState:
    """Step counter, data/noise generators and loss history, checkpointed with ``accelerator.save_state``: plain
    tensors only, so resuming reads them with ``torch.load(weights_only=True)`` (``checkpointing.load_checkpoint``)."""

    def __init__(self, stream: DataStream):
        self.step = 0
        self.stream = stream
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {
            "step": torch.tensor(self.step),
            "generator": self.stream.generator.get_state(),
            "history": torch.tensor(
                [[h["step"], h["loss"], h["images_per_s"]] for h in self.history], dtype=torch.float64
            ).reshape(-1, 3),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.stream.generator.set_state(state["generator"])
        self.history = [{"step": int(s), "loss": v, "images_per_s": r} for s, v, r in state["history"].tolist()]


@dataclass
class Classes:
    """The class conditioning of a run: K classes, and the null class of classifier-free guidance (Ho & Salimans
    2022) when labels are dropped with probability ``dropout`` (its label is K; the UNet embeds K + 1 classes)."""

    num_classes: int
    dropout: float
    label_column: str

    @property
    def null_class_label(self) -> int | None:
        return self.num_classes if self.dropout > 0 else None

    def drop(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """y → ∅ with probability ``dropout`` (the training of classifier-free guidance)."""
        if self.dropout == 0:
            return labels
        dropped = torch.rand(labels.shape, generator=generator, device=labels.device) < self.dropout
        return torch.where(dropped, self.num_classes, labels)


class LossLog:
    """The loss between two log lines, accumulated on the device (no host synchronisation per step): its mean, its
    mean per quarter of [0, T), the first step whose loss was not finite, and images per second.

    Args:
        num_train_timesteps: T.
        device: Where the sums live (the model's device).
    """

    def __init__(self, num_train_timesteps: int, device: torch.device):
        self.T = num_train_timesteps
        self.quartile_sum = torch.zeros(4, device=device)
        self.quartile_count = torch.zeros(4, device=device)
        self.loss_sum = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_timesteps = torch.zeros(0, dtype=torch.long, device=device)
        self.losses = 0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, out, step: int, images: int) -> None:
        """One micro-batch's :class:`~ddpm_objectives_hf.losses.DiffusionLossOutput` at optimizer step ``step``
        (0-based), of ``images`` images over all processes."""
        finite = torch.isfinite(out.loss)
        first = (self.first_bad < 0) & ~finite
        if self.bad_timesteps.shape != out.timesteps.shape:
            self.bad_timesteps = torch.zeros_like(out.timesteps)
        self.bad_timesteps = torch.where(first, out.timesteps, self.bad_timesteps)
        self.first_bad = torch.where(first, torch.full_like(self.first_bad, step + 1), self.first_bad)
        quartile = (out.timesteps * 4 // self.T).clamp(max=3)
        self.quartile_sum.scatter_add_(0, quartile, out.per_sample_loss.detach().float())
        self.quartile_count.scatter_add_(0, quartile, torch.ones_like(out.per_sample_loss, dtype=torch.float))
        self.loss_sum += out.loss.detach().float()
        self.losses += 1
        self.images += images

    def check_finite(self, name_of: Callable[[str], str] = str) -> None:
        """Stop, saving nothing, if a loss since the start was NaN/inf (one host synchronisation).

        Raises:
            TrainingError: Naming the step, its timesteps and the parameters to change (``name_of``: how messages
                name them).
        """
        if int(self.first_bad) >= 0:
            raise TrainingError(
                f"loss became NaN/inf at step {int(self.first_bad)} (timesteps {self.bad_timesteps.tolist()}); "
                f"stopping without saving weights: lower {name_of('learning_rate')} or check "
                f"{name_of('loss_weighting')}"
            )

    def flush(self) -> dict:
        """``loss``, ``images_per_s`` and ``loss_q0`` … ``loss_q3`` since the last flush (then start again)."""
        logs = {
            "loss": float(self.loss_sum) / max(self.losses, 1),
            "images_per_s": self.images / (time.perf_counter() - self.start),
        }
        for q in range(4):
            if self.quartile_count[q] > 0:
                logs[f"loss_q{q}"] = float(self.quartile_sum[q] / self.quartile_count[q])
        self.quartile_sum.zero_(), self.quartile_count.zero_(), self.loss_sum.zero_()
        self.losses, self.images, self.start = 0, 0, time.perf_counter()
        return logs
