"""Shared fixtures: paths to the benchmark data and the weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("IMC_BENCH", REPO.parent / "shared" / "imc-bench"))


@pytest.fixture(scope="session")
def bench_root() -> Path:
    if not (BENCH / "train_labels.csv").is_file():
        pytest.skip(f"imc-bench not found at {BENCH} (set IMC_BENCH)")
    return BENCH


@pytest.fixture(autouse=True)
def _no_automatic_gpu_preset(monkeypatch):
    """On a machine with CUDA, `config.resolve()` without a preset applies the gpu preset;
    the tests check the defaults, so they see no CUDA there (tests/test_config.py tests the
    choice itself)."""
    monkeypatch.setattr("imc.config.cuda_available", lambda: False)
