"""The whole run: competition folder -> per-dataset stages -> predictions -> submission.csv.

Each stage writes under `<cache>/<dataset>/<stage>-<hash>/`, the hash covering the stage's
configuration and everything upstream, so a rerun reuses exactly what is still valid and
a killed run resumes. A dataset that fails at any stage still gets one row per image.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import clustering, mapping, orientation, pairs, retrieval, verification
from . import features as features_stage
from . import matching as matching_stage
from .cache import atomic_write_text, stage_dir
from .data import OUTLIERS, Competition, Dataset, Prediction, Predictions
from .log import logger


@dataclass
class RunStats:
    """Seconds and peak resident memory (MiB, process-wide so far) per dataset and stage."""

    stages: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @contextmanager
    def stage(self, dataset: str, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages.setdefault(dataset, {})[name] = {
                "seconds": round(time.perf_counter() - t0, 3),
                "peak_rss_mib": round(peak_rss_mib(), 1),
            }

    def table(self) -> str:
        lines = [f"{'dataset':<20} {'stage':<14} {'seconds':>9} {'peak MiB':>9}"]
        for ds, stages in self.stages.items():
            for name, v in stages.items():
                lines.append(f"{ds:<20} {name:<14} {v['seconds']:>9.1f} {v['peak_rss_mib']:>9.0f}")
        return "\n".join(lines)


def peak_rss_mib() -> float:
    """Peak resident set size of this process (and finished children), MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return own / 1024.0


def seed_everything(seed: int) -> None:
    import cv2
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cv2.setRNGSeed(seed)


def select_device(runtime: dict):
    import torch

    want = runtime["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA asked for but not available: using the CPU")
        want = "cpu"
    threads = runtime["num_threads"] or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return torch.device(want)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def input_signature(dataset: Dataset) -> list:
    """What identifies a dataset's inputs: names, sizes and modification times of its files."""
    sig = []
    for im in dataset.images:
        try:
            st = im.path.stat()
            sig.append([im.name, st.st_size, int(st.st_mtime)])
        except OSError:
            sig.append([im.name, None, None])
    return sig


class Models:
    """The networks, loaded once per run and shared by every dataset."""

    def __init__(self, conf: dict, device):
        self.conf, self.device = conf, device
        self._aliked = self._lightglue = None

    @property
    def aliked(self):
        if self._aliked is None:
            self._aliked = features_stage.build_model(self.conf["features"], self.device)
        return self._aliked

    @property
    def lightglue(self):
        if self._lightglue is None:
            self._lightglue = matching_stage.build_model(self.conf["matching"], self.device)
        return self._lightglue

    def match(self, f0: dict, f1: dict):
        return matching_stage.match_pair(self.lightglue, f0, f1, self.device)


def run_dataset(
    dataset: Dataset, conf: dict, cache_root: Path, run_dir: Path, models: Models, stats: RunStats
) -> dict[str, Prediction]:
    """All stages for one dataset; image name -> Prediction (registered images only)."""
    ds, cache = dataset.name, cache_root / safe_name(dataset.name)
    names = [im.name for im in dataset.images]
    paths = {im.name: im.path for im in dataset.images}
    exif = conf["images"]["apply_exif_orientation"]
    up = [input_signature(dataset), conf["images"]]
    with stats.stage(ds, "orientation"):
        d = stage_dir(cache, "orientation", up, conf["orientation"], conf["features"]["model"])
        rotations = orientation.main(
            conf["orientation"],
            conf["features"],
            names,
            paths,
            models.aliked,
            models.match,
            d,
            models.device,
            exif,
        )
    up = [up, rotations, conf["features"]]
    with stats.stage(ds, "features"):
        d = stage_dir(cache, "features", up)
        feats = features_stage.main(conf["features"], dataset, d, rotations, models.device, exif)
    good = [n for n in names if n not in features_stage.failed_images(feats)]
    with stats.stage(ds, "pairs"):
        d = stage_dir(cache, "retrieval", up, conf["retrieval"])
        glob = retrieval.main(
            conf["retrieval"],
            dataset,
            d,
            models.device,
            local_descriptors=retrieval.local_descriptors_from_h5(feats),
        )
        pair_list = [
            p
            for p in pairs.read_pairs(pairs.main(conf["retrieval"], glob, d))
            if p[0] in good and p[1] in good
        ]
    up = [up, conf["retrieval"], conf["matching"]]
    with stats.stage(ds, "matching"):
        d = stage_dir(cache, "matching", up)
        matches = matching_stage.main(conf["matching"], pair_list, feats, d, models.device)
    up = [up, conf["verification"]]
    with stats.stage(ds, "verification"):
        d = stage_dir(cache, "verification", up)
        verified_path = verification.main(
            conf["verification"], conf["features"], pair_list, feats, matches, d
        )
        verified = verification.load_verified(verified_path, conf["verification"]["min_inliers"])
    with stats.stage(ds, "clustering"):
        kept = clustering.main(conf["clustering"], good, verified)
    with stats.stage(ds, "mapping"):
        out = run_dir / safe_name(ds)
        preds = mapping.main(conf["mapping"], conf["runtime"], dataset, good, feats, kept, out)
    summary = {
        "dataset": ds,
        "images": {n: str(p) for n, p in paths.items()},
        "failed": features_stage.failed_images(feats),
        "rotations": rotations,
        "retrieval_pairs": [list(p) for p in pair_list],
        "verified_pairs": [
            [a, b, len(v["inliers"]), (a, b) in kept] for (a, b), v in verified.items()
        ],
        "clusters": {n: p.cluster for n, p in preds.items()},
        "features": str(feats),
        "matches": str(matches),
        "verified": str(verified_path),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return preds


def run(
    comp: Competition, conf: dict, run_dir: Path, cache_root: Path, submission_path: Path
) -> tuple[Predictions, RunStats]:
    """Run every dataset; always writes a complete submission (failed datasets: outliers)."""
    from .formats import write_submission

    run_dir.mkdir(parents=True, exist_ok=True)
    logger.info("configuration: %s", json.dumps(conf, sort_keys=True))
    atomic_write_text(run_dir / "config.json", json.dumps({"config": conf}, indent=2))
    seed_everything(conf["runtime"]["seed"])
    device = select_device(conf["runtime"])
    models, stats = Models(conf, device), RunStats()
    preds: Predictions = {}
    for dataset in comp.datasets.values():
        logger.info("dataset %s: %d images", dataset.name, len(dataset.images))
        t0 = time.perf_counter()
        try:
            result = run_dataset(dataset, conf, cache_root, run_dir, models, stats)
        except Exception as e:  # one dataset must not cost the whole submission
            logger.error("dataset %s failed: %s\n%s", dataset.name, e, traceback.format_exc())
            result = {}
        for im in dataset.images:
            preds[(dataset.name, im.name)] = result.get(im.name, Prediction(cluster=OUTLIERS))
        stats.stages.setdefault(dataset.name, {})["total"] = {
            "seconds": round(time.perf_counter() - t0, 3),
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }
        write_submission(comp, preds, submission_path)  # complete after every dataset
    atomic_write_text(run_dir / "stats.json", json.dumps(stats.stages, indent=2))
    logger.info("time and memory per stage:\n%s", stats.table())
    return preds, stats
