"""One trial: the stages after matching, on cached matches, scored with the year's metric.

For each dataset, in a fixed order (cheapest first): select the pairs the trial's retrieval
settings give, verify their cached raw matches with the trial's MAGSAC settings, drop pairs
below `min_inliers`, cut weak links between groups (clustering) and map with the trial's
pycolmap options, one thread and a fixed seed, so that equal parameters give equal scores.
Each dataset's score is reported as an intermediate value (the running mean), which a pruner
reads; the trial's value is the mean score over its datasets. Scratch files (database, models)
live in a temporary folder removed after each dataset.

Every step calls the stage functions `imc run` calls, in the same order, so a trial's score is
the score `imc run` reaches with the same configuration (a test checks it).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from imc import scoring
from imc.cache import h5_key
from imc.data import Competition, Predictions
from imc.log import logger
from imc.stages import clustering, mapping, verification
from imc.submission import submission_frame

from . import space as space_mod
from .prepare import Prepared


@dataclass
class DatasetResult:
    """What one dataset gave in one trial (score on the year's scale: IMC2025 0-100)."""

    score: float
    seconds: dict[str, float] = field(default_factory=dict)
    pairs: int = 0
    verified: int = 0
    registered: int = 0
    error: str | None = None
    predictions: dict = field(default_factory=dict, repr=False)  # image name -> Prediction


def verify(
    prep: Prepared, pair_list: list[tuple[str, str]], conf: dict, feature_conf: dict
) -> tuple[dict[tuple[str, str], dict], int]:
    """Verify the cached raw matches of `pair_list` as `imc.stages.verification.main` does.

    Returns: the pairs with >= max(min_inliers, 1) inliers, in the order `load_verified`
    gives (h5 key order): (a, b) -> {inliers [K x 2] int32, F [3 x 3], num_matches}; and the
    number of pairs of `pair_list` missing from the cache (0 unless the cache is incomplete).
    """
    out, missing = {}, 0
    for a, b in sorted(pair_list, key=lambda p: (h5_key(p[0]), h5_key(p[1]))):
        raw = prep.matches.get((a, b))
        if raw is None:
            missing += 1
            continue
        k0, k1, size0, size1 = prep.keypoints[a], prep.keypoints[b], prep.sizes[a], prep.sizes[b]
        inliers, F, kept = verification.verify_matches(
            conf, feature_conf, k0, k1, size0, size1, raw
        )
        if kept:
            out[(a, b)] = {"inliers": inliers, "F": F, "num_matches": len(raw)}
    return out, missing


def score_predictions(comp: Competition, prep: Prepared, preds: dict) -> float:
    """The year's metric of one dataset's predictions (image name -> Prediction)."""
    ds = prep.dataset
    sub = Competition(comp.year, comp.root, comp.split, {ds.name: ds})
    full: Predictions = {(ds.name, n): p for n, p in preds.items()}
    frame = submission_frame(sub, full)
    return float(scoring.score(sub, frame).score)


def evaluate_dataset(
    comp: Competition, prep: Prepared, conf: dict, scratch_root: str | None = None
) -> DatasetResult:
    """Verification, clustering, mapping and scoring of one dataset under `conf`.

    A failure inside a stage scores the dataset as `imc run` would (every image an outlier)
    and is recorded in `error`.
    """
    t0 = time.perf_counter()
    res = DatasetResult(score=0.0)
    pair_list = prep.pairs(conf["retrieval"])
    verified, missing = verify(prep, pair_list, conf["verification"], conf["features"])
    if missing:
        logger.warning("tune: %s: %d pairs not in the cache", prep.dataset.name, missing)
    t1 = time.perf_counter()
    preds = {}
    try:
        kept = clustering.main(conf, clustering.Inputs(prep.names, verified), None)
        with tempfile.TemporaryDirectory(prefix="imc-trial-", dir=scratch_root) as tmp:
            inputs = mapping.Inputs(prep.dataset, prep.names, prep.features, kept)
            preds = mapping.main(conf, inputs, Path(tmp)).preds
    except Exception as e:  # imc run scores a failed dataset as all outliers; so does a trial
        logger.error("tune: %s failed: %s\n%s", prep.dataset.name, e, traceback.format_exc())
        res.error = f"{type(e).__name__}: {e}"
        preds = {}
    t2 = time.perf_counter()
    res.score = score_predictions(comp, prep, preds)
    res.seconds = {
        "verification": round(t1 - t0, 3),
        "mapping": round(t2 - t1, 3),
        "total": round(time.perf_counter() - t0, 3),
    }
    res.pairs, res.verified, res.registered = len(pair_list), len(verified), len(preds)
    res.predictions = preds
    return res


def trial_conf(base: dict, params: dict) -> dict:
    """The configuration of a trial: base + params, mapping on one thread (deterministic)."""
    conf = space_mod.apply(base, params)
    if conf["runtime"]["mapping_threads"] != 1:
        logger.warning("tune: runtime.mapping_threads set to 1 (determinism of trials)")
        conf["runtime"]["mapping_threads"] = 1
    return conf


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Objective:
    """Optuna objective: mean score over `order` (datasets, cheapest first), maximised."""

    def __init__(
        self,
        comp: Competition,
        base_conf: dict,
        space: tuple[space_mod.Param, ...],
        prepared: dict[str, Prepared],
        order: list[str],
        scratch_root: str | None = None,
    ):
        self.comp, self.base, self.space = comp, base_conf, space
        self.prepared, self.order, self.scratch_root = prepared, order, scratch_root

    def evaluate(self, params: dict, datasets: list[str]) -> dict[str, DatasetResult]:
        """Scores of `params` on `datasets` outside any trial (held-out sets, defaults)."""
        conf = trial_conf(self.base, params)
        return {
            n: evaluate_dataset(self.comp, self.prepared[n], conf, self.scratch_root)
            for n in datasets
        }

    def __call__(self, trial) -> float:
        import optuna

        params = space_mod.suggest(trial, self.space)
        trial.set_user_attr("worker", worker_id())
        conf = trial_conf(self.base, params)
        scores, seconds, details = {}, {}, {}
        for step, name in enumerate(self.order):
            res = evaluate_dataset(self.comp, self.prepared[name], conf, self.scratch_root)
            scores[name], seconds[name] = res.score, res.seconds
            details[name] = {"pairs": res.pairs, "verified": res.verified}
            details[name].update(registered=res.registered, error=res.error)
            trial.set_user_attr("scores", scores)
            trial.set_user_attr("seconds", seconds)
            trial.set_user_attr("details", details)
            running = float(np.mean(list(scores.values())))
            trial.report(running, step)
            if step < len(self.order) - 1 and trial.should_prune():
                logger.info("tune: trial %d pruned after %s (%.2f)", trial.number, name, running)
                raise optuna.TrialPruned()
        return float(np.mean([scores[n] for n in self.order]))
