"""Time the IMC2024/IMC2025 camera registration search on a synthetic scene.

    .venv/bin/python bench/metric_speed.py [--cameras 150] [--workers 2]
    IMC_OFFICIAL_METRIC=/path/to/official_metric.py .venv/bin/python bench/metric_speed.py

The scene: random reference centres, the submission a similarity of them with noise (by
default of the order of the small thresholds, which makes the inlier sets, hence the refits,
differ from triplet to triplet: the slow case) and 10 % of the cameras moved far away. With
IMC_OFFICIAL_METRIC pointing at a file that defines the official
`register_by_Horn(ev_coord, gt_coord, ransac_threshold, inl_cf, strict_cf)`, the official search
runs on the same scene (Kaggle's inl_cf=0, strict_cf=-1), the results are compared and the
ratio is reported. Prints a markdown table row.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import time
from pathlib import Path

import numpy as np

from imc.registration import register_by_horn

THRESHOLDS = np.array([0.005, 0.01, 0.02, 0.05, 0.1, 0.2])


def scene(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Reference centres gt [n x 3] and submitted centres ev [n x 3] (noise: reference units)."""
    rng = np.random.default_rng(seed)
    gt = rng.normal(size=(n, 3)) * 3
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    ev = 2.0 * (gt + rng.normal(size=(n, 3)) * noise) @ q.T + np.array([1.0, -4.0, 2.0])
    far = rng.choice(n, n // 10, replace=False)
    ev[far] = rng.normal(size=(len(far), 3)) * 5
    return ev, gt


def machine() -> str:
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def official(path: str):
    spec = importlib.util.spec_from_file_location("official_metric", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.register_by_Horn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise",
        type=float,
        default=0.01,
        help="submission noise in reference units; thresholds are 0.005 ... 0.2 (default 0.01: "
        "inlier sets differ from triplet to triplet; 0.0005: nearly all equal)",
    )
    parser.add_argument("--workers", type=int, default=None, help="threads (default: up to 2)")
    args = parser.parse_args()
    ev, gt = scene(args.cameras, args.seed, args.noise)

    wall, cpu = time.perf_counter(), time.process_time()
    mine = register_by_horn(ev, gt, THRESHOLDS, workers=args.workers)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    peer, ratio, agree = "-", "-", "-"
    path = os.environ.get("IMC_OFFICIAL_METRIC")
    if path:
        register = official(path)
        start = time.perf_counter()
        ref = register(ev.T.copy(), gt.T.copy(), THRESHOLDS.copy(), 0, -1)
        peer_s = time.perf_counter() - start
        peer, ratio = f"{peer_s:.1f}", f"{peer_s / wall:.1f}x"
        same = np.array_equal((ref["err"] < THRESHOLDS).sum(0), (mine.err < THRESHOLDS).sum(0))
        fin = np.isfinite(ref["err"]) & np.isfinite(mine.err)
        diff = np.max(np.abs(ref["err"][fin] - mine.err[fin])) if fin.any() else 0.0
        agree = f"{'same' if same else 'DIFFERENT'} counts, max err diff {diff:.1e}"

    head = [
        "cameras",
        "noise",
        "imc wall (s)",
        "imc cpu (s)",
        "official (s)",
        "speed-up",
        "results",
    ]
    head += ["machine", "load", "date"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    cells = [args.cameras, f"{args.noise:g}", f"{wall:.1f}", f"{cpu:.1f}", peer, ratio, agree]
    cells += [machine(), f"{load:.1f}", datetime.date.today().isoformat()]
    print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
