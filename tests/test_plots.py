"""Every plot writes a non-empty PNG that PIL can open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_objectives_hf import DDPMObjectiveScheduler
from ddpm_objectives_hf.training.plots import (
    normalise_mean_one,
    plot_bar,
    plot_elbo_terms,
    plot_loss_curve,
    plot_weighting,
    sample_grid,
)

T = 100
BETAS = np.linspace(1e-4, 0.02, T)
ALPHA_BAR = np.cumprod(1 - BETAS)
SNR = ALPHA_BAR / (1 - ALPHA_BAR)


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 50 and image.size[1] > 50


def test_plot_weighting(tmp_path):
    t = np.arange(T)
    out = plot_weighting(
        t,
        {"uniform": np.ones(T), "SNR": SNR, "min-SNR-5": np.minimum(SNR, 5.0), "zeros": np.zeros(T)},
        tmp_path / "nested" / "weighting.png",
    )
    assert out == tmp_path / "nested" / "weighting.png"
    assert_png(out)
    assert_png(plot_weighting(t, {"linear": t.astype(float) - 50}, tmp_path / "lin.png", logy=False, title="x"))


def test_plot_weighting_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="entries"):
        plot_weighting(np.arange(T), {"bad": np.ones(T + 1)}, tmp_path / "bad.png")


def test_plot_loss_curve(tmp_path):
    steps = np.arange(200)
    losses = 1.0 / (1 + steps) + 0.05 * np.random.default_rng(0).random(200)
    losses[10] = np.nan
    assert_png(plot_loss_curve(steps, losses, tmp_path / "loss.png"))
    assert_png(plot_loss_curve(list(steps), list(losses), str(tmp_path / "loss2.png"), smooth=0.0, logy=True))


def test_plot_elbo_terms(tmp_path):
    t = np.arange(1, T + 1)
    terms = 1e-3 * np.exp(-t / 30.0)
    vlb = DDPMObjectiveScheduler(num_train_timesteps=T).vlb_weight(torch.arange(T)).numpy()
    out = plot_elbo_terms(
        t,
        terms,
        tmp_path / "elbo.png",
        weighting=np.minimum(SNR, 5.0) / SNR,
        weighting_label="min-SNR-5 (ε-units)",
        prior_bpd=2e-6,
        decoder_bpd=1.2,
        vlb_weighting=vlb,
    )
    assert_png(out)
    # Without weightings and with a zero prior term.
    assert_png(plot_elbo_terms(t, terms, tmp_path / "elbo_plain.png", prior_bpd=0.0))


def test_plot_bar(tmp_path):
    assert_png(
        plot_bar(["ε", "x₀", "v", "μ (posterior mean)"], [3.8, 4.1, 3.7, np.nan], tmp_path / "bar.png", "bits/dim")
    )
    assert_png(plot_bar(["a", "b"], [1.0, 2.0], tmp_path / "bar2.png", "FID", title="FID", errors=[0.1, 0.2]))


def test_normalise_mean_one():
    assert np.allclose(normalise_mean_one([1.0, 2.0, 3.0]).mean(), 1.0)
    assert np.allclose(normalise_mean_one([0.0, 0.0]), 0.0)


@pytest.mark.parametrize("n, rows, cols", [(16, 4, 4), (6, 2, 3), (7, 1, 7), (1, 1, 1)])
def test_sample_grid_layout_and_pixels(n, rows, cols):
    images = [Image.new("L", (8, 8), 10 * k) for k in range(n)]
    grid = sample_grid(images, min_side=0)
    assert grid.mode == "RGB" and grid.size == (8 * cols, 8 * rows)
    for k in range(n):
        assert grid.getpixel((8 * (k % cols), 8 * (k // cols))) == (10 * k,) * 3


def test_sample_grid_enlarges_small_samples_exactly():
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    grid = sample_grid(images, min_side=128)  # 16×16 grid → ×8
    assert grid.size == (128, 128)
    pixels = np.asarray(grid)[..., 0]
    expected = np.round(images[0, 0].numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels[:64:8, :64:8], expected)
    assert (pixels[:8, :8] == pixels[0, 0]).all()  # nearest neighbour: each sample pixel is an 8×8 block
    # A tensor in [0, 1] and the PIL images diffusers makes from it give the same grid.
    from diffusers.utils import numpy_to_pil

    assert np.array_equal(np.asarray(sample_grid(numpy_to_pil(images.permute(0, 2, 3, 1).numpy()))), np.asarray(grid))


def test_sample_grid_max_images_and_empty():
    images = torch.ones(10, 3, 4, 4)
    assert sample_grid(images, max_images=4, min_side=0).size == (8, 8)
    with pytest.raises(ValueError, match="at least one"):
        sample_grid([])
