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
