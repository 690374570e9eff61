"""LightGlue throughput of imc's matching stage, in pairs per second, on any machine.

    .venv/bin/python bench/match_speed.py [--keypoints 1024,2048] [--batch 1,4] [--images 8]
                                          [--data ../shared/imc-bench] [--device auto]

Features: ALIKED on the first `--images` templeRing views at 1280 px, each image keeping
exactly K keypoints (threshold 0), for each K of `--keypoints`; every pair of them is matched
through `imc.stages.matching.main` (the stage itself: features read from features.h5 on the reader
thread, batches, matches written to matches.h5) with each batch size of `--batch`, in the
precision the default settings give on that device (half on CUDA, float32 on CPU; `--precision
bf16` for bfloat16 on CPU). One warm-up pass per setting is not counted. Prints a markdown table
and, with `--json FILE`, writes the rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imc import config  # noqa: E402
from imc.data import Dataset, ImageInfo  # noqa: E402
from imc.pipeline import select_device  # noqa: E402
from imc.stages import features, matching  # noqa: E402


def pairs_per_second(conf: dict, names: list[str], feats: Path, device, work: Path) -> float:
    """Match every pair of `names` with the stage (`conf`: the whole configuration); pairs
    per second of the second pass."""
    pairs = list(itertools.combinations(names, 2))
    glue = matching.build_model(conf["matching"], device)
    inputs = matching.Inputs(pairs, feats, device, load_model=lambda: glue)
    seconds = []
    for run in range(2):
        out = work / f"m{run}"
        t0 = time.perf_counter()
        matching.main(conf, inputs, out)
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    return len(pairs) / seconds[-1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "imc-bench")
    p.add_argument("--keypoints", default="1024,2048,4096")
    p.add_argument("--batch", default="1,4,16")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["default", "fp32", "bf16"], default="default")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    conf = config.resolve()
    device = select_device({**conf["runtime"], "device": args.device})
    m_conf = dict(conf["matching"])
    m_conf["half_precision"] = device.type == "cuda" and args.precision == "default"
    m_conf["cpu_bfloat16"] = args.precision == "bf16"
    folder = args.data / "train" / "templeRing"
    paths = sorted(folder.glob("*.png"))[: args.images]
    ds = Dataset("speed", "speed", [ImageInfo(q.name, q) for q in paths])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(v) for v in args.keypoints.split(",")):
            f_conf = {**conf["features"], "resize_long_side": 1280, "max_keypoints": k}
            f_conf["detection_threshold"] = 0.0
            inputs = features.Inputs(ds, device=device)
            feats = features.main({**conf, "features": f_conf}, inputs, Path(tmp) / f"f{k}")
            for b in (int(v) for v in args.batch.split(",")):
                rate = pairs_per_second(
                    {**conf, "matching": {**m_conf, "batch_size": b}}, [q.name for q in paths],
                    feats, device, Path(tmp) / f"k{k}b{b}",
                )  # fmt: skip
                rows.append({"keypoints": k, "batch": b, "pairs_per_s": round(rate, 2)})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\ndevice: {device}; precision: {args.precision}; {len(paths)} templeRing images\n")
    print("| keypoints per image | pairs per batch | pairs/s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['keypoints']} | {r['batch']} | {r['pairs_per_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
