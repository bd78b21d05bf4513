"""Tests for `ddpm_objectives_hf.data`: loading image datasets, decoding them once to tensors, batches, checks."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ddpm_objectives_hf.cli import error_line
from ddpm_objectives_hf.data import (
    TABLE_FILE_BUILDERS,
    InMemoryImageData,
    OnTheFlyTransform,
    as_image_column,
    digits_dataset,
    find_image_column,
    fits_in_memory,
    images_to_tensor,
    infer_channels,
    load_digits_split,
    load_image_dataset,
    preprocess_image,
)
from ddpm_objectives_hf.errors import DataError
from ddpm_objectives_hf.files import local_path
from ddpm_objectives_hf.training.models import check_resolution


@pytest.fixture(autouse=True)
def _offline_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the network; keep `datasets`' progress bars out of the test output."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets.disable_progress_bars()


@contextlib.contextmanager
def raises_data_error(parameter: str | None, match: str) -> Iterator[pytest.ExceptionInfo]:
    """Expect a one-line `DataError` naming `parameter`, whose command-line form (`cli.error_line`) matches `match`."""
    with pytest.raises(DataError) as info:
        yield info
    assert info.value.parameter == parameter
    line = error_line(info.value)
    assert re.search(match, line), line
    assert "\n" not in str(info.value)


def _solid(size: tuple[int, int], color: int | tuple[int, int, int], mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def _small_dataset(n: int = 4) -> datasets.Dataset:
    """RGB 6×6 images of constant colour `(10 k, 20 k, 30 k)` with a feature-typed `picture` column."""
    images = [_solid((6, 6), (10 * k, 20 * k, 30 * k)) for k in range(n)]
    features = datasets.Features({"picture": datasets.Image(), "idx": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"picture": images, "idx": list(range(n))}, features=features)


def _write_pngs(folder: Path, mode: str, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        color = 50 * k if mode == "L" else (50 * k, 10, 200)
        _solid((8, 8), color, mode).save(folder / f"img_{k}.png")


# ---------------------------------------------------------------------------------------------------------------------
# The embedded digits
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, size", [("train", 1437), ("test", 360)])
def test_digits_dataset(split: str, size: int) -> None:
    ds = digits_dataset(split)
    assert len(ds) == size
    assert ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == [str(i) for i in range(10)]
    row = ds[0]
    assert isinstance(row["image"], Image.Image)
    assert row["image"].mode == "L" and row["image"].size == (8, 8)
    images, labels = load_digits_split(split)
    np.testing.assert_array_equal(np.asarray(row["image"]), images[0])
    assert row["label"] == labels[0]


def test_default_is_digits_and_can_be_refused() -> None:
    ds, column = load_image_dataset()
    assert len(ds) == 1437 and column == "image"
    ds, _ = load_image_dataset(split="test")
    assert len(ds) == 360
    with raises_data_error("dataset_name", "--dataset_name.*train_data_dir"):
        load_image_dataset(use_default_digits=False)


# ---------------------------------------------------------------------------------------------------------------------
# Local sources
# ---------------------------------------------------------------------------------------------------------------------


def test_load_save_to_disk_dataset(tmp_path: Path) -> None:
    _small_dataset().save_to_disk(str(tmp_path / "saved"))
    ds, column = load_image_dataset(str(tmp_path / "saved"))
    assert len(ds) == 4 and column == "picture"


def test_load_save_to_disk_dataset_dict(tmp_path: Path) -> None:
    data = datasets.DatasetDict({"train": _small_dataset(4), "test": _small_dataset(2)})
    data.save_to_disk(str(tmp_path / "saved"))
    train, column = load_image_dataset(str(tmp_path / "saved"))
    test, _ = load_image_dataset(str(tmp_path / "saved"), split="test")
    assert (len(train), len(test), column) == (4, 2, "picture")
    with raises_data_error("dataset_name", r"--dataset_name.*no split 'validation'.*train, test"):
        load_image_dataset(str(tmp_path / "saved"), split="validation")


def test_load_parquet_file_and_folder(tmp_path: Path) -> None:
    (tmp_path / "pq").mkdir()
    _small_dataset(3).to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    ds, column = load_image_dataset(str(tmp_path / "pq" / "train-00000.parquet"), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and column == "picture"
    assert isinstance(ds.features["picture"], datasets.Image)
    assert np.asarray(ds[2]["picture"])[0, 0].tolist() == [20, 40, 60]
    ds, column = load_image_dataset(str(tmp_path / "pq"), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and column == "picture"


def _png(color: tuple[int, int, int], size: tuple[int, int] = (6, 6)) -> bytes:
    buf = io.BytesIO()
    _solid(size, color).save(buf, format="PNG")
    return buf.getvalue()


COLORS = [(10 * k, 20 * k, 30 * k) for k in range(3)]


def _write_table(folder: Path, extension: str) -> Path:
    """A tiny image table in the format of `extension`: csv/tsv/json/jsonl hold image paths relative to the file's
    folder, parquet/arrow hold the PNG bytes; each with a `label` column."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"images{extension}"
    if extension in (".csv", ".tsv", ".json", ".jsonl"):
        (folder / "img").mkdir()
        names = []
        for k, color in enumerate(COLORS):
            _solid((6, 6), color).save(folder / "img" / f"{k}.png")
            names.append(f"img/{k}.png")
        if extension in (".csv", ".tsv"):
            sep = "," if extension == ".csv" else "\t"
            path.write_text(f"image{sep}label\n" + "".join(f"{n}{sep}{k}\n" for k, n in enumerate(names)))
        elif extension == ".jsonl":
            path.write_text("".join(json.dumps({"image": n, "label": k}) + "\n" for k, n in enumerate(names)))
        else:
            path.write_text(json.dumps([{"image": n, "label": k} for k, n in enumerate(names)]))
        return path
    table = pa.table({"image": [_png(c) for c in COLORS], "label": list(range(len(COLORS)))})
    if extension == ".parquet":
        pq.write_table(table, path)
    else:  # .arrow: an Arrow IPC stream, the format of `datasets`' own cache files
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return path


def test_table_file_formats() -> None:
    builders = TABLE_FILE_BUILDERS
    for extension, builder in [(".parquet", "parquet"), (".csv", "csv"), (".tsv", "csv"), (".json", "json")]:
        assert builders[extension][0] == builder
    assert builders[".jsonl"][0] == "json" and builders[".arrow"][0] == "arrow"
    assert builders[".tsv"][1] == {"sep": "\t"}
    assert ".png" not in builders and ".jpg" not in builders  # folder-based builders read folders, not tables


@pytest.mark.parametrize("extension", [".parquet", ".csv", ".tsv", ".json", ".jsonl", ".arrow"])
def test_load_single_table_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extension: str) -> None:
    path = _write_table(tmp_path / "data", extension)
    monkeypatch.chdir(tmp_path)  # relative image paths are relative to the table file, not to the working folder
    ds, column = load_image_dataset(str(path), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and column == "image"
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds[1]["image"], Image.Image)
    x = images_to_tensor(ds, column, resolution=6)
    assert [tuple(x[k, :, 0, 0].tolist()) for k in range(3)] == COLORS


def test_unknown_file_format_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images.xyz").write_text("?")
    with raises_data_error("dataset_name", r"^--dataset_name .*images.xyz.* no format .*\.csv.*\.parquet"):
        load_image_dataset(str(tmp_path / "images.xyz"))


def test_local_path_or_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "org").mkdir()
    assert local_path(str(tmp_path / "org")) == tmp_path / "org"
    assert local_path("~/org") == tmp_path / "org"
    monkeypatch.chdir(tmp_path)
    assert local_path("org") == Path("org")  # an existing folder wins over a Hub id of the same name
    assert local_path("org/model") is None and local_path("someone/else") is None


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((3, 4, 4), 7, np.uint8), [7, 7, 7]),  # [C, H, W]
        (np.full((4, 4, 1), 9, np.uint8), [9]),  # [H, W, 1]
        (np.full((4, 4, 3), 0.5, np.float32), [128, 128, 128]),  # float in [0, 1]
        (np.full((4, 4), 0.25, np.float64), [64]),
    ],
    ids=["uint8-CHW", "uint8-HW1", "float-HWC", "float-HW"],
)
def test_pixel_array_columns(array: np.ndarray, expected: list[int]) -> None:
    # Cases that `datasets.Image` cannot cast (CHW, HW1, multi-channel float) or casts to black (float in [0, 1]).
    ds = datasets.Dataset.from_dict({"pixels": [array, array]})
    assert as_image_column(ds, "pixels") is ds
    assert infer_channels(ds, "pixels") == len(expected)
    x = images_to_tensor(ds, "pixels", resolution=4)
    assert x.shape == (2, len(expected), 4, 4) and x[:, :, 0, 0].tolist() == [expected, expected]


def test_pixel_array_of_wrong_rank_is_an_error() -> None:
    ds = datasets.Dataset.from_dict({"pixels": [[1, 2, 3], [4, 5, 6]]})
    with raises_data_error(None, r"row 0 of column 'pixels' is a int64 array of shape \(3,\), not an image"):
        images_to_tensor(ds, "pixels", resolution=4)


def _bad_image_folder(folder: Path, kind: str) -> Path:
    _write_pngs(folder, "RGB", n=4)
    bad = folder / "img_1.png"
    data = bad.read_bytes()
    bad.write_bytes(b"this is not an image" if kind == "not-an-image" else data[: len(data) // 2])
    return bad


@pytest.mark.parametrize("kind", ["not-an-image", "truncated"])
def test_unreadable_image_file_names_the_file(tmp_path: Path, kind: str) -> None:
    bad = _bad_image_folder(tmp_path / "images", kind)
    ds, column = load_image_dataset(train_data_dir=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"))
    match = rf"^image '{re.escape(str(bad))}' cannot be read: .*; remove or replace it$"
    with raises_data_error(None, match):
        images_to_tensor(ds, column, resolution=8)
    with raises_data_error(None, match):
        images_to_tensor(ds, column, resolution=8, num_proc=2)
    transform = OnTheFlyTransform(column, resolution=8, channels=3)
    with raises_data_error(None, match):
        transform.apply_to(ds)[:4]


def test_unreadable_image_bytes_name_the_row(tmp_path: Path) -> None:
    table = pa.table({"image": [_png(COLORS[0]), _png(COLORS[1])[:40]]})
    pq.write_table(table, tmp_path / "images.parquet")
    ds, column = load_image_dataset(str(tmp_path / "images.parquet"), cache_dir=str(tmp_path / "cache"))
    with raises_data_error(None, r"^image row 1 of column 'image' cannot be read"):
        images_to_tensor(ds, column, resolution=6)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
@pytest.mark.parametrize("layout", ["dataset", "dataset_dict"])
def test_damaged_save_to_disk_shard_names_the_file(tmp_path: Path, damage: str, layout: str) -> None:
    folder = tmp_path / "saved"
    if layout == "dataset":
        _small_dataset(4).save_to_disk(str(folder), num_shards=2)
    else:
        datasets.DatasetDict({"train": _small_dataset(4), "test": _small_dataset(2)}).save_to_disk(str(folder))
    shard = Path(sorted(glob.glob(str(folder / "**" / "*.arrow"), recursive=True))[-1])
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    state = "missing" if damage == "missing" else "unreadable"
    match = rf"^--dataset_name .*save_to_disk folder .*'{re.escape(str(shard))}' is {state}"
    with raises_data_error("dataset_name", match):
        load_image_dataset(str(folder))


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1)])
def test_load_imagefolder(tmp_path: Path, mode: str, channels: int) -> None:
    _write_pngs(tmp_path / "images", mode)
    ds, column = load_image_dataset(train_data_dir=str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and column == "image"
    assert ds[0]["image"].mode == mode
    assert infer_channels(ds, column) == channels
    x = images_to_tensor(ds, column, resolution=8)
    assert x.shape == (3, channels, 8, 8)
    assert sorted(x[:, 0, 0, 0].tolist()) == [0, 50, 100]


def test_imagefolder_through_dataset_name(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "images", "RGB")
    ds, column = load_image_dataset(str(tmp_path / "images"), cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 3 and column == "image"


def test_train_data_dir_errors(tmp_path: Path) -> None:
    with raises_data_error("train_data_dir", r"--train_data_dir .* does not exist"):
        load_image_dataset(train_data_dir=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with raises_data_error("train_data_dir", r"--train_data_dir .* contains no images"):
        load_image_dataset(train_data_dir=str(tmp_path / "empty"))


def test_missing_local_dataset_name(tmp_path: Path) -> None:
    with raises_data_error("dataset_name", r"--dataset_name .* does not exist"):
        load_image_dataset(str(tmp_path / "nowhere"))
    for name in ("nowhere/at/all.parquet", "nowhere/images.csv", "someone/data.jsonl"):
        with raises_data_error("dataset_name", r"--dataset_name .* does not exist"):
            load_image_dataset(name)


def test_both_sources_is_an_error(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "images", "RGB")
    with raises_data_error("dataset_name", "--dataset_name.*train_data_dir"):
        load_image_dataset("some/dataset", train_data_dir=str(tmp_path / "images"))


def test_hub_name_offline_fails_fast() -> None:
    start = time.monotonic()
    with raises_data_error("dataset_name", "^--dataset_name .*cannot be reached"):
        load_image_dataset("someone/surely-not-a-cached-dataset-xyz")
    assert time.monotonic() - start < 20


def test_hub_offline_env_set_after_import_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """`datasets`/`huggingface_hub` read HF_HUB_OFFLINE at import; the loader must still honour a later setting."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with raises_data_error("dataset_name", "^--dataset_name"):
        load_image_dataset("cifar10")
    assert time.monotonic() - start < 20
    assert datasets.config.HF_HUB_OFFLINE is False  # restored


# ---------------------------------------------------------------------------------------------------------------------
# The image column
# ---------------------------------------------------------------------------------------------------------------------


def test_image_column_by_feature_and_by_name() -> None:
    assert find_image_column(_small_dataset()) == "picture"
    by_name = datasets.Dataset.from_dict({"label": [0, 1], "img": [b"x", b"y"]})
    assert find_image_column(by_name) == "img"
    assert find_image_column(_small_dataset(), "idx") == "idx"


def test_image_column_errors(tmp_path: Path) -> None:
    _small_dataset().save_to_disk(str(tmp_path / "saved"))
    with raises_data_error("image_column", r"^--image_column 'pixels' .*picture, idx"):
        load_image_dataset(str(tmp_path / "saved"), image_column="pixels")
    no_images = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with raises_data_error("image_column", r"^--image_column.*text, label"):
        find_image_column(no_images)


@pytest.mark.parametrize("column", ["idx", "score"])
def test_image_column_of_numbers_is_an_error(tmp_path: Path, column: str) -> None:
    data = _small_dataset().add_column("score", [0.5, 1.5, 2.5, 3.5])
    data.save_to_disk(str(tmp_path / "saved"))
    with raises_data_error("image_column", rf"^--image_column '{column}' holds (int64|double) values, not images"):
        load_image_dataset(str(tmp_path / "saved"), image_column=column)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding to tensors
# ---------------------------------------------------------------------------------------------------------------------


def test_images_to_tensor_constant_colour_and_dtype() -> None:
    x = images_to_tensor(_small_dataset(), "picture", resolution=6)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 6, 6)
    for k in range(4):
        expected = torch.tensor([10 * k, 20 * k, 30 * k], dtype=torch.uint8)[:, None, None].expand(3, 6, 6)
        assert torch.equal(x[k], expected)
    # Up- and downscaling keep a constant colour constant.
    assert torch.equal(
        images_to_tensor(_small_dataset(), "picture", resolution=16)[3], x[3, :, :1, :1].expand(3, 16, 16)
    )
    assert torch.equal(images_to_tensor(_small_dataset(), "picture", resolution=4)[3], x[3, :, :1, :1].expand(3, 4, 4))


def test_images_to_tensor_grayscale_and_resize_digits() -> None:
    ds = digits_dataset("test")
    x8 = images_to_tensor(ds, "image", resolution=8)
    assert x8.shape == (360, 1, 8, 8) and x8.dtype == torch.uint8
    np.testing.assert_array_equal(x8[:, 0].numpy(), load_digits_split("test")[0])
    x16 = images_to_tensor(ds, "image", resolution=16)
    assert x16.shape == (360, 1, 16, 16)
    # Bilinear 2× upscaling keeps the mean brightness close.
    assert abs(x16.float().mean().item() - x8.float().mean().item()) < 3.0


def test_images_to_tensor_forced_channels() -> None:
    gray = images_to_tensor(_small_dataset(), "picture", resolution=6, channels=1)
    assert gray.shape == (4, 1, 6, 6)
    rgb = images_to_tensor(digits_dataset("test").select(range(5)), "image", resolution=8, channels=3)
    assert rgb.shape == (5, 3, 8, 8)
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])


def test_images_to_tensor_num_proc_matches() -> None:
    ds = digits_dataset("test").select(range(40))
    assert torch.equal(images_to_tensor(ds, "image", 16, num_proc=2), images_to_tensor(ds, "image", 16))


def test_resize_and_center_crop_non_square() -> None:
    # 20 wide × 10 high: left half black, middle 10 columns white, right half black → after shorter side = 10 and a
    # centre crop only the white middle remains.
    array = np.zeros((10, 20), np.uint8)
    array[:, 5:15] = 255
    out = preprocess_image(Image.fromarray(array), resolution=10, channels=1, center_crop=True)
    assert out.shape == (10, 10, 1) and (out == 255).all()
    out = preprocess_image(Image.fromarray(array), resolution=5, channels=3, center_crop=True)
    assert out.shape == (5, 5, 3)


# ---------------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------------


def test_in_memory_batch_range_and_values() -> None:
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    images[1] = 255
    images[2] = 51
    data = InMemoryImageData(images)
    assert (len(data), data.channels, data.resolution) == (3, 1, 4)
    x = data.batch([0, 1, 2])
    assert x.dtype == torch.float32 and x.shape == (3, 1, 4, 4)
    assert (x[0] == -1).all() and (x[1] == 1).all()
    assert torch.allclose(x[2], torch.full_like(x[2], 51 / 127.5 - 1))
    x = InMemoryImageData(images_to_tensor(digits_dataset("test"), "image", 8)).batch(torch.arange(360))
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1


def test_in_memory_batch_flip() -> None:
    data = InMemoryImageData(images_to_tensor(digits_dataset("test").select(range(64)), "image", 8))
    indices = torch.arange(64)
    plain = data.batch(indices)
    assert not torch.equal(plain, plain.flip(-1))  # digits are not mirror-symmetric
    generator = torch.Generator().manual_seed(0)
    flipped = data.batch(indices, random_flip=True, generator=generator)
    is_flipped = [torch.equal(f, p.flip(-1)) and not torch.equal(f, p) for f, p in zip(flipped, plain)]
    is_plain = [torch.equal(f, p) for f, p in zip(flipped, plain)]
    assert all(a or b for a, b in zip(is_flipped, is_plain))
    assert 10 < sum(is_flipped) < 54
    # The same generator state gives the same flips.
    again = data.batch(indices, random_flip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flipped, again)


def test_epoch_order_partitions_each_epoch_between_processes() -> None:
    data = InMemoryImageData(torch.zeros(10, 1, 2, 2, dtype=torch.uint8))
    single = data.epoch_order(epoch=0, seed=3)
    assert sorted(single.tolist()) == list(range(10)) and single.dtype == torch.long
    assert torch.equal(single, data.epoch_order(epoch=0, seed=3))  # the same on every call (and on resume)
    assert not torch.equal(single, data.epoch_order(epoch=1, seed=3))
    assert not torch.equal(single, data.epoch_order(epoch=0, seed=4))
    shares = [data.epoch_order(0, 3, process_index=r, num_processes=3) for r in range(3)]
    assert [len(s) for s in shares] == [4, 3, 3]
    assert sorted(torch.cat(shares).tolist()) == list(range(10))
    assert torch.equal(shares[1], single[1::3])


def test_fits_in_memory() -> None:
    assert fits_in_memory(50_000, 3, 32)
    assert not fits_in_memory(1_000_000, 3, 256)
    assert fits_in_memory(10, 1, 8, limit_bytes=640) and not fits_in_memory(10, 1, 8, limit_bytes=639)


def test_on_the_fly_transform_with_dataloader() -> None:
    transform = OnTheFlyTransform("picture", resolution=4, center_crop=True, random_flip=True)
    ds = _small_dataset().with_transform(transform)
    row = ds[3]
    assert set(row) == {"pixel_values"}
    assert row["pixel_values"].shape == (3, 4, 4)
    expected = torch.tensor([30, 60, 90]) / 127.5 - 1
    assert torch.allclose(row["pixel_values"], expected[:, None, None].expand(3, 4, 4))
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["pixel_values"].dtype == torch.float32
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1


def test_on_the_fly_transform_matches_in_memory_without_flip() -> None:
    ds = digits_dataset("test").select(range(16))
    transform = OnTheFlyTransform("image", resolution=16, center_crop=True)
    on_the_fly = ds.with_transform(transform)[:16]["pixel_values"]
    in_memory = InMemoryImageData(images_to_tensor(ds, "image", 16)).batch(torch.arange(16))
    assert torch.equal(on_the_fly, in_memory)


def test_on_the_fly_random_crop_is_inside_the_image() -> None:
    array = np.arange(12 * 6, dtype=np.uint8).reshape(6, 12)  # 12 wide, 6 high: a 6×6 window slides over 7 places
    transform = OnTheFlyTransform("image", resolution=6, channels=1, generator=torch.Generator().manual_seed(1))
    crops = {
        tuple(transform({"image": [Image.fromarray(array)]})["pixel_values"][0, 0, 0, :1].tolist()) for _ in range(30)
    }
    assert len(crops) > 1


# ---------------------------------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------------------------------


def test_check_resolution() -> None:
    assert check_resolution(32, 4) == 32
    assert check_resolution(8, 4) == 8
    assert check_resolution(7, 1) == 7
    with raises_data_error("resolution", r"^--resolution 30 .*divisible by 8.*24 or 32"):
        check_resolution(30, 4)
    with raises_data_error("resolution", "^--resolution must be a positive integer"):
        check_resolution(0, 2)
    with raises_data_error("resolution", "^--resolution must be a positive integer"):
        check_resolution(-8, 2)
    with raises_data_error("resolution", r"^--resolution 4 .*use e.g. 8"):
        check_resolution(4, 4)


def test_data_error_is_value_error() -> None:
    assert issubclass(DataError, ValueError)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
