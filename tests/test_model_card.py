"""Model cards: rendered offline from the packaged template, described from the code's registries, escaped."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import inspect
import re
import socket
import sys
from pathlib import Path

import pytest
import tomllib
from huggingface_hub import ModelCard
from markdown_it import MarkdownIt
from scipy.stats import norm

from ddpm_objectives_hf import DDPMObjectiveScheduler
from ddpm_objectives_hf.errors import PipelineError
from ddpm_objectives_hf.scheduling_ddpm_objective import LOSS_TYPES, PREDICTION_TYPES, VARIANCE_TYPES
from ddpm_objectives_hf.timestep_sampling import TIMESTEP_SAMPLER_CLASSES, TIMESTEP_SAMPLERS, make_timestep_sampler
from ddpm_objectives_hf.training.model_card import (
    TEMPLATE_NAME,
    add_evaluation_to_model_card,
    escape_markdown,
    markdown_code,
    python_string,
    write_model_card,
)
from ddpm_objectives_hf.training.pipelines import objective_config
from ddpm_objectives_hf.weighting import SCHEDULE_INPUTS, WEIGHTINGS, weighting_parameters

ROOT = Path(__file__).resolve().parents[1]
# What the trainer passes: the scheduler config's objective options and the timestep sampler.
OBJECTIVE = {
    **objective_config(
        DDPMObjectiveScheduler(prediction_type="v_prediction", loss_weighting="min_snr", snr_gamma=4.0)
    ),
    "timestep_sampler": "uniform",
}
HOSTILE = [
    "quotes \"double\" and 'single'",
    "back`tick ``double`` ```triple",
    "`starts and ends with a backtick`",
    "new\nline\r\nand\u2028separators",
    "<script>alert('x')</script> &amp; <b>bold</b>",
    '"); import os; os.system("x',
    "key: value # comment",
    "---\nfront: matter\n---",
    "*emph* _u_ [link](http://x) ![img](y) | pipe ~~s~~ $x$ \\ backslash ##",
]
MD = MarkdownIt("commonmark").enable(["table", "strikethrough"])


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def guard(*args, **kwargs):
        raise AssertionError("model cards must not use the network")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket, "create_connection", guard)


def one_line(text: str) -> str:
    """What a card shows of a string: line breaks become spaces."""
    return " ".join(text.splitlines())


def first_paragraph_lines(doc: str) -> list[str]:
    return [line.strip() for line in inspect.cleandoc(doc).split("\n\n")[0].splitlines()]


def snippet_model_id(card: ModelCard) -> str:
    """The string the "How to use" snippet passes to `from_pretrained` (the snippet must be valid Python)."""
    fences = [t for t in MD.parse(card.text) if t.type == "fence" and t.info == "python"]
    assert len(fences) == 1
    calls = [
        node
        for node in ast.walk(ast.parse(fences[0].content))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained"
    ]
    assert len(calls) == 1 and len(calls[0].args) == 1 and isinstance(calls[0].args[0], ast.Constant)
    return calls[0].args[0].value


def inline_tokens(card: ModelCard) -> list:
    """Every inline token of the body (headings, paragraphs, list items, table cells)."""
    return [t for t in MD.parse(card.text) if t.type == "inline"]


def table_cells(card: ModelCard) -> list[str]:
    """The text of every table cell of the body."""
    tokens, cells = MD.parse(card.text), []
    for before, token in zip(tokens, tokens[1:]):
        if before.type in ("td_open", "th_open"):
            cells.append(only_text(token))
    return cells


def code_spans(card: ModelCard) -> list[str]:
    return [c.content for t in inline_tokens(card) for c in t.children if c.type == "code_inline"]


def only_text(token) -> str:
    """The text of an inline token that holds nothing but text (no emphasis, link, code, HTML...)."""
    assert all(child.type in ("text", "softbreak") for child in token.children), [c.type for c in token.children]
    return token.content if not token.children else "".join(c.content for c in token.children)


def test_template_is_packaged():
    template = (importlib.resources.files("ddpm_objectives_hf.model_cards") / TEMPLATE_NAME).read_text("utf-8")
    assert "{{ card_data }}" in template


def test_card_metadata_round_trips(tmp_path):
    objective = {**OBJECTIVE, "snr_gamma": 4.0}
    card = write_model_card(
        tmp_path / "run",
        objective=objective,
        repo_id="someone/ddpm-v-minsnr",
        dataset_name="uoft-cs/cifar10",
        metrics={"final_loss": 0.0312},
        training={"learning_rate": 1e-4, "train_batch_size": 64, "num_inference_steps": 50},
    )
    path = tmp_path / "run" / "README.md"
    assert card.content == path.read_text(encoding="utf-8")
    assert not list(path.parent.glob(".*"))  # no temporary file left behind

    loaded = ModelCard.load(path)
    data = loaded.data.to_dict()
    assert data["library_name"] == "diffusers" and data["license"] == "apache-2.0"
    for tag in ("diffusers", "ddpm-objectives-hf", "prediction-v-prediction", "loss-mse", "weighting-min-snr"):
        assert tag in data["tags"]
    assert data["datasets"] == ["uoft-cs/cifar10"]
    assert data["ddpm_objective"] == objective
    assert data["ddpm_metrics"] == {"final_loss": 0.0312}
    assert loaded.text == card.text

    headings = [only_text(t) for t in inline_tokens(card) if t.map and t.map[0] == 0]
    assert headings == ["ddpm-v-minsnr"]
    cells = table_cells(card)
    assert "train_batch_size" in cells and "64" in cells
    assert snippet_model_id(card) == "someone/ddpm-v-minsnr"
    assert "pipe(num_inference_steps=50)" in card.text


REGISTRY_ENTRIES = (
    [("prediction_type", name, [text]) for name, text in PREDICTION_TYPES.items()]
    + [("loss_type", name, [text]) for name, text in LOSS_TYPES.items()]
    + [("variance_type", name, [text]) for name, text in VARIANCE_TYPES.items()]
    + [("loss_weighting", name, first_paragraph_lines(fn.__doc__)) for name, fn in WEIGHTINGS.items()]
    + [
        ("timestep_sampler", name, first_paragraph_lines(cls.__doc__))
        for name, cls in TIMESTEP_SAMPLER_CLASSES.items()
    ]
)


@pytest.mark.parametrize(("key", "value", "lines"), REGISTRY_ENTRIES, ids=[f"{k}={v}" for k, v, _ in REGISTRY_ENTRIES])
def test_every_registered_choice_is_described_by_its_registry_entry(tmp_path, key, value, lines):
    card = write_model_card(tmp_path, objective={**OBJECTIVE, key: value})
    assert f"{key}={value}" in code_spans(card)
    for line in lines:
        assert line in card.text
    if key == "loss_weighting":  # its own parameters, valued from the config, and no other weighting's
        asked = [p for p in inspect.signature(WEIGHTINGS[value]).parameters if p in OBJECTIVE]
        for parameter in {p for name in WEIGHTINGS for p in weighting_parameters(name)}:
            shown = re.search(rf"`{parameter}=([^`]+)`", card.text)
            assert bool(shown) == (parameter in asked), parameter
            if shown:
                assert float(shown.group(1)) == pytest.approx(OBJECTIVE[parameter], rel=1e-5)


def test_sigmoid_card_states_the_weighting_the_code_applies(tmp_path):
    card = write_model_card(tmp_path, objective={**OBJECTIVE, "loss_weighting": "sigmoid", "sigmoid_bias": -2.0})
    assert "½ sigmoid(b − λ) (−dλ/dt)" in card.text
    assert "`sigmoid_bias=-2`" in card.text and "neg_dlogsnr_dt" not in card.text


def test_a_newly_registered_weighting_is_described_with_no_card_change(tmp_path, monkeypatch):
    def shifted_snr(snr, p2_k, coef1_sq):
        """Shifted SNR: ``w = SNR + k`` (a weighting that only this test knows)."""
        return snr + p2_k + 0 * coef1_sq

    monkeypatch.setitem(WEIGHTINGS, "shifted_snr", shifted_snr)
    scheduler = DDPMObjectiveScheduler(loss_weighting="shifted_snr", p2_k=3.0)
    card = write_model_card(tmp_path, objective={**objective_config(scheduler), "timestep_sampler": "stratified"})
    assert "Shifted SNR: ``w = SNR + k`` (a weighting that only this test knows)." in card.text
    assert "`loss_weighting=shifted_snr`, `p2_k=3`" in card.text
    assert all(name not in card.text for name in SCHEDULE_INPUTS)
    assert "weighting-shifted-snr" in card.data.tags


def test_sampler_registry_is_what_make_timestep_sampler_builds():
    assert set(TIMESTEP_SAMPLER_CLASSES) == set(TIMESTEP_SAMPLERS)
    for name in TIMESTEP_SAMPLERS:
        assert type(make_timestep_sampler(name, 10)) is TIMESTEP_SAMPLER_CLASSES[name]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_markdown_escapes_show_the_string_literally(hostile):
    assert only_text(MD.parseInline(escape_markdown(hostile))[0]) == one_line(hostile)
    children = MD.parseInline(f"a {markdown_code(hostile)} b")[0].children
    assert [c.type for c in children] == ["text", "code_inline", "text"] and children[1].content == one_line(hostile)
    assert ast.literal_eval(python_string(hostile)) == hostile
    assert "\n" not in python_string(hostile)


@pytest.mark.parametrize("pushed", [True, False], ids=["repo_id", "folder"])
@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_strings_are_escaped_everywhere(tmp_path, monkeypatch, hostile, pushed):
    monkeypatch.setitem(WEIGHTINGS, hostile, WEIGHTINGS["simple"])  # a custom weighting with a hostile name
    folder = tmp_path / hostile.replace("/", "_")
    objective = {**OBJECTIVE, "loss_weighting": hostile}
    card = write_model_card(
        folder,
        objective=objective,
        repo_id=hostile if pushed else None,
        dataset_name=hostile,
        metrics={hostile: 1.5},
        training={hostile: hostile},
        images={hostile: "my figure (1).png"},
    )
    model_id = hostile if pushed else folder.name

    # YAML: the metadata parses back to exactly the input, and the body is the body
    loaded = ModelCard.load(folder / "README.md")
    data = loaded.data.to_dict()
    assert data["ddpm_objective"] == objective and data["ddpm_metrics"] == {hostile: 1.5}
    assert data["model_name"] == model_id and "datasets" not in data
    assert loaded.text == card.text

    # Markdown: the strings show as text, nothing of them becomes markup or HTML
    tokens = MD.parse(card.text)
    html = [t.content for t in tokens if t.type == "html_block"]
    assert html == ["<!-- ddpm-objectives-hf: evaluation -->\n", "<!-- ddpm-objectives-hf: end of evaluation -->\n"]
    inline = [t for t in tokens if t.type == "inline"]
    assert all(c.type != "html_inline" for t in inline for c in t.children)
    assert only_text(inline[0]) == one_line(model_id).split("/")[-1]  # the title
    assert table_cells(card).count(one_line(hostile)) == 3  # metric name, hyper-parameter name and value
    codes = code_spans(card)
    assert one_line(hostile) in codes and f"loss_weighting={one_line(hostile)}" in codes
    images = [c for t in inline for c in t.children if c.type == "image"]
    assert [i.attrs["src"] for i in images] == ["my%20figure%20%281%29.png"]

    # Python: the snippet is valid and passes the exact string
    assert snippet_model_id(card) == model_id


def test_snippet_names_the_hub_id_when_pushed_else_the_folder_name(tmp_path):
    pushed = write_model_card(tmp_path / "a", objective=OBJECTIVE, repo_id="someone/ddpm-eps")
    assert snippet_model_id(pushed) == "someone/ddpm-eps"
    local = write_model_card(tmp_path / "my-run", objective=OBJECTIVE)
    assert snippet_model_id(local) == "my-run"
    assert str(tmp_path) not in local.text and str(tmp_path) not in local.content
    staged = write_model_card(tmp_path / "my-run" / ".staging", objective=OBJECTIVE, folder_name="my-run")
    assert snippet_model_id(staged) == "my-run" and ".staging" not in staged.content


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


def snippet_calls(card: ModelCard) -> dict[str, ast.Call]:
    """The snippet's calls by attribute name (`from_pretrained`, `pipe`): it must be valid Python."""
    fence = next(t for t in MD.parse(card.text) if t.type == "fence" and t.info == "python")
    calls = [node for node in ast.walk(ast.parse(fence.content)) if isinstance(node, ast.Call)]
    return {getattr(c.func, "attr", getattr(c.func, "id", None)): c for c in calls}


def test_remote_code_note_and_trust_remote_code_only_when_set(tmp_path):
    plain = write_model_card(tmp_path / "plain", objective=OBJECTIVE)
    assert "trust_remote_code" not in plain.text and "custom_code" not in plain.data.tags
    assert not snippet_calls(plain)["from_pretrained"].keywords
    assert "pip install" not in plain.text and "import ddpm_objectives_hf" not in plain.text

    mu = write_model_card(tmp_path / "mu", objective={**OBJECTIVE, "prediction_type": "mean"}, remote_code=True)
    load = snippet_calls(mu)["from_pretrained"]
    assert [(k.arg, k.value.value) for k in load.keywords] == [("trust_remote_code", True)]
    assert "prediction-mean" in mu.data.tags and "custom_code" in mu.data.tags
    assert "pipeline.py" in mu.text and "pip install" not in mu.text and "import ddpm_objectives_hf" not in mu.text


@pytest.mark.parametrize(("num_classes", "guidance_scale"), [(10, 3.0), (2, None)])
def test_class_conditional_snippet_passes_labels_and_guidance(tmp_path, num_classes, guidance_scale):
    from ddpm_objectives_hf.pipeline_ddpm_objective import DDPMObjectivePipeline

    card = write_model_card(
        tmp_path,
        objective=OBJECTIVE,
        remote_code=True,
        num_classes=num_classes,
        guidance_scale=guidance_scale,
        training={"num_inference_steps": 50},
    )
    call = snippet_calls(card)["pipe"]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    labels = list(range(min(num_classes, 4)))
    expected = {"batch_size": len(labels), "class_labels": labels, "num_inference_steps": 50}
    if guidance_scale is not None:
        expected["guidance_scale"] = guidance_scale
    assert kwargs == expected
    inspect.signature(DDPMObjectivePipeline.__call__).bind(None, **kwargs)  # the pipeline takes these arguments
    assert ("classifier-free guidance" in card.text) is (guidance_scale is not None)
    with pytest.raises(PipelineError, match="guidance_scale"):
        write_model_card(tmp_path, objective=OBJECTIVE, remote_code=True, num_classes=2, guidance_scale=float("nan"))


def test_local_dataset_and_embedded_digits_are_not_hub_ids(tmp_path):
    local = tmp_path / "my_images"
    local.mkdir()
    write_model_card(tmp_path / "out", objective=OBJECTIVE, dataset_name=str(local))
    assert "datasets" not in ModelCard.load(tmp_path / "out" / "README.md").data.to_dict()
    card = write_model_card(tmp_path / "digits", objective=OBJECTIVE, dataset_name="sklearn-digits")
    assert card.data.to_dict().get("datasets") is None


# ---------------------------------------------------------------------------------------------------- evaluation
def eval_report(dataset: str, bpd: float, fid: float) -> dict:
    """A report shaped like the one scripts/evaluate.py writes."""
    return {
        "data": {"dataset": dataset, "split": "test", "num_images": 40, "num_bpd_images": 20},
        "objective": {"prediction_type": "epsilon", "variance_type": "fixed_large_log"},
        "num_train_timesteps": 1000,
        "bpd_full": {"bpd": bpd, "stderr": 0.05, "network_evaluations": 20000},
        "bpd_fast": {
            "bpd": bpd + 0.01,
            "stderr": 0.07,
            "ci95": [bpd - 0.13, bpd + 0.15],
            "network_calls_per_image": 25,
        },
        "bpd_ode": {
            "bpd": bpd - 0.3,
            "stderr": 0.06,
            "ci95": [bpd - 0.42, bpd - 0.18],
            "network_calls_per_image": 900.0,
            **{"rtol": 1e-5, "atol": 1e-5, "method": "RK45", "divergence": "hutchinson", "draws": 2},
        },
        "sampling": {"sampler": "DDPMScheduler", "num_inference_steps": 100, "num_samples": 40},
        "fid": {"fid": fid, "feature": "digits", "requested": "auto", "num_features": 64},
    }


def evaluation_sections(text: str) -> int:
    return text.count("## Evaluation")


def test_evaluation_goes_into_the_metadata_and_the_body_once(tmp_path):
    folder = tmp_path / "run"
    write_model_card(folder, objective=OBJECTIVE, dataset_name="sklearn-digits", metrics={"final_loss": 0.1})
    report = eval_report("sklearn-digits", bpd=3.2, fid=12.5)
    card = add_evaluation_to_model_card(folder, report)
    first = (folder / "README.md").read_text(encoding="utf-8")
    assert card.content == first and not list(folder.glob(".*"))

    loaded = ModelCard.load(folder / "README.md")
    assert loaded.data.to_dict()["ddpm_objective"] == OBJECTIVE  # the training part is kept
    results = {(r.metric_type, r.metric_config): r for r in loaded.data.eval_results}
    assert set(results) == {("bits_per_dim", c) for c in ("full", "fast", "ode")} | {("fid", "digits")}
    ode = results["bits_per_dim", "ode"]
    assert ode.metric_value == pytest.approx(2.9) and ode.metric_args["ci95"] == report["bpd_ode"]["ci95"]
    assert ode.metric_args["rtol"] == 1e-5 and ode.metric_args["divergence"] == "hutchinson"
    full = results["bits_per_dim", "full"]
    assert full.metric_value == 3.2 and full.dataset_name == "sklearn-digits" and full.dataset_split == "test"
    assert full.metric_args["stderr"] == 0.05
    # the bound is of the model's own variance, named; the ODE has none
    assert full.metric_args["variance_type"] == results["bits_per_dim", "fast"].metric_args["variance_type"]
    assert full.metric_args["variance_type"] == "fixed_large_log" and "variance_type" not in ode.metric_args
    assert full.metric_args["ci95"] == pytest.approx(list(norm.interval(0.95, loc=3.2, scale=0.05)))
    assert results["bits_per_dim", "fast"].metric_args["ci95"] == report["bpd_fast"]["ci95"]
    fid = results["fid", "digits"]
    assert fid.metric_value == 12.5
    assert fid.metric_args["sampler"] == "DDPMScheduler" and fid.metric_args["num_inference_steps"] == 100
    assert evaluation_sections(first) == 1 and "Training objective" in first and "final\\_loss" in first

    # the section is a table of the results, after the training metrics and before the hyper-parameters / usage
    rows = [line for line in loaded.text.splitlines() if line.startswith("| ") and "sklearn-digits" in line]
    assert len(rows) == 4 and any("12.5" in row and "digits" in row for row in rows)
    assert first.index("## Metrics") < first.index("## Evaluation") < first.index("## How to use")

    add_evaluation_to_model_card(folder, report)
    assert (folder / "README.md").read_text(encoding="utf-8") == first  # idempotent

    # a new evaluation of the same data replaces the old one; another data set is added beside it
    add_evaluation_to_model_card(folder, eval_report("sklearn-digits", bpd=3.1, fid=11.0))
    add_evaluation_to_model_card(folder, eval_report("user/other", bpd=4.0, fid=30.0))
    loaded = ModelCard.load(folder / "README.md")
    values = sorted((r.dataset_name, r.metric_type, r.metric_config, r.metric_value) for r in loaded.data.eval_results)
    assert [v for v in values if v[1:3] == ("bits_per_dim", "full")] == [
        ("sklearn-digits", "bits_per_dim", "full", 3.1),
        ("user/other", "bits_per_dim", "full", 4.0),
    ]
    assert len(values) == 8 and evaluation_sections(loaded.text) == 1


@pytest.mark.parametrize("hostile", HOSTILE)
def test_evaluation_with_a_hostile_data_set_name(tmp_path, hostile):
    folder = tmp_path / "run"
    write_model_card(folder, objective=OBJECTIVE)
    card = add_evaluation_to_model_card(folder, eval_report(hostile, bpd=3.0, fid=9.0))
    loaded = ModelCard.load(folder / "README.md")
    assert {r.dataset_name for r in loaded.data.eval_results} == {hostile}
    assert loaded.text == card.text
    assert table_cells(card).count(one_line(hostile)) == 4  # one row per result
    assert [t.content for t in MD.parse(card.text) if t.type == "html_block"][0].startswith("<!--")


def test_evaluation_names_local_data_by_its_last_part_and_a_conditional_model_by_its_task(tmp_path):
    """No absolute path of the machine in the published metadata; a class-conditional model's results are not filed
    under unconditional generation."""
    folder = tmp_path / "run"
    write_model_card(folder, objective=OBJECTIVE)
    data = tmp_path / "held-out images"
    data.mkdir()
    report = {**eval_report(str(data.resolve()), bpd=3.0, fid=9.0), "conditioning": {"num_classes": 10}}
    add_evaluation_to_model_card(folder, report)
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert str(tmp_path) not in text
    results = ModelCard.load(folder / "README.md").data.eval_results
    assert {(r.dataset_name, r.dataset_type) for r in results} == {("held-out images", "local")}
    assert {r.task_type for r in results} == {"class-conditional-image-generation"}
    add_evaluation_to_model_card(folder, eval_report("user/data", bpd=3.0, fid=9.0))
    results = ModelCard.load(folder / "README.md").data.eval_results
    assert ("user/data", "user/data", "unconditional-image-generation") in {
        (r.dataset_name, r.dataset_type, r.task_type) for r in results
    }


def test_evaluation_of_a_card_without_the_section_markers(tmp_path):
    (tmp_path / "README.md").write_text("---\nlibrary_name: diffusers\n---\n\n# someone's card\n\nText.\n")
    add_evaluation_to_model_card(tmp_path, eval_report("sklearn-digits", bpd=3.0, fid=9.0))
    text = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert text.index("Text.") < text.index("## Evaluation")
    add_evaluation_to_model_card(tmp_path, eval_report("sklearn-digits", bpd=3.0, fid=9.0))
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == text


def test_no_card_no_change(tmp_path):
    assert add_evaluation_to_model_card(tmp_path, eval_report("sklearn-digits", bpd=3.0, fid=9.0)) is None
    assert not (tmp_path / "README.md").exists()
    assert add_evaluation_to_model_card("someone/some-model", eval_report("x", bpd=3.0, fid=9.0)) is None


# ---------------------------------------------------------------------------------------------------- packaging
def imported_packages(folders: list[Path]) -> dict[str, str]:
    """Top-level module → a file importing it, over every absolute import in `folders`, less the stdlib."""
    local = {p.stem for folder in folders for p in folder.iterdir()} | {"ddpm_objectives_hf", "scripts", "benchmarks"}
    found: dict[str, str] = {}
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def distribution_names(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group(0)).lower() for r in requirements}


@pytest.mark.parametrize("extra", [None, "test"], ids=["package", "tests"])
def test_every_imported_package_is_declared(extra):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = distribution_names(project["dependencies"])
    folders = [ROOT / "ddpm_objectives_hf", ROOT / "scripts"]
    if extra:
        declared |= distribution_names(project["optional-dependencies"][extra])
        folders = [ROOT / "tests"]
    providers = importlib.metadata.packages_distributions()
    for module, path in imported_packages(folders).items():
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(module, [])}
        assert dists & declared, (
            f"{path} imports {module} ({', '.join(sorted(dists)) or 'not installed'}): not declared"
        )
