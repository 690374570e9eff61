"""Datasets spread over worker processes (Kaggle's two GPUs; here two CPU workers) give the
submission that one process gives, and a failing dataset is reported, not lost."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from imc import config, formats, pipeline
from imc.data import OUTLIERS
from imc.submission import check_submission, read_submission

FAST = ["orientation.enabled=false", "features.max_keypoints=512", "runtime.num_threads=1"]


def _competition(root: Path, bench: Path) -> formats.Competition:
    for name, first, count in (("first", 1, 5), ("second", 8, 4)):
        folder = root / "test" / name
        folder.mkdir(parents=True)
        for i in range(first, first + count):
            src = bench / "train" / "templeRing" / f"templeR{i:04d}.png"
            Image.open(src).convert("RGB").resize((320, 240)).save(folder / f"v{i:02d}.png")
    return formats.read_competition(root, split="test")


def test_worker_devices():
    assert pipeline.worker_devices({"device": "cpu", "workers": 0}) == ["cpu"]
    assert pipeline.worker_devices({"device": "cpu", "workers": 2}) == ["cpu", "cpu"]


@pytest.mark.slow
def test_two_worker_processes_give_what_one_process_gives(tmp_path, bench_root):
    comp = _competition(tmp_path / "comp", bench_root)
    runs = {}
    for workers in (1, 2):
        conf = config.resolve("fast", None, FAST + [f"runtime.workers={workers}"])
        out = tmp_path / f"w{workers}"
        preds, stats = pipeline.run(comp, conf, out / "run", out / "cache", out / "sub.csv")
        assert set(stats.stages) == {"first", "second"} and not stats.failed
        runs[workers] = (out / "sub.csv").read_text()
        assert check_submission(comp, read_submission(out / "sub.csv", 2025)) == []
    assert runs[1] == runs[2]
    frame = read_submission(tmp_path / "w2" / "sub.csv", 2025)
    assert (frame["scene"] != OUTLIERS).sum() >= 7  # most images registered: a real run


@pytest.mark.slow
def test_a_failing_dataset_keeps_its_rows_and_is_reported(tmp_path, bench_root, monkeypatch):
    comp = _competition(tmp_path / "comp", bench_root)
    real = pipeline.run_dataset

    def broken(dataset, *args, **kwargs):
        if dataset.name == "second":
            raise RuntimeError("disk on fire\nsecond line")
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_dataset", broken)
    conf = config.resolve("fast", None, FAST)
    sub = tmp_path / "sub.csv"
    _, stats = pipeline.run(comp, conf, tmp_path / "run", tmp_path / "cache", sub)
    assert stats.failed == {"second": "RuntimeError: disk on fire"}
    frame = read_submission(sub, 2025)
    assert check_submission(comp, frame) == []
    assert set(frame[frame["dataset"] == "second"]["scene"]) == {OUTLIERS}
    log = (tmp_path / "run" / "errors.log").read_text()
    assert "dataset second:" in log and "Traceback" in log and "second line" in log
