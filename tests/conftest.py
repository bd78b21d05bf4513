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

import datasets  # noqa: E402, F401  (its log handler binds sys.stderr when first set up: here, not under a test's capsys)
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
