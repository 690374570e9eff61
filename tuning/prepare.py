"""The one-off part of a sweep: features and raw matches per dataset, computed once.

`prepare` runs the ordinary pipeline (`imc.pipeline.run`) once per dataset with the base
configuration, except that pairs are chosen with the largest `retrieval.num_neighbors` of the
search space, so that every trial's pairs are a subset of the matched ones. The stage cache
makes a second call (another worker, a resumed study) cost only a look at the files. Its
run folder, `<cache>/tune-prep/<hash>/`, holds the usual summary.json per dataset.

`Prepared` then holds in memory what trials read over and over: keypoints [N x 2] and image
sizes per image, raw matches [M x 2] per matched pair, and the global descriptors from which
each trial's pair list is selected exactly as `imc run` would select it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imc.cache import config_hash, safe_name
from imc.data import Competition, Dataset
from imc.errors import ImcError
from imc.log import logger
from imc.stages import feature_file, matching
from imc.stages import pairs as pairs_stage
from imc.stages.retrieval import load_global


@dataclass
class Prepared:
    """One dataset's cached inputs of verification and mapping.

    names: readable images (features not failed), dataset order.
    features: features.h5 path (the mapping stage reads keypoints from it).
    keypoints: name -> [N x 2] float32, stored-image pixels. sizes: name -> (W, H).
    matches: (a, b) -> [M x 2] int32 raw matches, for every pair of the largest pair list.
    global_names, global_desc: the retrieval stage's [N x D] descriptors and their images.
    global_path: their global.h5 (its model gives the default similarity floor).
    full_seconds: seconds of the preparing pipeline run, when this call ran it (else None).
    """

    dataset: Dataset
    names: list[str]
    features: Path
    keypoints: dict[str, np.ndarray]
    sizes: dict[str, tuple[int, int]]
    matches: dict[tuple[str, str], np.ndarray]
    global_names: list[str]
    global_desc: np.ndarray
    run_dir: Path
    full_seconds: float | None = None
    global_path: Path | None = None
    _pairs: dict = field(default_factory=dict, repr=False)

    def pairs(self, retrieval_conf: dict) -> list[tuple[str, str]]:
        """The pairs `imc run` would match with this retrieval configuration (readable images
        only), in the pipeline's order."""
        key = json.dumps(retrieval_conf, sort_keys=True)
        if key not in self._pairs:
            found = pairs_stage.pairs_from_descriptors(
                self.global_names,
                self.global_desc,
                retrieval_conf["num_neighbors"],
                pairs_stage.min_similarity(retrieval_conf, self.global_path),
                retrieval_conf["exhaustive_below"],
            )
            good = set(self.names)
            self._pairs[key] = [(a, b) for a, b in found if a in good and b in good]
        return self._pairs[key]


def prep_conf(conf: dict, max_neighbors: int) -> dict:
    """The configuration of the preparing run: `conf` with the largest pair list."""
    out = copy.deepcopy(conf)
    out["retrieval"]["num_neighbors"] = max(max_neighbors, conf["retrieval"]["num_neighbors"])
    return out


def prepare(
    comp: Competition, conf: dict, cache_root: Path, datasets: list[str]
) -> dict[str, Prepared]:
    """Run (or find) the preparing pipeline run of each dataset; load what trials need.

    conf: the preparing configuration (see `prep_conf`). Returns name -> Prepared, in the
    order of `datasets`. A lock file serialises workers that start at the same time.
    """
    from imc import pipeline

    cache_root = Path(cache_root)
    out = {}
    for name in datasets:
        ds = comp.datasets[name]
        run_dir = cache_root / "tune-prep" / config_hash(conf, pipeline.input_signature(ds), name)
        run_dir.mkdir(parents=True, exist_ok=True)
        summary = run_dir / safe_name(name) / "summary.json"
        seconds = None
        with _locked(run_dir / ".lock"):
            if not summary.is_file():
                logger.info("tune: preparing %s (features and matches, once)", name)
                sub = Competition(comp.year, comp.root, comp.split, {name: ds})
                _, stats = pipeline.run(sub, conf, run_dir, cache_root, run_dir / "submission.csv")
                seconds = stats.stages[name]["total"]["seconds"]
                if not summary.is_file():
                    raise ImcError(f"preparing dataset {name} failed (see the log above)")
        out[name] = load_prepared(ds, summary, seconds)
    return out


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_prepared(dataset: Dataset, summary_path: Path, seconds: float | None) -> Prepared:
    """Read a preparing run's summary.json and the cached h5 files it names."""
    summary = json.loads(Path(summary_path).read_text())
    features, matches = Path(summary["features"]), Path(summary["matches"])
    global_path = find_global(summary, summary_path)
    for p in (features, matches, global_path):
        if not p.is_file():
            raise ImcError(f"{summary_path}: cached file {p} is missing; delete the summary")
    failed = set(summary["failed"])
    names = [im.name for im in dataset.images if im.name not in failed]
    stored = feature_file.read_array(features, names, "keypoints")
    keypoints = {n: k.astype(np.float32) for n, k in stored.items()}
    sizes = feature_file.image_sizes(features, names)
    raw = matching.load_all_matches(matches)
    global_names, global_desc = load_global(global_path)
    logger.info(
        "tune: %s: %d images, %d matched pairs (cache %s)",
        dataset.name,
        len(names),
        len(raw),
        matches.parent,
    )
    return Prepared(
        dataset,
        names,
        features,
        keypoints,
        sizes,
        raw,
        global_names,
        global_desc,
        Path(summary_path).parent.parent,
        seconds,
        global_path,
    )


def find_global(summary: dict, summary_path: Path) -> Path:
    """The global.h5 of the run, as its summary.json (at `summary_path`) names it."""
    if not summary.get("global"):
        raise ImcError(
            f"{summary_path} does not name the run's global descriptors (written by an older "
            "imc); delete it to prepare the dataset again"
        )
    return Path(summary["global"])
