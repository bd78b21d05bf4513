"""Digits feature network and FID: accuracy, safe caching, sanity of the distance ordering, offline behaviour."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import ddpm_objectives_hf.evaluation.features as features_mod
from ddpm_objectives_hf.data import load_digits_split
from ddpm_objectives_hf.evaluation.features import (
    DigitsClassifier,
    DigitsFeatureExtractor,
    classifier_view,
    load_digits_classifier,
)
from ddpm_objectives_hf.evaluation.fid import (
    FeatureNetworkError,
    FIDReference,
    compute_fid,
    frechet_distance,
    make_fid_metric,
)


def _images01(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_digits_split(split)
    return torch.from_numpy(images).float().div(255.0).unsqueeze(1), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("digits_cache")


@pytest.fixture(scope="module")
def trained(cache_dir: Path) -> tuple[DigitsClassifier, dict]:
    """The classifier, trained once for the whole module into a temporary cache."""
    return load_digits_classifier(cache_dir=cache_dir, seed=0)


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    train, _ = _images01("train")
    test, test_labels = _images01("test")
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0))
    box = F.avg_pool2d(F.pad(test, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return {
        "train": train,
        "test": test,
        "test_labels": test_labels,
        "noise": noise,
        "shifted": torch.roll(test, shifts=1, dims=3),
        "blurred": 0.5 * test + 0.5 * box,
    }


@pytest.fixture(scope="module")
def fids(trained: tuple, cache_dir: Path, digits: dict[str, torch.Tensor]) -> dict[str, float]:
    def fid(a: torch.Tensor, b: torch.Tensor) -> float:
        return compute_fid(a, b, feature="digits", cache_dir=cache_dir)

    values = {
        "train_vs_test": fid(digits["train"], digits["test"]),
        "test_vs_itself": fid(digits["test"], digits["test"]),
        "train_vs_noise": fid(digits["train"], digits["noise"]),
        "train_vs_shifted": fid(digits["train"], digits["shifted"]),
        "train_vs_blurred": fid(digits["train"], digits["blurred"]),
    }
    print("digits FID:", {k: round(v, 6) for k, v in values.items()})
    return values


# --- classifier and cache -------------------------------------------------------------------------------------------


def test_classifier_accuracy(trained: tuple, digits: dict[str, torch.Tensor]) -> None:
    model, info = trained
    assert info["test_accuracy"] >= 0.95
    with torch.no_grad():
        acc = (model(digits["test"]).argmax(1) == digits["test_labels"]).float().mean().item()
    assert acc == pytest.approx(info["test_accuracy"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_cache_round_trip_identical_logits(trained: tuple, cache_dir: Path, digits: dict[str, torch.Tensor]) -> None:
    model, info = trained
    reloaded, info2 = load_digits_classifier(cache_dir=cache_dir, seed=0)
    assert info2["from_cache"] and not info["from_cache"]
    assert info2["test_accuracy"] == info["test_accuracy"]
    assert info2["weights_sha256"] == info["weights_sha256"]
    with torch.no_grad():
        assert torch.equal(model(digits["test"]), reloaded(digits["test"]))
    meta = json.loads(Path(info["cache_path"]).with_suffix(".json").read_text())
    assert meta["seed"] == 0 and meta["version"] == features_mod.CLASSIFIER_VERSION


class _Sentinel:
    """Unpickling this creates a marker file: proof that the cache was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("corruption", ["pickle_payload", "truncated", "wrong_shapes"])
def test_corrupt_cache_is_replaced_not_unpickled(
    corruption: str, trained: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, info = trained
    cache = tmp_path / "cache"
    cache.mkdir()
    src = Path(info["cache_path"])
    weights = cache / src.name
    (cache / src.with_suffix(".json").name).write_bytes(src.with_suffix(".json").read_bytes())
    marker = tmp_path / "unpickled"
    if corruption == "pickle_payload":
        weights.write_bytes(pickle.dumps(_Sentinel(marker)))
    elif corruption == "truncated":
        weights.write_bytes(src.read_bytes()[:200])
    else:
        from safetensors.torch import save_file

        save_file({"conv1.weight": torch.zeros(3, 3)}, str(weights))

    calls = []

    def fake_train(seed: int = 0, **kwargs) -> tuple[DigitsClassifier, float]:  # retraining is tested above
        calls.append(seed)
        return model, info["test_accuracy"]

    monkeypatch.setattr(features_mod, "train_digits_classifier", fake_train)
    _, new_info = load_digits_classifier(cache_dir=cache, seed=0)
    assert calls == [0] and not new_info["from_cache"]
    assert not marker.exists()
    state = load_file(str(weights))  # replaced by a valid safetensors file
    assert torch.equal(state["fc2.weight"], model.fc2.weight)
    _, again = load_digits_classifier(cache_dir=cache, seed=0)
    assert again["from_cache"] and calls == [0]


# --- feature extractor ----------------------------------------------------------------------------------------------


def test_feature_extractor_input_conventions(trained: tuple) -> None:
    model, _ = trained
    extractor = DigitsFeatureExtractor(model)
    extractor.train()
    assert not extractor.training and extractor.num_features == 128
    u8 = torch.from_numpy(load_digits_split("test")[0][:64]).unsqueeze(1)
    f_u8 = extractor(u8)
    f_float = extractor(u8.float() / 255.0)
    assert f_u8.shape == (64, 128) and f_u8.dtype == torch.float32
    torch.testing.assert_close(f_u8, f_float, rtol=0, atol=1e-6)
    # RGB (averaged to grey) and 32×32 (area-reduced) versions of the same images give the same features
    rgb32 = (u8.float() / 255.0).repeat(1, 3, 1, 1).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    torch.testing.assert_close(extractor(rgb32), f_float, rtol=0, atol=1e-5)
    assert extractor(torch.rand(4, 3, 28, 28)).shape == (4, 128)


# --- FID ------------------------------------------------------------------------------------------------------------


def test_fid_ordering(fids: dict[str, float]) -> None:
    scale = fids["train_vs_noise"]
    assert abs(fids["test_vs_itself"]) < 1e-3 * scale
    assert abs(fids["test_vs_itself"]) < 1e-8
    assert 0 < fids["train_vs_test"] < scale / 10
    for degraded in ("train_vs_shifted", "train_vs_blurred"):
        assert fids["train_vs_test"] < fids[degraded] < scale


def test_frechet_distance_matches_scipy() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g, dtype=torch.float64), torch.randn(150, 16, generator=g).double() * 1.5
    b = b + 0.3
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), torch.cov(a.T), torch.cov(b.T)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    ref = float((mu1 - mu2).square().sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    out = frechet_distance(mu1, s1, mu2, s2)
    assert out.dtype == torch.float64
    assert float(out) == pytest.approx(ref, rel=1e-9)
    assert abs(float(frechet_distance(mu1, s1, mu1, s1))) < 1e-10


def test_metric_is_float64_and_keeps_real_statistics(
    trained: tuple, cache_dir: Path, digits: dict[str, torch.Tensor], fids: dict[str, float]
) -> None:
    metric, info = make_fid_metric("digits", cache_dir=cache_dir)
    assert info["feature"] == "digits" and info["num_features"] == 128 and info["test_accuracy"] >= 0.95
    metric.update(digits["train"], real=True)
    metric.update(digits["test"], real=False)
    first = metric.compute()
    assert first.dtype == torch.float64
    assert float(first) == pytest.approx(fids["train_vs_test"], rel=1e-9)
    metric.reset()  # reset_real_features=False: only the generated statistics are cleared
    assert int(metric.real_features_num_samples) == len(digits["train"])
    metric.update(digits["noise"], real=False)
    assert float(metric.compute()) == pytest.approx(fids["train_vs_noise"], rel=1e-9)


def test_reference_features_are_computed_once(
    trained: tuple, cache_dir: Path, digits: dict[str, torch.Tensor], fids: dict[str, float]
) -> None:
    reference = FIDReference(digits["train"], "digits", cache_dir=cache_dir)
    calls = []
    network = reference.feature_network
    network.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    for name in ("shifted", "noise", "test", "shifted"):  # each equal to a fresh metric's value
        assert reference(digits[name]) == pytest.approx(fids[f"train_vs_{name}"], rel=1e-9), name
    assert sum(calls) == 4 * len(digits["test"])  # only the generated sets went through the network
    assert int(reference.metric.real_features_num_samples) == reference.num_real == len(digits["train"])
    assert isinstance(network, DigitsFeatureExtractor)
    assert classifier_view(network, digits["test"]) == classifier_view(trained[0], digits["test"])


def test_compute_fid_rejects_bad_input(trained: tuple, cache_dir: Path, digits: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="at least 2"):
        compute_fid(digits["test"][:1], digits["test"], cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_fid(digits["test"] * 2 - 1, digits["test"], cache_dir=cache_dir)


def test_inception_offline_raises(tmp_path: Path, trained: tuple, cache_dir: Path) -> None:
    missing = tmp_path / "no_inception_weights.pth"
    with pytest.raises(FeatureNetworkError, match="^fid_features") as err:
        make_fid_metric("inception", inception_weights=missing)
    assert err.value.parameter == "fid_features"
    assert "digits" in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, RuntimeError)
    metric, info = make_fid_metric("auto", cache_dir=cache_dir, inception_weights=missing)
    assert info["feature"] == "digits" and info["requested"] == "auto" and info["fallback_reason"]
    with pytest.raises(ValueError, match="^fid_features"):
        make_fid_metric("clip")  # type: ignore[arg-type]


# --- classifier's view ----------------------------------------------------------------------------------------------


def test_classifier_view(trained: tuple, digits: dict[str, torch.Tensor]) -> None:
    model, _ = trained
    view = classifier_view(model, digits["test"])
    assert sum(view["class_histogram"]) == len(digits["test"]) == view["num_samples"]
    assert len(view["class_histogram"]) == 10
    assert view["mean_confidence"] > 0.9
    assert view["class_entropy_nats"] == pytest.approx(math.log(10), abs=0.01)
    zeros = digits["test"][digits["test_labels"] == 0]
    collapsed = classifier_view(model, zeros)
    assert collapsed["class_entropy_nats"] < 0.2 and np.argmax(collapsed["class_histogram"]) == 0


def test_classifier_trains_inside_no_grad() -> None:
    # make_fid_metric trains the classifier on a cache miss, and may be called under torch.no_grad()
    with torch.no_grad():
        model, accuracy = features_mod.train_digits_classifier(seed=1, epochs=1)
    assert accuracy > 0.5 and not model.training
