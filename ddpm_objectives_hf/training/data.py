"""Image data for training and evaluation: Hugging Face datasets, and the embedded scikit-learn digits."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
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


def image_file_extensions() -> frozenset[str]:
    """The lower-case file extensions of the `imagefolder` builder of `datasets` (what `train_data_dir` loads)."""
    from datasets.packaged_modules import _MODULE_TO_EXTENSIONS

    return frozenset(ext.lower() for ext in _MODULE_TO_EXTENSIONS["imagefolder"])


def table_file_builders() -> dict[str, tuple[str, dict[str, Any]]]:
    """Lower-case file extension → `(builder, builder kwargs)` of every packaged `datasets` builder that reads one
    file as a table (parquet, csv/tsv, json/jsonl, arrow, webdataset `.tar`, …), from `datasets` itself; the
    folder-based builders (`imagefolder`, `audiofolder`, …) read folders, not single table files."""
    from datasets.packaged_modules import _EXTENSION_TO_MODULE

    return {
        ext.lower(): (module, dict(kwargs))
        for ext, (module, kwargs) in _EXTENSION_TO_MODULE.items()
        if not module.endswith("folder")
    }


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


def looks_like_local_path(name: str) -> bool:
    """Whether `name` is meant as a local path rather than a Hub id (`namespace/name`): absolute, starting with
    `./`, `../` or `~`, more than one `/`, or ending in a data file extension (`.parquet`, `.csv`, …)."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or os.path.splitext(name)[1].lower() in table_file_builders()
        or name.replace(os.sep, "/").strip("/").count("/") > 1
    )


def local_path(name: str | os.PathLike) -> Path | None:
    """The local file or folder `name` refers to (`~` expanded) when it exists, else `None`: a Hub id.

    The one decision "local path or Hub id" for data sets (`dataset_name`) and pipelines (`model_dir`): an existing
    path always wins over a Hub id of the same spelling.
    """
    path = Path(name).expanduser()
    return path if path.exists() else None


class UnknownSplitError(DataError):
    """The data exist but have no split of the requested name (the message lists the splits they have)."""


def _select_split(
    data: datasets.Dataset | datasets.DatasetDict, split: str, parameter: str, where: str
) -> datasets.Dataset:
    import datasets

    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UnknownSplitError(
                f"{parameter} {where} has no split {split!r}; its splits are: {', '.join(data.keys())}",
                parameter=parameter,
            )
        return data[split]
    return data


def _load_split(parameter: str, where: str, split: str, **kwargs: Any) -> datasets.Dataset:
    """`datasets.load_dataset(..., split=split)`, with an unknown split or unreadable data (a corrupt parquet, a
    malformed csv: pyarrow/pandas `ValueError`s or datasets' build errors) turned into a `DataError` naming them."""
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        return datasets.load_dataset(split=split, **kwargs)
    except (ValueError, DatasetsError) as e:
        if "Unknown split" in str(e):
            raise UnknownSplitError(f"{parameter} {where}: {_one_line(e)}", parameter=parameter) from e
        cause = e.__cause__ or e
        raise DataError(
            f"{parameter} {where} could not be read ({type(cause).__name__}: {_one_line(cause)[:300]})",
            parameter=parameter,
        ) from e


def _is_saved_dataset(path: str) -> bool:
    """A `save_to_disk` folder: `dataset_dict.json` (a `DatasetDict`) or `dataset_info.json` + `state.json`."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "dataset_info.json")) and os.path.isfile(os.path.join(path, "state.json"))
    )


def _broken_shard(path: str) -> tuple[str, str] | None:
    """The first Arrow shard of the `save_to_disk` folder `path` that is missing or unreadable, with why."""
    import json

    import pyarrow as pa

    for state_path in sorted(
        glob.glob(os.path.join(path, "state.json")) + glob.glob(os.path.join(path, "*", "state.json"))
    ):
        try:
            with open(state_path) as f:
                shards = [entry["filename"] for entry in json.load(f).get("_data_files", [])]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return state_path, f"unreadable ({type(e).__name__}: {_one_line(e)})"
        for name in shards:
            shard = os.path.join(os.path.dirname(state_path), name)
            if not os.path.isfile(shard):
                return shard, "missing"
            try:
                with pa.memory_map(shard) as source:
                    pa.ipc.open_stream(source).read_all()
            except (OSError, pa.ArrowException) as e:
                return shard, f"unreadable ({type(e).__name__}: {_one_line(e)})"
    return None


def _load_from_disk(path: str, where: str) -> datasets.Dataset | datasets.DatasetDict:
    """`datasets.load_from_disk`, with a missing or truncated shard turned into a `DataError` naming the file."""
    import datasets
    import pyarrow as pa

    try:
        return datasets.load_from_disk(path)
    except (OSError, ValueError, KeyError, pa.ArrowException) as e:
        broken = _broken_shard(path)
        what = f"its file {broken[0]!r} is {broken[1]}" if broken else f"{type(e).__name__}: {_one_line(e)}"
        raise DataError(
            f"dataset_name {where} is a save_to_disk folder that cannot be loaded: {what}; save the dataset again",
            parameter="dataset_name",
        ) from e


def _load_local(
    path: str, dataset_config_name: str | None, split: str, cache_dir: str | None
) -> tuple[datasets.Dataset, str | None]:
    """A local file or folder as a dataset, and the folder that relative image paths in it are relative to."""
    where = repr(path)
    if os.path.isfile(path):
        builders = table_file_builders()
        extension = os.path.splitext(path)[1].lower()
        if extension not in builders:
            raise DataError(
                f"dataset_name {where} is a file of no format `datasets` reads as a table; pass a file ending in "
                f"{', '.join(sorted(builders))}, a folder of such files or of images, a save_to_disk folder, or a "
                "Hub dataset id",
                parameter="dataset_name",
            )
        builder, builder_kwargs = builders[extension]
        # A single file is always the "train" split of its builder.
        dataset = _load_split(
            "dataset_name", where, "train", path=builder, data_files=path, cache_dir=cache_dir, **builder_kwargs
        )
        return dataset, os.path.dirname(os.path.abspath(path))
    if _is_saved_dataset(path):
        return _select_split(_load_from_disk(path, where), split, "dataset_name", where), None
    parquet_files = glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
    try:
        if parquet_files:
            # `data_dir` lets `datasets` infer the splits from the file names (train-*.parquet, test/..., ...).
            dataset = _load_split("dataset_name", where, split, path="parquet", data_dir=path, cache_dir=cache_dir)
        else:
            # Any other folder: `datasets` infers the builder (imagefolder, csv, json, ...) from its files.
            dataset = _load_split(
                "dataset_name", where, split, path=path, name=dataset_config_name, cache_dir=cache_dir
            )
    except FileNotFoundError as e:  # includes datasets' EmptyDatasetError / DataFilesNotFoundError
        raise DataError(
            f"dataset_name {where} is a folder with no loadable data; pass a save_to_disk folder, a folder of "
            f"data files or images, or a data file ({type(e).__name__}: {_one_line(e)})",
            parameter="dataset_name",
        ) from e
    return dataset, None


def _load_hub(name: str, dataset_config_name: str | None, split: str, cache_dir: str | None) -> datasets.Dataset:
    offline = hub_offline()
    hint = (
        "pass a local folder, a data file or a save_to_disk folder instead (or a folder of images as train_data_dir)"
    )
    try:
        with _offline_mode(offline):
            return _load_split(
                "dataset_name", repr(name), split, path=name, name=dataset_config_name, cache_dir=cache_dir
            )
    except (ConnectionError, TimeoutError) as e:
        why = "offline mode: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if offline else _one_line(e)
        raise DataError(
            f"dataset_name {name!r}: the Hugging Face Hub cannot be reached ({why}) and the dataset is not in the "
            f"local cache; {hint}",
            parameter="dataset_name",
        ) from e
    except FileNotFoundError as e:  # includes datasets' DatasetNotFoundError
        raise DataError(
            f"dataset_name {name!r} is neither an existing local path nor a dataset on the Hugging Face Hub "
            f"({_one_line(e)}); {hint}",
            parameter="dataset_name",
        ) from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _count_image_files(folder: str, stop_after: int = 1) -> int:
    extensions = image_file_extensions()
    count = 0
    for _, _, files in os.walk(folder):
        count += sum(os.path.splitext(f)[1].lower() in extensions for f in files)
        if count >= stop_after:
            break
    return count


def find_image_column(dataset: datasets.Dataset, image_column: str | None = None) -> str:
    """The name of the column holding the images.

    Args:
        dataset (`datasets.Dataset`): The dataset.
        image_column (`str`, *optional*): The column asked for; checked to exist.

    Returns:
        `image_column` if given, else the first column whose feature is `datasets.Image`, else the first of the
        columns named `image`, `img`, `images`, `pixel_values`.

    Raises:
        `DataError`: the column asked for is absent, or no image column is found (`parameter="image_column"`).
    """
    import datasets

    columns = list(dataset.column_names)
    listed = ", ".join(columns) if columns else "(none)"
    if image_column is not None:
        if image_column not in columns:
            raise DataError(
                f"image_column {image_column!r} is not a column of the dataset; its columns are: {listed}",
                parameter="image_column",
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
        f"{'/'.join(IMAGE_COLUMN_NAMES)}); name one of its columns: {listed}",
        parameter="image_column",
    )


def find_label_column(dataset: datasets.Dataset, label_column: str | None = None) -> tuple[str, int]:
    """The column of integer class labels and the number of classes K (labels are 0 … K − 1).

    Args:
        dataset (`datasets.Dataset`): The dataset.
        label_column (`str`, *optional*): The column asked for: a `datasets.ClassLabel` (K = its number of names) or
            an integer `datasets.Value` (K = its largest value + 1). Found automatically when the dataset has exactly
            one `ClassLabel` feature (the digits' ``label``).

    Returns:
        `(column, num_classes)`.

    Raises:
        `DataError`: the column is absent or does not hold integer classes, or none or several are found
        (`parameter="label_column"`).
    """
    import datasets

    columns = list(dataset.column_names)
    listed = ", ".join(columns) if columns else "(none)"
    if label_column is None:
        found = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.ClassLabel)]
        if len(found) != 1:
            what = "no datasets.ClassLabel column" if not found else f"several ClassLabel columns ({', '.join(found)})"
            raise DataError(
                f"the dataset has {what}; name its integer class column with --label_column (columns: {listed})",
                parameter="label_column",
            )
        label_column = found[0]
    if label_column not in columns:
        raise DataError(
            f"label_column {label_column!r} is not a column of the dataset; its columns are: {listed}",
            parameter="label_column",
        )
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return label_column, feature.num_classes
    if not (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
        kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
        raise DataError(
            f"label_column {label_column!r} holds {kind} values, not integer classes; pass a ClassLabel or integer "
            f"column (columns: {listed})",
            parameter="label_column",
        )
    values = np.asarray(dataset.with_format("numpy")[label_column])
    if len(values) == 0 or values.min() < 0:
        raise DataError(
            f"label_column {label_column!r} needs integer classes 0 … K − 1; it has "
            + ("no rows" if len(values) == 0 else f"the value {int(values.min())}"),
            parameter="label_column",
        )
    return label_column, int(values.max()) + 1


def labels_to_tensor(dataset: datasets.Dataset, label_column: str, num_classes: int) -> torch.Tensor:
    """The class labels as int64 ``[N]``, each checked to lie in 0 … ``num_classes`` − 1.

    Raises:
        `DataError`: a label is missing (`ClassLabel`'s −1) or out of range, naming its row (`parameter="label_column"`).
    """
    labels = torch.as_tensor(np.asarray(dataset.with_format("numpy")[label_column]), dtype=torch.long).reshape(-1)
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        raise DataError(
            f"label_column {label_column!r}: row {row} has the label {int(labels[row])}, outside the classes "
            f"0 … {num_classes - 1} of the model",
            parameter="label_column",
        )
    return labels


def _is_array_feature(feature: Any, arrow_type: Any) -> bool:
    import datasets
    import pyarrow as pa

    return isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)) or any(
        check(arrow_type) for check in (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    )


def _is_encoded_image_type(arrow_type: Any) -> bool:
    """What `datasets.Image` casts from: file paths, encoded bytes, or `{"bytes", "path"}` structs."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
        return bool(names) and names <= {"bytes", "path"}
    return any(
        check(arrow_type)
        for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    )


def as_image_column(dataset: datasets.Dataset, image_column: str, decode: bool = True) -> datasets.Dataset:
    """`dataset` with `image_column` cast to a `datasets.Image(decode=decode)` feature, so that `datasets` decodes it.

    Columns of file paths, encoded bytes or `{"bytes", "path"}` structs are cast; a column that is already an `Image`
    feature is only switched to `decode`. Columns of pixel arrays are left as they are and turned into images by
    [`preprocess_image`]: `datasets.Image` casts a list column by encoding each array to PNG, which fails for
    `[C, H, W]`, `[H, W, 1]` and multi-channel float arrays, and keeps float arrays in [0, 1] as mode "F" pixels
    in [0, 1] (black), where the array path here scales them by 255.

    Args:
        dataset (`datasets.Dataset`): The dataset.
        image_column (`str`): The column holding the images.
        decode (`bool`, defaults to `True`): `False` keeps the cells encoded (`{"bytes", "path"}`), for decoding one
            by one with errors that name the file.

    Raises:
        `DataError`: the column holds neither images nor arrays (e.g. numbers), `parameter="image_column"`.
    """
    import datasets

    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image):
        if feature.decode == decode:
            return dataset
        return dataset.cast_column(image_column, datasets.Image(decode=decode, mode=feature.mode))
    arrow_type = dataset.features.arrow_schema.field(image_column).type
    if _is_array_feature(feature, arrow_type):
        return dataset
    if _is_encoded_image_type(arrow_type):
        return dataset.cast_column(image_column, datasets.Image(decode=decode))
    raise DataError(
        f"image_column {image_column!r} holds {arrow_type} values, not images (file paths, encoded image bytes or "
        f"pixel arrays); name the column that holds the images",
        parameter="image_column",
    )


def _resolve_relative_paths(dataset: datasets.Dataset, image_column: str, base_dir: str) -> datasets.Dataset:
    """Make relative image paths of a string column relative to `base_dir` (the folder of the table file)."""
    import pyarrow as pa

    arrow_type = dataset.features.arrow_schema.field(image_column).type
    if not (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
        return dataset

    def _relative(path: str | None) -> bool:
        return path is not None and not os.path.isabs(path) and "://" not in path

    if not any(_relative(p) for p in dataset[image_column]):
        return dataset

    def _absolute(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {image_column: [os.path.join(base_dir, p) if _relative(p) else p for p in batch[image_column]]}

    return dataset.map(_absolute, batched=True, desc="Resolving image paths")


def _load_source(
    dataset_name: str | None,
    dataset_config_name: str | None,
    train_data_dir: str | None,
    split: str,
    cache_dir: str | None,
    use_default_digits: bool,
) -> tuple[datasets.Dataset, str | None]:
    """The split of the data `load_image_dataset` names, and the folder relative image paths are read from."""
    base_dir = None
    if dataset_name is not None and train_data_dir is not None:
        raise DataError("dataset_name: pass either it or train_data_dir, not both", parameter="dataset_name")
    if dataset_name is not None:
        if not dataset_name.strip():
            raise DataError("dataset_name is empty; pass a local path or a Hub dataset id", parameter="dataset_name")
        path = local_path(dataset_name)
        if path is not None:
            dataset, base_dir = _load_local(str(path), dataset_config_name, split, cache_dir)
        elif looks_like_local_path(dataset_name):
            raise DataError(
                f"dataset_name {dataset_name!r} looks like a local path but does not exist; pass an existing "
                "save_to_disk folder, data file or folder, or a Hub dataset id",
                parameter="dataset_name",
            )
        else:
            dataset = _load_hub(dataset_name, dataset_config_name, split, cache_dir)
    elif train_data_dir is not None:
        folder = os.path.expanduser(train_data_dir)
        if not os.path.isdir(folder):
            raise DataError(
                f"train_data_dir {train_data_dir!r} does not exist or is not a folder", parameter="train_data_dir"
            )
        if _count_image_files(folder) == 0:
            raise DataError(
                f"train_data_dir {train_data_dir!r} contains no images (.png, .jpg, .webp, ...); pass a folder of "
                "image files",
                parameter="train_data_dir",
            )
        try:
            dataset = _load_split(
                "train_data_dir",
                repr(train_data_dir),
                split,
                path="imagefolder",
                data_dir=folder,
                cache_dir=cache_dir,
            )
        except FileNotFoundError as e:
            raise DataError(
                f"train_data_dir {train_data_dir!r}: no loadable images ({_one_line(e)})", parameter="train_data_dir"
            ) from e
    elif use_default_digits:
        if split not in ("train", "test"):
            raise DataError(
                f"split {split!r}: the embedded digits have only the splits 'train' and 'test'", parameter="split"
            )
        dataset = digits_dataset(split)  # type: ignore[arg-type]
    else:
        raise DataError(
            "dataset_name is not given and there is no default data; pass a Hub id or local path (or train_data_dir)",
            parameter="dataset_name",
        )
    return dataset, base_dir


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    use_default_digits: bool = True,
    split_parameter: str | None = None,
) -> tuple[datasets.Dataset, str]:
    """Load the training (or evaluation) images, as the `dataset_name` / `train_data_dir` options of diffusers'
    `train_unconditional.py` do, plus local files and the embedded digits.

    Args:
        dataset_name (`str`, *optional*): A local `save_to_disk` folder (`Dataset` or `DatasetDict`), a single data
            file of any format `datasets` has a packaged builder for (see [`table_file_builders`]: `.parquet`,
            `.csv`, `.json`/`.jsonl`, `.arrow`, …; image paths in it may be relative to its folder), a folder of such
            files (or any folder `datasets.load_dataset` understands, e.g. images), or a Hub dataset id. Hub datasets
            need the network unless already in the cache.
        dataset_config_name (`str`, *optional*): The configuration of a Hub dataset.
        train_data_dir (`str`, *optional*): A folder of images (loaded with the `imagefolder` builder).
        image_column (`str`, *optional*): The column holding the images; found automatically when not given.
        split (`str`, defaults to `"train"`): The split to use (a single data file is always one split).
        cache_dir (`str`, *optional*): The `datasets` cache directory.
        use_default_digits (`bool`, defaults to `True`): With neither `dataset_name` nor `train_data_dir`, use the
            embedded scikit-learn digits ([`digits_dataset`]); otherwise that is an error.
        split_parameter (`str`, *optional*): The caller's name for `split` when it is a user option (e.g.
            evaluate.py's `--split`): a split the data lack is then reported under it, with the splits they have.

    Returns:
        `(dataset, image_column)`, the column a `datasets.Image` feature unless it holds pixel arrays (see
        [`as_image_column`]).

    Raises:
        `DataError`: a one-line message; `parameter` names the argument at fault.
    """
    try:
        dataset, base_dir = _load_source(
            dataset_name, dataset_config_name, train_data_dir, split, cache_dir, use_default_digits
        )
    except UnknownSplitError as e:
        if split_parameter is None:
            raise
        raise DataError(
            f"{split_parameter} {split!r} is not a split of the data: {e}", parameter=split_parameter
        ) from e
    column = find_image_column(dataset, image_column)
    if base_dir is not None:
        dataset = _resolve_relative_paths(dataset, column, base_dir)
    return as_image_column(dataset, column), column


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing: PIL -> uint8 tensors, once
# ---------------------------------------------------------------------------------------------------------------------


def check_resolution(resolution: int, num_down_blocks: int) -> int:
    """Check that a `UNet2DModel` with `num_down_blocks` down blocks can take `resolution`×`resolution` images.

    Every down block but the last halves the size, so the resolution must be divisible by `2**(num_down_blocks-1)`.

    Args:
        resolution (`int`): The image side.
        num_down_blocks (`int`): The number of down blocks of the UNet.

    Returns:
        `resolution`.

    Raises:
        `DataError`: `parameter="resolution"`, with the nearest valid values.
    """
    if num_down_blocks < 1:
        raise ValueError(f"num_down_blocks must be >= 1, got {num_down_blocks}")
    factor = 2 ** (num_down_blocks - 1)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise DataError(
            f"resolution must be a positive integer divisible by {factor}, got {resolution!r}", parameter="resolution"
        )
    if resolution % factor:
        lower, upper = (resolution // factor) * factor, (resolution // factor + 1) * factor
        valid = f"{lower} or {upper}" if lower > 0 else str(upper)
        raise DataError(
            f"resolution {resolution} is not divisible by {factor} (2**({num_down_blocks}-1): a UNet with "
            f"{num_down_blocks} down blocks halves the size {num_down_blocks - 1} times); use e.g. {valid}",
            parameter="resolution",
        )
    return int(resolution)


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
                f"image {name} cannot be read: {type(e).__name__}: {_one_line(e)}; remove or replace it"
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


def _cell(image_column: str, row: int) -> str:
    return f"row {row} of column {image_column!r}"


def infer_channels(dataset: datasets.Dataset, image_column: str) -> int:
    """1 if the first image of `dataset` is grayscale, else 3 (see [`image_channels`])."""
    if len(dataset) == 0:
        raise DataError("the dataset has no rows")
    first = as_image_column(dataset.select([0]), image_column, decode=False)[0][image_column]
    return image_channels(decode_image(first, _cell(image_column, 0)))


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
                    preprocess_image(im, resolution, channels, where=_cell(image_column, i))
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
                pixels = preprocess_image(image, resolution, channels, where=_cell(image_column, i))
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


def _flip_mask(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(device)


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
            flip = _flip_mask(len(idx), generator, x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def labels_at(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> torch.Tensor:
        """The class labels of the images at `indices` (as [`batch`] takes them), int64 on the images' device."""
        if self.labels is None:
            raise ValueError("these images were loaded without labels (pass label_column to from_dataset)")
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor) else indices)
        return self.labels.index_select(0, idx.to(device=self.labels.device, dtype=torch.long).reshape(-1))


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
            flip = _flip_mask(len(arrays), self.generator, x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        out = {"pixel_values": x.contiguous()}
        if self.label_column is not None:
            out["class_labels"] = torch.as_tensor(batch[self.label_column], dtype=torch.long)
        return out
