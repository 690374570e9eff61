"""Crash and resume: a run killed (SIGKILL) during matching, then rerun, reuses the cache and ends
with the same submission as a run that was never interrupted: the same matches for every pair,
the same cluster for every image, and the same poses.

Poses are compared to 1e-6, not byte for byte: on one CI machine two processes gave poses that
differed by about 1e-8 while every discrete result agreed (float rounding in the CPU kernels is
not reproducible from process to process there). A resume that lost or repeated work changes
matches, and with them poses by far more than that."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from imc.cache import done_keys
from imc.formats import parse_floats
from imc.submission import read_submission

CONFIG = {"preset": "fast", "config": {"orientation": {"enabled": False}}}
CONFIG["config"]["features"] = {"max_keypoints": 512}


def _competition(root: Path, bench: Path) -> Path:
    """test/ring/: 8 templeRing views at 480x360 (28 pairs)."""
    folder = root / "test" / "ring"
    folder.mkdir(parents=True)
    for i in range(1, 9):
        im = Image.open(bench / "train" / "templeRing" / f"templeR{i:04d}.png").convert("RGB")
        im.resize((480, 360), Image.BILINEAR).save(folder / f"view{i}.png")
    return root


def _command(comp: Path, tmp: Path, name: str) -> list[str]:
    imc = str(Path(sys.executable).with_name("imc"))
    return [imc, "run", str(comp), "--config", str(tmp / "config.json")] + [
        "--cache-dir",
        str(tmp / f"{name}-cache"),
        "--run-dir",
        str(tmp / f"{name}-run"),
        "--output",
        str(tmp / f"{name}.csv"),
    ]


def _env() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def _kill_during_matching(cmd: list[str], cache: Path, log: Path) -> int:
    """Start the run, SIGKILL it once the partial matches.h5 has grown twice (pairs written);
    return the number of pairs the partial file holds then (-1: unreadable)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 300
        partial = []
        while not partial and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            partial = list(cache.glob("*/matching-*/matches.h5.partial"))
        assert partial, f"matching never started:\n{log.read_text()[-3000:]}"
        sizes = {partial[0].stat().st_size}
        while len(sizes) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            sizes.add(partial[0].stat().st_size)
        assert proc.poll() is None and partial[0].exists(), "matching ended before the kill"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    try:
        with h5py.File(partial[0], "r") as f:
            return len(done_keys(f))
    except OSError:
        return -1  # unreadable after the kill: the rerun discards it


def test_killed_during_matching_resumes_to_the_same_submission(tmp_path, bench_root):
    comp = _competition(tmp_path / "comp", bench_root)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))

    done = _kill_during_matching(
        _command(comp, tmp_path, "resumed"), tmp_path / "resumed-cache", tmp_path / "killed.log"
    )
    assert not (tmp_path / "resumed.csv").exists()  # killed before any dataset finished
    r = subprocess.run(
        _command(comp, tmp_path, "resumed"), capture_output=True, text=True, env=_env()
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "features: 8 images already done" in r.stderr  # the cache was reused
    assert done > 0  # matching flushes after every pair: the killed file is readable
    assert f"matching: {done} pairs already done" in r.stderr

    r = subprocess.run(
        _command(comp, tmp_path, "straight"), capture_output=True, text=True, env=_env()
    )
    assert r.returncode == 0, r.stderr[-3000:]
    straight = read_submission(tmp_path / "straight.csv", 2025)
    resumed = read_submission(tmp_path / "resumed.csv", 2025)
    assert (straight["scene"] != "outliers").sum() >= 4  # a real reconstruction
    matches = _datasets(tmp_path / "straight-cache", "matches")
    assert len(matches) == 28  # every pair of the 8 views
    assert _datasets(tmp_path / "resumed-cache", "matches") == matches
    assert list(resumed["image_id"]) == list(straight["image_id"])
    assert list(resumed["scene"]) == list(straight["scene"])
    for col in ("rotation_matrix", "translation_vector"):
        for a, b in zip(resumed[col], straight[col], strict=True):
            assert np.allclose(parse_floats(a), parse_floats(b), rtol=0, atol=1e-6), (
                f"{col}: {a} != {b}; cache datasets with different floats: "
                f"{_float_differences(tmp_path / 'resumed-cache', tmp_path / 'straight-cache')}"
            )


def _datasets(cache: Path, name: str) -> dict[str, bytes]:
    """Every dataset called `name` in the cache's h5 files: h5 path -> bytes."""
    out = {}
    for path in sorted(cache.glob("*/*/*.h5")):
        with h5py.File(path, "r") as f:
            for key in _dataset_keys(f):
                if key.split("/")[-1] == name:
                    out[f"{path.parent.name}/{key}"] = f[key][()].tobytes()
    return out


def _dataset_keys(f: h5py.File) -> list[str]:
    keys: list[str] = []
    f.visititems(lambda key, obj: keys.append(key) if isinstance(obj, h5py.Dataset) else None)
    return keys


def _float_differences(a: Path, b: Path) -> list[str]:
    """The h5 datasets (stage/key) whose bytes differ between two caches."""
    found = []
    for name in ("keypoints", "descriptors", "scores", "F"):
        da, db = _datasets(a, name), _datasets(b, name)
        found += [k for k in sorted(da.keys() | db.keys()) if da.get(k) != db.get(k)]
    return found
