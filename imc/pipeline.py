"""The whole run: competition folder -> per-dataset stages -> predictions -> submission.csv.

Each stage writes under `<cache>/<dataset>/<stage>-<hash>/`, the hash covering the settings
the stage reads and the key of the stage it reads from, so a rerun reuses exactly what is still
valid and a killed run resumes. A dataset that fails at any stage still gets one row per image.

What each cached stage's key holds (`STAGE_READS`, `stage_key`); a section name stands for all
of its settings:

    stage         settings it reads                          reads from
    orientation   images, orientation, features.model,       the images, the device
                  features.detection_threshold,
                  features.nms_radius, matching but
                  sift_ratio (LightGlue matches the
                  rotated copies)
    features      images, features                           the images, the device, the rotations
    retrieval     retrieval                                  features
    matching      matching                                   retrieval (its pairs), features
    verification  verification (features.resize_long_side   matching
                  too, which the features key upstream holds)

The images are named by their names, sizes and modification times (`input_signature`); the
device type (cpu, cuda) is part of every key, since precision follows it. Clustering (which
reads clustering) and mapping (mapping, runtime) are not cached: they run at every call
(seconds to minutes) into the run folder.

Every stage is called alike, `<stage>.main(conf, inputs, out_dir)`: `conf` is the whole
configuration, of which the stage reads the settings above, and `inputs` its module's `Inputs`,
what it reads besides (upstream files, the dataset, the device, the run's shared models).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import poses
from .budget import Budget, DatasetPlan, MatchingJob, degrade
from .cache import atomic_write_text, safe_name, stage_dir
from .config import DEFAULTS
from .data import OUTLIERS, Competition, Dataset, Prediction, Predictions
from .log import logger, setup_logging
from .settings import available_cores
from .stages import clustering, feature_file, mapping, orientation, pairs, retrieval, verification
from .stages import features as features_stage
from .stages import matching as matching_stage
from .submission import write_submission

FEW_KEYPOINTS = 16  # fewer cannot give the 15 inliers a pair needs

STAGE_READS: dict[str, tuple[str, ...]] = {
    "orientation": (
        "images", "orientation", "features.model", "features.detection_threshold",
        "features.nms_radius",
        *(f"matching.{k}" for k in DEFAULTS["matching"] if k != "sift_ratio"),  # LightGlue's
    ),
    "features": ("images", "features"),
    "retrieval": ("retrieval",),
    "matching": ("matching",),
    "verification": ("verification",),
}  # fmt: skip


def stage_key(stage: str, conf: dict, upstream) -> list:
    """The parts a stage's cache folder is keyed by (imc.cache.stage_dir): the stage's name,
    the settings it reads (STAGE_READS, dotted name -> value) and `upstream` (the key of the
    stage it reads from, or the inputs)."""
    settings = {}
    for name in STAGE_READS[stage]:
        section, _, key = name.partition(".")
        if key:
            settings[name] = conf[section][key]
        else:
            settings.update({f"{section}.{k}": v for k, v in conf[section].items()})
    return [stage, settings, upstream]


def stage_keys(conf: dict, source: list, rotations: dict[str, int] | None) -> dict[str, list]:
    """Every cached stage's key (stage_key), each chained to the stage it reads from.

    source: what names the inputs (input_signature, device type). rotations: the orientation
    stage's result, which the features read (None before it is known: orientation's key only).
    """
    keys = {"orientation": stage_key("orientation", conf, source)}
    if rotations is None:
        return keys
    keys["features"] = stage_key("features", conf, [source, rotations])
    for stage, before in (
        ("retrieval", "features"), ("matching", "retrieval"), ("verification", "matching")
    ):  # fmt: skip
        keys[stage] = stage_key(stage, conf, keys[before])
    return keys


@dataclass
class RunStats:
    """Per dataset and stage: wall seconds, CPU seconds (all threads of this process and of
    its finished children) and peak resident memory (MiB, process-wide so far)."""

    stages: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # dataset -> one-line error

    @contextmanager
    def stage(self, dataset: str, name: str):
        t0, c0, started = time.perf_counter(), cpu_seconds(), time.time()
        try:
            yield
        finally:
            self.record(dataset, name, time.perf_counter() - t0, cpu_seconds() - c0, started)

    def record(
        self, dataset: str, name: str, seconds: float, cpu: float, started: float | None = None
    ) -> None:
        """One stage's figures; `started`: its start, seconds since the epoch."""
        self.stages.setdefault(dataset, {})[name] = {
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3),
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "started": round(started if started is not None else time.time() - seconds, 3),
        }

    def table(self) -> str:
        lines = [
            f"{'dataset':<20} {'stage':<14} {'seconds':>9} {'cpu s':>9} {'cpu %':>6} "
            f"{'peak MiB':>9}"
        ]
        for ds, stages in self.stages.items():
            for name, v in stages.items():
                cpu = v.get("cpu_seconds", 0.0)
                use = 100 * cpu / v["seconds"] if v["seconds"] > 0 else 0.0
                lines.append(
                    f"{ds:<20} {name:<14} {v['seconds']:>9.1f} {cpu:>9.1f} {use:>6.0f} "
                    f"{v['peak_rss_mib']:>9.0f}"
                )
        return "\n".join(lines)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process's threads and of its finished children."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


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


def select_device(runtime: dict, workers: int = 1):
    """The torch device of `runtime.device` ('auto', 'cpu', 'cuda' or 'cuda:K'), and the
    thread counts of torch and OpenCV: `runtime.num_threads`, or the cores shared among
    `workers` processes."""
    import cv2
    import torch

    want = runtime["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA asked for but not available: using the CPU")
        want = "cpu"
    threads = runtime["num_threads"] or max(1, available_cores() // workers)
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return torch.device(want)


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
    """The networks, loaded once per run and shared by every stage and dataset (ALIKED by
    orientation and features, LightGlue by orientation and matching). ALIKED's keypoint budget
    and threshold are set per call (imc.stages.features.extract_image)."""

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

    def match_many(self, pairs: list[tuple[dict, dict]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Match feature pairs (imc.stages.features.extract_image dicts) in batches of the size the
        matching settings and the device give (imc.stages.matching.batch_size), or one at a
        time several at once on the CPU (imc.stages.matching.match_chunks)."""
        if not pairs:
            return []
        glue, device = self.lightglue, self.device
        dtype = next(glue.parameters()).dtype
        data = [tuple(matching_stage.inputs(f, device, dtype) for f in pair) for pair in pairs]

        def most() -> int:
            return max(d["keypoints"].shape[1] for pair in data for d in pair)

        size = matching_stage.batch_size(self.conf["matching"], device, most, dtype)
        out = []
        chunks = [data[start : start + size] for start in range(0, len(data), size)]
        with tqdm(total=len(data), desc="orientation pairs", unit="pair", mininterval=2) as bar:
            for chunk, found in matching_stage.match_chunks(glue, chunks, size, device):
                out += found
                bar.update(len(chunk))
        return out


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
    source, device = [input_signature(dataset), models.device.type], models.device
    with stats.stage(ds, "orientation"):
        d = stage_dir(cache, "orientation", stage_keys(conf, source, None)["orientation"])
        inputs = orientation.Inputs(names, paths, lambda: models.aliked, models.match_many, device)
        rotations = orientation.main(conf, inputs, d)
    keys = stage_keys(conf, source, rotations)
    with stats.stage(ds, "features"):
        d = stage_dir(cache, "features", keys["features"])
        inputs = features_stage.Inputs(dataset, rotations, device, lambda: models.aliked)
        feats = features_stage.main(conf, inputs, d)
    seconds = sum(stats.stages[ds][s]["seconds"] for s in ("orientation", "features"))
    budget.observe("image", seconds, len(names), plan.level)
    failed = feature_file.failed_images(feats)
    report_inputs(dataset, feats, failed)
    good = [n for n in names if n not in failed]
    with stats.stage(ds, "pairs"):
        d = stage_dir(cache, "retrieval", keys["retrieval"])
        glob, pair_list = select_pairs(conf, dataset, feats, good, d, device)
    with stats.stage(ds, "matching"), verification.Background(conf, feats) as early:
        d = stage_dir(cache, "matching", keys["matching"])
        job = matching_job(conf, pair_list, feats, glob, d, models, early.submit)
        matches, pair_list = budget.match(plan, job)
    with stats.stage(ds, "verification"):
        d = stage_dir(cache, "verification", keys["verification"])
        inputs = verification.Inputs(pair_list, feats, matches, early.results)
        verified_path = verification.main(conf, inputs, d)
        verified = verification.load_verified(verified_path, conf["verification"]["min_inliers"])
    with stats.stage(ds, "clustering"):
        kept = clustering.main(conf, clustering.Inputs(good, verified), None)
    out = run_dir / safe_name(ds)
    out.mkdir(parents=True, exist_ok=True)
    with stats.stage(ds, "mapping"):
        mapped = budget.map(
            plan,
            lambda seconds: mapping.main(
                conf, mapping.Inputs(dataset, good, feats, kept, seconds), out
            ),
            mapping.MappingResult,
        )
    preds = mapped.preds
    poses.write_poses(dataset, preds, out)  # <run_dir>/<dataset>/poses.csv
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
        "global": str(glob),
        "matches": str(matches),
        "verified": str(verified_path),
        "mapping": mapped.to_dict(),
        "budget": plan.to_dict(),
        "ran": what_ran(conf, models, glob),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return preds


def what_ran(conf: dict, models: Models, global_path: Path) -> dict:
    """What the dataset's stages actually used: the preset, the device, the retrieval model
    (DINOv2 and its folder, or the ALIKED fallback), LightGlue's precision and batch size."""
    model, source = retrieval.global_model(global_path)
    retrieval_used = f"dinov2 ({source})" if model == "dinov2" else "aliked"
    if model != "dinov2" and conf["retrieval"]["model"] == "dinov2":
        retrieval_used += " (fallback: no DINOv2 model found; see $IMC_DINOV2)"
    dtype = matching_stage.precision(conf["matching"], models.device)
    return {
        "preset": conf["runtime"].get("preset"),
        "device": str(models.device),
        "retrieval": retrieval_used,
        "matching_precision": str(dtype).removeprefix("torch."),
        "matching_batch_size": conf["matching"]["batch_size"] or "auto",
    }


def select_pairs(
    conf: dict, dataset: Dataset, feats: Path, good: list[str], out_dir: Path, device
) -> tuple[Path, list[tuple[str, str]]]:
    """Global descriptors and retrieval pairs (`conf`: the whole configuration, of which both
    stages read the retrieval section), keeping only pairs of readable images. Returns
    global.h5 and the pairs."""
    local = retrieval.local_descriptors_from_h5(feats)
    glob = retrieval.main(conf, retrieval.Inputs(dataset, device, local), out_dir)
    keep = set(good)
    found = pairs.read_pairs(pairs.main(conf, pairs.Inputs(glob), out_dir))
    return glob, [p for p in found if p[0] in keep and p[1] in keep]


def report_inputs(dataset: Dataset, features_path: Path, failed: dict[str, str]) -> None:
    """Log what keeps images out of the reconstruction or looks wrong, naming the files:
    unreadable files, images with almost no keypoints, byte-identical duplicates."""
    if failed:
        listed = ", ".join(str(im.path) for im in dataset.images if im.name in failed)
        logger.warning(
            "dataset %s: unreadable image(s) placed in outliers: %s", dataset.name, listed
        )
    counts = feature_file.keypoint_counts(features_path)
    few = [im for im in dataset.images if counts.get(im.name, FEW_KEYPOINTS) < FEW_KEYPOINTS]
    sizes = feature_file.image_sizes(features_path, [im.name for im in few])
    for im in few:
        msg = "image %s (%dx%d) has %d keypoints: it can hardly be registered"
        logger.warning(msg, im.path, *sizes[im.name], counts[im.name])
    by_content: dict[tuple[int, str], list[str]] = {}
    for im in dataset.images:
        if im.name not in failed:
            data = im.path.read_bytes()
            by_content.setdefault((len(data), hashlib.sha1(data).hexdigest()), []).append(im.name)
    for same in by_content.values():
        if len(same) > 1:
            logger.warning("dataset %s: identical image files: %s", dataset.name, ", ".join(same))


def matching_job(
    conf: dict,
    pair_list: list,
    feats: Path,
    global_path: Path,
    out_dir: Path,
    models: Models,
    on_matched=None,
) -> MatchingJob:
    """The matching stage as `Budget.match` drives it (imc.budget, points 4 and 5);
    `on_matched`: see imc.stages.matching.Inputs (verification while matching)."""

    def match(todo: list, deadline: float | None) -> Path:
        inputs = matching_stage.Inputs(
            todo, feats, models.device, deadline, lambda: models.lightglue, on_matched
        )
        return matching_stage.main(conf, inputs, out_dir)

    def done(of: list | None) -> int:
        return matching_stage.count_done(out_dir / "matches.h5", of)

    floor = pairs.min_similarity(conf["retrieval"], global_path)  # null: the descriptor's own
    return MatchingJob(
        pair_list, match, done, lambda: retrieval.load_global(global_path),
        {**conf["retrieval"], "min_similarity": floor},
    )  # fmt: skip


def worker_devices(runtime: dict) -> list[str]:
    """The device of each worker process: `runtime.workers` of them (0: one per visible CUDA
    device, or one), spread over the CUDA devices when there are any, else on the CPU."""
    import torch

    cuda = torch.cuda.device_count() if runtime["device"] in ("auto", "cuda") else 0
    n = runtime["workers"] or max(cuda, 1)
    if cuda:
        return [f"cuda:{k % cuda}" for k in range(n)]
    return ["cpu"] * n


def run(
    comp: Competition,
    conf: dict,
    run_dir: Path,
    cache_root: Path,
    submission_path: Path,
    time_budget: float | None = None,
) -> tuple[Predictions, RunStats]:
    """Run every dataset; always writes a complete submission (failed or skipped datasets:
    outliers). `time_budget`: seconds for the whole run (imc.budget); None: no limit.

    With several workers (worker_devices: Kaggle's two T4s, or `runtime.workers`), datasets
    run in that many processes at once, one device each. A failed dataset's traceback goes to
    `<run_dir>/errors.log`, a line to the log, and its name to `RunStats.failed`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    logger.info("configuration: %s", json.dumps(conf, sort_keys=True))
    atomic_write_text(run_dir / "config.json", json.dumps({"config": conf}, indent=2))
    devices = worker_devices(conf["runtime"])
    stats, preds = RunStats(), {}
    jobs = [(ds, conf, cache_root, run_dir) for ds in comp.datasets.values()]
    parallel = len(devices) > 1 and len(jobs) > 1
    worker = None if parallel else _Worker(conf["runtime"]["device"], conf["runtime"])
    sizes = {ds.name: len(ds.images) for ds in comp.datasets.values()}
    budget = Budget(math.inf if time_budget is None else time_budget, sizes)
    if parallel:
        results = _run_parallel(jobs, devices, budget)
    else:
        results = (worker.dataset(*job, budget) for job in jobs)
    for dataset, (result, ds_stats, error) in zip(comp.datasets.values(), results):
        for im in dataset.images:
            preds[(dataset.name, im.name)] = result.get(im.name, Prediction(cluster=OUTLIERS))
        stats.stages.update(ds_stats)
        if error:
            stats.failed[dataset.name] = error
        write_submission(comp, preds, submission_path)  # complete after every dataset
    atomic_write_text(run_dir / "stats.json", json.dumps(stats.stages, indent=2))
    logger.info("time and memory per stage:\n%s", stats.table())
    return preds, stats


class _Worker:
    """Runs datasets on one device with its own models (one per process)."""

    def __init__(self, device: str, runtime: dict, workers: int = 1):
        self.device = select_device({**runtime, "device": device}, workers)
        self.models: Models | None = None

    def dataset(self, dataset: Dataset, conf: dict, cache_root: Path, run_dir: Path, budget):
        """One dataset -> (image name -> Prediction, its stats, one-line error or None)."""
        plan = budget.start(dataset.name, conf)  # first: its share is of the time left now
        t0, c0 = time.perf_counter(), cpu_seconds()
        if self.models is None:
            self.models = Models(conf, self.device)
        stats = RunStats()
        logger.info("dataset %s: %d images on %s", dataset.name, len(dataset.images), self.device)
        seed_everything(conf["runtime"]["seed"])  # each dataset alike, whatever ran before
        result, error = {}, None
        try:
            if not plan.skip:
                result = run_dataset(
                    dataset, degrade(conf, plan.level), cache_root, run_dir, self.models, stats,
                    budget, plan,
                )  # fmt: skip
        except Exception as e:  # one dataset must not cost the whole submission
            error = f"{type(e).__name__}: {e}".splitlines()[0]
            with open(run_dir / "errors.log", "a") as f:
                f.write(f"dataset {dataset.name}:\n{traceback.format_exc()}\n")
            logger.error("dataset %s failed: %s (traceback in %s)", dataset.name, error,
                         run_dir / "errors.log")  # fmt: skip
        stats.record(dataset.name, "total", time.perf_counter() - t0, cpu_seconds() - c0)
        return result, stats.stages, error


_WORKER: _Worker | None = None


def _init_worker(devices, runtime: dict, workers: int) -> None:
    global _WORKER
    setup_logging()
    _WORKER = _Worker(devices.get(), runtime, workers)


def _in_worker(job, seconds: float):
    sizes = {job[0].name: len(job[0].images)}
    return _WORKER.dataset(*job, Budget(seconds, sizes))


def _run_parallel(jobs: list, devices: list[str], budget: Budget):
    """Datasets in `len(devices)` processes; results in the order of `jobs`. Each dataset gets
    the time left x its share of the images x the number of workers (at most the time left)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")
    queue = ctx.Manager().Queue()
    for d in devices:
        queue.put(d)
    total = sum(len(job[0].images) for job in jobs)
    runtime, n = jobs[0][1]["runtime"], len(devices)
    with ProcessPoolExecutor(n, ctx, _init_worker, (queue, runtime, n)) as pool:
        futures = []
        for job in jobs:
            part = len(job[0].images) / total * len(devices)
            seconds = min(budget.remaining(), budget.remaining() * part)
            futures.append(pool.submit(_in_worker, job, seconds))
        for job, fut in zip(jobs, futures):
            try:
                yield fut.result()
            except Exception as e:  # the worker process itself died
                error = f"worker failed: {type(e).__name__}: {e}".splitlines()[0]
                logger.error("dataset %s: %s", job[0].name, error)
                yield {}, {}, error
