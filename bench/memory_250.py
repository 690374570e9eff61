"""Peak memory of a 250-image dataset at default settings (BENCHMARKS.md, "Memory").

    python bench/memory_250.py [--images 250] [--size 1024x768] [--work /tmp/imc-memory]
        [--time-budget SECONDS] [--set section.key=value ...] [--report memory.json]

The dataset is synthetic and built in `--work` (never in the repository): the two scenes of
imc.demo (textured boxes, a folding screen) seen by `--images` cameras, half per scene, on
arcs at five heights, rendered at `--size`. The whole pipeline runs in this process on it
(default configuration unless `--set`), and the peak resident memory of the process is read
after each stage (RunStats: ru_maxrss, so each figure is the peak so far). `--time-budget`
lets the run cut its matching to what fits (imc.budget), for machines where matching all
pairs would take hours; the report says how many pairs were matched.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from PIL import Image

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from imc import config, demo, formats, pipeline  # noqa: E402
from imc.log import logger, setup_logging  # noqa: E402

HEIGHTS = 5


def dense_scenes(n_images: int, size: tuple[int, int]) -> list[demo.Scene]:
    """The demo's scenes, each seen by n_images / 2 cameras: arcs at HEIGHTS heights."""
    out = []
    for scene, (span, radius, target, h0, dh) in zip(
        demo.build_scenes(size),
        [(135.0, 4.3, (0, 0.1, 0.5), 1.9, 0.2), (84.0, 4.3, (0, -0.3, 0.8), 0.8, 0.15)],
    ):
        count = n_images // 2 + (n_images % 2 if scene.name == "boxes" else 0)
        per_arc = -(-count // HEIGHTS)
        views = []
        for k in range(HEIGHTS):
            n = min(per_arc, count - len(views))
            heights = np.full(n, h0 + k * dh)
            step = span / max(n - 1, 1)
            arc = demo._arc_views(f"{scene.name}_h{k}", size, step, radius, target, heights, {})
            views += list(arc)
        out.append(demo.Scene(scene.name, scene.faces, tuple(views)))
    return out


def make_dataset(root: Path, n_images: int, size: tuple[int, int]) -> Path:
    """`root/test/synthetic/*.jpg` and a sample submission (IMC2025 test layout)."""
    folder = root / "test" / "synthetic"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n_images:
        return root
    folder.mkdir(parents=True, exist_ok=True)
    textures = demo.load_textures()
    rows = ["image_id,dataset,scene,image,rotation_matrix,translation_vector"]
    nan9, nan3 = ";".join(["nan"] * 9), ";".join(["nan"] * 3)
    t0 = time.perf_counter()
    for i, (scene, view) in enumerate(
        (s, v) for s in dense_scenes(n_images, size) for v in s.views
    ):
        image, _ = demo.render_view(scene, view, textures)
        pixels = demo._finish(image, np.random.default_rng(i))
        name = view.name.replace(".png", ".jpg")
        Image.fromarray(pixels).save(folder / name, quality=90)
        rows.append(f"synthetic_{name},synthetic,outliers,{name},{nan9},{nan3}")
    (root / "sample_submission.csv").write_text("\n".join(rows) + "\n")
    logger.info("rendered %d images in %.0f s", n_images, time.perf_counter() - t0)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=250)
    p.add_argument("--size", default="1024x768", help="W x H of the rendered images")
    p.add_argument("--work", type=Path, default=Path("/tmp/imc-memory"))
    p.add_argument("--time-budget", type=float, help="seconds (default: no limit)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--report", type=Path, help="write the figures as JSON")
    a = p.parse_args()
    setup_logging()
    size = tuple(int(v) for v in a.size.lower().split("x"))
    root = make_dataset(a.work / "data", a.images, size)
    comp = formats.read_competition(root, split="test")
    conf = config.resolve(None, None, a.overrides)
    t0 = time.perf_counter()
    preds, stats = pipeline.run(
        comp, conf, a.work / "run", a.work / "cache", a.work / "submission.csv", a.time_budget
    )
    summary = json.loads((a.work / "run" / "synthetic" / "summary.json").read_text())
    report = {
        "images": a.images,
        "size": list(size),
        "overrides": a.overrides,
        "time_budget": a.time_budget,
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "pairs_retrieved": len(summary["retrieval_pairs"]),
        "pairs_verified": len(summary["verified_pairs"]),
        "registered": sum(1 for p in preds.values() if p.registered),
        "budget": summary["budget"],
        "stages": stats.stages["synthetic"],
    }
    print(json.dumps(report, indent=1))
    print("| stage | seconds | peak RSS so far (MiB) |\n| --- | ---: | ---: |")
    for stage, v in stats.stages["synthetic"].items():
        print(f"| {stage} | {v['seconds']:.0f} | {v['peak_rss_mib']:.0f} |")
    if a.report:
        a.report.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
