"""Shared test fixtures: the read-only real data beside the checkout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.cpu_tuning import tune_process

tune_process(os.environ)  # before a test module imports torch, as the CLI does (pipeline/core/cpu_tuning.py)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("PIPELINE_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real clips, split files, photos); skipped where that folder is absent."""
    path = _shared_data_dir()
    if not (path / "videos").is_dir():
        pytest.skip(f"real test data not found at {path} (set PIPELINE_SHARED_DATA to its location)")
    return path


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    """One intra-op thread: on 2 shared cores, OpenMP spin-waiting makes 2 threads far slower."""
    import torch

    torch.set_num_threads(1)
    yield
