"""The folder layout is the architecture: the objective (the package root) imports nothing of the application around
it, and nothing imports ``scripts/`` (scripts are run, and what they use are package objects)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ddpm_objectives_hf"
APPLICATION = ("training", "evaluation", "data", "cli")  # the subpackages around the objective


def _python_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split()]


def _imports(path: Path, source: str | None = None) -> list[str]:
    """The absolute names the module at ``path`` imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names += [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_nothing_imports_scripts():
    offenders = {
        str(p.relative_to(ROOT)): n
        for p in _python_files()
        for n in _imports(p)
        if n == "scripts" or n.startswith("scripts.")
    }
    assert not offenders, offenders
    assert not (ROOT / "scripts" / "__init__.py").exists()


def test_the_objective_imports_nothing_of_the_application():
    root_modules = sorted((ROOT / PACKAGE).glob("*.py"))
    assert len(root_modules) > 5
    application = tuple(f"{PACKAGE}.{name}" for name in APPLICATION)
    offenders = {
        p.name: n for p in root_modules for n in _imports(p) if n.startswith(application) and p.name != "__init__.py"
    }
    assert not offenders, offenders


def test_evaluation_and_data_import_nothing_of_training():
    """What training and evaluation share (data, files) lives beside them, not inside training."""
    modules = sorted((ROOT / PACKAGE / "evaluation").glob("*.py")) + sorted((ROOT / PACKAGE / "data").glob("*.py"))
    offenders = {p.name: n for p in modules for n in _imports(p) if n.startswith(f"{PACKAGE}.training")}
    assert not offenders, offenders


def test_the_layout_check_sees_relative_imports():
    """The check itself: relative imports of the application and an import of scripts are found."""
    source = "from .training import models\nfrom .cli.arguments import build_scheduler\nfrom . import data\nimport scripts\n"
    names = _imports(ROOT / PACKAGE / "probe.py", source)
    assert names == [f"{PACKAGE}.training", f"{PACKAGE}.cli.arguments", f"{PACKAGE}.data", "scripts"]
