"""Fréchet distance between image sets with torchmetrics, on digits-classifier or Inception-v3 features.

`feature="digits"` uses the 128-d penultimate layer of a small CNN trained on the scikit-learn digits
(`ddpm_objectives_hf.evaluation.features`); it works offline, in seconds, and is the meaningful choice for 8×8 digits. Its
values are *not* comparable with Inception FIDs from the literature. `feature="inception"` is the standard 2048-d
Inception-v3 pool3 FID; it needs torch-fidelity and its weights already on disk. `feature="auto"` picks Inception
when it can be built offline, else digits.

Statistics are accumulated in float64 (torchmetrics keeps the sums in double) and the distance itself is computed in
float64 too, from the symmetric form Tr√(√Σ₁ Σ₂ √Σ₁), so the FID of a set with itself is zero to ~1e-11.

FID is a biased estimator: it needs at least 2 images per side and is stable only with many more — at least as many
images as feature dimensions (128 for digits, 2048 for Inception), ideally several times that. Compare FIDs only
between runs that use the same feature network, the same reference set and the same number of generated images.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from ..errors import ConfigError, FeatureNetworkError
from .features import DigitsFeatureExtractor, load_digits_classifier

__all__ = [
    "FID_FEATURES",
    "FIDReference",
    "FeatureNetworkError",
    "Float64FrechetInceptionDistance",
    "compute_fid",
    "frechet_distance",
    "inception_status",
    "make_fid_metric",
]

FID_FEATURES = ("auto", "digits", "inception")
FeatureName = Literal["auto", "digits", "inception"]
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ENV_VAR = "DDPM_OBJECTIVES_INCEPTION_WEIGHTS"


def _psd_sqrt(sigma: Tensor) -> Tensor:
    """Symmetric square root of a covariance matrix, negative round-off eigenvalues clipped to 0."""
    evals, evecs = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Fréchet distance between two Gaussians, in float64: ‖μ₁−μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr √(√Σ₁ Σ₂ √Σ₁).

    Uses symmetric square roots and the singular values of √Σ₂ √Σ₁ rather than the eigenvalues of the non-symmetric
    Σ₁Σ₂ (torchmetrics' formula), which is better conditioned for the rank-deficient covariances of small sample sets.

    Args:
        mu1: Mean `[d]` of the first set.
        sigma1: Covariance `[d, d]` of the first set.
        mu2: Mean `[d]` of the second set.
        sigma2: Covariance `[d, d]` of the second set.

    Returns:
        Scalar float64 tensor.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    sqrt1, sqrt2 = _psd_sqrt(sigma1), _psd_sqrt(sigma2)
    # √Σ₁ Σ₂ √Σ₁ = (√Σ₂ √Σ₁)ᵀ(√Σ₂ √Σ₁), so its square root has the singular values of √Σ₂ √Σ₁ as eigenvalues;
    # taking singular values directly avoids the square root of tiny, noisy eigenvalues.
    trace_sqrt = torch.linalg.svdvals(sqrt2 @ sqrt1).sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt


class Float64FrechetInceptionDistance(FrechetInceptionDistance):
    """torchmetrics' `FrechetInceptionDistance` that also *returns* float64 and is lenient about inputs.

    torchmetrics accumulates the feature sums in float64 but casts the result back to the feature dtype (float32);
    this subclass keeps float64 throughout (see `frechet_distance`). `update` moves images to the metric's device and,
    for the Inception network, repeats single-channel images to RGB.
    """

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch of real or generated images.

        Args:
            imgs: `[N, C, H, W]` float in [0, 1] (the metric is built with `normalize=True`).
            real: Whether the batch is from the reference set.
        """
        imgs = imgs.to(self.device)
        if not self.used_custom_model and imgs.shape[1] == 1:
            imgs = imgs.expand(-1, 3, -1, -1)
        super().update(imgs, real)

    def compute(self) -> Tensor:
        """FID between the accumulated real and generated statistics, as a float64 scalar tensor."""
        n_real, n_fake = int(self.real_features_num_samples), int(self.fake_features_num_samples)
        if n_real < 2 or n_fake < 2:
            raise RuntimeError(f"FID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
        mean_real = self.real_features_sum / n_real
        mean_fake = self.fake_features_sum / n_fake
        cov_real = (self.real_features_cov_sum - n_real * torch.outer(mean_real, mean_real)) / (n_real - 1)
        cov_fake = (self.fake_features_cov_sum - n_fake * torch.outer(mean_fake, mean_fake)) / (n_fake - 1)
        return frechet_distance(mean_real, cov_real, mean_fake, cov_fake)


def _inception_weights_candidates() -> list[Path]:
    candidates = []
    if os.environ.get(INCEPTION_WEIGHTS_ENV_VAR):
        candidates.append(Path(os.environ[INCEPTION_WEIGHTS_ENV_VAR]).expanduser())
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME)
    return candidates


def inception_status(weights_path: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Whether Inception FID features can be built offline.

    Args:
        weights_path: Explicit torch-fidelity Inception weights file; default `$DDPM_OBJECTIVES_INCEPTION_WEIGHTS`,
            then torch-fidelity's download location `<torch hub dir>/checkpoints/weights-inception-2015-12-05-….pth`.

    Returns:
        `(path, reason)`: the weights file to use, or `None` with the reason it is unavailable.
    """
    if importlib.util.find_spec("torch_fidelity") is None:
        return None, "torch-fidelity is not installed"
    candidates = [Path(weights_path).expanduser()] if weights_path is not None else _inception_weights_candidates()
    for path in candidates:
        if path.is_file():
            return path, ""
    return None, f"Inception weights not found at {', '.join(str(p) for p in candidates)}"


def _unavailable(reason: str) -> FeatureNetworkError:
    return FeatureNetworkError(
        f"fid_features: Inception FID features are unavailable offline ({reason}); use the digits features, or "
        f"install torch-fidelity with its weights cached locally (torch hub checkpoints or ${INCEPTION_WEIGHTS_ENV_VAR}).",
        parameter="fid_features",
    )


def make_fid_metric(
    feature: FeatureName = "auto",
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    inception_weights: str | os.PathLike | None = None,
) -> tuple[FrechetInceptionDistance, dict[str, Any]]:
    """Build a torchmetrics FID metric on the chosen feature network.

    The metric is a `FrechetInceptionDistance` (float64 subclass) with `normalize=True` — feed it float images
    `[N, C, H, W]` in [0, 1] through `update(imgs, real=...)` — and `reset_real_features=False`, so `reset()` keeps
    the reference statistics and only clears the generated ones.

    Args:
        feature: `"digits"`, `"inception"`, or `"auto"` (Inception when it can be built offline, else digits).
        device: Device for the metric and its feature network.
        cache_dir: Cache folder for the digits classifier (see `load_digits_classifier`).
        seed: Digits classifier seed.
        inception_weights: Explicit path of torch-fidelity's Inception weights.

    Returns:
        `(metric, info)`: `info` has `feature` (the network used), `requested`, `num_features`, and for digits the
        classifier's `test_accuracy`, `classifier_seed`, `classifier_version`, `classifier_sha256`,
        `classifier_cache`; for `"auto"`
        falling back to digits, `fallback_reason`.

    Raises:
        FeatureNetworkError: `feature="inception"` but torch-fidelity or its weights are not available offline.
        ConfigError: Unknown `feature` (a `ValueError`).
    """
    if feature not in FID_FEATURES:
        raise ConfigError(f"fid_features must be one of {FID_FEATURES}, got {feature!r}", parameter="fid_features")
    info: dict[str, Any] = {"requested": feature}
    if feature in ("inception", "auto"):
        path, reason = inception_status(inception_weights)
        if path is not None:
            try:
                metric = Float64FrechetInceptionDistance(
                    feature=2048,
                    normalize=True,
                    reset_real_features=False,
                    feature_extractor_weights_path=str(path),
                )
            except Exception as err:  # a broken install or weights file: report or fall back
                path, reason = None, f"building Inception-v3 failed: {type(err).__name__}: {err}"
            else:
                info.update(feature="inception", num_features=2048, inception_weights=str(path))
                return metric.to(device), info
        if feature == "inception":
            raise _unavailable(reason)
        info["fallback_reason"] = reason

    classifier, cls_info = load_digits_classifier(cache_dir=cache_dir, seed=seed)
    extractor = DigitsFeatureExtractor(classifier)
    metric = Float64FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=False)
    info.update(
        feature="digits",
        num_features=extractor.num_features,
        test_accuracy=cls_info["test_accuracy"],
        classifier_seed=cls_info["seed"],
        classifier_version=cls_info["version"],
        classifier_sha256=cls_info.get("weights_sha256"),
        classifier_cache=cls_info.get("cache_path"),
    )
    return metric.to(device), info


def _as_images01(images: Tensor, name: str) -> Tensor:
    if images.dim() != 4:
        raise ValueError(f"{name} must be [N, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, {name} has {images.shape[0]}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    images = images.float()
    lo, hi = float(images.min()), float(images.max())
    if lo < -0.05 or hi > 1.05:
        raise ValueError(
            f"{name} should be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; map [-1, 1] samples with "
            "(x + 1) / 2 and clamp"
        )
    return images


class FIDReference:
    """FID of generated image sets against one reference set, whose features are computed once.

    Holds one metric from [`make_fid_metric`] (built with `reset_real_features=False`) fed with the reference
    images; each call resets it — torchmetrics' documented reuse: `reset()` then clears only the generated
    statistics — and scores one generated set, so scoring several sets costs one pass over the reference images.

    Args:
        real_images01: Reference images `[N, C, H, W]`, float in [0, 1] (uint8 0…255 also accepted).
        feature: `"digits"`, `"inception"` or `"auto"` (see [`make_fid_metric`]).
        batch_size: Images per forward pass of the feature network.
        device: Device for the feature network.
        cache_dir: Digits classifier cache folder.
        seed: Digits classifier seed.
        inception_weights: Explicit path of torch-fidelity's Inception weights.

    Attributes:
        metric: The torchmetrics metric.
        info: What [`make_fid_metric`] says about the feature network.
        num_real: The number of reference images.
    """

    def __init__(
        self,
        real_images01: Tensor,
        feature: FeatureName = "digits",
        batch_size: int = 256,
        *,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        seed: int = 0,
        inception_weights: str | os.PathLike | None = None,
    ) -> None:
        real = _as_images01(real_images01, "real_images01")
        self.metric, self.info = make_fid_metric(
            feature, device=device, cache_dir=cache_dir, seed=seed, inception_weights=inception_weights
        )
        self.batch_size = batch_size
        self.num_real = len(real)
        self._update(real, real=True)

    @property
    def feature_network(self) -> torch.nn.Module:
        """The feature network (for digits a [`DigitsFeatureExtractor`], which `classifier_view` also takes)."""
        return self.metric.inception

    @torch.no_grad()
    def _update(self, images: Tensor, real: bool) -> None:
        for i in range(0, len(images), self.batch_size):
            self.metric.update(images[i : i + self.batch_size], real=real)

    @torch.no_grad()
    def __call__(self, fake_images01: Tensor) -> float:
        """FID between the reference set and `fake_images01` (`[M, C, H, W]`, same convention), computed in float64.

        With fewer images than feature dimensions (128 for digits) the estimate is strongly biased upward and a
        warning is issued. Use the same M when comparing models.
        """
        fake = _as_images01(fake_images01, "fake_images01")
        num_features = self.info["num_features"]
        if min(self.num_real, len(fake)) < num_features:
            warnings.warn(
                f"FID with {self.num_real} real / {len(fake)} generated images and {num_features} features is "
                "strongly biased; use more images than feature dimensions",
                stacklevel=2,
            )
        self.metric.reset()  # the generated statistics only (reset_real_features=False)
        self._update(fake, real=False)
        return float(self.metric.compute())


def compute_fid(
    real_images01: Tensor,
    fake_images01: Tensor,
    feature: FeatureName = "digits",
    batch_size: int = 256,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> float:
    """FID between two image sets, with a fresh metric (see [`FIDReference`] to score several sets against one
    reference).

    Needs at least 2 images per set; with fewer images than feature dimensions (128 for digits) the estimate is
    strongly biased upward and a warning is issued. Use the same N when comparing models.

    Args:
        real_images01: Reference images `[N, C, H, W]`, float in [0, 1] (uint8 0…255 also accepted).
        fake_images01: Generated images `[M, C, H, W]`, same convention.
        feature: `"digits"`, `"inception"` or `"auto"`.
        batch_size: Images per forward pass of the feature network.
        device: Device for the feature network.
        cache_dir: Digits classifier cache folder.
        seed: Digits classifier seed.

    Returns:
        FID as a Python float (computed in float64).
    """
    _as_images01(fake_images01, "fake_images01")  # fail before building the feature network
    reference = FIDReference(real_images01, feature, batch_size, device=device, cache_dir=cache_dir, seed=seed)
    return reference(fake_images01)
