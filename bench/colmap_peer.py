"""The benchmark's peer: plain COLMAP through pycolmap (SIFT, exhaustive matching, incremental
mapping with min_model_size=3), writing a submission for the chosen datasets.

    python bench/colmap_peer.py DATA_ROOT --datasets A,B --output peer.csv --work DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pycolmap

from imc import formats
from imc.data import OUTLIERS, Prediction
from imc.stages import mapping
from imc.submission import write_submission


def run_dataset(dataset, work: Path, seed: int = 0) -> tuple[dict, dict]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    image_dir, db_names = mapping.database_names(dataset)
    db = work / "database.db"
    times = {}
    t0 = time.perf_counter()
    pycolmap.extract_features(
        db, image_dir, image_names=list(db_names.values()), device=pycolmap.Device.cpu
    )
    times["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
    times["matching"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = 3
    options.random_seed = seed
    options.num_threads = 1
    (work / "sfm").mkdir()
    models = pycolmap.incremental_mapping(db, image_dir, work / "sfm", options)
    times["mapping"] = time.perf_counter() - t0
    models = sorted(models.values(), key=lambda r: -r.num_reg_images())
    preds = mapping.assign_clusters(models, {v: k for k, v in db_names.items()}, 3)
    return preds, times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("data_root", type=Path)
    p.add_argument("--datasets")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("outputs/peer"))
    a = p.parse_args(argv)
    comp = formats.read_competition(
        a.data_root, split="train", datasets=a.datasets.split(",") if a.datasets else None
    )
    preds, stats = {}, {}
    for ds in comp.datasets.values():
        got, times = run_dataset(ds, a.work / ds.name)
        stats[ds.name] = times
        for im in ds.images:
            preds[(ds.name, im.name)] = got.get(im.name, Prediction(cluster=OUTLIERS))
    write_submission(comp, preds, a.output)
    (a.output.with_suffix(".stats.json")).write_text(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
