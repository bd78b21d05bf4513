"""Image data for training and evaluation, in four parts:

* :mod:`.sources`: where the images come from (the embedded digits, the Hub, local files and folders) and the split;
* :mod:`.columns`: which columns hold the images and the class labels;
* :mod:`.transforms`: one image decoded, converted, resized, cropped and flipped; the transform for data read on the fly;
* :mod:`.batches`: all images decoded once into one tensor, and batches drawn from it.
"""

from .batches import DEFAULT_MEMORY_LIMIT_BYTES, InMemoryImageData, fits_in_memory, images_to_tensor
from .columns import IMAGE_COLUMN_NAMES, as_image_column, find_image_column, find_label_column, labels_to_tensor
from .sources import (
    TABLE_FILE_BUILDERS,
    UnknownSplitError,
    digits_dataset,
    load_digits_split,
    load_image_dataset,
)
from .transforms import (
    GRAYSCALE_MODES,
    OnTheFlyTransform,
    decode_image,
    flip_randomly,
    image_channels,
    infer_channels,
    preprocess_image,
)

__all__ = [
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "GRAYSCALE_MODES",
    "IMAGE_COLUMN_NAMES",
    "TABLE_FILE_BUILDERS",
    "InMemoryImageData",
    "OnTheFlyTransform",
    "UnknownSplitError",
    "as_image_column",
    "decode_image",
    "digits_dataset",
    "find_image_column",
    "find_label_column",
    "fits_in_memory",
    "flip_randomly",
    "image_channels",
    "images_to_tensor",
    "infer_channels",
    "labels_to_tensor",
    "load_digits_split",
    "load_image_dataset",
    "preprocess_image",
]
