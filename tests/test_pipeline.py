"""End to end: the demo scene and the ETs dataset, scored with the IMC2025 metric.

Both run at the `fast` preset (640 px, 1024 keypoints) so that CI stays within its time; the
floors sit below what these runs measured (see BENCHMARKS.md for the default settings).
"""

from __future__ import annotations

import pandas as pd
import pytest

from imc import config, formats, pipeline, scoring
from imc.demo import make_demo
from imc.submission import check_submission, read_submission


def _run(root, datasets, tmp_path, preset="fast", overrides=()):
    comp = formats.read_competition(root, split="train", datasets=datasets)
    conf = config.resolve(preset, overrides=list(overrides))
    out = tmp_path / "submission.csv"
    pipeline.run(comp, conf, tmp_path / "run", tmp_path / "cache", out)
    return comp, out, scoring.score(comp, read_submission(out, comp.year))


@pytest.mark.slow
def test_demo_scene_end_to_end(tmp_path):
    root = make_demo(tmp_path / "data")
    comp, out, report = _run(root, None, tmp_path)
    assert check_submission(comp, read_submission(out, comp.year)) == []
    summary = pd.read_json(tmp_path / "run" / "demo" / "summary.json", typ="series")
    # the four images stored rotated come back with the rotation that makes them upright
    assert {k: v for k, v in summary["rotations"].items() if v} == {
        "boxes_03.png": 3,
        "boxes_06.png": 2,
        "wall_02.png": 1,
        "wall_05.png": 3,
    }
    row = report.to_dict()["datasets"][0]
    assert row["clusterness"] >= 99.0  # two scenes kept apart, outliers left out
    assert report.score >= 85.0


@pytest.mark.slow
def test_ets_end_to_end_keeps_the_look_alike_scenes_apart(tmp_path, bench_root):
    comp, out, report = _run(
        bench_root, ["ETs"], tmp_path, overrides=["features.resize_long_side=512"]
    )
    sub = pd.read_csv(out)
    labels = pd.read_csv(bench_root / "train_labels.csv")
    m = sub.merge(labels[["image", "scene"]], on="image", suffixes=("_sub", "_ref"))
    m = m[m.scene_ref != "outliers"]
    # no submitted cluster mixes the two ET scenes
    assert (m[m.scene_sub != "outliers"].groupby("scene_sub").scene_ref.nunique() == 1).all()
    row = report.to_dict()["datasets"][0]
    assert row["clusterness"] >= 90.0
    # measured 49.3 (mAA 32.7) at 512 px; the default settings are benchmarked against the peer
    # in BENCHMARKS.md
    assert report.score >= 45.0
