"""Batches: all images decoded once into one uint8 tensor, and float batches drawn from it with no PIL work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError
from .columns import as_image_column, cell_name
from .transforms import flip_randomly, infer_channels, preprocess_image

if TYPE_CHECKING:
    import datasets

DEFAULT_MEMORY_LIMIT_BYTES = 4 * 1024**3


def images_to_tensor(
    dataset: datasets.Dataset,
    image_column: str,
    resolution: int,
    channels: int | None = None,
    num_proc: int | None = None,
) -> torch.Tensor:
    """Decode every image once into a uint8 tensor, for [`InMemoryImageData`].

    Images are converted to `channels`, their shorter side resized to `resolution` (bilinear, like the
    `transforms.Resize` of `train_unconditional.py`) and centre-cropped: a random crop drawn once would be one
    arbitrary crop for all epochs, so the in-memory path always crops the centre (square images are not cropped);
    random flips are drawn per batch by [`InMemoryImageData.batch`].

    Args:
        dataset (`datasets.Dataset`): The images.
        image_column (`str`): Their column.
        resolution (`int`): The output side.
        channels (`int`, *optional*): 1 or 3 (PIL `convert("L")` / `convert("RGB")`); inferred from the first image
            when `None` (grayscale modes → 1, else 3).
        num_proc (`int`, *optional*): Decode with `datasets.Dataset.map` in this many processes (writes a cache).

    Returns:
        A uint8 tensor `[N, channels, resolution, resolution]`.

    Raises:
        `DataError`: an image cannot be read (naming its file), or the column holds no images.
    """
    if resolution < 1:
        raise DataError(f"resolution must be a positive integer, got {resolution!r}", parameter="resolution")
    if channels is None:
        channels = infer_channels(dataset, image_column)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    n = len(dataset)
    if n == 0:
        return torch.empty(0, channels, resolution, resolution, dtype=torch.uint8)
    # Encoded cells, decoded one by one, so that an unreadable image is reported with its file name.
    images = as_image_column(dataset.select_columns([image_column]), image_column, decode=False)

    if num_proc is not None and num_proc > 1 and n >= 2 * num_proc:
        import datasets

        def _batch(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[np.ndarray]]:
            return {
                "_pixels": [
                    preprocess_image(im, resolution, channels, where=cell_name(image_column, i))
                    for im, i in zip(batch[image_column], indices)
                ]
            }

        features = datasets.Features({"_pixels": datasets.Array3D((resolution, resolution, channels), "uint8")})
        mapped = images.map(
            _batch,
            batched=True,
            with_indices=True,
            batch_size=256,
            num_proc=num_proc,
            remove_columns=[image_column],
            features=features,
            desc="Decoding images",
        )
        array = np.asarray(mapped.with_format("numpy")["_pixels"], dtype=np.uint8)
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()

    out = torch.empty(n, channels, resolution, resolution, dtype=torch.uint8)
    i = 0
    with tqdm(total=n, desc="Decoding images", unit="img", disable=n < 1000) as bar:
        for batch in images.iter(batch_size=256):
            for image in batch[image_column]:
                pixels = preprocess_image(image, resolution, channels, where=cell_name(image_column, i))
                out[i] = torch.from_numpy(pixels).permute(2, 0, 1)
                i += 1
            bar.update(len(batch[image_column]))
    return out


def fits_in_memory(
    num_images: int, channels: int, resolution: int, limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
) -> bool:
    """Whether `num_images` uint8 images of `channels`×`resolution`×`resolution` take at most `limit_bytes`
    (default 4 GiB)."""
    return int(num_images) * int(channels) * int(resolution) ** 2 <= limit_bytes


class InMemoryImageData:
    """All training images as one uint8 tensor on a device; batches come out as float `[-1, 1]` with no PIL work.

    Args:
        images (`torch.Tensor`): uint8 `[N, C, H, W]`, e.g. from [`images_to_tensor`].
        device (`torch.device` or `str`, *optional*): Where to keep them (default: where they are).
        labels (`torch.Tensor`, *optional*): int64 `[N]` class labels (from [`labels_to_tensor`]), for
            class-conditional training: [`labels_at`] gives those of a batch.
    """

    def __init__(
        self, images: torch.Tensor, device: torch.device | str | None = None, labels: torch.Tensor | None = None
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape [{images.shape[0]}], got {tuple(labels.shape)}")
        self.images = images.to(device) if device is not None else images
        self.labels = None if labels is None else labels.to(device=self.images.device, dtype=torch.long)

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset,
        image_column: str,
        resolution: int,
        channels: int | None = None,
        device: torch.device | str | None = None,
        num_proc: int | None = None,
        labels: torch.Tensor | None = None,
    ) -> InMemoryImageData:
        """[`images_to_tensor`] on `device`, with the images' class ``labels`` (from [`labels_to_tensor`]) if given."""
        return cls(images_to_tensor(dataset, image_column, resolution, channels, num_proc=num_proc), device, labels)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def epoch_order(self, epoch: int, seed: int, process_index: int = 0, num_processes: int = 1) -> torch.Tensor:
        """This process's share of epoch `epoch`'s shuffle, on the images' device.

        One permutation of all images per epoch, drawn from `seed * 100003 + epoch` on the CPU (so every process,
        and a resumed run, draws the same one without communicating); process `r` of `P` takes every `P`-th index
        from position `r`.

        Args:
            epoch (`int`): The epoch.
            seed (`int`): The run's seed.
            process_index (`int`, defaults to 0): This process's rank.
            num_processes (`int`, defaults to 1): The number of processes.

        Returns:
            int64 indices for [`batch`], about `len(self) / num_processes` of them.
        """
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(len(self), generator=generator)
        return order[process_index::num_processes].to(self.images.device)

    def batch(
        self,
        indices: torch.Tensor | Sequence[int] | np.ndarray,
        random_flip: bool = False,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """The images at `indices` as `x / 127.5 - 1` in `[-1, 1]`, each flipped left-right with probability 1/2 when
        `random_flip`.

        Args:
            indices: Row indices (tensor, array or list).
            random_flip (`bool`, defaults to `False`): Random horizontal flips.
            generator (`torch.Generator`, *optional*): For the flips (on any device).
            dtype (`torch.dtype`, defaults to `torch.float32`): The output dtype.

        Returns:
            `[B, C, H, W]` tensor on the images' device.
        """
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        idx = idx.to(device=self.images.device, dtype=torch.long).reshape(-1)
        x = self.images.index_select(0, idx).to(dtype) / 127.5 - 1.0
        if random_flip and len(idx):
            x = flip_randomly(x, generator)
        return x

    def labels_at(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> torch.Tensor:
        """The class labels of the images at `indices` (as [`batch`] takes them), int64 on the images' device."""
        if self.labels is None:
            raise ValueError("these images were loaded without labels (pass label_column to from_dataset)")
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        return self.labels.index_select(0, idx.to(device=self.labels.device, dtype=torch.long).reshape(-1))
