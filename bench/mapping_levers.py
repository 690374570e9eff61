"""Map a finished run's verified pairs again under several mapping settings, and score each.

    .venv/bin/python bench/mapping_levers.py RUN_DIR [--data ../shared/imc-bench]
        [--variant NAME=section.key=value,section.key=value ...] [--datasets A,B] [--json FILE]

RUN_DIR is an `imc run` (or `make bench`: outputs/bench/imc/<dataset>) run folder: each
dataset's summary.json names its features and verified pairs. For every dataset and variant,
clustering and mapping run again with the run's configuration plus the variant's overrides, so
only mapping differs between the rows. Each row: the IMC2025 score and mAA, and the verified
inliers that agree with the models (imc.stages.global_mapping.model_support, the evidence
the pipeline chooses by), so one can see whether that evidence would have picked the better variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pycolmap  # noqa: E402

from imc import config, formats, scoring  # noqa: E402
from imc.stages import clustering, mapping, verification  # noqa: E402
from imc.stages.global_mapping import model_support  # noqa: E402
from imc.submission import submission_frame  # noqa: E402

DEFAULT_VARIANTS = {
    "default": [],
    "per_image": ["mapping.camera_mode=per_image"],
    "shared": ["mapping.camera_mode=shared"],
    "no_distortion": ["mapping.options.ba_refine_extra_params=false"],
    "seed1": ["runtime.seed=1"],
    "seed2": ["runtime.seed=2"],
}


def run_configs(run_dir: Path) -> list[tuple[str, dict, Path]]:
    """(dataset, resolved configuration, summary.json) of each dataset of a run folder, or of
    each run folder below it (make bench keeps one per dataset)."""
    found = []
    for summary in sorted(run_dir.glob("*/summary.json")) + sorted(
        run_dir.glob("*/*/summary.json")
    ):
        folders = (summary.parent.parent, summary.parent)
        conf_file = next(
            (f / "config.json" for f in folders if (f / "config.json").is_file()), None
        )
        if conf_file is None:
            continue
        saved = json.loads(conf_file.read_text())["config"]
        known = {  # a run of an older version may hold settings since removed
            section: {k: v for k, v in values.items() if k in config.DEFAULTS[section]}
            for section, values in saved.items()
            if section in config.DEFAULTS
        }
        conf = config.merge(config.DEFAULTS, known)
        found.append((json.loads(summary.read_text())["dataset"], conf, summary))
    return found


def remap(comp, name: str, conf: dict, summary_path: Path) -> dict:
    """Clustering and mapping of one dataset again: score, mAA, support, seconds."""
    summary = json.loads(summary_path.read_text())
    ds = comp.datasets[name]
    good = [n for n in summary["images"] if n not in summary["failed"]]
    verified = verification.load_verified(
        Path(summary["verified"]), conf["verification"]["min_inliers"]
    )
    kept = clustering.main(conf, clustering.Inputs(good, verified), None)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="imc-levers-") as tmp:
        inputs = mapping.Inputs(ds, good, Path(summary["features"]), kept)
        result = mapping.main(conf, inputs, Path(tmp))
        models = [pycolmap.Reconstruction(str(d)) for d in sorted(Path(tmp).glob("models/*"))]
        _, db_names = mapping.database_names(ds)
        name_of = {v: k for k, v in db_names.items()}
        support = model_support(models, verified, Path(summary["features"]), name_of)
    preds = {(ds.name, n): p for n, p in result.preds.items()}
    d = scoring.score(comp, submission_frame(comp, preds)).datasets[0]
    return {
        "dataset": name, "score": round(d.score, 1), "mAA": round(d.mAA, 1),
        "support": support, "registered": len(result.preds), "cameras": result.cameras,
        "mapper": result.mapper, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "imc-bench")
    p.add_argument("--variant", action="append", default=[], help="NAME=key=value,key=value")
    p.add_argument("--datasets", help="comma-separated: only these datasets of the run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    variants = DEFAULT_VARIANTS
    if args.variant:
        variants = {}
        for v in args.variant:
            name, _, sets = v.partition("=")
            variants[name] = [s for s in sets.split(",") if s]
    rows = []
    wanted = set(args.datasets.split(",")) if args.datasets else None
    for name, base, summary in run_configs(args.run_dir):
        if wanted is not None and name not in wanted:
            continue
        comp = formats.read_competition(args.data, split="train", datasets=[name])
        for variant, sets in variants.items():
            conf = config.merge(base, config.parse_overrides(sets)) if sets else base
            row = {"variant": variant, **remap(comp, name, conf, summary)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    names = list(variants)
    print("\n| dataset | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        cells = [
            next((f"{r['score']:.1f} ({r['support']})" for r in rows
                  if r["dataset"] == ds and r["variant"] == v), "")
            for v in names
        ]  # fmt: skip
        print(f"| {ds} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
