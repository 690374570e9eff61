"""Time budget: shares, levels, pair cuts, mapping time (hand-computed), and runs that must still
end with a complete submission when the budget is tiny or matching or mapping has to be cut."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import make_scene, toy_dataset, verified_pairs

from imc import budget as B
from imc import config, formats, pipeline
from imc.data import OUTLIERS
from imc.log import logger
from imc.stages import mapping
from imc.submission import check_submission, read_submission


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def caplog_imc(caplog):
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="imc")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_shares_follow_image_counts_and_leftovers_move_on():
    clock = Clock()
    b = B.Budget(100, {"a": 10, "b": 30, "c": 10}, clock)
    conf = config.resolve()
    a = b.start("a", conf)
    assert a.share == pytest.approx(100 * 10 / 50) and not a.skip and a.level == 0
    assert a.matching_deadline == pytest.approx(1000 + 0.8 * 20)
    clock.t += 5  # `a` used 5 of its 20 s: the 15 left are shared by b and c
    assert b.start("b", conf).share == pytest.approx(95 * 30 / 40)
    clock.t += 95  # nothing left
    c = b.start("c", conf)
    assert c.skip and c.share == 0 and "no time left" in c.decisions[0]


def test_mapping_allowance_hand_computed():
    clock = Clock(0.0)
    b = B.Budget(100, {"a": 10}, clock)
    plan = B.DatasetPlan("a", 10, share=50, start=-20)  # 30 s of its share left
    assert b.mapping_allowance(plan) == pytest.approx(30)
    plan = B.DatasetPlan("a", 10, share=50, start=-48)  # 2 s left: the floor, 20 % of 50 s
    assert b.mapping_allowance(plan) == pytest.approx(10)
    clock.t = 95  # the run ends in 5 s, before the floor
    assert b.mapping_allowance(plan) == pytest.approx(5)
    assert B.Budget(math.inf, {}).mapping_allowance(B.DatasetPlan("a", 1, math.inf, 0)) == math.inf


def test_mapping_stops_at_the_end_of_the_share(tmp_path):
    """A dataset whose share ends in one second: mapping (about 4 s per pass here) stops then,
    and the plan records it."""
    scene = make_scene(n_cams=24, n_points=1200, seed=1)
    names = [f"im{i:02d}.png" for i in range(24)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    clock = Clock(0.0)
    budget = B.Budget(1e6, {"toy": 24}, clock)
    plan = B.DatasetPlan("toy", 24, share=5, start=-4)
    conf = config.resolve()
    pairs = verified_pairs(scene, names)

    def map_toy(seconds: float) -> mapping.MappingResult:
        return mapping.main(conf, mapping.Inputs(ds, names, feats, pairs, seconds), tmp_path)

    result = budget.map(plan, map_toy, mapping.MappingResult)
    assert result.stopped and 0 < len(result.preds) < 24
    assert plan.decisions == [
        f"mapping stopped at its time limit (1 s): {len(result.preds)} of 24 images registered"
    ]
    clock.t = 1e6  # the run's time is spent: no mapping at all
    result = budget.map(plan, map_toy, mapping.MappingResult)
    assert result.preds == {} and "no time left for mapping" in plan.decisions[-1]


def test_choose_level_hand_computed():
    assert B.choose_level(None, 10) == 0  # no measurement yet
    assert B.choose_level(50, 60) == 0
    assert B.choose_level(100, 60) == 1  # 100 / 2 <= 60
    assert B.choose_level(200, 60) == 2  # 200 / 2 > 60, 200 / 4 <= 60
    assert B.choose_level(10_000, 60) == B.MAX_LEVEL
    assert B.choose_level(5, 0) == B.MAX_LEVEL


def test_degrade_levels():
    conf = config.resolve()
    assert B.degrade(conf, 0) is conf
    one = B.degrade(conf, 1)
    assert one["features"]["max_keypoints"] == 1024 and one["features"]["resize_long_side"] == 768
    assert one["retrieval"]["num_neighbors"] == 6 and one["retrieval"]["exhaustive_below"] == 20
    three = B.degrade(conf, 3)
    assert three["features"]["max_keypoints"] == 256  # 2048 / 8
    assert three["features"]["resize_long_side"] == 480  # 432 raised to the floor
    assert three["retrieval"]["num_neighbors"] == 2 and three["retrieval"]["exhaustive_below"] == 5
    assert conf["features"]["max_keypoints"] == 2048  # the input is not changed


def test_rates_and_prediction():
    b = B.Budget(1000, {"a": 10, "b": 20}, Clock())
    conf = config.resolve()
    assert b.predict(20, conf) is None
    b.observe("image", 10.0, 5, level=1)  # 2 s per image at level 1 = 4 s at level 0
    b.observe("pair", 3.0, 10)
    assert b.rate("image") == pytest.approx(4.0) and b.rate("image", 1) == pytest.approx(2.0)
    # 20 images < exhaustive_below (40): 190 pairs
    assert B.expected_pairs(20, conf["retrieval"]) == 190
    assert b.predict(20, conf) == pytest.approx(20 * 4.0 + 190 * 0.3)
    assert B.expected_pairs(100, conf["retrieval"]) == 1200  # k = 12 per image
    plan = b.start("a", conf)  # share 1000 / 3, predicted 10 * 4 + 45 * 0.3
    assert plan.level == 0
    small = B.Budget(10, {"b": 20}, Clock())
    small.rates = b.rates
    plan = small.start("b", conf)  # 137 s predicted for 10 s: level 4 (137 / 16) capped at 3
    assert plan.level == B.MAX_LEVEL == 3
    assert "predicted 137 s for a share of 10 s: level 3" in plan.decisions[0]


def _unit(angles_deg):
    a = np.deg2rad(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)


def test_cut_pairs_hand_computed():
    # a, b, c, d at 0, 10, 30 and 100 degrees; similarity = cos of the angle between them.
    names, desc = ["a", "b", "c", "d"], _unit([0, 10, 30, 100])
    conf = {"num_neighbors": 12, "min_similarity": 0.2, "exhaustive_below": 40}
    # d-a (cos 100 = -0.17) and d-b (cos 90 = 0) are below 0.2: at most 4 pairs
    assert B.cut_pairs(names, desc, conf, 4) == (
        [("a", "b"), ("a", "c"), ("b", "c"), ("c", "d")],
        3,
    )
    # k = 2 still gives those 4; k = 1: a-b, b-c (c's nearest is b), c-d
    assert B.cut_pairs(names, desc, conf, 3) == ([("a", "b"), ("b", "c"), ("c", "d")], 1)
    # fewer than k = 1 gives: the most similar ones (a-b 10 deg, b-c 20 deg)
    assert B.cut_pairs(names, desc, conf, 2) == ([("a", "b"), ("b", "c")], 1)
    assert B.cut_pairs(names, desc, conf, 0) == ([], 0)
    assert B.max_pairs(10.0, 0.3) == 33 and B.max_pairs(10.0, None) is None


def _images(folder: Path, first: int, count: int, bench: Path) -> None:
    folder.mkdir(parents=True)
    for i in range(first, first + count):
        im = Image.open(bench / "train" / "dinoSparseRing" / f"dinoSR{i:04d}.png").convert("RGB")
        im.resize((320, 240), Image.BILINEAR).save(folder / f"v{i:02d}.png")


def _competition(root: Path, bench: Path) -> formats.Competition:
    _images(root / "test" / "first", 1, 5, bench)
    _images(root / "test" / "second", 8, 3, bench)
    return formats.read_competition(root, split="test")


FAST = ["orientation.enabled=false", "features.max_keypoints=512"]


def test_tiny_budget_still_writes_a_complete_submission(
    tmp_path, bench_root, caplog_imc, monkeypatch
):
    # The run's clock goes 100 times faster than real time, so that the first dataset's
    # features (tens of milliseconds or more) always outlast the 1 s budget, on any machine.
    def fast_budget(seconds, sizes):
        return B.Budget(seconds, sizes, clock=lambda: 100 * time.monotonic())

    monkeypatch.setattr(pipeline, "Budget", fast_budget)
    comp = _competition(tmp_path / "comp", bench_root)
    conf = config.resolve("fast", None, FAST)
    sub = tmp_path / "submission.csv"
    preds, _ = pipeline.run(comp, conf, tmp_path / "run", tmp_path / "cache", sub, time_budget=1)
    frame = read_submission(sub, 2025)
    assert check_submission(comp, frame) == []
    assert len(frame) == 8 and set(frame["scene"]) == {OUTLIERS}
    text = caplog_imc.text
    assert "time budget, dataset second: no time left: not processed" in text
    assert "time budget, dataset first: no time left for matching" in text
    summary = json.loads((tmp_path / "run" / "first" / "summary.json").read_text())
    assert summary["budget"]["share_seconds"] == pytest.approx(1 * 5 / 8, abs=0.05)
    assert any("matching" in d for d in summary["budget"]["decisions"])


def test_matching_is_cut_to_the_pairs_that_fit(tmp_path, bench_root, caplog_imc):
    comp = _competition(tmp_path / "comp", bench_root)
    ds = comp.datasets["first"]  # 5 images: 10 pairs without a budget
    conf = config.resolve("fast", None, FAST)
    budget = B.Budget(1e6, {"first": 5})
    budget.observe("pair", 1e3, 1)  # pretend: 1000 s per pair, so 2 pairs fit in 2500 s
    plan = B.DatasetPlan("first", 5, share=2500 / B.MATCHING_FRACTION, start=budget.clock())
    models = pipeline.Models(conf, pipeline.select_device(conf["runtime"]))
    stats = pipeline.RunStats()
    preds = pipeline.run_dataset(
        ds, conf, tmp_path / "cache", tmp_path / "run", models, stats, budget, plan
    )
    summary = json.loads((tmp_path / "run" / "first" / "summary.json").read_text())
    assert len(summary["retrieval_pairs"]) == 2
    assert "10 pairs at 1000.00 s/pair" in caplog_imc.text and "cut to 2 pairs" in caplog_imc.text
    assert set(preds) <= {im.name for im in ds.images}
