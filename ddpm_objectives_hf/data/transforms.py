"""Transforms: one image decoded, converted to grayscale or RGB, its shorter side resized and cropped to a square,
flipped; and the per-batch transform for data read on the fly."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import DataError
from .columns import as_image_column, cell_name

if TYPE_CHECKING:
    import datasets
    import PIL.Image

GRAYSCALE_MODES = ("1", "L", "LA", "I", "F")


def image_channels(image: PIL.Image.Image) -> int:
    """1 for grayscale PIL modes (`1`, `L`, `LA`, `I`, `I;16`…, `F`), else 3."""
    return 1 if image.mode in GRAYSCALE_MODES or image.mode.startswith("I;") else 3


def decode_image(value: Any, where: str = "an image") -> PIL.Image.Image:
    """A PIL image from a dataset cell: decoded by `datasets.Image` when encoded, built here when an array.

    Args:
        value: A PIL image; an encoded cell (`{"bytes", "path"}`, a path, raw bytes), decoded with
            `datasets.Image().decode_example`; or a pixel array `[H, W]`, `[H, W, C]` or `[C, H, W]` (uint8, or float
            in [0, 1] scaled by 255; see [`as_image_column`] for why arrays are not left to `datasets`).
        where (`str`): How to name the cell in an error when it has no file path (e.g. `"row 3 of column 'image'"`).

    Raises:
        `DataError`: the file or bytes are not a readable image (not an image, truncated, missing), naming the file.
    """
    import datasets
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (bytes, bytearray)):
        value = {"bytes": bytes(value), "path": None}
    elif isinstance(value, (str, os.PathLike)):
        value = {"bytes": None, "path": os.fspath(value)}
    if isinstance(value, dict):
        try:
            return datasets.Image().decode_example(value)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            name = repr(value.get("path")) if value.get("path") else where
            raise DataError(
                f"image {name} cannot be read: {type(e).__name__}: {' '.join(str(e).split())}; remove or replace it"
            ) from e
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if (
        array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[-1] not in (3, 4))
        or array.dtype.kind not in "biuf"
    ):
        raise DataError(
            f"{where} is a {array.dtype} array of shape {tuple(array.shape)}, not an image ([H, W], [H, W, C] or "
            "[C, H, W] numbers)"
        )
    if array.dtype != np.uint8:
        array = np.clip(array * 255.0 if array.max(initial=0) <= 1.0 else array, 0, 255).round().astype(np.uint8)
    return Image.fromarray(array)


def _convert(image: PIL.Image.Image, channels: int) -> PIL.Image.Image:
    if image.mode == ("L" if channels == 1 else "RGB"):
        return image
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer or float: rescale to 8 bits first
        from PIL import Image

        array = np.asarray(image, dtype=np.float64)
        top = 255.0 if array.max(initial=0) <= 255 else (65535.0 if array.max() <= 65535 else float(array.max()))
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8), mode="L")
    if image.mode in ("P", "PA") and channels == 3:
        image = image.convert("RGBA")
    return image.convert("L" if channels == 1 else "RGB")


def _resize_shorter_side(image: PIL.Image.Image, resolution: int) -> PIL.Image.Image:
    """torchvision's `Resize(resolution)`: the shorter side becomes `resolution`, aspect ratio kept, bilinear."""
    from PIL import Image

    w, h = image.size
    if min(w, h) == resolution:
        return image
    if w <= h:
        size = (resolution, max(1, int(resolution * h / w)))
    else:
        size = (max(1, int(resolution * w / h)), resolution)
    return image.resize(size, resample=Image.Resampling.BILINEAR)


def _crop_offsets(
    width: int, height: int, resolution: int, center: bool, generator: torch.Generator | None
) -> tuple[int, int]:
    if center:  # torchvision's CenterCrop
        return int(round((width - resolution) / 2.0)), int(round((height - resolution) / 2.0))
    left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator)) if width > resolution else 0
    top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator)) if height > resolution else 0
    return left, top


def preprocess_image(
    image: Any,
    resolution: int,
    channels: int,
    center_crop: bool = True,
    generator: torch.Generator | None = None,
    where: str = "an image",
) -> np.ndarray:
    """One image to a uint8 `[resolution, resolution, channels]` array: convert mode, resize the shorter side to
    `resolution` (bilinear), then crop the centre (`center_crop=True`) or a random square — the `Resize`,
    `CenterCrop`/`RandomCrop` of diffusers' `train_unconditional.py`.

    Args:
        image: A PIL image, or anything [`decode_image`] takes (an encoded cell, a path, an array).
        resolution (`int`): The output side.
        channels (`int`): 1 (grayscale "L") or 3 (RGB).
        center_crop (`bool`, defaults to `True`): Centre crop, else a random crop drawn from `generator`.
        generator (`torch.Generator`, *optional*): For the random crop.
        where (`str`): How an unreadable cell is named in the error (see [`decode_image`]).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    pil = _resize_shorter_side(_convert(decode_image(image, where), channels), resolution)
    w, h = pil.size
    if (w, h) != (resolution, resolution):
        left, top = _crop_offsets(w, h, resolution, center_crop, generator)
        pil = pil.crop((left, top, left + resolution, top + resolution))
    array = np.array(pil, dtype=np.uint8)  # a writable copy
    return array[..., None] if array.ndim == 2 else array


def infer_channels(dataset: datasets.Dataset, image_column: str) -> int:
    """1 if the first image of `dataset` is grayscale, else 3 (see [`image_channels`])."""
    if len(dataset) == 0:
        raise DataError("the dataset has no rows")
    first = as_image_column(dataset.select([0]), image_column, decode=False)[0][image_column]
    return image_channels(decode_image(first, cell_name(image_column, 0)))


def flip_randomly(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of the batch `x` (`[B, C, H, W]`) flipped left-right with probability 1/2, drawn from `generator`
    (on any device; torch's global RNG when `None`)."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    flip = (torch.rand(x.shape[0], generator=generator, device=gen_device) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class OnTheFlyTransform:
    """A `dataset.with_transform(...)` transform for data too big for memory: decode, convert, resize, crop and flip
    each batch in the `DataLoader` workers — the `Resize`, `CenterCrop`/`RandomCrop`, `RandomHorizontalFlip`,
    `ToTensor`, `Normalize([0.5], [0.5])` of diffusers' `train_unconditional.py`, with PIL and torch.

    Randomness (crops, flips) comes from torch's global RNG unless a `generator` is given; `DataLoader` seeds it
    differently in each worker. Use [`apply_to`] so that an unreadable image raises a `DataError` naming its file;
    cells already decoded by `datasets` (PIL images) are taken as they are.

    Args:
        image_column (`str`): The column holding the images.
        resolution (`int`): The output side.
        channels (`int`, *optional*): 1 or 3; inferred from the first image transformed when `None` (prefer passing
            [`infer_channels`]`(dataset, image_column)` so that every worker agrees).
        center_crop (`bool`, defaults to `False`): Centre crop, else random crop.
        random_flip (`bool`, defaults to `False`): Random horizontal flips.
        generator (`torch.Generator`, *optional*): CPU generator for crops and flips.
        label_column (`str`, *optional*): Also return this column as int64 ``class_labels`` (class-conditional
            training; check the values first with [`labels_to_tensor`]).

    Returns (when called on a batch dict): `{"pixel_values": float tensor [B, C, resolution, resolution] in [-1, 1]}`
    (and `"class_labels"`: int64 [B] with ``label_column``).
    """

    def __init__(
        self,
        image_column: str,
        resolution: int,
        channels: int | None = None,
        center_crop: bool = False,
        random_flip: bool = False,
        generator: torch.Generator | None = None,
        label_column: str | None = None,
    ):
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        self.image_column = image_column
        self.resolution = resolution
        self.channels = channels
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.generator = generator
        self.label_column = label_column

    def apply_to(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """`dataset` with its images kept encoded (see [`as_image_column`]) and this transform applied on access."""
        return as_image_column(dataset, self.image_column, decode=False).with_transform(self)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        where = f"an image of column {self.image_column!r}"
        images = [decode_image(im, where) for im in batch[self.image_column]]
        if self.channels is None and len(images):
            self.channels = image_channels(images[0])
        arrays = [
            preprocess_image(im, self.resolution, self.channels or 3, self.center_crop, self.generator)
            for im in images
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self.random_flip and len(arrays):
            x = flip_randomly(x, self.generator)
        out = {"pixel_values": x.contiguous()}
        if self.label_column is not None:
            out["class_labels"] = torch.as_tensor(batch[self.label_column], dtype=torch.long)
        return out
