"""Image data for training and evaluation: Hugging Face datasets, and the embedded scikit-learn digits."""

from __future__ import annotations

from typing import Literal

import numpy as np

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
