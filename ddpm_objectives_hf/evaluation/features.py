"""A small scikit-learn-digits classifier, used as the FID feature network and as "the classifier's view" of samples.

Inception-v3 features (the usual FID backbone) need torch-fidelity and downloaded weights, and say little about 8×8
grey digits anyway. This module trains, in a few seconds on CPU, a tiny CNN on the fixed digits train split
(`ddpm_objectives_hf.data.load_digits_split`) and exposes its 128-d penultimate layer as a torchmetrics-compatible
feature extractor. Weights are cached as safetensors (never pickled) next to a JSON sidecar with the test accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import load_digits_split
from ..files import atomic_write as _atomic_write

__all__ = [
    "CLASSIFIER_VERSION",
    "DigitsClassifier",
    "DigitsFeatureExtractor",
    "classifier_view",
    "default_cache_dir",
    "load_digits_classifier",
    "prepare_digits_input",
    "train_digits_classifier",
]

#: Bump when the architecture or the training recipe changes: cached weights of another version are retrained.
CLASSIFIER_VERSION = 1
NUM_FEATURES = 128
NUM_CLASSES = 10
IMAGE_SIZE = 8
DEFAULT_EPOCHS = 20
CACHE_ENV_VAR = "DDPM_OBJECTIVES_CACHE"


def default_cache_dir() -> Path:
    """The classifier cache folder: `$DDPM_OBJECTIVES_CACHE`, else `~/.cache/ddpm_objectives_hf`."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddpm_objectives_hf"


def prepare_digits_input(x: torch.Tensor) -> torch.Tensor:
    """Bring images of any size and channel count to the classifier's input: float `[N, 1, 8, 8]` in [0, 1].

    uint8 input is divided by 255; float input is taken to be in [0, 1] already (it is not clamped, so
    out-of-range samples are seen as such). Several channels are averaged to grey. Sizes that are integer multiples
    of 8 are reduced by area averaging — exactly how the digits were made from 32×32 bitmaps — and other sizes by
    antialiased bilinear resampling.

    Args:
        x: Images `[N, C, H, W]` (or `[N, H, W]`), uint8 in 0…255 or float in [0, 1].

    Returns:
        float32 tensor `[N, 1, 8, 8]`.
    """
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W] or [N, H, W], got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    h, w = x.shape[-2:]
    if (h, w) != (IMAGE_SIZE, IMAGE_SIZE):
        if h % IMAGE_SIZE == 0 and w % IMAGE_SIZE == 0:
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area")
        else:
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


class DigitsClassifier(nn.Module):
    """Tiny CNN for 8×8 grey digits: conv 32 → conv 64 → max-pool → linear 128 (feature layer) → linear 10.

    Accepts images of any size and channel count (see `prepare_digits_input`).
    """

    num_features = NUM_FEATURES

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, NUM_FEATURES)
        self.fc2 = nn.Linear(NUM_FEATURES, NUM_CLASSES)
        self.dropout = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (post-ReLU) activations; about a third of the units are inactive on real digits.

        Args:
            x: Images `[N, C, H, W]`, uint8 0…255 or float [0, 1].

        Returns:
            `[N, 128]` float32 features.
        """
        x = prepare_digits_input(x).to(self.conv1.weight.device)
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: Images `[N, C, H, W]`, uint8 0…255 or float [0, 1].

        Returns:
            `[N, 10]` logits.
        """
        return self.fc2(self.dropout(self.features(x)))


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an independent integer offset in [-max_shift, max_shift]² with zero fill."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [N, H, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [N, 1, W]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def _digits_tensor(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_digits_split(split)  # type: ignore[arg-type]
    return torch.from_numpy(images).float().div_(255.0).unsqueeze(1), torch.from_numpy(labels)


@torch.no_grad()
def _accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    pred = model(images).argmax(dim=1).cpu()
    model.train(was_training)
    return float((pred == labels).float().mean())


def train_digits_classifier(
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    lr: float = 3e-3,
) -> tuple[DigitsClassifier, float]:
    """Train the digits classifier on the fixed train split, with random ±1-pixel shifts as augmentation.

    Seeded (initialisation, shuffling, augmentation and dropout all come from `seed`; the global RNG state is left
    untouched) and bitwise deterministic for a given torch build and thread count — other thread counts give
    slightly different weights of the same accuracy, which is why the weights are cached and fingerprinted. About
    3 s on 2 CPU cores with the defaults.

    Args:
        seed: Random seed.
        epochs: Passes over the 1,437 training images.
        device: Where to train.
        batch_size: Minibatch size.
        lr: Peak learning rate of the one-cycle AdamW schedule.

    Returns:
        `(model, test_accuracy)`: the model in eval mode on `device`, and its accuracy on the held-out test split.
    """
    device = torch.device(device)
    x_train, y_train = _digits_tensor("train")
    x_test, y_test = _digits_tensor("test")
    generator = torch.Generator().manual_seed(seed)
    # enable_grad: callers may be inside torch.no_grad() (e.g. building an FID metric)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
        torch.manual_seed(seed)
        model = DigitsClassifier().to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = math.ceil(len(y_train) / batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
        )
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y_train), generator=generator)
            for i in range(0, len(perm), batch_size):
                idx = perm[i : i + batch_size]
                xb = _random_shift(x_train[idx], 1, generator).to(device)
                loss = F.cross_entropy(model(xb), y_train[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, _accuracy(model, x_test, y_test)


def _cache_paths(cache_dir: str | os.PathLike | None, seed: int) -> tuple[Path, Path]:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stem = f"digits_classifier_v{CLASSIFIER_VERSION}_seed{seed}"
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def _weights_fingerprint(model: nn.Module) -> str:
    """Short sha256 of the weights (sorted keys, raw float32 bytes): identifies the FID feature space."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _try_load_cached(weights_path: Path, meta_path: Path, seed: int) -> tuple[DigitsClassifier, dict] | None:
    """The cached model and its info, or None when missing, corrupt, or of another version/seed."""
    from safetensors.torch import load_file

    if not (weights_path.is_file() and meta_path.is_file()):
        return None
    try:
        info = json.loads(meta_path.read_text())
        if info.get("version") != CLASSIFIER_VERSION or info.get("seed") != seed:
            return None
        state = load_file(str(weights_path))  # safetensors: plain tensors, nothing is unpickled
        model = DigitsClassifier()
        model.load_state_dict(state, strict=True)
        float(info["test_accuracy"])
        if info.get("weights_sha256") not in (None, _weights_fingerprint(model)):
            return None
    except Exception:  # any unreadable cache is simply rebuilt
        return None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def load_digits_classifier(
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    retrain: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[DigitsClassifier, dict]:
    """Load the cached digits classifier, training and caching it first when needed.

    The cache is `<cache_dir>/digits_classifier_v<version>_seed<seed>.safetensors` plus a `.json` sidecar. A missing,
    corrupt (unreadable or wrong keys/shapes) or outdated cache is replaced by a freshly trained model; weights are
    only ever read with `safetensors.torch.load_file`, never unpickled.

    Args:
        cache_dir: Cache folder; default `$DDPM_OBJECTIVES_CACHE` or `~/.cache/ddpm_objectives_hf`.
        seed: Training seed (part of the cache key).
        retrain: Ignore any cache and retrain (and overwrite it).
        device: Device for the returned model.

    Returns:
        `(model, info)`: the frozen model in eval mode, and a dict with `test_accuracy`, `seed`, `version`,
        `epochs`, `num_features`, `weights_sha256` (fingerprint of the feature space: FIDs are comparable only
        between equal fingerprints), `torch_version`, `torch_threads`, `cache_path` and `from_cache`.
    """
    from safetensors.torch import save_file

    weights_path, meta_path = _cache_paths(cache_dir, seed)
    loaded = None if retrain else _try_load_cached(weights_path, meta_path, seed)
    if loaded is not None:
        model, info = loaded
        info = {**info, "cache_path": str(weights_path), "from_cache": True}
        return model.to(device), info

    model, acc = train_digits_classifier(seed=seed)
    info = {
        "test_accuracy": acc,
        "seed": seed,
        "version": CLASSIFIER_VERSION,
        "epochs": DEFAULT_EPOCHS,
        "num_features": NUM_FEATURES,
        "weights_sha256": _weights_fingerprint(model),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # weights first, then the sidecar: a crash in between leaves no valid pair, so the next load retrains
    _atomic_write(weights_path, lambda p: save_file(state, p, metadata={"version": str(CLASSIFIER_VERSION)}))
    _atomic_write(meta_path, lambda p: Path(p).write_text(json.dumps(info, indent=2) + "\n"))
    return model.to(device), {**info, "cache_path": str(weights_path), "from_cache": False}


class DigitsFeatureExtractor(nn.Module):
    """The classifier's 128-d penultimate layer as a torchmetrics FID feature extractor.

    `forward` accepts what `FrechetInceptionDistance` passes a custom network: uint8 `[N, C, H, W]` in 0…255
    (`normalize=False`) or float in [0, 1] (`normalize=True`), any channel count and size. The network is frozen and
    stays in eval mode.

    Args:
        classifier: A trained `DigitsClassifier`.
    """

    num_features = NUM_FEATURES

    def __init__(self, classifier: DigitsClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> DigitsFeatureExtractor:
        """Stay in eval mode whatever is asked (torchmetrics and `.train()` calls cannot switch dropout on)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """Features `[N, 128]` (float32) of images `[N, C, H, W]`.

        Args:
            imgs: uint8 images in 0…255, or float images in [0, 1].
        """
        return self.classifier.features(imgs)


@torch.no_grad()
def classifier_view(
    classifier: nn.Module, images01: torch.Tensor, batch_size: int = 512, requested_labels: torch.Tensor | None = None
) -> dict:
    """How the digits classifier sees a set of images: predicted-class histogram, confidence, class entropy, and for
    samples of requested classes, how often it sees the class asked for.

    Mode collapse shows as a low `class_entropy_nats` (uniform over 10 classes is ln 10 ≈ 2.303); unrecognisable
    samples as a low `mean_confidence`.

    Args:
        classifier: A `DigitsClassifier` (or a `DigitsFeatureExtractor` wrapping one).
        images01: Images `[N, C, H, W]` in [0, 1] (uint8 0…255 also accepted).
        batch_size: Images per forward pass.
        requested_labels: The class each image was generated for (class-conditional samples), optional.

    Returns:
        Dict with `num_samples`, `class_histogram` (list of 10 counts), `mean_confidence` (mean max-softmax
        probability), `class_entropy_nats` (entropy of the normalised histogram) and `max_entropy_nats` (ln 10); with
        `requested_labels` also `accuracy` (fraction classified as requested) and `per_class_accuracy` (by requested
        class; `None` for a class not requested).
    """
    if isinstance(classifier, DigitsFeatureExtractor):
        classifier = classifier.classifier
    was_training = classifier.training
    classifier.eval()
    counts = torch.zeros(NUM_CLASSES, dtype=torch.long)
    conf_sum = 0.0
    predictions = []
    for i in range(0, len(images01), batch_size):
        probs = classifier(images01[i : i + batch_size]).double().softmax(dim=1).cpu()
        conf, pred = probs.max(dim=1)
        conf_sum += float(conf.sum())
        counts += torch.bincount(pred, minlength=NUM_CLASSES)
        predictions.append(pred)
    classifier.train(was_training)
    n = int(counts.sum())
    freq = counts.double() / max(n, 1)
    entropy = float(-(freq[freq > 0] * freq[freq > 0].log()).sum()) if n else 0.0
    view = {
        "num_samples": n,
        "class_histogram": [int(c) for c in counts],
        "mean_confidence": conf_sum / n if n else float("nan"),
        "class_entropy_nats": entropy,
        "max_entropy_nats": float(np.log(NUM_CLASSES)),
    }
    if requested_labels is not None:
        requested = torch.as_tensor(requested_labels).cpu().long().reshape(-1)
        if len(requested) != n:
            raise ValueError(f"requested_labels has {len(requested)} entries for {n} images")
        correct = (torch.cat(predictions) == requested).double()
        view["accuracy"] = float(correct.mean()) if n else float("nan")
        view["per_class_accuracy"] = [
            float(correct[requested == k].mean()) if (requested == k).any() else None for k in range(NUM_CLASSES)
        ]
    return view
