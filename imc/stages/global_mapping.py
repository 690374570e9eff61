"""The global pipeline: imc's mapper when `mapper` is "global", and the fallback of incremental
mapping.

Global fallback (`global_fallback`): incremental mapping can leave a well-connected group of
images in pieces, as on a narrow-angle ring of a weakly textured object (dinoSparseRing: its
16 images, linked around the ring by pairs of hundreds of inliers, came back as overlapping
models of 11, 8, 3 and 3). When the best model of some connected group of the pair graph holds
less than `global_fallback` of its images, or the group's images are registered in more than
one model (its pieces), the verified pairs are also mapped by the global pipeline (pycolmap's
defaults; which pairs: below), and its result is kept if its best models cover more images, or
as many and agree with clearly more verified inliers (`model_support`, by more than
SUPPORT_MARGIN).

The global pipeline trusts each pair's relative pose, and a few false pairs bend its whole model,
where incremental mapping, checking every registration against the 3D points, sets them aside.
So it is given, for each level of `global_min_relative_inliers` in turn, only the pairs with at
least that fraction of the inliers of the strongest pair of the weaker of their two images (each
image keeps its strongest pair), and the models kept are those that agree with the most verified
inliers (`model_support`: the matches of every verified pair, the dropped ones included, within
SUPPORT_MAX_ERROR px of the epipolar geometry of the two posed cameras, each image posed as the
submission poses it: by the largest model that registers it). Which pairs a sparse
ring keeps decides whether its arcs join at the right angle, in a way no single level predicts;
a model joined wrongly contradicts the pairs at the joint, and the count of agreeing inliers
shows it (dinoSparseRing: BENCHMARKS.md). The global pipeline starts from random camera
positions, so the same pairs can join at the right angle with one seed and not with another
(dinoSparseRing's level 0.5: the right joint with 8 of seeds 0-14, the others' levels give the
same model whatever the seed). Each level is therefore mapped with one seed, then the
`global_restart_levels` levels whose models agree with the most verified inliers are mapped
again with `global_seeds` - 1 more: restarts go where the evidence is, and the same count
chooses among all the runs.

The kept models go to the pass's sfm folder with the database of the pairs they were mapped
from, `<sfm folder>/database.db` (imc.stages.mapping.MappingResult.global_database). The global
pipeline cannot be stopped at a time limit; a level is not started when the time left is less
than the last level took, and the fallback is not started when the time left is less than the
pass has taken so far.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pycolmap
import scipy.sparse.csgraph

from ..errors import ImcError
from ..log import logger
from ..settings import available_cores
from .clustering import relative_strength, weight_matrix
from .reconstruction import (
    MappingRun,
    build_database,
    colmap_keypoints,
    registered_names,
    run_mapper,
    submitted_images,
)

SUPPORT_MAX_ERROR = 4.0  # px: a verified match agrees with a model's poses (model_support)
# Hypotheses whose model_support differs by less than this share are taken as equal: other
# initial pairs and camera modes differ by 0.01-0.14 % on imc-bench (BENCHMARKS.md).
SUPPORT_MARGIN = 0.002


def clearly_more(support: int, than: int) -> bool:
    """Whether `support` exceeds `than` by more than SUPPORT_MARGIN of it."""
    return support > (1 + SUPPORT_MARGIN) * than


def relative_inlier_levels(conf: dict) -> list[float]:
    """The mapping section's `global_min_relative_inliers` (a number or a list) as a list, in
    the order the levels are tried."""
    levels = conf["global_min_relative_inliers"]
    levels = list(levels) if isinstance(levels, (list, tuple)) else [levels]
    if not levels:
        raise ImcError("mapping.global_min_relative_inliers needs at least one value")
    return levels


def pair_groups(
    names: list[str], verified: dict[tuple[str, str], dict], min_size: int
) -> list[set[str]]:
    """The connected groups of images linked by verified pairs, those of at least `min_size`."""
    linked = weight_matrix(names, verified) > 0
    if not linked.any():
        return []
    _, labels = scipy.sparse.csgraph.connected_components(linked, directed=False)
    groups = [{names[k] for k in np.flatnonzero(labels == g)} for g in np.unique(labels)]
    return [g for g in groups if len(g) >= max(min_size, 2)]


def coverage(
    models: list[pycolmap.Reconstruction], groups: list[set[str]], name_of: dict[str, str]
) -> list[int]:
    """For each group, the most of its images that one model registers."""
    registered_sets = [registered_names(m, name_of) for m in models]
    return [max((len(g & r) for r in registered_sets), default=0) for g in groups]


def split(
    models: list[pycolmap.Reconstruction], groups: list[set[str]], name_of: dict[str, str]
) -> list[bool]:
    """For each group, whether its registered images are spread over more than one model."""
    registered_sets = [registered_names(m, name_of) for m in models]
    return [sum(1 for r in registered_sets if g & r) > 1 for g in groups]


def global_pairs(
    names: list[str], verified: dict[tuple[str, str], dict], min_relative: float
) -> dict[tuple[str, str], dict]:
    """The pairs given to the global pipeline: those with at least `min_relative` x the inliers
    of the strongest pair of the weaker of their two images (each image keeps its strongest)."""
    index = {n: i for i, n in enumerate(names)}
    strength = relative_strength(weight_matrix(names, verified))
    return {
        (a, b): v
        for (a, b), v in verified.items()
        if a in index and b in index and strength[index[a], index[b]] >= min_relative
    }


def model_support(
    models: list[pycolmap.Reconstruction],
    verified: dict[tuple[str, str], dict],
    features_path: Path,
    name_of: dict[str, str],
    max_error: float = SUPPORT_MAX_ERROR,
) -> int:
    """The verified inliers that the poses submitted agree with: each image takes its pose
    from the first of `models` (largest first) that registers it, as the submission does
    (imc.stages.reconstruction.submitted_images; models too small to be submitted still
    count here); for each pair whose two images take their poses from the same model, the
    matches whose Sampson distance to the epipolar geometry of the two posed cameras is below
    `max_error` pixels (of the first camera's focal length). A pair split between two models
    counts nothing (its images go to different clusters), so a model broken into overlapping
    pieces gains nothing from the pieces the submission leaves out."""
    posed = submitted_images(models, name_of)
    in_pairs = {n for pair in verified for n in pair}
    keypoints = colmap_keypoints(features_path, sorted(in_pairs & set().union(*posed)))
    agree = 0
    for model, images in zip(models, posed):
        for (a, b), v in verified.items():
            if a not in images or b not in images or not len(v["inliers"]):
                continue
            pa, pb = keypoints[a][v["inliers"][:, 0]], keypoints[b][v["inliers"][:, 1]]
            agree += int((epipolar_errors(model, images[a], images[b], pa, pb) < max_error).sum())
    return agree


def epipolar_errors(
    model: pycolmap.Reconstruction,
    image_a: pycolmap.Image,
    image_b: pycolmap.Image,
    points_a: np.ndarray,
    points_b: np.ndarray,
) -> np.ndarray:
    """Sampson distances of matches to the epipolar geometry of two posed images of `model`.

    points_a, points_b: [M x 2] float64, matched keypoints in COLMAP's convention
    (colmap_keypoints). Returns [M] float64, pixels of image_a's camera's mean focal length.
    """
    ca, cb = model.cameras[image_a.camera_id], model.cameras[image_b.camera_id]
    xa, xb = ca.cam_from_img(points_a), cb.cam_from_img(points_b)
    xa, xb = np.c_[xa, np.ones(len(xa))], np.c_[xb, np.ones(len(xb))]
    ta, tb = image_a.cam_from_world().matrix(), image_b.cam_from_world().matrix()
    rot = tb[:, :3] @ ta[:, :3].T
    tx, ty, tz = tb[:, 3] - rot @ ta[:, 3]
    essential = np.array([[0, -tz, ty], [tz, 0, -tx], [-ty, tx, 0]]) @ rot
    ex, etx = xa @ essential.T, xb @ essential
    den = np.sqrt(ex[:, 0] ** 2 + ex[:, 1] ** 2 + etx[:, 0] ** 2 + etx[:, 1] ** 2)
    return np.abs((xb * ex).sum(1)) / np.maximum(den, 1e-12) * ca.mean_focal_length()


def map_levels(
    run: MappingRun, shared: dict[str, tuple], sfm_dir: Path
) -> list[pycolmap.Reconstruction]:
    """The global pipeline on the pairs of each of `run.levels` (global_pairs) with
    runtime.seed, then on the `global_restart_levels` levels (0: all) whose models agree with
    the most verified inliers (model_support) with the other `global_seeds` - 1 seeds
    (runtime.seed + 1, ...); of all these hypotheses, the models that agree with the most
    verified inliers (ties: the first seed, then the first level) go to `sfm_dir` with their
    database. A level whose pairs are those of the level before is skipped. The runs go
    `concurrent_runs` at a time, each with `mapping_threads`; a wave starts only if the time
    left exceeds what the last wave took. Returns the kept models, largest first; sets
    `run.result.global_pairs`."""
    global_conf = {**run.conf, "mapper": "global"}
    if run.conf["mapper"] != "global":
        global_conf["options"] = {}  # the options are the incremental pipeline's
    levels = []
    for k, level in enumerate(run.levels):
        pairs = global_pairs(run.names, run.verified, level)
        if not levels or len(pairs) != len(levels[-1][1]):  # nested sets: same size, same pairs
            levels.append((k, pairs))
    seeds = [run.runtime["seed"] + j for j in range(run.conf["global_seeds"])]
    waves = _Waves(run, global_conf, shared, sfm_dir)
    done = waves.map([(k, pairs, seeds[0]) for k, pairs in levels])
    restarted = []
    if len(done) == len(levels) and len(seeds) > 1:
        top = run.conf["global_restart_levels"] or len(levels)
        ranked = sorted(range(len(levels)), key=lambda i: -done[i][4])  # stable: first level
        restarted = sorted(ranked[:top])
        done += waves.map([(*levels[i], seed) for seed in seeds[1:] for i in restarted])
    best, best_support = [], -1
    for k, pairs, seed, models, support in done:
        if support > best_support:
            shutil.rmtree(sfm_dir, ignore_errors=True)
            os.replace(_level_dir(sfm_dir, k, seed), sfm_dir)
            best, best_support, run.result.global_pairs = models, support, len(pairs)
        else:
            shutil.rmtree(_level_dir(sfm_dir, k, seed), ignore_errors=True)
    logger.info(
        "mapping %s: global pipeline on %s of %d pairs (min_relative_inliers %s, repeated "
        "pair sets skipped; seed %d, then seeds %s on levels %s): %s verified inliers agree "
        "with its models; kept %d pairs",
        run.dataset, [len(p) for _, p in levels], len(run.verified), run.levels, seeds[0],
        seeds[1:], [run.levels[levels[i][0]] for i in restarted], [d[4] for d in done],
        run.result.global_pairs,
    )  # fmt: skip
    return best


class _Waves:
    """Runs global pipeline jobs (level index, pairs, seed) `concurrent_runs` at a time; a wave
    starts only if the time left exceeds what the last wave took (over successive `map`
    calls). `map` returns (level index, pairs, seed, models, support) of the jobs run, in the
    jobs' order."""

    def __init__(self, run: MappingRun, global_conf: dict, shared: dict, sfm_dir: Path):
        self.run, self.conf, self.shared, self.sfm_dir = run, global_conf, shared, sfm_dir
        self.took, self.width = 0.0, concurrent_runs(run.runtime)

    def map(self, todo: list[tuple[int, dict, int]]) -> list[tuple]:
        run, done = self.run, []
        for start in range(0, len(todo), self.width):
            started = time.monotonic()
            if self.took and run.end - started < self.took:
                logger.warning("mapping %s: no time for more global levels", run.dataset)
                break
            wave = todo[start : start + self.width]
            with ThreadPoolExecutor(len(wave), thread_name_prefix="global-level") as pool:
                found = pool.map(self._one, wave)
                done += [(k, pairs, seed, *result) for (k, pairs, seed), result in zip(wave, found)]
            self.took = time.monotonic() - started
        return done

    def _one(self, job: tuple[int, dict, int]) -> tuple[list[pycolmap.Reconstruction], int]:
        k, pairs, seed = job
        level_dir = _level_dir(self.sfm_dir, k, seed)
        return _map_level(self.run, self.conf, pairs, self.shared, level_dir, seed)


def concurrent_runs(runtime: dict) -> int:
    """Mapping runs at once: the cores (of this process's share, `runtime.workers`) over
    pycolmap's threads per run (`mapping_threads`). Each run is deterministic on its own, so
    running them together gives what running them one after the other gives."""
    cores = available_cores() // max(1, runtime.get("workers") or 1)
    return max(1, cores // max(1, runtime["mapping_threads"]))


def _level_dir(sfm_dir: Path, k: int, seed: int) -> Path:
    return sfm_dir.with_name(f"{sfm_dir.name}-global{k}-seed{seed}")


def _map_level(
    run: MappingRun,
    global_conf: dict,
    pairs: dict[tuple[str, str], dict],
    shared: dict[str, tuple],
    run_dir: Path,
    seed: int,
) -> tuple[list[pycolmap.Reconstruction], int]:
    """The global pipeline on `pairs` with pycolmap seeded by `seed` into `run_dir`, its
    database moved to `run_dir/database.db`. Returns the models, largest first, and their
    model_support over every verified pair."""
    db_path = run_dir.with_name(run_dir.name + ".db")
    build_database(
        db_path, run.names, run.db_names, run.features, pairs, shared, run.focals,
        run.conf["camera_model"],
    )  # fmt: skip
    models = run_mapper(
        global_conf, db_path, run.image_dir, run_dir, run.runtime["mapping_threads"], seed,
    )  # fmt: skip
    os.replace(db_path, run_dir / "database.db")
    return models, model_support(models, run.verified, run.features, run.name_of)


def fallback(
    run: MappingRun,
    models: list[pycolmap.Reconstruction],
    shared: dict[str, tuple],
    sfm_dir: Path,
    t0: float,
) -> tuple[list[pycolmap.Reconstruction], str]:
    """Incremental `models` (in `sfm_dir`), or the global pipeline's (map_levels) when some
    linked group's best model holds less than `global_fallback` of its images or the group is
    split over several models, and the global models cover more, or as many with clearly more
    support (module docstring); they then replace `sfm_dir`. t0: time.monotonic() at the
    pass's start. Returns the models kept and their mapper ("incremental" or "global")."""
    covered = coverage(models, run.linked_groups, run.name_of)
    share = run.conf["global_fallback"]
    pieces = split(models, run.linked_groups, run.name_of)
    if not any(pieces) and all(c >= share * len(g) for c, g in zip(covered, run.linked_groups)):
        return models, "incremental"
    if run.end - time.monotonic() < time.monotonic() - t0:
        logger.warning("mapping %s: no time for the global fallback", run.dataset)
        return models, "incremental"
    alt_dir = sfm_dir.with_name(sfm_dir.name + "-global")
    alt = map_levels(run, shared, alt_dir)
    alt_covered = coverage(alt, run.linked_groups, run.name_of)
    logger.info(
        "mapping %s: incremental models cover %s of groups of %s images, global ones %s",
        run.dataset, covered, [len(g) for g in run.linked_groups], alt_covered,
    )  # fmt: skip
    more = sum(alt_covered) > sum(covered)
    if sum(alt_covered) == sum(covered):
        support = model_support(models, run.verified, run.features, run.name_of)
        alt_support = model_support(alt, run.verified, run.features, run.name_of)
        more = clearly_more(alt_support, support)
        logger.info(
            "mapping %s: as many images covered; %d verified inliers agree with the incremental "
            "models, %d with the global ones", run.dataset, support, alt_support,
        )  # fmt: skip
    if more:
        shutil.rmtree(sfm_dir, ignore_errors=True)
        os.replace(alt_dir, sfm_dir)
        return alt, "global"
    shutil.rmtree(alt_dir, ignore_errors=True)
    return models, "incremental"
