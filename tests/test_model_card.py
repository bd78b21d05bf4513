"""write_model_card: README.md with Hub metadata, rendered offline from the packaged Jinja template."""

from __future__ import annotations

import importlib.resources
import socket

import numpy as np
import pytest
from huggingface_hub import ModelCard

from ddpm_objectives_hf.training.model_card import TEMPLATE_NAME, describe_objective, objective_tags, write_model_card

OBJECTIVE = {
    "prediction_type": "v_prediction",
    "loss_type": "mse",
    "loss_weighting": "min_snr",
    "snr_gamma": 5.0,
    "variance_type": "fixed_small",
    "timestep_sampler": "uniform",
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def guard(*args, **kwargs):
        raise AssertionError("write_model_card must not use the network")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)


def test_template_is_packaged():
    template = (importlib.resources.files("ddpm_objectives_hf.model_cards") / TEMPLATE_NAME).read_text("utf-8")
    assert "{{ card_data }}" in template


def test_card_metadata_round_trips(tmp_path):
    card = write_model_card(
        tmp_path,
        objective={**OBJECTIVE, "snr_gamma": np.float32(5.0), "num_train_timesteps": np.int64(1000)},
        repo_id="someone/ddpm-v-minsnr",
        dataset_name="uoft-cs/cifar10",
        metrics={"bits_per_dim": np.float64(3.71), "final_loss": 0.0312},
        training={"learning_rate": 1e-4, "train_batch_size": 64, "num_inference_steps": 50},
    )
    path = tmp_path / "README.md"
    assert path.is_file()
    assert card.content == path.read_text(encoding="utf-8")

    data = ModelCard.load(path).data.to_dict()
    assert data["library_name"] == "diffusers"
    assert data["license"] == "apache-2.0"
    for tag in (
        "diffusers",
        "unconditional-image-generation",
        "diffusion",
        "ddpm-objectives-hf",
        "prediction-v-prediction",
        "loss-mse",
        "weighting-min-snr",
    ):
        assert tag in data["tags"]
    assert data["datasets"] == ["uoft-cs/cifar10"]
    assert data["ddpm_objective"] == OBJECTIVE
    assert data["ddpm_metrics"] == {"bits_per_dim": pytest.approx(3.71), "final_loss": pytest.approx(0.0312)}

    text = card.text
    assert "# ddpm-v-minsnr" in text
    assert "v target under min-SNR-γ weighting (γ=5)" in text
    assert "| bits_per_dim | 3.71 |" in text
    assert "| train_batch_size | 64 |" in text
    assert 'DiffusionPipeline.from_pretrained("someone/ddpm-v-minsnr")' in text
    assert "pipe(num_inference_steps=50).images[0]" in text


def test_images_referenced_only_when_given(tmp_path):
    card = write_model_card(tmp_path / "a", objective=OBJECTIVE)
    assert "![" not in card.text and "## Figures" not in card.text

    card = write_model_card(
        tmp_path / "b",
        objective=OBJECTIVE,
        images={"samples": "samples.png", "loss": str(tmp_path / "b" / "loss.png")},
    )
    assert "](samples.png)" in card.text
    assert "](loss.png)" in card.text  # absolute paths inside the folder become relative
    assert "weighting.png" not in card.text


def test_plugin_scheduler_note_only_when_set(tmp_path):
    plain = write_model_card(tmp_path / "plain", objective=OBJECTIVE)
    assert "pip install ddpm-objectives-hf" not in plain.text
    assert "custom-scheduler" not in plain.data.tags

    mu = write_model_card(tmp_path / "mu", objective={**OBJECTIVE, "prediction_type": "mean"}, plugin_scheduler=True)
    assert "pip install ddpm-objectives-hf" in mu.text
    assert "DDPMObjectiveScheduler" in mu.text
    assert "import ddpm_objectives_hf" in mu.text
    assert "prediction-mean" in mu.data.tags


def test_local_dataset_and_path_are_not_hub_ids(tmp_path):
    local = tmp_path / "my_images"
    local.mkdir()
    card = write_model_card(tmp_path / "out", objective=OBJECTIVE, dataset_name=str(local))
    assert "datasets" not in ModelCard.load(tmp_path / "out" / "README.md").data.to_dict()
    assert f'from_pretrained("{(tmp_path / "out").resolve().as_posix()}")' in card.text
    card = write_model_card(tmp_path / "digits", objective=OBJECTIVE, dataset_name="sklearn-digits")
    assert card.data.to_dict().get("datasets") is None


def test_describe_objective_and_tags():
    summary, details = describe_objective(
        {
            "prediction_type": "epsilon",
            "loss_type": "hybrid",
            "vlb_lambda": 0.001,
            "loss_weighting": "p2",
            "p2_gamma": 1,
        }
    )
    assert summary.startswith("Trained with the ε target under P2 weighting (γ=1)")
    assert "λ=0.001" in summary
    assert any("Loss" in line for line in details)
    # Parameters of another weighting are not attributed to this one.
    summary, _ = describe_objective({"prediction_type": "sample", "loss_weighting": "uniform", "snr_gamma": 5})
    assert summary == "Trained with the x₀ target under uniform weighting."
    assert objective_tags({"prediction_type": "sample", "loss_weighting": "soft_min_snr"})[-2:] == [
        "prediction-sample",
        "weighting-soft-min-snr",
    ]


def test_only_the_weightings_own_parameters_are_shown():
    # Every parameter is present in DDPMObjectiveScheduler's config; only the active weighting's are described.
    full = {
        "prediction_type": "epsilon",
        "loss_type": "mse",
        "snr_gamma": 5.0,
        "p2_k": 1.0,
        "p2_gamma": 0.5,
        "sigma_data": 0.5,
        "sigmoid_bias": 0.0,
        "hybrid_lambda": 0.001,
    }
    summary = describe_objective({**full, "loss_weighting": "p2"})[0]
    assert summary == "Trained with the ε target under P2 weighting (k=1, γ=0.5)."
    assert describe_objective({**full, "loss_weighting": "snr"})[0] == "Trained with the ε target under SNR weighting."
    summary = describe_objective({**full, "loss_weighting": "simple", "loss_type": "hybrid"})[0]
    assert summary.endswith("uniform weighting, with the hybrid L_simple + λ·L_vlb loss (λ=0.001).")
