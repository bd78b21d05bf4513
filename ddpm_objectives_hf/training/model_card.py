"""Model cards (README.md with Hub metadata) for pipelines trained with ddpm-objectives-hf.

The card is ``huggingface_hub.ModelCard.from_template`` of the packaged template ``model_cards/diffusion_model_card.md``
(installed as ``ddpm_objectives_hf.model_cards``); nothing here touches the network. Each choice of the objective is
described by its own registry entry, so a newly registered choice needs no change here:

- the loss weighting by the first paragraph of its function's docstring (:data:`~ddpm_objectives_hf.weighting.WEIGHTINGS`),
  with the parameters its signature asks for, valued from the scheduler config;
- the target, loss type and reverse variance by the texts of
  :data:`~ddpm_objectives_hf.scheduling_ddpm_objective.PREDICTION_TYPES`, ``LOSS_TYPES`` and ``VARIANCE_TYPES``;
- the timestep sampler by the first paragraph of its class's docstring
  (:data:`~ddpm_objectives_hf.timestep_sampling.TIMESTEP_SAMPLER_CLASSES`).

Every user-controlled string is escaped for where it lands: the YAML metadata is dumped by ``ModelCardData``, Markdown
text goes through :func:`escape_markdown` or :func:`markdown_code`, and the Python snippet gets a ``repr()`` literal.
"""

from __future__ import annotations

import contextlib
import html
import importlib.resources
import inspect
import math
import numbers
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import NormalDist
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..errors import PipelineError
from ..scheduling_ddpm_objective import LOSS_TYPES, PREDICTION_TYPES, VARIANCE_TYPES
from ..timestep_sampling import TIMESTEP_SAMPLER_CLASSES
from ..weighting import WEIGHTINGS, weighting_parameters

__all__ = [
    "TEMPLATE_NAME",
    "add_evaluation_to_model_card",
    "describe_objective",
    "escape_markdown",
    "evaluation_results",
    "markdown_code",
    "objective_tags",
    "python_string",
    "write_model_card",
]

TEMPLATE_NAME = "diffusion_model_card.md"
BASE_TAGS = ("diffusers", "unconditional-image-generation", "diffusion", "ddpm-objectives-hf")
TASK_TYPE = "unconditional-image-generation"
CONDITIONAL_TASK_TYPE = "class-conditional-image-generation"
# The embedded scikit-learn digits (train.py's default data set): not a Hub data set.
_EMBEDDED_DATASET_PREFIX = "sklearn"
# The markers around the card's "Evaluation" section, which `add_evaluation_to_model_card` replaces.
_EVALUATION_START = "<!-- ddpm-objectives-hf: evaluation -->"
_EVALUATION_END = "<!-- ddpm-objectives-hf: end of evaluation -->"
_NO_DESCRIPTION = "(no description registered)"
# How many classes the "How to use" snippet of a class-conditional model samples (one image each).
_SNIPPET_CLASSES = 4

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
# Characters with an inline meaning in (GitHub-flavoured, Hub) Markdown: escapes, code, emphasis, links and images,
# headings' closing #, table cells, strikethrough, math. `<`, `>` and `&` become HTML entities instead.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]#|~$!])")


# ------------------------------------------------------------------------------------------------------ escaping
def _one_line(value: Any) -> str:
    """`str(value)` with every line break (``\\n``, ``\\r``, U+2028, ...) turned into a space."""
    return " ".join(str(value).splitlines())


def escape_markdown(value: Any) -> str:
    """Text that Markdown shows literally, on one line: ``<``, ``>``, ``&`` as HTML entities, Markdown specials escaped.

    Args:
        value: Any value; its `str()` is escaped.

    Returns:
        Inline Markdown (for a heading, a table cell, link text) that renders as `str(value)` with line breaks as
        spaces.
    """
    return _MARKDOWN_SPECIALS.sub(r"\\\1", html.escape(_one_line(value), quote=False))


def markdown_code(value: Any) -> str:
    """A Markdown code span that shows `str(value)` literally (line breaks as spaces), whatever backticks it holds.

    The fence is one backtick longer than the longest run inside; a space pads content that starts or ends with a
    backtick or a space (CommonMark strips one from each side). Not for table cells (a `|` there ends the cell).
    """
    text = _one_line(value) or " "
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.strip() and (text[0] in "` " or text[-1] in "` ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def python_string(value: str) -> str:
    """A Python string literal of `value` (``repr``, in double quotes where that needs no escape)."""
    literal = repr(str(value))
    if literal.startswith("'") and '"' not in value:
        literal = f'"{literal[1:-1]}"'
    return literal


# ------------------------------------------------------------------------------------------------------ values
def _python_float(value: Any, parameter: str) -> str:
    """A Python literal of a finite float (for the snippet)."""
    number = float(value)
    if not math.isfinite(number):
        raise PipelineError(f"{parameter} must be a finite number, got {value!r}", parameter=parameter)
    return repr(number)


def _slug(value: Any) -> str:
    """Tag-friendly form of a value: lower case, runs of other characters → `-`."""
    return re.sub(r"[^a-z0-9.]+", "-", str(value).lower()).strip("-")


def _plain(value: Any) -> Any:
    """Convert numpy/torch scalars, tuples, Paths… to YAML-safe builtins (recursively)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _fmt(value: Any) -> str:
    """Short human-readable form of a value for tables and sentences."""
    value = _plain(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _first_paragraph(doc: str | None) -> str | None:
    """The first paragraph of a docstring, on one line (the one-sentence description with its formula)."""
    if not doc or not doc.strip():
        return None
    return " ".join(line.strip() for line in inspect.cleandoc(doc).split("\n\n", 1)[0].splitlines())


# ------------------------------------------------------------------------------------------------------ objective
def _option(key: str, value: Any, objective: Mapping[str, Any], parameters: Iterable[str] = ()) -> str:
    spans = [markdown_code(f"{key}={value}")]
    spans += [markdown_code(f"{p}={_fmt(objective[p])}") for p in parameters if objective.get(p) is not None]
    return ", ".join(spans)


def describe_objective(objective: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The card's description of a training objective, one entry per option, from the registries of the code.

    Args:
        objective: The objective: the scheduler config's `prediction_type`, `loss_type`, `loss_weighting` and its
            parameters (`snr_gamma`, ...), `variance_type`, `num_train_timesteps`, `beta_schedule`, `beta_start`,
            `beta_end`, `rescale_betas_zero_snr`, and the `timestep_sampler`.

    Returns:
        `{"prediction" | "loss" | "weighting" | "variance" | "sampler" | "schedule": {"option", "text"}}` for the
        options present: `option` is Markdown code naming the option with its value (and the weighting's or loss's
        parameters), `text` the registry's Markdown description.
    """
    items: dict[str, dict[str, str]] = {}
    for item, key, registry in (
        ("prediction", "prediction_type", PREDICTION_TYPES),
        ("loss", "loss_type", LOSS_TYPES),
        ("variance", "variance_type", VARIANCE_TYPES),
    ):
        value = objective.get(key)
        if value is None:
            continue
        # a loss type's parameters are the config options named after it (`hybrid_lambda` for `hybrid`)
        parameters = sorted(k for k in objective if item == "loss" and k.startswith(f"{value}_"))
        items[item] = {
            "option": _option(key, value, objective, parameters),
            "text": registry.get(value, _NO_DESCRIPTION),
        }
    weighting = objective.get("loss_weighting")
    if weighting is not None:
        known = weighting in WEIGHTINGS
        items["weighting"] = {
            "option": _option(
                "loss_weighting", weighting, objective, weighting_parameters(weighting) if known else ()
            ),
            "text": (_first_paragraph(WEIGHTINGS[weighting].__doc__) if known else None) or _NO_DESCRIPTION,
        }
    sampler = objective.get("timestep_sampler")
    if sampler is not None:
        cls = TIMESTEP_SAMPLER_CLASSES.get(sampler)
        items["sampler"] = {
            "option": _option("timestep_sampler", sampler, objective),
            "text": (_first_paragraph(cls.__doc__) if cls else None) or _NO_DESCRIPTION,
        }
    if objective.get("beta_schedule") is not None or objective.get("num_train_timesteps") is not None:
        parts = []
        if objective.get("num_train_timesteps") is not None:
            parts.append(f"T = {_fmt(objective['num_train_timesteps'])} diffusion steps")
        if objective.get("beta_start") is not None and objective.get("beta_end") is not None:
            parts.append(f"β from {_fmt(objective['beta_start'])} to {_fmt(objective['beta_end'])}")
        if objective.get("rescale_betas_zero_snr"):
            parts.append("rescaled to zero terminal SNR")
        items["schedule"] = {
            "option": _option("beta_schedule", objective.get("beta_schedule"), objective),
            "text": escape_markdown(", ".join(parts) + "."),
        }
    return items


def objective_tags(objective: Mapping[str, Any]) -> list[str]:
    """Hub tags for an objective: the base tags plus `prediction-…`, `loss-…`, `weighting-…`.

    Args:
        objective: The objective dict.

    Returns:
        The list of tags, without duplicates.
    """
    tags = list(BASE_TAGS)
    for prefix, key in (("prediction", "prediction_type"), ("loss", "loss_type"), ("weighting", "loss_weighting")):
        if objective.get(key) is not None:
            tags.append(f"{prefix}-{_slug(objective[key])}")
    return list(dict.fromkeys(tags))


# ------------------------------------------------------------------------------------------------------ rendering
def _is_hub_dataset_id(name: str) -> bool:
    """True for Hub-like ids (`mnist`, `user/data`); False for local paths and the embedded scikit-learn digits."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name or os.path.exists(name):
        return False
    return not name.lower().startswith(_EMBEDDED_DATASET_PREFIX) and bool(_HUB_ID_RE.match(name))


def _image_rows(images: Mapping[str, str] | None, output_dir: Path) -> list[dict[str, str]]:
    rows = []
    for key, raw in (images or {}).items():
        if not raw:
            continue
        path = Path(raw)
        if path.is_absolute():
            with contextlib.suppress(ValueError):
                path = path.resolve().relative_to(output_dir.resolve())
        caption = escape_markdown(str(key).replace("_", " ").capitalize())
        rows.append({"caption": caption, "path": urllib.parse.quote(path.as_posix())})
    return rows


def _table(values: Mapping[str, Any] | None) -> list[dict[str, str]]:
    return [
        {"name": escape_markdown(k), "value": escape_markdown(_fmt(v))}
        for k, v in (values or {}).items()
        if v is not None
    ]


def _eval_rows(results: list[EvalResult] | None) -> list[dict[str, str]]:
    """The rows of the "Evaluation" table: value ± stderr, the 95% interval, and the other metric arguments."""
    rows = []
    for result in results or []:
        args = dict(result.metric_args or {})
        stderr, ci95 = args.pop("stderr", None), args.pop("ci95", None)
        value = _fmt(result.metric_value) + (f" ± {_fmt(stderr)} (stderr)" if stderr is not None else "")
        settings = [f"{k} = {_fmt(v)}" for k, v in args.items()]
        rows.append(
            {
                "metric": escape_markdown(result.metric_name or result.metric_type),
                "value": escape_markdown(value),
                "interval": escape_markdown(_fmt(ci95) if ci95 is not None else ""),
                "dataset": escape_markdown(result.dataset_name),
                "split": escape_markdown(result.dataset_split or ""),
                "settings": escape_markdown(", ".join(settings)),
            }
        )
    return rows


def _render(card_data: ModelCardData, **template_kwargs: Any) -> ModelCard:
    """`ModelCard.from_template` of the packaged template; the "Evaluation" rows come from `card_data.eval_results`."""
    template = importlib.resources.files("ddpm_objectives_hf.model_cards") / TEMPLATE_NAME
    with importlib.resources.as_file(template) as template_path:
        card = ModelCard.from_template(
            card_data,
            template_path=str(template_path),
            eval_rows=_eval_rows(card_data.eval_results),
            **template_kwargs,
        )
    card.text = re.sub(r"\n{3,}", "\n\n", card.text.lstrip("\n"))
    return card


def _save(card: ModelCard, path: Path) -> None:
    """Write the card to `path` atomically (a temporary file beside it, then `os.replace`)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(str(card))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_model_card(
    output_dir: str | Path,
    *,
    objective: Mapping[str, Any],
    repo_id: str | None = None,
    folder_name: str | None = None,
    dataset_name: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    images: Mapping[str, str] | None = None,
    training: Mapping[str, Any] | None = None,
    remote_code: bool = False,
    num_classes: int | None = None,
    guidance_scale: float | None = None,
    base_model: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """Render the model card of a trained pipeline and write it to `output_dir/README.md` (no network).

    Args:
        output_dir: The pipeline folder (created if missing).
        objective: The training objective (the scheduler config's objective options and the `timestep_sampler`, see
            [`describe_objective`]); stored under `ddpm_objective`.
        repo_id: The Hub id the pipeline is pushed to: the title and the "How to use" snippet name it. When `None`
            the snippet loads the folder by its name (never its absolute path).
        folder_name: The pipeline folder's name for the snippet when `repo_id` is `None`; defaults to the name of
            `output_dir` (pass the final name when `output_dir` is a staging folder).
        dataset_name: Training dataset; listed under `datasets` when it looks like a Hub id (not a local path).
        metrics: Scalar results, e.g. `{"final_loss": 0.03}`; stored under `ddpm_metrics`.
        images: Key → image path relative to `output_dir` (e.g. `{"samples": "samples.png"}`); the key, capitalised
            with `_` as spaces, is the caption.
        training: Training hyper-parameters for the table (`num_inference_steps` also sets the snippet's value).
        remote_code: The pipeline is the folder's `pipeline.py` (`DDPMObjectivePipeline`: learned-variance, μ and
            class-conditional models): the snippet loads it with `trust_remote_code=True`, and the card says so.
        num_classes: The number of classes of a class-conditional model: the snippet samples one image of each of
            the first classes (`class_labels=[0, 1, ...]`).
        guidance_scale: The classifier-free guidance scale the snippet passes (a model with a null class); `None`:
            none.
        base_model: The Hub id of the pipeline this one was fine-tuned from: the Hub's `base_model` metadata.
        license: License id for the metadata.

    Returns:
        The `huggingface_hub.ModelCard` that was written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    objective_plain = {str(k): _plain(v) for k, v in objective.items()}
    metrics_plain = {str(k): _plain(v) for k, v in (metrics or {}).items() if v is not None}
    training = dict(training or {})
    model_id = repo_id or folder_name or output_dir.resolve().name

    tags = objective_tags(objective_plain)
    if num_classes:  # not an unconditional model: the Hub has no class-conditional task, so no pipeline_tag
        tags = [tag for tag in tags if tag != TASK_TYPE] + [CONDITIONAL_TASK_TYPE]
    if remote_code:
        tags.append("custom_code")
    card_data = ModelCardData(
        library_name="diffusers",
        license=license,
        tags=tags,
        pipeline_tag=None if num_classes else TASK_TYPE,
        datasets=[dataset_name] if dataset_name and _is_hub_dataset_id(dataset_name) else None,
        model_name=model_id,
        base_model=base_model,
        ddpm_objective=objective_plain,
        ddpm_metrics=metrics_plain or None,
    )
    steps = training.get("num_inference_steps") or objective_plain.get("num_train_timesteps") or 1000
    class_labels = list(range(min(int(num_classes), _SNIPPET_CLASSES))) if num_classes else None
    arguments = {}  # the snippet's sampling call: numbers only
    if class_labels:
        arguments = {"batch_size": str(len(class_labels)), "class_labels": repr(class_labels)}
        if guidance_scale is not None:
            arguments["guidance_scale"] = _python_float(guidance_scale, "guidance_scale")
    arguments["num_inference_steps"] = str(int(steps))
    card = _render(
        card_data,
        title=escape_markdown(model_id.split("/")[-1]),
        dataset=markdown_code(dataset_name) if dataset_name else None,
        remote_code=remote_code,
        num_classes=int(num_classes) if num_classes else None,
        class_labels=class_labels,
        guided="guidance_scale" in arguments,
        sample_arguments=", ".join(f"{k}={v}" for k, v in arguments.items()),
        objective=describe_objective(objective_plain),
        images=_image_rows(images, output_dir),
        metric_rows=_table(metrics_plain),
        training_rows=_table(training),
        model_id_literal=python_string(model_id),
        pushed=repo_id is not None,
    )
    _save(card, output_dir / "README.md")
    return card


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluation_results(report: Mapping[str, Any]) -> list[EvalResult]:
    """`huggingface_hub.EvalResult`s of a `scripts/evaluate.py` report.

    Bits/dim of the full variational bound, of the fast estimator and of the probability-flow ODE (`metric_config`
    `full` / `fast` / `ode`) carry their standard error and 95% interval in `metric_args` (the full bound's is the
    normal interval bpd ± 1.96 stderr; the ODE's also its solver, tolerances, divergence and dequantisation draws);
    FID carries its feature network (`metric_config`), the sampler and its number of steps.

    Args:
        report: The report `scripts/evaluate.py` writes (``report.json``).

    Returns:
        One result per metric present in the report.
    """
    data = report.get("data") or {}
    dataset = str(data.get("dataset") or "unknown")
    local = dataset.startswith((".", "/", "~")) or os.path.exists(dataset)
    conditional = "conditioning" in report  # bits/dim of −log p(x | y), and −log p(x) through the null class
    common = {
        # the Hub has no class-conditional task: the card's own tag, as in its metadata
        "task_type": CONDITIONAL_TASK_TYPE if conditional else TASK_TYPE,
        # a local folder or file is named by its last part (never the machine's absolute path), of type "local"
        "dataset_type": "local" if local else dataset,
        "dataset_name": (Path(dataset).name or dataset) if local else dataset,
        "dataset_split": None if data.get("split") is None else str(data["split"]),
    }
    z = NormalDist().inv_cdf(0.975)
    results = []
    given = " of −log p(x | y)" if conditional else ""
    for key, config, name in (
        ("bpd_full", "full", f"bits/dim (full variational bound{given})"),
        ("bpd_fast", "fast", f"bits/dim (fast estimate{given})"),
        ("bpd_fast_unconditional", "fast, unconditional", "bits/dim (fast estimate of −log p(x), null class)"),
        ("bpd_ode", "ode", f"bits/dim (probability-flow ODE{given}, dequantised)"),
    ):
        if key not in report:
            continue
        bpd = _plain(report[key])
        stderr = bpd.get("stderr")
        ci95 = bpd.get("ci95") or (None if stderr is None else [bpd["bpd"] - z * stderr, bpd["bpd"] + z * stderr])
        args = {
            "stderr": stderr,
            "ci95": ci95,
            "num_images": data.get("num_bpd_images"),
            "network_calls_per_image": bpd.get("network_calls_per_image"),
            "num_train_timesteps": report.get("num_train_timesteps") if key == "bpd_full" else None,
            # the bound is of the model's own reverse variance (the ODE has none)
            "variance_type": None if key == "bpd_ode" else (report.get("objective") or {}).get("variance_type"),
            **{k: bpd.get(k) for k in ("rtol", "atol", "method", "divergence", "draws") if key == "bpd_ode"},
        }
        results.append(
            EvalResult(
                metric_type="bits_per_dim",
                metric_name=name,
                metric_config=config,
                metric_value=bpd["bpd"],
                metric_args={k: _plain(v) for k, v in args.items() if v is not None},
                **common,
            )
        )
    if "guidance_sweep" in report:
        results.extend(_guidance_results(_plain(report["guidance_sweep"]), _plain(report.get("fid") or {}), common))
    elif "fid" in report:
        fid, sampling = _plain(report["fid"]), _plain(report.get("sampling") or {})
        args = {
            "feature_network": fid.get("feature"),
            "num_features": fid.get("num_features"),
            "sampler": sampling.get("sampler"),
            "num_inference_steps": sampling.get("num_inference_steps"),
            "num_samples": sampling.get("num_samples"),
        }
        results.append(
            EvalResult(
                metric_type="fid",
                metric_name="FID",
                metric_config=None if fid.get("feature") is None else str(fid["feature"]),
                metric_value=fid["fid"],
                metric_args={k: v for k, v in args.items() if v is not None},
                **common,
            )
        )
    return results


def _guidance_results(sweep: Mapping[str, Any], fid: Mapping[str, Any], common: Mapping[str, Any]) -> list[EvalResult]:
    """FID and the digits classifier's accuracy on the requested class at each guidance scale of a class-conditional
    model (``metric_config`` names the scale, so each is its own measurement)."""
    results = []
    sampling = {k: sweep.get(k) for k in ("sampler", "num_inference_steps", "num_samples")}
    for row in sweep.get("scales") or []:
        scale = row["guidance_scale"]
        args = {"guidance_scale": scale, **{k: v for k, v in sampling.items() if v is not None}}
        if row.get("fid") is not None:
            results.append(
                EvalResult(
                    metric_type="fid",
                    metric_name=f"FID (guidance scale {_fmt(scale)})",
                    metric_config=f"{fid.get('feature', 'unknown')}, guidance {_fmt(scale)}",
                    metric_value=row["fid"],
                    metric_args={"feature_network": fid.get("feature"), **args},
                    **common,
                )
            )
        if row.get("accuracy") is not None:
            results.append(
                EvalResult(
                    metric_type="accuracy",
                    metric_name=f"digits classifier accuracy on the requested class (guidance scale {_fmt(scale)})",
                    metric_config=f"digits classifier, guidance {_fmt(scale)}",
                    metric_value=row["accuracy"],
                    metric_args=args,
                    **common,
                )
            )
    return results


def _same_measurement(a: EvalResult, b: EvalResult) -> bool:
    keys = ("task_type", "dataset_name", "dataset_split", "metric_type", "metric_config")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def add_evaluation_to_model_card(model_dir: str | Path, report: Mapping[str, Any]) -> ModelCard | None:
    """Add the results of `scripts/evaluate.py` to the model card of a local pipeline folder.

    The results go into the metadata's `model-index` ([`evaluation_results`]) and into the card's "Evaluation"
    section, re-rendered from the template between its markers (appended when the card has none). A result of an
    earlier evaluation of the same metric on the same data set and split is replaced, so evaluating twice adds
    nothing. The card is written atomically.

    Args:
        model_dir: The pipeline folder.
        report: The report `scripts/evaluate.py` writes (``report.json``).

    Returns:
        The updated card, or `None` when `model_dir` is not a local folder with a README.md (e.g. a Hub id).

    Raises:
        PipelineError: If the README.md is not a readable model card.
    """
    path = Path(model_dir) / "README.md"
    if not path.is_file():
        return None
    try:
        card = ModelCard.load(path)
    except Exception as exc:  # the metadata block is not YAML, not a mapping, or a malformed model-index
        raise PipelineError(f"{path} is not a valid model card: {exc}", parameter="model_dir") from exc
    new = evaluation_results(report)
    kept = [old for old in card.data.eval_results or [] if not any(_same_measurement(old, r) for r in new)]
    card.data.eval_results = kept + new
    card.data.model_name = card.data.model_name or Path(model_dir).resolve().name

    rendered = _render(card.data).text  # only the "Evaluation" section has its values
    section = rendered[rendered.index(_EVALUATION_START) : rendered.index(_EVALUATION_END) + len(_EVALUATION_END)]
    start, end = card.text.find(_EVALUATION_START), card.text.find(_EVALUATION_END)
    if 0 <= start < end:
        card.text = card.text[:start] + section + card.text[end + len(_EVALUATION_END) :]
    else:
        card.text = card.text.rstrip("\n") + "\n\n" + section + "\n"
    _save(card, path)
    return card
