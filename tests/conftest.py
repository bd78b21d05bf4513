"""Test-session environment, set at import time (before anything imports huggingface_hub or datasets, which read
their offline switches once, at import): no network, a non-interactive matplotlib backend and a private cache for
the feature classifier. Values already set in the environment win."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if "DDPM_OBJECTIVES_CACHE" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="ddpm-objectives-test-cache-")
    os.environ["DDPM_OBJECTIVES_CACHE"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
