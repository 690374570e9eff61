"""The `imc` command: score and check forms, help and version, one-line errors, and what
`imc run` reports (scores only with reference poses, exit status 3 when a dataset failed)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from imc import formats, pipeline
from imc.cli import build_parser, main, package_version
from imc.data import Prediction
from imc.poses import read_poses
from imc.submission import write_submission


def _reference(bench_root: Path, tmp_path: Path, transform: bool) -> Path:
    """The reference poses as a submission; with `transform`, each scene moved by a random
    similarity (R, t -> R Q^T, s (t - R Q^T c)), which the metric must not see."""
    comp = formats.read_competition(bench_root, split="train")
    preds = formats.reference_predictions(comp)
    if transform:
        rng = np.random.default_rng(3)
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        s, c = 2.7, rng.normal(size=3) * 10
        preds = {
            k: Prediction(p.cluster, p.R @ q.T, s * (p.t - p.R @ q.T @ c)) if p.registered else p
            for k, p in preds.items()
        }
    return write_submission(comp, preds, tmp_path / "submission.csv")


def test_score_prints_one_line_per_dataset_then_the_score(bench_root, tmp_path, capsys):
    path = _reference(bench_root, tmp_path, transform=True)
    assert main(["score", str(path), str(bench_root)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    comp = formats.read_competition(bench_root, split="train")
    assert [line.split(":")[0] for line in lines[:-1]] == list(comp.datasets)
    assert lines[-1] == "score: 100.0000"


def test_score_of_all_outliers_is_zero_and_json(bench_root, tmp_path, capsys):
    comp = formats.read_competition(bench_root, split="train")
    path = write_submission(comp, {}, tmp_path / "none.csv")
    assert main(["score", str(path), str(bench_root), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"score": 0.0' in out


def test_check_passes_a_complete_submission_and_names_a_missing_row(bench_root, tmp_path, capsys):
    path = _reference(bench_root, tmp_path, transform=False)
    assert main(["check", str(path), str(bench_root)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    lines = path.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:-1]) + "\n")
    assert main(["check", str(short), str(bench_root)]) == 1
    out = capsys.readouterr().out
    assert "1 image(s) have no row" in out and "1 problems" in out


def _imc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imc.cli", *args], capture_output=True, text=True, timeout=120
    )


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    """The error line, after checking: exit 2, no traceback, the error is the last line."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("imc: error:")
    return last


@pytest.mark.parametrize("body", ["not,a,submission\n1,2,3\n", "\x00\x01garbage"])
def test_malformed_csv_is_a_one_line_error(bench_root, tmp_path, body):
    bad = tmp_path / "bad.csv"
    bad.write_text(body)
    assert str(bad) in _one_line_error(_imc("score", str(bad), str(bench_root)))


def test_bad_path_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nowhere"
    assert str(missing) in _one_line_error(_imc("score", str(tmp_path / "s.csv"), str(missing)))
    assert str(missing) in _one_line_error(_imc("run", str(missing)))


@pytest.mark.parametrize("command", ["run", "score", "check", "demo", "report", "tune"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: imc {command}" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"imc {package_version()}" and out == f"imc {metadata.version('imc')}"


def test_top_level_help_lists_every_command(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    with pytest.raises(SystemExit):
        main(["-h"])
    out = capsys.readouterr().out
    description = next(line for line in out.splitlines() if line.startswith("The `imc` command"))
    for command in sub.choices:
        assert command in description
        assert any(line.split()[:1] == [command] for line in out.splitlines()), command


# ---------------------------------------------------------------- submissions without image_id


def _without(path: Path, column: str) -> Path:
    out = path.with_name(f"no_{column}.csv")
    pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=column).to_csv(
        out, index=False
    )
    return out


def test_score_and_check_without_image_id(bench_root, tmp_path, capsys):
    path = _without(_reference(bench_root, tmp_path, transform=False), "image_id")
    assert main(["score", str(path), str(bench_root)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "score: 100.0000"
    assert main(["check", str(path), str(bench_root)]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")


def test_check_of_a_test_split_wants_the_sample_image_ids(bench_root, tmp_path, capsys):
    comp = formats.read_competition(bench_root, split="train", datasets=["fountain"])
    root = formats.write_test_layout(comp, tmp_path / "kaggle")
    test = formats.read_competition(root)
    path = write_submission(test, {}, tmp_path / "submission.csv")
    assert main(["check", str(path), str(root)]) == 0
    capsys.readouterr()
    assert main(["check", str(_without(path, "image_id")), str(root)]) == 1
    assert "no image_id column" in capsys.readouterr().out
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "image_id"] = "wrong"
    frame.to_csv(tmp_path / "wrong.csv", index=False)
    assert main(["check", str(tmp_path / "wrong.csv"), str(root)]) == 1
    assert "row 2: image_id 'wrong'" in capsys.readouterr().out


# ---------------------------------------------------------------- what `imc run` says


@pytest.fixture()
def unlabelled(tmp_path) -> Path:
    """An IMC2025 train folder without train_labels.csv: train/A (2 images), train/B (2)."""
    root = tmp_path / "data"
    for i, name in enumerate(["A/a1.png", "A/a2.png", "B/b1.png", "B/b2.png"]):
        (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        img = np.random.default_rng(i).integers(0, 255, (32, 48, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / "train" / name), img)
    return root


def _fake_run_dataset(fail: set[str]):
    """pipeline.run_dataset that raises for the datasets in `fail`, registers nothing else."""

    def run_dataset(dataset, *args, **kwargs):
        if dataset.name in fail:
            raise RuntimeError(f"boom in {dataset.name}\nsecond line")
        return {}

    return run_dataset


def _run(root: Path, tmp_path: Path, *extra: str) -> int:
    run = ["run", str(root), "--run-dir", str(tmp_path / "run")]
    return main([*run, "--cache-dir", str(tmp_path / "cache"), *extra])


def test_unlabelled_train_split_runs_without_score(unlabelled, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "run_dataset", _fake_run_dataset(set()))
    assert _run(unlabelled, tmp_path, "--split", "train") == 0
    captured = capsys.readouterr()
    assert not any(line.startswith("score") for line in captured.out.splitlines())
    assert "imc: error" not in captured.err
    run = tmp_path / "run"
    assert (run / "report.html").is_file()
    assert len(pd.read_csv(run / "submission.csv")) == 4
    for name in ("A", "B"):
        assert len(read_poses(run / name / "poses.csv")) == 2


def test_a_failed_dataset_makes_exit_status_3(unlabelled, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "run_dataset", _fake_run_dataset({"A"}))
    assert _run(unlabelled, tmp_path) == 3
    run = tmp_path / "run"
    err = capsys.readouterr().err.strip().splitlines()
    assert f"dataset A failed: RuntimeError: boom in A; traceback in {run / 'errors.log'}" in err
    assert not any(line.startswith("dataset B") for line in err)
    assert "Traceback" in (run / "errors.log").read_text()
    sub = pd.read_csv(run / "submission.csv", keep_default_na=False)
    assert sorted(sub["image"]) == ["a1.png", "a2.png", "b1.png", "b2.png"]  # still complete
    assert (sub["scene"] == "outliers").all()
    assert (run / "report.html").is_file()
    assert (read_poses(run / "A" / "poses.csv")["cluster"] == "outliers").all()
