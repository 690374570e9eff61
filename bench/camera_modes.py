"""Map the matches of a `make bench` run again with each `mapping.camera_mode` and score them.

    .venv/bin/python bench/camera_modes.py [--bench-dir outputs/bench] [--data ../shared/imc-bench]

For each dataset the features and verified pairs of the bench run's imc side (its summary.json
names them) go through clustering and mapping once per mode, with the bench run's resolved
configuration otherwise; prints a markdown table of IMC2025 score and mAA per dataset and mode.
Only mapping differs between the columns, so the table isolates the effect of shared cameras;
"global" marks a result of the global fallback (imc.stages.mapping).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

from imc import config, formats, scoring
from imc.stages import clustering, mapping, verification
from imc.submission import submission_frame

MODES = ("per_image", "shared", "auto")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench-dir", type=Path, default=Path("outputs/bench"))
    ap.add_argument("--data", type=Path, default=Path("../shared/imc-bench"))
    args = ap.parse_args()
    rows = []
    for run in sorted((args.bench_dir / "imc").iterdir()):
        summary_path = run / run.name / "summary.json"
        if not summary_path.is_file():
            continue
        summary = json.loads(summary_path.read_text())
        conf = config.merge(
            config.DEFAULTS, json.loads((run / "config.json").read_text())["config"]
        )
        comp = formats.read_competition(args.data, split="train", datasets=[run.name])
        ds = comp.datasets[run.name]
        good = [n for n in summary["images"] if n not in summary["failed"]]
        verified = verification.load_verified(
            Path(summary["verified"]), conf["verification"]["min_inliers"]
        )
        kept = clustering.main(conf, clustering.Inputs(good, verified), None)
        inputs = mapping.Inputs(ds, good, Path(summary["features"]), kept)
        row = [run.name]
        for mode in MODES:
            mode_conf = config.merge(conf, {"mapping": {"camera_mode": mode}})
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="imc-cameras-") as tmp:
                result = mapping.main(mode_conf, inputs, Path(tmp))
            preds = {(ds.name, n): p for n, p in result.preds.items()}
            d = scoring.score(comp, submission_frame(comp, preds)).datasets[0]
            notes = [result.cameras] if mode == "auto" else []
            notes += ["global"] if result.mapper == "global" else []
            chosen = f" ({', '.join(notes)})" if notes else ""
            row += [f"{d.score:.1f}{chosen}", f"{d.mAA:.1f}", f"{time.perf_counter() - t0:.0f}"]
            print(run.name, mode, row[-3:], flush=True)
        rows.append(row)
    head = ["dataset"] + [f"{m} {k}" for m in MODES for k in ("score", "mAA", "s")]
    print(
        f"\nCommand: `python bench/camera_modes.py` after `make bench`; machine: "
        f"{platform.processor() or platform.machine()}; date: {datetime.date.today()}.\n"
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
