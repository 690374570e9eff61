"""Crash and resume: a run killed (SIGKILL) during matching, then rerun, ends with the same
submission, byte for byte, as a run that was never interrupted; the rerun reuses the cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
from PIL import Image

from imc.cache import done_keys

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
    straight = (tmp_path / "straight.csv").read_bytes()
    assert straight.count(b"cluster") >= 4  # a real reconstruction, not all outliers
    assert (tmp_path / "resumed.csv").read_bytes() == straight
