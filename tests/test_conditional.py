"""Class-conditional training and evaluation end to end: label columns, label dropout (the null class of
classifier-free guidance), the saved guided pipeline, conditional bits/dim and the guidance sweep."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import tiny
import torch
from PIL import Image
from run_script import evaluate, train

import ddpm_objectives_hf
from ddpm_objectives_hf.data import (
    InMemoryImageData,
    digits_dataset,
    find_label_column,
    images_to_tensor,
    labels_to_tensor,
)
from ddpm_objectives_hf.errors import DataError
from ddpm_objectives_hf.training.state import Classes

T = 50
TINY = [*tiny.TINY, "--num_inference_steps", "4", "--num_train_timesteps", str(T), "--checkpointing_steps", "1000"]
EVAL = [
    "--max_eval_samples", "40", "--num_samples", "20", "--num_inference_steps", "4", "--num_bpd_timesteps", "5",
    "--pilot_images", "4", "--pilot_grid", "8", "--device", "cpu", "--fid_features", "digits",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- label columns
def _images(n: int) -> list[Image.Image]:
    return [Image.new("L", (8, 8), 10 * k) for k in range(n)]


def test_label_column_is_found_from_the_one_class_label():
    dataset = digits_dataset("test")
    column, k = find_label_column(dataset)
    assert (column, k) == ("label", 10)
    labels = labels_to_tensor(dataset, column, k)
    assert labels.dtype == torch.long and labels.tolist() == dataset["label"]


def test_integer_label_column_counts_its_classes():
    dataset = datasets.Dataset.from_dict({"image": _images(6), "y": [0, 3, 1, 3, 2, 0]})
    assert find_label_column(dataset, "y") == ("y", 4)


@pytest.mark.parametrize(
    "columns, label_column, expected",
    [
        ({"y": [0.5] * 4}, "y", "float"),
        ({"y": ["a"] * 4}, "y", "string"),
        ({"y": [0, -1, 1, 2]}, "y", "-1"),
        ({"y": [0, 1, 1, 2]}, None, "no datasets.ClassLabel"),
        ({"y": [0, 1, 1, 2]}, "z", "not a column"),
    ],
)
def test_label_columns_that_are_not_classes_are_refused(columns, label_column, expected):
    dataset = datasets.Dataset.from_dict({"image": _images(4), **columns})
    with pytest.raises(DataError, match=expected) as err:
        find_label_column(dataset, label_column)
    assert err.value.parameter == "label_column"


def test_several_class_labels_need_a_choice():
    features = datasets.Features(
        {"a": datasets.ClassLabel(names=["x", "y"]), "b": datasets.ClassLabel(names=["u", "v", "w"])}
    )
    dataset = datasets.Dataset.from_dict({"a": [0, 1], "b": [2, 0]}, features=features)
    with pytest.raises(DataError, match="several ClassLabel columns"):
        find_label_column(dataset)
    assert find_label_column(dataset, "b") == ("b", 3)


def test_labels_outside_the_model_classes_name_the_row():
    dataset = datasets.Dataset.from_dict({"image": _images(3), "y": [0, 1, 7]})
    with pytest.raises(DataError, match="row 2 has the label 7"):
        labels_to_tensor(dataset, "y", 5)


def test_in_memory_labels_follow_the_batch_indices():
    dataset = digits_dataset("test")
    data = InMemoryImageData(images_to_tensor(dataset, "image", 8), labels=labels_to_tensor(dataset, "label", 10))
    indices = torch.tensor([5, 0, 17, 5])
    assert data.labels_at(indices).tolist() == [dataset["label"][i] for i in indices.tolist()]
    assert torch.equal(data.batch(indices)[0], data.batch(torch.tensor([5]))[0])


def test_label_dropout_replaces_labels_by_the_null_class():
    classes = Classes(num_classes=10, dropout=0.3, label_column="label")
    assert classes.null_class_label == 10
    labels = torch.arange(10).repeat(2000)
    dropped = classes.drop(labels, torch.Generator().manual_seed(0))
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])
    assert abs((~kept).double().mean().item() - 0.3) < 0.01  # 20,000 draws: 3.5 standard errors
    none = Classes(num_classes=10, dropout=0.0, label_column="label")
    assert none.null_class_label is None
    assert torch.equal(none.drop(labels, torch.Generator().manual_seed(0)), labels)


# ---------------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A tiny class-conditional run on the digits (label dropout 0.5), recording what the loss was given."""
    out = tmp_path_factory.mktemp("conditional") / "run"
    seen = []
    original = ddpm_objectives_hf.diffusion_loss

    def recording(model, x0, scheduler, **kwargs):
        seen.append((x0.detach().clone(), kwargs.get("model_kwargs")))
        return original(model, x0, scheduler, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(ddpm_objectives_hf, "diffusion_loss", recording)
    try:
        argv = [*TINY, "--max_train_steps", "6", "--class_conditional", "--condition_dropout", "0.5"]
        assert train([*argv, "--guidance_scale", "2", "--output_dir", str(out)]) == 0
    finally:
        mp.undo()
    return out, seen


def test_training_gives_the_model_the_labels_of_its_images(conditional_run):
    _, seen = conditional_run
    assert len(seen) == 6
    dataset = digits_dataset("train")
    pixels = images_to_tensor(dataset, "image", 8).float() / 127.5 - 1
    true_labels = torch.tensor(dataset["label"])
    dropped = 0
    for x0, model_kwargs in seen:
        labels = model_kwargs["class_labels"]
        for x, label in zip(x0, labels.tolist()):
            same = (pixels == x).flatten(1).all(1)  # the rows of the data holding this image
            assert same.any() and (label == 10 or label in true_labels[same].tolist())
        dropped += int((labels == 10).sum())
    assert 0 < dropped < 6 * 16  # some labels dropped to the null class (p = 0.5), not all


def test_conditional_run_saves_a_guided_pipeline(conditional_run):
    out, _ = conditional_run
    index = json.loads((out / "model_index.json").read_text())
    assert index["num_classes"] == 10 and index["null_class_label"] == 10
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert unet_config["num_class_embeds"] == 11
    objective = json.loads((out / "objective.json").read_text())
    assert objective["class_conditional"] and objective["condition_dropout"] == 0.5
    assert objective["label_column"] == "label"
    card = (out / "README.md").read_text()
    assert "class_labels" in card and "guidance_scale" in card
    assert (out / "samples.png").is_file()


# ---------------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def conditional_report(conditional_run, tmp_path_factory):
    out, _ = conditional_run
    report_dir = tmp_path_factory.mktemp("conditional-eval")
    assert evaluate([str(out), *EVAL, "--guidance_scales", "0", "1", "3", "--output_dir", str(report_dir)]) == 0
    return out, report_dir, json.loads((report_dir / "report.json").read_text())


def test_conditional_bpd_is_that_of_the_held_out_labels(conditional_report):
    """The reported full bound is −log p(x | y) with each image's own label, recomputed here by hand."""
    from ddpm_objectives_hf.bpd import full_bpd
    from ddpm_objectives_hf.training.pipelines import load_for_evaluation

    out, _, report = conditional_report
    unet, scheduler, _ = load_for_evaluation(str(out))
    dataset = digits_dataset("test").select(range(40))
    images = images_to_tensor(dataset, "image", 8).float() / 127.5 - 1
    labels = torch.tensor(dataset["label"])
    generator = torch.Generator().manual_seed(0)  # evaluate.py's --seed 0
    by_hand = full_bpd(unet, scheduler, images, generator=generator, model_kwargs={"class_labels": labels})
    assert report["bpd_full"]["bpd"] == pytest.approx(float(by_hand["total"].double().mean()), rel=1e-5)
    shuffled = full_bpd(
        unet,
        scheduler,
        images,
        generator=torch.Generator().manual_seed(0),
        model_kwargs={"class_labels": labels.flip(0)},
    )
    assert float(shuffled["total"].double().mean()) != pytest.approx(report["bpd_full"]["bpd"], rel=1e-7)
    assert "bpd_fast_unconditional" in report and np.isfinite(report["bpd_fast_unconditional"]["bpd"])


def test_guidance_sweep_scores_every_scale(conditional_report):
    _, report_dir, report = conditional_report
    sweep = report["guidance_sweep"]
    assert [row["guidance_scale"] for row in sweep["scales"]] == [0.0, 1.0, 3.0]
    for row in sweep["scales"]:
        assert np.isfinite(row["fid"]) and 0 <= row["accuracy"] <= 1
        assert (report_dir / row["grid"]).is_file()
    assert sweep["num_samples"] == 20
    assert (report_dir / "guidance.png").is_file()
    assert report["fid"]["fid"] == sweep["scales"][1]["fid"]  # the headline FID is the conditional one (s = 1)


def test_card_lists_the_guidance_sweep(conditional_report):
    from huggingface_hub import ModelCard

    out, _, report = conditional_report
    card = ModelCard.load(out / "README.md")
    assert "A class-conditional (over 10 classes) image-generation" in card.text
    assert "class-conditional-image-generation" in card.data.tags and card.data.pipeline_tag is None
    found = {(r.metric_type, r.metric_args.get("guidance_scale")): r.metric_value for r in card.data.eval_results}
    for row in report["guidance_sweep"]["scales"]:
        assert found[("fid", row["guidance_scale"])] == pytest.approx(row["fid"])
        assert found[("accuracy", row["guidance_scale"])] == pytest.approx(row["accuracy"])
    names = [r.metric_name for r in card.data.eval_results]
    assert any("−log p(x | y)" in n for n in names) and any("null class" in n for n in names)


def test_classifier_accuracy_counts_the_requested_classes():
    from ddpm_objectives_hf.evaluation.features import classifier_view, load_digits_classifier

    dataset = digits_dataset("test")
    images01 = images_to_tensor(dataset, "image", 8).float() / 255
    labels = torch.tensor(dataset["label"])
    classifier, _ = load_digits_classifier()
    right = classifier_view(classifier, images01, requested_labels=labels)
    wrong = classifier_view(classifier, images01, requested_labels=(labels + 1) % 10)
    assert right["accuracy"] > 0.9 and wrong["accuracy"] < 0.1
    assert right["per_class_accuracy"][3] == pytest.approx(
        float((classifier(images01[labels == 3]).argmax(1) == 3).double().mean())
    )


def test_evaluating_a_model_without_null_class_refuses_guidance(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--max_train_steps", "2", "--class_conditional", "--condition_dropout", "0"]
    assert train([*argv, "--output_dir", str(out)]) == 0
    assert json.loads((out / "model_index.json").read_text())["null_class_label"] is None
    capsys.readouterr()
    assert evaluate([str(out), *EVAL, "--guidance_scales", "2"]) != 0
    err = capsys.readouterr().err
    assert "--guidance_scales" in err and "null class" in err and "Traceback" not in err
    assert not (Path(out) / "eval").exists()
