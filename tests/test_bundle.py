"""The offline Kaggle bundle: its layout, and a run from the bundle alone with the network off.

The offline test builds the `--full` bundle, creates a fresh virtual environment from its wheels
alone (pip's configuration ignored, no index), and runs install_and_run.py in a new network
namespace (`unshare -n`: only a loopback that is down), or, where that is not allowed, under a
socket guard that fails every connection; a connection attempt is checked to fail first. The
Kaggle-like folder is a test layout (test/ + sample_submission.csv) of 8 ETs images; its
submission must list the sample submission's rows in order and equal a direct `imc run`.

Wheels are downloaded once into $IMC_WHEEL_CACHE or pytest's cache folder (about 400 MiB).
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from imc import bundle, formats
from imc.data import Competition, Dataset
from imc.errors import ImcError
from imc.submission import check_submission, read_submission
from imc.weights import manifest, sha256

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"preset": "fast", "config": {"orientation": {"enabled": False}}}
CONFIG["config"]["features"] = {"max_keypoints": 512}
PROBE = """
import socket, sys
try:
    socket.create_connection(("pypi.org", 443), timeout=5)
except OSError as e:
    print("network off:", e)
    sys.exit(0)
sys.exit("network is on")
"""
GUARD = """
import socket

def _refuse(self, *args, **kwargs):
    raise OSError("network disabled by the offline test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = lambda *a, **k: _refuse(None)
socket.getaddrinfo = lambda *a, **k: _refuse(None)
"""


@pytest.fixture(scope="module")
def wheel_cache(request, tmp_path_factory) -> Path:
    env = os.environ.get("IMC_WHEEL_CACHE")
    if env:
        return Path(env)
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return cache.mkdir("imc-wheels") if cache else tmp_path_factory.mktemp("imc-wheels")


def test_kaggle_bundle_layout(tmp_path, wheel_cache):
    out = bundle.build(tmp_path / "kaggle", wheel_cache=wheel_cache)
    info = json.loads((out / "bundle.json").read_text())
    assert info["mode"] == "kaggle" and info["python"] == "{}.{}".format(*sys.version_info[:2])
    names = [r.split("==")[0] for r in info["requirements"]]
    assert names == ["faiss-cpu", "kornia", "kornia-rs", "pycolmap"]  # nothing Kaggle has
    wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
    assert wheels == sorted(info["wheels"])
    for name, digest in info["wheels"].items():
        assert sha256(out / "wheels" / name) == digest
    assert (out / "wheels" / "requirements.txt").read_text().splitlines() == info["requirements"]
    for name, entry in manifest().items():
        assert sha256(out / "dataset" / "weights" / name) == entry["sha256"]
    assert (out / "dataset" / "imc" / "pipeline.py").is_file()
    assert (out / "dataset" / "submission.py").is_file()
    assert not list(out.rglob("__pycache__"))
    nb = json.loads((out / "imc-submission.ipynb").read_text())
    assert nb["nbformat"] == 4 and [c["cell_type"] for c in nb["cells"]][:2] == ["markdown", "code"]
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "install_and_run.py" in code and "/kaggle/working/submission.csv" in code
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            compile("".join(cell["source"]), "cell", "exec")
    with pytest.raises(ImcError, match="refusing"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "keep.txt").write_text("x")
        bundle.build(tmp_path / "other", wheel_cache=wheel_cache)


def test_notebook_says_how_to_attach_dinov2_and_never_raises():
    nb = bundle.notebook("kaggle")
    intro = "".join(nb["cells"][0]["source"])
    assert "DINOv2" in intro and "Add Input -> Models" in intro and "$IMC_DINOV2" in intro
    assert "`gpu` preset" in intro and "without any flag" in intro
    config, run = ("".join(c["source"]) for c in nb["cells"][1:3])
    assert "DINOV2 = None" in config and '"--preset", "gpu"' not in config
    assert '"--dinov2"' in run
    # A cell that raises fails the Kaggle submission: the status is printed, never raised.
    assert "raise" not in run.replace("raises", "") and "check=True" not in run
    scope = {"Path": Path, "INPUT_ROOT": Path("/nowhere"), "EXTRA_ARGS": []}
    exec(compile(config, "config", "exec"), scope)
    assert scope["OUTPUT"] == Path("/kaggle/working/submission.csv")


def test_closure_and_tags():
    pins = bundle.closure(bundle.KAGGLE_MISSING, "3.11", stop=bundle.KAGGLE_PROVIDES)
    assert sorted(pins) == ["faiss-cpu", "kornia", "kornia-rs", "pycolmap"]
    full = bundle.closure(bundle.RUNTIME, "3.11")
    assert {"torch", "numpy", "sympy", "python-dateutil"} <= set(full)  # followed requirements
    assert "pytest" not in full and "onnx" not in full  # extras are not followed
    tags = {str(t) for t in bundle.target_tags("3.11")}
    assert "cp311-cp311-manylinux_2_28_x86_64" in tags and "py3-none-any" in tags
    assert "cp310-abi3-manylinux_2_28_x86_64" in tags
    assert "cp312-cp312-manylinux_2_28_x86_64" not in tags
    assert "cp311-cp311-manylinux_2_39_x86_64" not in tags  # newer glibc than Kaggle's


def test_find_competition(tmp_path):
    script = runpy.run_path(str(bundle.TEMPLATES / "install_and_run.py"))
    comp = tmp_path / "input" / "image-matching-challenge-2025"
    (comp / "test").mkdir(parents=True)
    (comp / "sample_submission.csv").write_text("image_id\n")
    (tmp_path / "input" / "imc-bundle").mkdir()
    assert script["find_competition"](tmp_path / "input") == comp
    with pytest.raises(SystemExit, match="found none"):
        script["find_competition"](tmp_path / "elsewhere")


def _kaggle_like(bench_root: Path, out: Path) -> Competition:
    """8 ETs images (4 of each scene) as a test layout; returns the labelled subset."""
    comp = formats.read_competition(bench_root, split="train", datasets=["ETs"])
    ds = comp.datasets["ETs"]
    pick = [im for im in ds.images if im.scene == "ET"][:4]
    pick += [im for im in ds.images if im.scene == "another_ET"][:4]
    sub = Dataset(ds.name, ds.dataset, pick, ds.scene, ds.thresholds)
    labelled = Competition(comp.year, comp.root, comp.split, {ds.name: sub})
    formats.write_test_layout(labelled, out, copy=True)
    return labelled


def _offline_prefix(tmp_path: Path, env: dict) -> list[str]:
    """`unshare -n` when allowed; else a sitecustomize socket guard on PYTHONPATH."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        return ["unshare", "-n", "--"]
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(textwrap.dedent(GUARD))
    env["PYTHONPATH"] = str(guard)
    return []


def _score(labelled: Competition, path: Path) -> float | None:
    try:
        from imc import scoring
    except ImportError:
        return None
    return scoring.score(labelled, read_submission(path, labelled.year)).score


def test_offline_install_and_run(tmp_path, wheel_cache, bench_root):
    out = bundle.build(tmp_path / "kaggle", full=True, wheel_cache=wheel_cache)
    labelled = _kaggle_like(bench_root, tmp_path / "comp")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    prefix = _offline_prefix(tmp_path, env)
    (tmp_path / "probe.py").write_text(PROBE)
    script = f"{sys.executable} {tmp_path / 'probe.py'} && exec {sys.executable} " + " ".join(
        [
            str(out / "install_and_run.py"),
            f"--competition {tmp_path / 'comp'}",
            f"--output {tmp_path / 'offline' / 'submission.csv'}",
            f"--venv {tmp_path / 'venv'}",
            f"--config {tmp_path / 'config.json'}",
        ]
    )
    r = subprocess.run(
        [*prefix, "sh", "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    for name in manifest():  # the bundle's weights, not the repository's
        assert f"weights ok: {out / 'dataset' / 'weights' / name}" in log
    count = len(json.loads((out / "bundle.json").read_text())["requirements"])
    assert "network off:" in log and f"installing {count} packages" in log
    venv_python = tmp_path / "venv" / "bin" / "python"
    where = subprocess.run(
        [venv_python, "-c", "import torch, kornia; print(torch.__file__, kornia.__file__)"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.count(str(tmp_path / "venv")) == 2, where.stdout + where.stderr

    offline = tmp_path / "offline" / "submission.csv"
    sample = pd.read_csv(tmp_path / "comp" / "sample_submission.csv", dtype=str)
    got = pd.read_csv(offline, dtype=str)
    assert list(got.columns) == list(sample.columns)
    key = ["image_id", "dataset", "image"]
    assert got[key].equals(sample[key])  # row for row, in the sample's order
    test_comp = formats.read_competition(tmp_path / "comp", split="test")
    assert check_submission(test_comp, read_submission(offline, 2025)) == []

    direct = tmp_path / "direct" / "submission.csv"
    cmd = [Path(sys.executable).with_name("imc"), "run", tmp_path / "comp", "--output", direct]
    cmd += ["--config", tmp_path / "config.json", "--cache-dir", tmp_path / "direct-cache"]
    cmd += ["--run-dir", tmp_path / "direct-run"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert pd.read_csv(direct, dtype=str).equals(got)  # same packages, same results
    registered = (got["scene"] != "outliers").sum()
    assert registered >= 3, got
    score_offline, score_direct = _score(labelled, offline), _score(labelled, direct)
    assert score_offline == score_direct
