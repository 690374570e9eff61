"""The Kaggle entry: submission.py and install_and_run.py when datasets fail, and how a DINOv2
model is found (a Kaggle model input) or, when none is, what the fallback warning says."""

from __future__ import annotations

import importlib.util
import json
import logging
import runpy
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from imc import bundle, pipeline
from imc.stages import retrieval

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def install_and_run():
    """The template as a module (its functions patchable)."""
    path = bundle.TEMPLATES / "install_and_run.py"
    spec = importlib.util.spec_from_file_location("install_and_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_competition(root: Path, datasets=("toy_a", "toy_b"), images: int = 2) -> Path:
    """An IMC2025 test layout: `images` black 8 x 8 images per dataset."""
    rows = ["image_id,dataset,scene,image,rotation_matrix,translation_vector"]
    for ds in datasets:
        (root / "test" / ds).mkdir(parents=True)
        for i in range(images):
            cv2.imwrite(str(root / "test" / ds / f"im{i}.png"), np.zeros((8, 8, 3), np.uint8))
            rows.append(f"{ds}_{i},{ds},cluster0,im{i}.png,{';'.join(['nan'] * 9)},nan;nan;nan")
    (root / "sample_submission.csv").write_text("\n".join(rows) + "\n")
    return root


# ----------------------------------------------------------------------------- submission.py


def test_failed_datasets_are_listed_after_a_complete_submission(tmp_path, monkeypatch, capsys):
    def run_dataset(dataset, *args, **kwargs):
        if dataset.name == "toy_a":
            raise RuntimeError("CUDA out of memory\nsecond line")
        return {}

    monkeypatch.setattr(pipeline, "run_dataset", run_dataset)
    data = tiny_competition(tmp_path / "comp")
    out, run_dir = tmp_path / "out" / "submission.csv", tmp_path / "run"
    main = runpy.run_path(str(REPO / "submission.py"))["main"]
    argv = ["--data-root", str(data), "--output", str(out), "--run-dir", str(run_dir)]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--time-budget", "inf"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    report = err[err.index("submission.py: 1 of 2 datasets FAILED") :].splitlines()
    assert report == [
        f"submission.py: 1 of 2 datasets FAILED; {out} still has every row (their images as "
        f"outliers); tracebacks in {run_dir / 'errors.log'}:",
        "  toy_a: RuntimeError: CUDA out of memory",
    ]
    assert "Traceback" in (run_dir / "errors.log").read_text()
    sub = pd.read_csv(out)
    assert list(sub["image_id"]) == ["toy_a_0", "toy_a_1", "toy_b_0", "toy_b_1"]
    assert (sub["scene"] == "outliers").all()

    monkeypatch.setattr(pipeline, "run_dataset", lambda *a, **k: {})
    assert main(argv) == 0
    assert "FAILED" not in capsys.readouterr().err


def test_a_wrong_value_is_one_line_and_status_2(tmp_path, capsys):
    main = runpy.run_path(str(REPO / "submission.py"))["main"]
    data = tiny_competition(tmp_path / "comp")
    argv = ["--data-root", str(data), "--output", str(tmp_path / "s.csv")]
    assert main([*argv, "--set", "runtime.device=gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "submission.py: error: configuration value runtime.device='gpu': expected one of "
        "'auto', 'cpu', 'cuda', 'cuda:K'"
    ]
    assert not (tmp_path / "s.csv").exists()


# ----------------------------------------------------------------------------- install_and_run


def test_finish_keeps_a_complete_submission_and_falls_back_otherwise(tmp_path, install_and_run):
    comp = tiny_competition(tmp_path / "comp")
    out = tmp_path / "submission.csv"
    out.write_text("written by imc\n")
    assert install_and_run.finish(3, comp, out, tmp_path) == 3
    assert out.read_text() == "written by imc\n"  # kept, not replaced by the sample
    out.unlink()
    assert install_and_run.finish(1, comp, out, tmp_path) == 1
    assert out.read_text() == (comp / "sample_submission.csv").read_text()
    assert install_and_run.finish(0, comp, out, tmp_path) == 0


def test_a_bundle_for_another_python_is_refused_clearly(install_and_run):
    here = "{}.{}".format(*sys.version_info[:2])
    install_and_run.check_python({"python": here})
    with pytest.raises(SystemExit, match=r"for Python 3\.2 and this is Python .*--python-version"):
        install_and_run.check_python({"python": "3.2"})


def test_a_kaggle_model_input_of_dinov2_is_found(tmp_path, install_and_run, monkeypatch):
    root = tmp_path / "input"
    model = root / "dinov2" / "transformers" / "base" / "1"  # how Kaggle mounts a model
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    other = root / "bert" / "transformers" / "base" / "1"
    other.mkdir(parents=True)
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    tiny_competition(root / "image-matching-challenge-2025")
    assert install_and_run.find_dinov2(root) == model
    assert install_and_run.find_dinov2(tmp_path / "comp-only") is None
    monkeypatch.delenv("IMC_DINOV2", raising=False)
    assert install_and_run.choose_dinov2(None, root) == model.resolve()
    assert install_and_run.choose_dinov2(None, tmp_path / "nowhere") is None
    monkeypatch.setenv("IMC_DINOV2", str(tmp_path / "mine"))
    assert install_and_run.choose_dinov2(None, root) == tmp_path / "mine"
    assert install_and_run.choose_dinov2(other, root) == other  # --dinov2 first
    env = install_and_run.run_env(tmp_path / "bundle", model)
    assert env["IMC_DINOV2"] == str(model)


def test_the_fallback_warning_says_how_to_provide_dinov2(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(retrieval, "dinov2_dirs", lambda: [])
    monkeypatch.setenv("IMC_KAGGLE_INPUT", str(tmp_path / "input"))
    monkeypatch.delenv("IMC_DINOV2", raising=False)
    monkeypatch.setattr(retrieval.logger, "propagate", True)  # the CLI's logging turns it off
    with caplog.at_level(logging.WARNING, logger="imc"):
        assert retrieval.resolve_model({"model": "dinov2", "dinov2_dir": None}) == ("aliked", None)
    text = caplog.text
    assert "no DINOv2 model found" in text and "falls back to aggregated ALIKED" in text
    assert "set $IMC_DINOV2 (or retrieval.dinov2_dir) to a folder holding a transformers" in text
    assert "config.json and model.safetensors or pytorch_model.bin" in text
    assert "attach the DINOv2 model as a model input" in text
    assert f"{tmp_path / 'input'}/*/*/*/*" in text and f"{tmp_path / 'input'}/*/weights" in text
