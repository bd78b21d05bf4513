"""The run cache: one folder per (objective, training flags, seed), named with a hash of the flags, and one JSON file
per measurement inside it, so an interrupted study resumes where it stopped and a changed profile reruns only what
it changes.

    <cache>/<objective>-s<seed>-<hash of the flags>/
        run.json                 written once training is complete (flags, seed, timing, the EMA steps kept)
        model/                   the run's --output_dir (the final pipeline; checkpoints while it trains)
        ema/step-N.safetensors   EMA weights at the curve points before the last
        evals/<measurement>.json one file per measurement, named by its settings
        samples/<...>.npz        the generated images behind each FID
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from ddpm_objectives_hf.training.run_folder import read_json, write_json

STUDY_VERSION = 2  # part of every key: a change of what a run or a measurement means changes its key


def flags_hash(flags: list[str], length: int = 10) -> str:
    """Hex digest of the study version and the flags in order (the flags of a profile are generated, so their order
    is fixed)."""
    payload = json.dumps({"study_version": STUDY_VERSION, "flags": [str(f) for f in flags]}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def run_folder(cache_dir: str | Path, name: str, seed: int, flags: list[str]) -> Path:
    """``<cache>/<name>-s<seed>-<hash>``; ``flags`` (which include the seed) are what the hash covers."""
    return Path(cache_dir) / f"{name}-s{seed}-{flags_hash(flags)}"


def measurement_name(kind: str, **settings) -> str:
    """A measurement's file stem from its settings, readable and in a fixed order: ``fid-step400-ddpm50-n256``."""
    parts = [kind]
    for key, value in settings.items():
        parts.append(f"{key}{value}" if not isinstance(value, bool) else (key if value else f"no{key}"))
    return "-".join(parts)


def cached(path: Path, compute: Callable[[], dict], refresh: bool = False) -> dict:
    """The JSON at ``path`` if it is there and readable, else ``compute()`` written there atomically."""
    if path.is_file() and not refresh:
        try:
            return read_json(path)
        except (OSError, ValueError):
            pass  # a damaged file is recomputed
    result = compute()
    write_json(path, result)
    return result


def read_or_none(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None
