"""tuning.prepare: the preparing run's summary.json names every cached file it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imc.data import Dataset
from imc.errors import ImcError
from tuning.prepare import find_global, load_prepared


def test_the_global_descriptors_are_the_ones_the_summary_names(tmp_path):
    summary = {"global": str(tmp_path / "retrieval-x" / "global.h5")}
    assert find_global(summary, tmp_path / "summary.json") == tmp_path / "retrieval-x" / "global.h5"


@pytest.mark.parametrize("summary", [{}, {"global": ""}])
def test_an_old_summary_without_global_descriptors_is_an_error_naming_it(tmp_path, summary):
    path = tmp_path / "ds" / "summary.json"
    with pytest.raises(ImcError, match=r"ds/summary.json does not name .*global descriptors"):
        find_global(summary, path)


def test_a_missing_global_file_is_an_error(tmp_path):
    for name in ("features.h5", "matches.h5"):
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "summary.json"
    summary = {
        "features": str(tmp_path / "features.h5"),
        "matches": str(tmp_path / "matches.h5"),
        "global": str(tmp_path / "gone" / "global.h5"),
        "failed": {},
    }
    path.write_text(json.dumps(summary))
    with pytest.raises(ImcError, match=r"gone/global.h5 is missing; delete the summary"):
        load_prepared(Dataset("toy", "toy", []), Path(path), None)
