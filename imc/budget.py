"""Time budget: share the run's seconds among datasets, degrade a dataset that would overrun its
share, and stop work when time is up, so that a run always ends with a complete submission.

The policy, every decision logged and recorded in the dataset's `summary.json` (`budget`):

1. Share. When a dataset starts, it gets the time left times its share of the images not yet
   processed (its own included): time that a dataset leaves unused goes to the later ones.
2. Skip. A dataset that starts with no time left is not processed; its images are outliers.
3. Level. A dataset's cost is predicted from the rates measured on the datasets already done,
   `seconds per image x images + seconds per pair x pairs` (pairs: what the retrieval
   settings give). When it exceeds the share, the dataset runs at the lowest degradation level
   that fits (level L: half the keypoints, 3/4 of the resolution, half the neighbours per image,
   each step assumed to halve the cost), at most `MAX_LEVEL`. The first dataset has no rates
   and starts at level 0.
4. Pairs. After retrieval, matching time is predicted as pairs x seconds per pair (the rate
   measured earlier in the run, else on the first `PROBE_PAIRS` pairs of this dataset). If it
   exceeds the matching time of the share (`MATCHING_FRACTION` of it, the rest is kept for
   verification and mapping), the pairs are cut to the largest number of neighbours per image
   that fits.
5. Deadline. Matching stops at the end of the share's matching time; unmatched pairs are left
   out. Mapping is skipped when the run's whole budget is spent.
6. Mapping. Mapping runs until the end of the dataset's share, or for at least
   `1 - MATCHING_FRACTION` of the share when matching and verification ran late, never past the
   run's end; incremental mapping then stops (imc.stages.mapping: after the bundle adjustment in
   progress) and the images registered so far keep their poses.

Given the same decisions (level, pairs per image, where matching stopped), the results are the
same: only these decisions depend on the clock.

The mechanics live here too: `Budget.match` (points 4 and 5) and `Budget.map` (point 6) run a
stage through callables that the pipeline passes in, so this module imports no stage.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .log import logger
from .stages.pairs import pairs_from_descriptors

DEFAULT_SECONDS = 9 * 3600 - 30 * 60  # Kaggle's 9 hours less a margin for install and output
MAX_LEVEL = 3
PROBE_PAIRS = 8
MATCHING_FRACTION = 0.8
MIN_KEYPOINTS, MIN_LONG_SIDE = 256, 480


def degrade(conf: dict, level: int) -> dict:
    """The configuration of degradation `level` (0: `conf` itself, unchanged).

    Each level halves `features.max_keypoints` (not below MIN_KEYPOINTS), scales
    `features.resize_long_side` by 3/4 (not below MIN_LONG_SIDE), halves
    `retrieval.num_neighbors` (not below 2) and `retrieval.exhaustive_below`."""
    if level <= 0:
        return conf
    out = copy.deepcopy(conf)
    f, r = out["features"], out["retrieval"]
    f["max_keypoints"] = max(MIN_KEYPOINTS, int(f["max_keypoints"] * 0.5**level))
    if f["resize_long_side"]:
        f["resize_long_side"] = max(MIN_LONG_SIDE, round(f["resize_long_side"] * 0.75**level))
    r["num_neighbors"] = max(2, r["num_neighbors"] >> level)
    r["exhaustive_below"] = r["exhaustive_below"] >> level
    return out


def expected_pairs(n: int, retrieval: dict) -> int:
    """Upper bound of the pairs that the retrieval settings give for `n` images."""
    if n < retrieval["exhaustive_below"]:
        return n * (n - 1) // 2
    return n * min(retrieval["num_neighbors"], max(n - 1, 0))


def choose_level(predicted: float | None, share: float) -> int:
    """Lowest level whose cost (predicted x 2^-level) fits the share; 0 when unknown."""
    if predicted is None or predicted <= share:
        return 0
    if share <= 0:
        return MAX_LEVEL
    return min(MAX_LEVEL, math.ceil(math.log2(predicted / share)))


@dataclass
class DatasetPlan:
    """The budget of one dataset: its share, when it started, and the decisions taken."""

    name: str
    images: int
    share: float
    start: float
    level: int = 0
    skip: bool = False
    decisions: list[str] = field(default_factory=list)

    @property
    def matching_deadline(self) -> float:
        return self.start + MATCHING_FRACTION * self.share

    def note(self, message: str) -> None:
        """Log a degradation and keep it for the summary."""
        logger.warning("time budget, dataset %s: %s", self.name, message)
        self.decisions.append(message)

    def to_dict(self) -> dict:
        return {
            "share_seconds": round(self.share, 1) if math.isfinite(self.share) else None,
            "level": self.level,
            "skipped": self.skip,
            "decisions": self.decisions,
        }


Pairs = list[tuple[str, str]]


@dataclass
class MatchingJob:
    """What `Budget.match` needs of the matching stage.

    pairs: the retrieval pairs. match(pairs, deadline): matches them (resumable, stopping at the
    `time.monotonic()` deadline when not None) and returns matches.h5. done(pairs): how many of
    `pairs` (all pairs in the file when None) are matched. descriptors(): the image names and
    [N x D] global descriptors that pairs are cut with. retrieval: the retrieval settings, its
    min_similarity resolved (imc.stages.pairs.min_similarity)."""

    pairs: Pairs
    match: Callable[[Pairs, float | None], Path]
    done: Callable[[Pairs | None], int]
    descriptors: Callable[[], tuple[list[str], np.ndarray]]
    retrieval: dict


class Budget:
    """The run's time: `seconds` from now, shared among datasets of `sizes` (name -> images).

    clock: seconds, monotonic (injected by the tests)."""

    def __init__(
        self, seconds: float, sizes: dict[str, int], clock: Callable[[], float] = time.monotonic
    ):
        self.clock, self.seconds = clock, float(seconds)
        self.t0 = clock()
        self.pending = dict(sizes)
        self.rates: dict[str, list[float]] = {"image": [0.0, 0], "pair": [0.0, 0]}

    @property
    def deadline(self) -> float:
        return self.t0 + self.seconds

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def rate(self, unit: str, level: int = 0) -> float | None:
        """Measured seconds per `unit` ('image' or 'pair') at `level`, None before any."""
        seconds, count = self.rates[unit]
        return seconds / count * 0.5**level if count else None

    def observe(self, unit: str, seconds: float, count: int, level: int = 0) -> None:
        """Record `count` units done in `seconds` at `level` (converted to level 0)."""
        if count > 0:
            self.rates[unit][0] += seconds * 2.0**level
            self.rates[unit][1] += count

    def predict(self, n: int, conf: dict) -> float | None:
        """Seconds that `n` images would take at level 0, from the rates; None before any."""
        per_image, per_pair = self.rate("image"), self.rate("pair")
        if per_image is None:
            return None
        return n * per_image + expected_pairs(n, conf["retrieval"]) * (per_pair or 0.0)

    def start(self, name: str, conf: dict) -> DatasetPlan:
        """The plan of dataset `name`: its share of the time left, skip or level."""
        n = self.pending.get(name, 0)
        total = sum(self.pending.values())
        share = max(self.remaining(), 0.0) * (n / total if total else 1.0)
        self.pending.pop(name, None)
        plan = DatasetPlan(name, n, share, self.clock())
        if self.remaining() <= 0:
            plan.skip = True
            plan.note("no time left: not processed, its images are outliers")
            return plan
        predicted = self.predict(n, conf)
        plan.level = choose_level(predicted, share)
        if plan.level:
            plan.note(
                f"predicted {predicted:.0f} s for a share of {share:.0f} s: level {plan.level} "
                "(fewer keypoints, lower resolution, fewer pairs)"
            )
        if math.isfinite(share):
            logger.info("time budget: dataset %s gets %.0f s (%d images)", name, share, n)
        return plan

    def matching_allowance(self, plan: DatasetPlan) -> float:
        """Seconds left for matching: until the plan's matching deadline or the run's end."""
        return min(plan.matching_deadline, self.deadline) - self.clock()

    def mapping_allowance(self, plan: DatasetPlan) -> float:
        """Seconds for mapping (point 6); inf without a limit."""
        now = self.clock()
        end = max(plan.start + plan.share, now + (1 - MATCHING_FRACTION) * plan.share)
        return min(end, self.deadline) - now

    def match(self, plan: DatasetPlan, job: MatchingJob) -> tuple[Path, Pairs]:
        """Matching in the dataset's time (points 4 and 5): pairs cut to what fits at the
        measured seconds per pair, matching stopped at the deadline.

        Returns: matches.h5 and the pair list after the cut."""
        pairs, allowance = job.pairs, self.matching_allowance(plan)
        if not math.isfinite(allowance):
            return job.match(pairs, None), pairs
        deadline = time.monotonic() + allowance
        done0, t0 = job.done(None), time.perf_counter()
        if allowance > 0 and self.rate("pair") is None and len(pairs) > PROBE_PAIRS:
            job.match(pairs[:PROBE_PAIRS], None)
            self.observe("pair", time.perf_counter() - t0, job.done(None) - done0, plan.level)
        pairs = self._cut(plan, job)
        done1, t1 = job.done(None), time.perf_counter()
        path = job.match(pairs, deadline)
        self.observe("pair", time.perf_counter() - t1, job.done(None) - done1, plan.level)
        missing = len(pairs) - job.done(pairs)
        if missing:
            plan.note(f"matching stopped at the deadline: {missing} of {len(pairs)} pairs left out")
        return path, pairs

    def _cut(self, plan: DatasetPlan, job: MatchingJob) -> Pairs:
        """The pairs that fit in the matching time left at the measured rate (point 4)."""
        allowance = self.matching_allowance(plan)
        per_pair = self.rate("pair", plan.level)
        limit = 0 if allowance <= 0 else max_pairs(allowance, per_pair)
        if limit == 0 and job.pairs:
            plan.note(f"no time left for matching: none of {len(job.pairs)} pairs matched")
            return []
        if limit is None or limit >= len(job.pairs):
            return job.pairs
        names, desc = job.descriptors()
        cut, k = cut_pairs(names, desc, job.retrieval, limit)
        plan.note(
            f"{len(job.pairs)} pairs at {per_pair:.2f} s/pair exceed the {allowance:.0f} s left "
            f"for matching: cut to {len(cut)} pairs ({k} neighbours per image)"
        )
        return cut

    def map(self, plan: DatasetPlan, run: Callable[[float], Any], empty: Callable[[], Any]):
        """Mapping in the dataset's time (point 6): `run(seconds)` maps within that many
        seconds and returns a result with `preds` and `stopped`; when the run's time is spent,
        nothing is mapped and `empty()` is returned."""
        allowance = self.mapping_allowance(plan)
        if allowance <= 0:
            plan.note("no time left for mapping: its images are outliers")
            return empty()
        result = run(allowance)
        if result.stopped:
            plan.note(
                f"mapping stopped at its time limit ({allowance:.0f} s): "
                f"{len(result.preds)} of {plan.images} images registered"
            )
        return result


def max_pairs(allowance: float, per_pair: float | None) -> int | None:
    """How many pairs fit in `allowance` seconds at `per_pair` seconds each (None: any)."""
    if per_pair is None or per_pair <= 0:
        return None
    return max(0, int(allowance / per_pair))


def cut_pairs(
    names: list[str],
    desc: np.ndarray,
    retrieval: dict,
    limit: int,
) -> tuple[list[tuple[str, str]], int]:
    """At most `limit` pairs: the k-NN pairs of the global descriptors for the largest k whose
    pairs fit (then, if even k = 1 gives too many, the `limit` most similar of those).

    names: [N] image names; desc: [N x D] global descriptors.
    Returns: the pairs (a before b in `names`) and the k used (0 when no pair fits)."""
    n = len(names)
    k = min(retrieval["num_neighbors"], n - 1)
    if n < retrieval["exhaustive_below"]:
        k = n - 1
    while k >= 1:
        found = pairs_from_descriptors(names, desc, k, retrieval["min_similarity"], 0, True)
        if len(found) <= limit or k == 1:
            break
        k -= 1
    if k < 1 or limit <= 0:
        return [], 0
    found = sorted(found, key=lambda p: -p[2])[:limit]
    index = {name: i for i, name in enumerate(names)}
    found.sort(key=lambda p: (index[p[0]], index[p[1]]))
    return [(a, b) for a, b, _ in found], k
