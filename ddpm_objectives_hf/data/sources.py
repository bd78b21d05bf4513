"""Sources: where the images come from — the embedded scikit-learn digits, a Hub dataset, a local data file or folder,
a folder of images, a `save_to_disk` folder — and the split of them to use."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import DataError
from ..files import local_path
from .columns import as_image_column, find_image_column

if TYPE_CHECKING:
    import datasets

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


#: Lower-case extension → `(builder, builder kwargs)`: the single files read as a table by a packaged `datasets`
#: builder (a webdataset `.tar` holds image files and their labels).
TABLE_FILE_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".parquet": ("parquet", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".ndjson": ("json", {}),
    ".arrow": ("arrow", {}),
    ".tar": ("webdataset", {}),
}
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def image_file_extensions() -> frozenset[str]:
    """The lower-case extensions of the image files Pillow opens, and `.zip`: what the `imagefolder` builder of
    `datasets` loads from `train_data_dir` (`datasets` made its list the same way)."""
    from PIL import Image

    opened = (ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
    return frozenset(opened) | {".zip"}


def _env_offline() -> bool:
    return any(os.environ.get(k, "").upper() in _TRUE_VALUES for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def looks_like_local_path(name: str) -> bool:
    """Whether `name` is meant as a local path rather than a Hub id (`namespace/name`): absolute, starting with
    `./`, `../` or `~`, more than one `/`, or ending in a data file extension (`.parquet`, `.csv`, …)."""
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or os.path.splitext(name)[1].lower() in TABLE_FILE_BUILDERS
        or name.replace(os.sep, "/").strip("/").count("/") > 1
    )


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
        extension = os.path.splitext(path)[1].lower()
        if extension not in TABLE_FILE_BUILDERS:
            raise DataError(
                f"dataset_name {where} is a file of no format `datasets` reads as a table; pass a file ending in "
                f"{', '.join(sorted(TABLE_FILE_BUILDERS))}, a folder of such files or of images, a save_to_disk folder, or a "
                "Hub dataset id",
                parameter="dataset_name",
            )
        builder, builder_kwargs = TABLE_FILE_BUILDERS[extension]
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
    import datasets

    hint = (
        "pass a local folder, a data file or a save_to_disk folder instead (or a folder of images as train_data_dir)"
    )
    offline = "offline mode: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set"
    if _env_offline() and not datasets.config.HF_HUB_OFFLINE:
        # Set after `datasets` was imported: it reads the variables once, at import, and would still ask the Hub
        # (retrying for ~25 s), so it is not asked at all.
        raise DataError(
            f"dataset_name {name!r}: the Hugging Face Hub cannot be reached (offline mode: HF_HUB_OFFLINE or "
            f"HF_DATASETS_OFFLINE was set after `datasets` was imported, so its cache is not read either); {hint}",
            parameter="dataset_name",
        )
    try:
        return _load_split("dataset_name", repr(name), split, path=name, name=dataset_config_name, cache_dir=cache_dir)
    except (ConnectionError, TimeoutError) as e:
        why = offline if datasets.config.HF_HUB_OFFLINE else _one_line(e)
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
            file (see [`TABLE_FILE_BUILDERS`]: `.parquet`, `.csv`/`.tsv`, `.json`/`.jsonl`, `.arrow`, a webdataset
            `.tar`; image paths in it may be relative to its folder), a folder of such
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
