"""Tests for the documentation pages: every function, class, table and test that `docs/objective.md` names exists,
every relative link of `docs/objective.md` and `docs/walkthrough.md` resolves, and no tracked file points at a
document outside the repository.

The pages are parsed with markdown-it (code spans and links as a renderer sees them); functions and classes are
looked up by import and ``getattr``, tests by reading the test files' syntax trees (nothing is collected or run).
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt

import ddpm_objectives_hf
from ddpm_objectives_hf.weighting import WEIGHTINGS

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVE = ROOT / "docs" / "objective.md"
WALKTHROUGH = ROOT / "docs" / "walkthrough.md"
PAGES = (OBJECTIVE, WALKTHROUGH)

# the forms of a name in a code span (anything else in backticks, e.g. an option value, is not a name)
DOTTED = re.compile(r"ddpm_objectives_hf(?:\.\w+)+")  # ddpm_objectives_hf.weighting.min_snr
EXPORTED_ATTRIBUTE = re.compile(r"([A-Z]\w*)\.(\w+)")  # DDPMObjectiveScheduler.posterior_mean
TABLE = re.compile(r'([A-Z]\w*)\.(_tables|_weights)\["(\w+)"\]')  # DDPMObjectiveScheduler._tables["coef1"]
TEST = re.compile(r"(tests/[\w/]+\.py)::(\w+)")  # tests/test_elbo.py::test_normal_kl_matches_torch_distributions


def _tokens(page: Path):
    """All inline tokens of ``page`` (tables included), flattened."""
    md = MarkdownIt("commonmark").enable("table")
    for block in md.parse(page.read_text(encoding="utf-8")):
        yield block
        yield from block.children or ()


def code_spans(page: Path) -> list[str]:
    return [token.content.strip() for token in _tokens(page) if token.type == "code_inline"]


def link_targets(page: Path) -> list[str]:
    """The targets of links and images, markdown and inline HTML ``src``/``href`` alike."""
    targets = []
    for token in _tokens(page):
        if token.type == "link_open":
            targets.append(token.attrs["href"])
        elif token.type == "image":
            targets.append(token.attrs["src"])
        elif token.type in ("html_inline", "html_block"):
            targets += re.findall(r'(?:src|href)="([^"]+)"', token.content)
    return targets


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation and symbols dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page: Path) -> set[str]:
    tokens = list(MarkdownIt("commonmark").parse(page.read_text(encoding="utf-8")))
    return {github_anchor(tokens[i + 1].content) for i, t in enumerate(tokens) if t.type == "heading_open"}


def resolve_dotted(name: str):
    """Import the longest module prefix of ``name`` and ``getattr`` the rest."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(name)


@functools.cache
def defined_names(path: str) -> frozenset[str]:
    """Names of the functions and classes a test file defines at its top level (read with ast, not imported)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return frozenset(node.name for node in tree.body if isinstance(node, kinds))


@functools.cache
def instance(class_name: str):
    return getattr(ddpm_objectives_hf, class_name)()


def check_name(span: str) -> str | None:
    """Why the name in ``span`` does not exist (``None`` when it does or the span is not a name)."""
    if match := TEST.fullmatch(span):
        path, name = match.groups()
        if not (ROOT / path).is_file():
            return f"no file {path}"
        return None if name in defined_names(path) else f"{path} defines no {name}"
    if match := TABLE.fullmatch(span):
        class_name, table, key = match.groups()
        if class_name not in ddpm_objectives_hf.__all__:
            return f"ddpm_objectives_hf exports no {class_name}"
        return None if key in getattr(instance(class_name), table) else f"{class_name}.{table} has no key {key!r}"
    if DOTTED.fullmatch(span):
        try:
            resolve_dotted(span)
        except (ImportError, AttributeError) as err:
            return f"{span}: {err}"
        return None
    if match := EXPORTED_ATTRIBUTE.fullmatch(span):
        class_name, attribute = match.groups()
        if class_name not in ddpm_objectives_hf.__all__:
            return f"ddpm_objectives_hf exports no {class_name}"
        return None if hasattr(getattr(ddpm_objectives_hf, class_name), attribute) else f"no {span}"
    return None


def test_every_name_in_objective_page_exists():
    spans = code_spans(OBJECTIVE)
    problems = sorted({f"`{span}`: {why}" for span in spans if (why := check_name(span))})
    assert not problems, "\n".join(problems)
    # the parser found the names (a change of notation must not make this test vacuous)
    assert sum(bool(TEST.fullmatch(s)) for s in spans) >= 40
    assert sum(bool(DOTTED.fullmatch(s) or EXPORTED_ATTRIBUTE.fullmatch(s)) for s in spans) >= 40
    assert sum(bool(TABLE.fullmatch(s)) for s in spans) >= 5


def test_check_name_rejects_what_does_not_exist():
    assert check_name("ddpm_objectives_hf.weighting.min_snr") is None
    assert check_name("DDPMObjectiveScheduler.posterior_mean") is None
    assert check_name('DDPMObjectiveScheduler._tables["coef1"]') is None
    assert check_name("tests/test_elbo.py::test_normal_kl_matches_torch_distributions") is None
    assert check_name("prediction_type") is None  # not a name: ignored
    assert check_name("ddpm_objectives_hf.weighting.no_such_weighting")
    assert check_name("ddpm_objectives_hf.no_such_module.f")
    assert check_name("DDPMObjectiveScheduler.no_such_method")
    assert check_name("NoSuchClass.method")
    assert check_name('DDPMObjectiveScheduler._tables["no_such_table"]')
    assert check_name("tests/test_elbo.py::test_no_such_test")
    assert check_name("tests/test_no_such_file.py::test_x")


def test_objective_page_documents_every_builtin_weighting():
    spans = set(code_spans(OBJECTIVE))
    builtin = {name: fn for name, fn in WEIGHTINGS.items() if fn.__module__ == "ddpm_objectives_hf.weighting"}
    assert len(builtin) >= 10
    missing = [name for name, fn in builtin.items() if f"ddpm_objectives_hf.weighting.{fn.__name__}" not in spans]
    assert not missing, f"docs/objective.md does not name the weighting functions of {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    targets = link_targets(page)
    assert targets, f"{page.name} has no links"
    anchors = headings(page)
    broken = []
    for target in targets:
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, fragment = unquote(target).partition("#")
        if not path:
            if fragment not in anchors:
                broken.append(target)
            continue
        resolved = (page.parent / path).resolve()
        if not resolved.exists() or ROOT not in resolved.parents:
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


# Pointers at documents that live outside the repository (the repository must stand on its own: cite the pages in
# docs/ or the papers instead). Written as patterns that do not match their own source text.
OUTSIDE_REFERENCES = re.compile(
    r"\.\./shared\b|\bshared/(?:seeds|reference|hooks)\b|\bseed[ _-]notes?\b|\breference\s+table\b", re.IGNORECASE
)


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in out.split("\0") if name]


def test_no_tracked_file_refers_to_documents_outside_the_repository():
    hits = []
    for path in tracked_files():
        try:
            data = path.read_bytes()
        except OSError:  # deleted in the working tree
            continue
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_REFERENCES.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


def test_outside_reference_pattern():
    # the examples are assembled so that this file does not match its own pattern
    for parts in (
        ("see ../", "shared/x.md"),
        ("as in the seed", " notes"),
        ("shared/", "reference/x.md"),
        ("the reference", " table"),
    ):
        assert OUTSIDE_REFERENCES.search("".join(parts)), parts
    for text in ("shared by all processes", "reference code", "a shared CPU", "tests/reference.py"):
        assert not OUTSIDE_REFERENCES.search(text), text
