"""Columns: which column holds the images and which the class labels, and the image column as `datasets.Image`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import DataError

if TYPE_CHECKING:
    import datasets

IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values")


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


def cell_name(image_column: str, row: int) -> str:
    """How a cell is named in an error when it has no file path."""
    return f"row {row} of column {image_column!r}"
