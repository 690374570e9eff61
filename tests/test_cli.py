"""The `imc` command's score and check forms, their help, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imc import formats
from imc.cli import main
from imc.data import Prediction
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
