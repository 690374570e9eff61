"""The whole run: competition folder -> per-dataset stages -> predictions -> submission.csv.

Each stage writes under `<cache>/<dataset>/<stage>-<hash>/`, the hash covering the stage's
configuration and everything upstream, so a rerun reuses exactly what is still valid and
a killed run resumes. A dataset that fails at any stage still gets one row per image.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import resource
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from . import clustering, mapping, orientation, pairs, retrieval, verification
from . import features as features_stage
from . import matching as matching_stage
from .budget import PROBE_PAIRS, Budget, DatasetPlan, cut_pairs, degrade, max_pairs
from .cache import atomic_write_text, done_keys, h5_key, pair_key, stage_dir
from .data import OUTLIERS, Competition, Dataset, Prediction, Predictions
from .log import logger

FEW_KEYPOINTS = 16  # fewer cannot give the 15 inliers a pair needs


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
    dataset: Dataset,
    conf: dict,
    cache_root: Path,
    run_dir: Path,
    models: Models,
    stats: RunStats,
    budget: Budget | None = None,
    plan: DatasetPlan | None = None,
) -> dict[str, Prediction]:
    """All stages for one dataset; image name -> Prediction (registered images only).

    `conf` is the dataset's configuration (already degraded to `plan.level`); without a
    budget, nothing is limited."""
    budget = budget or Budget(math.inf, {})
    plan = plan or budget.start(dataset.name, conf)
    ds, cache = dataset.name, cache_root / safe_name(dataset.name)
    names = [im.name for im in dataset.images]
    paths = {im.name: im.path for im in dataset.images}
    exif = conf["images"]["apply_exif_orientation"]
    up = [input_signature(dataset), conf["images"]]
    with stats.stage(ds, "orientation"):
        d = stage_dir(cache, "orientation", up, conf["orientation"], conf["features"]["model"])
        rotations = orientation.main(
            conf["orientation"], conf["features"], names, paths, models.aliked, models.match,
            d, models.device, exif,
        )  # fmt: skip
    up = [up, rotations, conf["features"]]
    with stats.stage(ds, "features"):
        d = stage_dir(cache, "features", up)
        feats = features_stage.main(conf["features"], dataset, d, rotations, models.device, exif)
    seconds = sum(stats.stages[ds][s]["seconds"] for s in ("orientation", "features"))
    budget.observe("image", seconds, len(names), plan.level)
    failed = features_stage.failed_images(feats)
    report_inputs(dataset, feats, failed)
    good = [n for n in names if n not in failed]
    with stats.stage(ds, "pairs"):
        d = stage_dir(cache, "retrieval", up, conf["retrieval"])
        glob, pair_list = select_pairs(conf["retrieval"], dataset, feats, good, d, models.device)
    up = [up, conf["retrieval"], conf["matching"]]
    with stats.stage(ds, "matching"):
        d = stage_dir(cache, "matching", up)
        matches, pair_list = match_within_budget(
            conf, pair_list, feats, glob, d, models.device, budget, plan
        )
    up = [up, conf["verification"]]
    with stats.stage(ds, "verification"):
        d = stage_dir(cache, "verification", up)
        verified_path = verification.main(
            conf["verification"], conf["features"], pair_list, feats, matches, d
        )
        verified = verification.load_verified(verified_path, conf["verification"]["min_inliers"])
    with stats.stage(ds, "clustering"):
        kept = clustering.main(conf["clustering"], good, verified)
    out = run_dir / safe_name(ds)
    out.mkdir(parents=True, exist_ok=True)
    with stats.stage(ds, "mapping"):
        mapped = map_within_budget(conf, dataset, good, feats, kept, out, budget, plan)
    preds = mapped.preds
    summary = {
        "dataset": ds,
        "images": {n: str(p) for n, p in paths.items()},
        "failed": failed,
        "rotations": rotations,
        "retrieval_pairs": [list(p) for p in pair_list],
        "verified_pairs": [
            [a, b, len(v["inliers"]), (a, b) in kept] for (a, b), v in verified.items()
        ],
        "clusters": {n: p.cluster for n, p in preds.items()},
        "features": str(feats),
        "matches": str(matches),
        "verified": str(verified_path),
        "mapping": mapped.to_dict(),
        "budget": plan.to_dict(),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return preds


def map_within_budget(
    conf: dict,
    dataset: Dataset,
    names: list[str],
    feats: Path,
    kept: dict,
    out: Path,
    budget: Budget,
    plan: DatasetPlan,
) -> mapping.MappingResult:
    """Mapping in the dataset's time (imc.budget, point 6); skipped when the run's time is out."""
    allowance = budget.mapping_allowance(plan)
    if allowance <= 0:
        plan.note("no time left for mapping: its images are outliers")
        return mapping.MappingResult()
    result = mapping.main(
        conf["mapping"], conf["runtime"], dataset, names, feats, kept, out, allowance
    )
    if result.stopped:
        plan.note(
            f"mapping stopped at its time limit ({allowance:.0f} s): "
            f"{len(result.preds)} of {len(names)} images registered"
        )
    return result


def select_pairs(
    conf: dict, dataset: Dataset, feats: Path, good: list[str], out_dir: Path, device
) -> tuple[Path, list[tuple[str, str]]]:
    """Global descriptors and retrieval pairs (`conf`: the retrieval section), keeping only
    pairs of readable images. Returns global.h5 and the pairs."""
    glob = retrieval.main(
        conf, dataset, out_dir, device, local_descriptors=retrieval.local_descriptors_from_h5(feats)
    )
    keep = set(good)
    found = pairs.read_pairs(pairs.main(conf, glob, out_dir))
    return glob, [p for p in found if p[0] in keep and p[1] in keep]


def report_inputs(dataset: Dataset, features_path: Path, failed: dict[str, str]) -> None:
    """Log what keeps images out of the reconstruction or looks wrong, naming the files:
    unreadable files, images with almost no keypoints, byte-identical duplicates."""
    if failed:
        listed = ", ".join(str(im.path) for im in dataset.images if im.name in failed)
        logger.warning(
            "dataset %s: unreadable image(s) placed in outliers: %s", dataset.name, listed
        )
    with h5py.File(features_path, "r") as f:
        for im in dataset.images:
            g = f.get(h5_key(im.name))
            if im.name in failed or g is None or "keypoints" not in g:
                continue
            n, (w, h) = len(g["keypoints"]), g.attrs["image_size"]
            if n < FEW_KEYPOINTS:
                msg = "image %s (%dx%d) has %d keypoints: it can hardly be registered"
                logger.warning(msg, im.path, w, h, n)
    by_content: dict[tuple[int, str], list[str]] = {}
    for im in dataset.images:
        if im.name not in failed:
            data = im.path.read_bytes()
            by_content.setdefault((len(data), hashlib.sha1(data).hexdigest()), []).append(im.name)
    for same in by_content.values():
        if len(same) > 1:
            logger.warning("dataset %s: identical image files: %s", dataset.name, ", ".join(same))


def _matched(out_dir: Path, pair_list: list[tuple[str, str]] | None = None) -> int:
    """Pairs done in `<out_dir>/matches.h5` (those of `pair_list` when given)."""
    path = out_dir / "matches.h5"
    if not path.is_file():
        return 0
    with h5py.File(path, "r") as f:
        done = done_keys(f)
    if pair_list is None:
        return len(done)
    return sum(pair_key(a, b) in done for a, b in pair_list)


def match_within_budget(
    conf: dict,
    pair_list: list[tuple[str, str]],
    feats: Path,
    global_path: Path,
    out_dir: Path,
    device,
    budget: Budget,
    plan: DatasetPlan,
) -> tuple[Path, list[tuple[str, str]]]:
    """Matching in the dataset's time (imc.budget, points 4 and 5): pairs cut to what fits at
    the measured seconds per pair, matching stopped at the deadline.

    Returns: matches.h5 and the pair list after the cut."""
    allowance = budget.matching_allowance(plan)
    if not math.isfinite(allowance):
        return matching_stage.main(conf["matching"], pair_list, feats, out_dir, device), pair_list
    deadline = time.monotonic() + allowance
    done0, t0 = _matched(out_dir), time.perf_counter()
    if allowance > 0 and budget.rate("pair") is None and len(pair_list) > PROBE_PAIRS:
        matching_stage.main(conf["matching"], pair_list[:PROBE_PAIRS], feats, out_dir, device)
        budget.observe("pair", time.perf_counter() - t0, _matched(out_dir) - done0, plan.level)
    allowance = budget.matching_allowance(plan)
    per_pair = budget.rate("pair", plan.level)
    limit = 0 if allowance <= 0 else max_pairs(allowance, per_pair)
    if limit == 0 and pair_list:
        plan.note(f"no time left for matching: none of {len(pair_list)} pairs matched")
        pair_list = []
    elif limit is not None and limit < len(pair_list):
        names, desc = retrieval.load_global(global_path)
        cut, k = cut_pairs(names, desc, conf["retrieval"], limit)
        plan.note(
            f"{len(pair_list)} pairs at {per_pair:.2f} s/pair exceed the {allowance:.0f} s left "
            f"for matching: cut to {len(cut)} pairs ({k} neighbours per image)"
        )
        pair_list = cut
    done1, t1 = _matched(out_dir), time.perf_counter()
    path = matching_stage.main(conf["matching"], pair_list, feats, out_dir, device, deadline)
    done2 = _matched(out_dir)
    budget.observe("pair", time.perf_counter() - t1, done2 - done1, plan.level)
    missing = len(pair_list) - _matched(out_dir, pair_list)
    if missing:
        plan.note(f"matching stopped at the deadline: {missing} of {len(pair_list)} pairs left out")
    return path, pair_list


def run(
    comp: Competition,
    conf: dict,
    run_dir: Path,
    cache_root: Path,
    submission_path: Path,
    time_budget: float | None = None,
) -> tuple[Predictions, RunStats]:
    """Run every dataset; always writes a complete submission (failed or skipped datasets:
    outliers). `time_budget`: seconds for the whole run (imc.budget); None: no limit."""
    from .submission import write_submission

    run_dir.mkdir(parents=True, exist_ok=True)
    logger.info("configuration: %s", json.dumps(conf, sort_keys=True))
    atomic_write_text(run_dir / "config.json", json.dumps({"config": conf}, indent=2))
    seed_everything(conf["runtime"]["seed"])
    device = select_device(conf["runtime"])
    models, stats = Models(conf, device), RunStats()
    sizes = {ds.name: len(ds.images) for ds in comp.datasets.values()}
    budget = Budget(math.inf if time_budget is None else time_budget, sizes)
    preds: Predictions = {}
    for dataset in comp.datasets.values():
        logger.info("dataset %s: %d images", dataset.name, len(dataset.images))
        t0 = time.perf_counter()
        plan = budget.start(dataset.name, conf)
        try:
            result = {}
            if not plan.skip:
                ds_conf = degrade(conf, plan.level)
                result = run_dataset(
                    dataset, ds_conf, cache_root, run_dir, models, stats, budget, plan
                )
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
