"""The scripts run in the test's process as the command line runs them (``python scripts/train.py ARGS``): executed as
``__main__`` with ``sys.argv``, never imported (nothing imports ``scripts/``). In-process, so a test can capture
their output and replace a library function they call; the exit status is returned."""

from __future__ import annotations

import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, argv: Sequence[str]) -> int:
    """Run ``scripts/{name}.py`` with ``argv``; its exit status."""
    path = SCRIPTS / f"{name}.py"
    saved = sys.argv
    sys.argv = [str(path), *map(str, argv)]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        sys.argv = saved
    return 0


def train(argv: Sequence[str]) -> int:
    """``python scripts/train.py ARGV``."""
    return run_script("train", argv)


def evaluate(argv: Sequence[str]) -> int:
    """``python scripts/evaluate.py ARGV``."""
    return run_script("evaluate", argv)
