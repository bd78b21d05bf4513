"""Image data for training and evaluation: Hugging Face datasets, and the embedded scikit-learn digits."""

from __future__ import annotations

import contextlib
import glob
import io
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError

if TYPE_CHECKING:
    import datasets
    import PIL.Image

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def load_digits_split(split: Literal["train", "test"] = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits (8×8, shipped in its wheel) as uint8 images and int64 labels.

    The 1,797 images are split once, stratified by label (20% held out, seed 0), so training and evaluation
    (FID features, bits/dim) always see the same partition. Pixel values 0…16 are mapped to 0…255.

    Returns:
        `(images, labels)`: `images` is uint8 `[N, 8, 8]`, `labels` int64 `[N]`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be one of 'train', 'test', got {split!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return images[idx], labels[idx]


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face datasets: loading
# ---------------------------------------------------------------------------------------------------------------------

IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values")
IMAGE_FILE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga",
)  # fmt: skip
GRAYSCALE_MODES = ("1", "L", "LA", "I", "F")
DEFAULT_MEMORY_LIMIT_BYTES = 4 * 1024**3
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def digits_dataset(split: Literal["train", "test"] = "train") -> datasets.Dataset:
    """The embedded scikit-learn digits as a `datasets.Dataset`.

    Args:
        split (`str`, defaults to `"train"`): `"train"` (1,437 images) or `"test"` (360 images), the fixed split of
            [`load_digits_split`].

    Returns:
        A `datasets.Dataset` with columns `image` (`datasets.Image`, grayscale "L" 8×8 PIL images) and `label`
        (`datasets.ClassLabel` with names `"0"`…`"9"`).
    """
    import datasets
    from PIL import Image

    images, labels = load_digits_split(split)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(im, mode="L") for im in images], "label": labels.tolist()},
        features=features,
        split=split,
    )


def _env_offline() -> bool:
    return any(os.environ.get(k, "").upper() in _TRUE_VALUES for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_offline() -> bool:
    """Whether Hugging Face Hub access is switched off (`HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE`)."""
    import datasets

    return _env_offline() or bool(datasets.config.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _offline_mode(enabled: bool) -> Iterator[None]:
    """Make `datasets` and `huggingface_hub` honour offline mode even if the environment variable was set after they
    were imported (both read it once, at import time); otherwise a Hub look-up retries for ~25 s before failing."""
    import datasets
    import huggingface_hub.constants as hub_constants

    if not enabled:
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name.endswith(".parquet")
        or name.replace(os.sep, "/").strip("/").count("/") > 1
    )


def _select_split(
    data: datasets.Dataset | datasets.DatasetDict, split: str, flag: str, where: str
) -> datasets.Dataset:
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"{flag} {where} has no split {split!r}; its splits are: {', '.join(data.keys())}")
        return data[split]
    return data


def _load_split(flag: str, where: str, split: str, **kwargs: Any) -> datasets.Dataset:
    """`datasets.load_dataset(..., split=split)`, with an unknown split turned into a `DataError`."""
    import datasets

    try:
        return datasets.load_dataset(split=split, **kwargs)
    except ValueError as e:
        if "Unknown split" in str(e):
            raise DataError(f"{flag} {where}: {e}") from e
        raise


def _load_local(path: str, dataset_config_name: str | None, split: str, cache_dir: str | None) -> datasets.Dataset:
    import datasets

    where = repr(path)
    if os.path.isfile(path):
        if not path.endswith(".parquet"):
            raise DataError(
                f"--dataset_name {where} is a file but not a .parquet file; pass a .parquet file, a folder of "
                "parquet files or images, a save_to_disk folder, or a Hub dataset id"
            )
        # A single parquet file is always the "train" split of the parquet builder.
        return _load_split("--dataset_name", where, "train", path="parquet", data_files=path, cache_dir=cache_dir)
    saved = os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "dataset_info.json")) and os.path.isfile(os.path.join(path, "state.json"))
    )
    if saved:
        return _select_split(datasets.load_from_disk(path), split, "--dataset_name", where)
    parquet_files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    try:
        if parquet_files:
            # `data_dir` lets `datasets` infer the splits from the file names (train-*.parquet, test/..., ...).
            return _load_split("--dataset_name", where, split, path="parquet", data_dir=path, cache_dir=cache_dir)
        # Any other folder: `datasets` infers the builder (imagefolder, csv, json, ...) from its files.
        return _load_split("--dataset_name", where, split, path=path, name=dataset_config_name, cache_dir=cache_dir)
    except FileNotFoundError as e:  # includes datasets' EmptyDatasetError / DataFilesNotFoundError
        raise DataError(
            f"--dataset_name {where} is a folder with no loadable data; pass a save_to_disk folder, a folder of "
            f"parquet files or images, or a .parquet file ({type(e).__name__}: {_one_line(e)})"
        ) from e


def _load_hub(name: str, dataset_config_name: str | None, split: str, cache_dir: str | None) -> datasets.Dataset:
    offline = hub_offline()
    hint = (
        "pass a local folder, a .parquet file or a save_to_disk folder to --dataset_name "
        "(or a folder of images to --train_data_dir) instead"
    )
    try:
        with _offline_mode(offline):
            return _load_split(
                "--dataset_name", repr(name), split, path=name, name=dataset_config_name, cache_dir=cache_dir
            )
    except (ConnectionError, TimeoutError) as e:
        why = "offline mode: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if offline else _one_line(e)
        raise DataError(
            f"--dataset_name {name!r}: the Hugging Face Hub cannot be reached ({why}) and the dataset is not in the "
            f"local cache; {hint}"
        ) from e
    except FileNotFoundError as e:  # includes datasets' DatasetNotFoundError
        raise DataError(
            f"--dataset_name {name!r} is neither an existing local path nor a dataset on the Hugging Face Hub "
            f"({_one_line(e)}); {hint}"
        ) from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _count_image_files(folder: str, stop_after: int = 1) -> int:
    count = 0
    for _, _, files in os.walk(folder):
        count += sum(f.lower().endswith(IMAGE_FILE_EXTENSIONS) for f in files)
        if count >= stop_after:
            break
    return count


def find_image_column(dataset: datasets.Dataset, image_column: str | None = None) -> str:
    """The name of the column holding the images.

    Args:
        dataset (`datasets.Dataset`): The dataset.
        image_column (`str`, *optional*): The column asked for with `--image_column`; checked to exist.

    Returns:
        `image_column` if given, else the first column whose feature is `datasets.Image`, else the first of the
        columns named `image`, `img`, `images`, `pixel_values`.

    Raises:
        `DataError`: the column asked for is absent, or no image column is found.
    """
    import datasets

    columns = list(dataset.column_names)
    listed = ", ".join(columns) if columns else "(none)"
    if image_column is not None:
        if image_column not in columns:
            raise DataError(
                f"--image_column {image_column!r} is not a column of the dataset; its columns are: {listed}"
            )
        return image_column
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name in IMAGE_COLUMN_NAMES:
        if name in columns:
            return name
    raise DataError(
        f"no image column found in the dataset (no datasets.Image feature and none named "
        f"{'/'.join(IMAGE_COLUMN_NAMES)}); pass --image_column with one of its columns: {listed}"
    )


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    use_default_digits: bool = True,
) -> tuple[datasets.Dataset, str]:
    """Load the training (or evaluation) images, as the `--dataset_name` / `--train_data_dir` flags of diffusers'
    `train_unconditional.py` do, plus local files and the embedded digits.

    Args:
        dataset_name (`str`, *optional*): A local `save_to_disk` folder (`Dataset` or `DatasetDict`), a `.parquet`
            file, a folder of parquet files (or any folder `datasets.load_dataset` understands, e.g. images), or a
            Hub dataset id. Hub datasets need the network unless already in the cache.
        dataset_config_name (`str`, *optional*): The configuration of a Hub dataset.
        train_data_dir (`str`, *optional*): A folder of images (loaded with the `imagefolder` builder).
        image_column (`str`, *optional*): The column holding the images; found automatically when not given.
        split (`str`, defaults to `"train"`): The split to use (a single `.parquet` file is always one split).
        cache_dir (`str`, *optional*): The `datasets` cache directory.
        use_default_digits (`bool`, defaults to `True`): With neither `dataset_name` nor `train_data_dir`, use the
            embedded scikit-learn digits ([`digits_dataset`]); otherwise that is an error.

    Returns:
        `(dataset, image_column)`.

    Raises:
        `DataError`: a one-line message naming the flag at fault and what is valid.
    """
    if dataset_name is not None and train_data_dir is not None:
        raise DataError("pass either --dataset_name or --train_data_dir, not both")
    if dataset_name is not None:
        if not dataset_name.strip():
            raise DataError("--dataset_name is empty; pass a local path or a Hub dataset id")
        path = os.path.expanduser(dataset_name)
        if os.path.exists(path):
            dataset = _load_local(path, dataset_config_name, split, cache_dir)
        elif _looks_like_path(dataset_name):
            raise DataError(
                f"--dataset_name {dataset_name!r} looks like a local path but does not exist; pass an existing "
                "save_to_disk folder, .parquet file or folder, or a Hub dataset id"
            )
        else:
            dataset = _load_hub(dataset_name, dataset_config_name, split, cache_dir)
    elif train_data_dir is not None:
        folder = os.path.expanduser(train_data_dir)
        if not os.path.isdir(folder):
            raise DataError(f"--train_data_dir {train_data_dir!r} does not exist or is not a folder")
        if _count_image_files(folder) == 0:
            raise DataError(
                f"--train_data_dir {train_data_dir!r} contains no images "
                f"({', '.join(IMAGE_FILE_EXTENSIONS[:6])}, ...); pass a folder of image files"
            )
        try:
            dataset = _load_split(
                "--train_data_dir",
                repr(train_data_dir),
                split,
                path="imagefolder",
                data_dir=folder,
                cache_dir=cache_dir,
            )
        except FileNotFoundError as e:
            raise DataError(f"--train_data_dir {train_data_dir!r}: no loadable images ({_one_line(e)})") from e
    elif use_default_digits:
        if split not in ("train", "test"):
            raise DataError(f"the embedded digits have splits 'train' and 'test', not {split!r}")
        dataset = digits_dataset(split)  # type: ignore[arg-type]
    else:
        raise DataError("no training data: pass --dataset_name (a Hub id or local path) or --train_data_dir")
    return dataset, find_image_column(dataset, image_column)


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing: PIL -> uint8 tensors, once
# ---------------------------------------------------------------------------------------------------------------------


def check_resolution(resolution: int, num_down_blocks: int) -> int:
    """Check that a `UNet2DModel` with `num_down_blocks` down blocks can take `resolution`×`resolution` images.

    Every down block but the last halves the size, so the resolution must be divisible by `2**(num_down_blocks-1)`.

    Args:
        resolution (`int`): The `--resolution`.
        num_down_blocks (`int`): The number of down blocks of the UNet.

    Returns:
        `resolution`.

    Raises:
        `DataError`: naming `--resolution` and the nearest valid values.
    """
    if num_down_blocks < 1:
        raise ValueError(f"num_down_blocks must be >= 1, got {num_down_blocks}")
    factor = 2 ** (num_down_blocks - 1)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise DataError(f"--resolution must be a positive integer divisible by {factor}, got {resolution!r}")
    if resolution % factor:
        lower, upper = (resolution // factor) * factor, (resolution // factor + 1) * factor
        valid = f"{lower} or {upper}" if lower > 0 else str(upper)
        raise DataError(
            f"--resolution {resolution} is not divisible by {factor} (2**({num_down_blocks}-1): a UNet with "
            f"{num_down_blocks} down blocks halves the size {num_down_blocks - 1} times); use e.g. {valid}"
        )
    return int(resolution)


def image_channels(image: PIL.Image.Image) -> int:
    """1 for grayscale PIL modes (`1`, `L`, `LA`, `I`, `I;16`…, `F`), else 3."""
    return 1 if image.mode in GRAYSCALE_MODES or image.mode.startswith("I;") else 3


def _as_pil(value: Any) -> PIL.Image.Image:
    """A decoded image from what a dataset cell may hold: a PIL image, `{"bytes", "path"}`, a path, or an array."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        return Image.open(value["path"])
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value)
    if isinstance(value, bytes):
        return Image.open(io.BytesIO(value))
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CHW -> HWC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
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
) -> np.ndarray:
    """One image to a uint8 `[resolution, resolution, channels]` array: convert mode, resize the shorter side to
    `resolution` (bilinear), then crop the centre (`center_crop=True`) or a random square.

    Args:
        image: A PIL image (or anything a dataset cell may hold: `{"bytes", "path"}`, a path, an array).
        resolution (`int`): The output side.
        channels (`int`): 1 (grayscale "L") or 3 (RGB).
        center_crop (`bool`, defaults to `True`): Centre crop, else a random crop drawn from `generator`.
        generator (`torch.Generator`, *optional*): For the random crop.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    pil = _resize_shorter_side(_convert(_as_pil(image), channels), resolution)
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
    return image_channels(_as_pil(dataset[0][image_column]))


def images_to_tensor(
    dataset: datasets.Dataset,
    image_column: str,
    resolution: int,
    channels: int | None = None,
    center_crop: bool = False,
    random_flip: bool = False,
    num_proc: int | None = None,
) -> torch.Tensor:
    """Decode every image once into a uint8 tensor, for [`InMemoryImageData`].

    Images are converted to `channels`, their shorter side resized to `resolution` (bilinear, like the
    `transforms.Resize` of `train_unconditional.py`) and centre-cropped: a random crop drawn once would be one
    arbitrary crop for all epochs, so the in-memory path always crops the centre (square images are not cropped).

    Args:
        dataset (`datasets.Dataset`): The images.
        image_column (`str`): Their column.
        resolution (`int`): The output side.
        channels (`int`, *optional*): 1 or 3 (PIL `convert("L")` / `convert("RGB")`); inferred from the first image
            when `None` (grayscale modes → 1, else 3).
        center_crop (`bool`, defaults to `False`): Accepted for symmetry with `--center_crop`; the in-memory path
            always crops the centre.
        random_flip (`bool`, defaults to `False`): Accepted for symmetry with `--random_flip`; flips are applied per
            batch by [`InMemoryImageData.batch`], never here.
        num_proc (`int`, *optional*): Decode with `datasets.Dataset.map` in this many processes (writes a cache).

    Returns:
        A uint8 tensor `[N, channels, resolution, resolution]`.
    """
    del center_crop, random_flip  # see the docstring
    if resolution < 1:
        raise DataError(f"--resolution must be a positive integer, got {resolution!r}")
    if channels is None:
        channels = infer_channels(dataset, image_column)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    n = len(dataset)
    if n == 0:
        return torch.empty(0, channels, resolution, resolution, dtype=torch.uint8)
    images = dataset.select_columns([image_column])

    if num_proc is not None and num_proc > 1 and n >= 2 * num_proc:
        import datasets

        def _batch(batch: dict[str, list[Any]]) -> dict[str, list[np.ndarray]]:
            return {"_pixels": [preprocess_image(im, resolution, channels) for im in batch[image_column]]}

        features = datasets.Features({"_pixels": datasets.Array3D((resolution, resolution, channels), "uint8")})
        mapped = images.map(
            _batch,
            batched=True,
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
                out[i] = torch.from_numpy(preprocess_image(image, resolution, channels)).permute(2, 0, 1)
                i += 1
            bar.update(len(batch[image_column]))
    return out


def fits_in_memory(
    num_images: int, channels: int, resolution: int, limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES
) -> bool:
    """Whether `num_images` uint8 images of `channels`×`resolution`×`resolution` take at most `limit_bytes`
    (default 4 GiB)."""
    return int(num_images) * int(channels) * int(resolution) ** 2 <= limit_bytes


def _flip_mask(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(device)


class InMemoryImageData:
    """All training images as one uint8 tensor on a device; batches come out as float `[-1, 1]` with no PIL work.

    Args:
        images (`torch.Tensor`): uint8 `[N, C, H, W]`, e.g. from [`images_to_tensor`].
        device (`torch.device` or `str`, *optional*): Where to keep them (default: where they are).
    """

    def __init__(self, images: torch.Tensor, device: torch.device | str | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images.to(device) if device is not None else images

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset,
        image_column: str,
        resolution: int,
        channels: int | None = None,
        device: torch.device | str | None = None,
        num_proc: int | None = None,
    ) -> InMemoryImageData:
        """[`images_to_tensor`] then move to `device`."""
        return cls(images_to_tensor(dataset, image_column, resolution, channels, num_proc=num_proc), device)

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

    def to(self, device: torch.device | str) -> InMemoryImageData:
        """Move the images to `device` (in place); returns `self`."""
        self.images = self.images.to(device)
        return self

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
            flip = _flip_mask(len(idx), generator, x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def epoch_batches(
        self, batch_size: int, shuffle: bool = True, drop_last: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[torch.Tensor]:
        """Index batches covering the images once (shuffled with `generator` when `shuffle`), for [`batch`]."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield order[start : start + batch_size]


class OnTheFlyTransform:
    """A `dataset.with_transform(...)` transform for data too big for memory: decode, convert, resize, crop and flip
    each batch in the `DataLoader` workers, like `train_unconditional.py`.

    Randomness (crops, flips) comes from torch's global RNG unless a `generator` is given; `DataLoader` seeds it
    differently in each worker.

    Args:
        image_column (`str`): The column holding the images.
        resolution (`int`): The output side.
        channels (`int`, *optional*): 1 or 3; inferred from the first image transformed when `None` (prefer passing
            [`infer_channels`]`(dataset, image_column)` so that every worker agrees).
        center_crop (`bool`, defaults to `False`): Centre crop, else random crop (`--center_crop`).
        random_flip (`bool`, defaults to `False`): Random horizontal flips (`--random_flip`).
        generator (`torch.Generator`, *optional*): CPU generator for crops and flips.

    Returns (when called on a batch dict): `{"pixel_values": float tensor [B, C, resolution, resolution] in [-1, 1]}`.
    """

    def __init__(
        self,
        image_column: str,
        resolution: int,
        channels: int | None = None,
        center_crop: bool = False,
        random_flip: bool = False,
        generator: torch.Generator | None = None,
    ):
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        self.image_column = image_column
        self.resolution = resolution
        self.channels = channels
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.generator = generator

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        images = batch[self.image_column]
        if self.channels is None and len(images):
            self.channels = image_channels(_as_pil(images[0]))
        arrays = [
            preprocess_image(im, self.resolution, self.channels or 3, self.center_crop, self.generator)
            for im in images
        ]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if self.random_flip and len(arrays):
            flip = _flip_mask(len(arrays), self.generator, x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return {"pixel_values": x.contiguous()}
