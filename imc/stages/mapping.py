"""Mapping: verified matches -> pycolmap database -> incremental (or global) SfM -> clusters.

Each reconstructed model is a cluster; an image registered in several (overlapping) models is
given to the largest; images in no model (or in a leftover below `min_model_size`) are outliers.
Models are written in COLMAP's binary format with a PLY of the points, for COLMAP's viewer.

Cameras (`camera_mode`): `per_image` gives every image its own camera (`camera_model`,
SIMPLE_RADIAL by default); `shared`
gives one camera to the images of the same stored size and EXIF make, model and focal length
(the size alone when the header has none); `auto` (the default) maps with per-image cameras, then
shares the camera of each such group with at least MIN_GROUP_IMAGES registered images and maps
again, keeping the second result if it registers more images, or as many with a mean
reprojection error at most `1 + reprojection_tolerance` times the first's (when only one pass
fell back to the global pipeline: clearly more agreeing inliers, `_choose`). One camera per
group constrains bundle adjustment where the images really come from one camera (templeRing:
score 83.1 with per-image cameras, 100.0 shared); where a group mixes cameras of different focal
lengths, one shared camera cannot fit them and the reprojection error grows (synthetic: focal
lengths 768 and 900 px, 0.34 px per image, 0.67 px shared; the same camera: 0.34 either way;
imc-bench's one-camera datasets: within 3 %). A per-image focal length is a poor witness on its
own: on a narrow-angle ring (dinoSparseRing, about 11 degrees of field) the per-image estimates
scatter by 8-12 % although one camera took every image.
With a second core, the shared pass starts beside the per-image one, on the groups every image
would give, and is mapped again only if the per-image pass registers too few of a group
(`_auto_side_by_side`): the same result, in about the time of the longer pass. A time limit
stops both passes alike (one after the other, the shared pass starts only if the time left
exceeds the per-image pass's time, and stops at the same limit).

The global pipeline (`mapper: global`) and the global fallback of incremental mapping
(`global_fallback`, which pairs the global pipeline is given, which of its models are kept):
imc.stages.global_mapping.

The database, pycolmap's runs, the keypoint convention and the MappingRun / MappingResult
records: imc.stages.reconstruction.

Files under the dataset's `out_dir`: database.db (every verified pair), sfm/ (the kept models;
with the global pipeline's own database, sfm/database.db, when its models were kept:
MappingResult.global_database), models/ (export_models), colmap.log.* (pycolmap's log).

Time: `Inputs.max_seconds` stops incremental mapping (pycolmap's `max_runtime_seconds`, checked
between image registrations, so a bundle adjustment in progress finishes first); the images
registered by then keep their poses, the rest are outliers.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pycolmap

from ..data import Dataset, Prediction
from ..errors import ImcError
from ..export import export_model, model_stats
from ..images import exif_camera
from ..log import logger
from ..poses import focal_prior_px
from . import global_mapping
from .feature_file import image_sizes
from .global_mapping import clearly_more, concurrent_runs, model_support
from .reconstruction import (  # noqa: F401 (re-exported: the mapping stage's building blocks)
    INCREMENTAL_DEFAULTS,
    PIPELINES,
    MappingResult,
    MappingRun,
    build_database,
    colmap_keypoints,
    database_names,
    focal_prior,
    pipeline_options,
    registered_names,
    run_mapper,
    runtime_limit,
    submitted_images,
)

CAMERA_MODES = ("auto", "per_image", "shared")
MIN_GROUP_IMAGES = 3  # registered images a camera group needs before `auto` tries sharing


def assign_clusters(
    models: list[pycolmap.Reconstruction], name_of: dict[str, str], min_model_size: int
) -> dict[str, Prediction]:
    """One cluster per model; shared images go to the larger model; small leftovers to outliers.

    name_of: database image name -> dataset image name.
    Returns: image name -> Prediction (registered images only).
    """
    preds: dict[str, Prediction] = {}
    taken = [images for images in submitted_images(models, name_of, min_model_size) if images]
    for k, images in enumerate(taken):
        for name, image in images.items():
            m = image.cam_from_world().matrix()
            preds[name] = Prediction(cluster=f"cluster{k}", R=m[:, :3].copy(), t=m[:, 3].copy())
    return preds


def export_models(
    models: list[pycolmap.Reconstruction], out_dir: Path, image_dir: Path
) -> list[Path]:
    """Each model under `<out_dir>/models/<k>/` (see imc.export): COLMAP binary and text model,
    points.ply coloured from the images in `image_dir`, transforms.json for NeRF tools."""
    root = out_dir / "models"
    shutil.rmtree(root, ignore_errors=True)
    return [export_model(model, root / str(k), image_dir) for k, model in enumerate(models)]


def camera_keys(dataset: Dataset, names: list[str], features_path: Path) -> dict[str, tuple]:
    """Image name -> the camera it may share with others: (width, height) as stored, then EXIF
    make, model and focal length when the header has them."""
    paths = {im.name: im.path for im in dataset.images}
    sizes = image_sizes(features_path, names)
    return {n: sizes[n] + (exif_camera(paths[n]) or ()) for n in names}


def exif_focals(dataset: Dataset, names: list[str], features_path: Path) -> dict[str, float]:
    """Image name -> focal length (px of the stored image) from its EXIF header, for the
    images whose header gives one (imc.poses.focal_prior_px)."""
    paths = {im.name: im.path for im in dataset.images}
    sizes = image_sizes(features_path, names)
    found = {n: focal_prior_px(paths[n], *sizes[n]) for n in names}
    return {n: f for n, f in found.items() if f}


def shareable_groups(
    models: list[pycolmap.Reconstruction], name_of: dict[str, str], keys: dict[str, tuple]
) -> dict[str, tuple]:
    """The images (name -> key) of the camera groups with at least MIN_GROUP_IMAGES images
    registered in `models`."""
    return _groups_with_enough(keys, set().union(*(registered_names(m, name_of) for m in models)))


def _groups_with_enough(keys: dict[str, tuple], seen: set[str]) -> dict[str, tuple]:
    """The images (name -> key) of the groups with at least MIN_GROUP_IMAGES images in `seen`."""
    counts: dict[tuple, int] = {}
    for name in seen:
        counts[keys[name]] = counts.get(keys[name], 0) + 1
    return {n: k for n, k in keys.items() if counts.get(k, 0) >= MIN_GROUP_IMAGES}


def reprojection_error(models: list[pycolmap.Reconstruction]) -> float:
    """Mean reprojection error (pixels) over the observations of all models."""
    obs = [m.compute_num_observations() for m in models]
    if not sum(obs):
        return math.inf
    errors = [m.compute_mean_reprojection_error() for m in models]
    return float(sum(e * n for e, n in zip(errors, obs)) / sum(obs))


def registered(
    models: list[pycolmap.Reconstruction], name_of: dict[str, str], min_model_size: int
) -> int:
    """Images registered in the models that become clusters, each counted once (overlapping
    models share images)."""
    return len(assign_clusters(models, name_of, min_model_size))


@dataclass(frozen=True)
class Inputs:
    """What the mapping stage reads besides the configuration.

    dataset: the images (names and files; EXIF camera tags, colours of the exported points).
    names: the images to map (the readable ones), in dataset order.
    features_path: the features stage's `features.h5` (imc.stages.features: stored keypoints and
        image sizes).
    verified: the verified pairs to map with (after clustering): (a, b) -> {inliers [K x 2]
        int32, F [3 x 3], num_matches} (imc.stages.verification.load_verified).
    max_seconds: the time for all of the stage (None or inf: no limit).
    """

    dataset: Dataset
    names: list[str]
    features_path: Path
    verified: dict[tuple[str, str], dict]
    max_seconds: float | None = None


def main(conf: dict, inputs: Inputs, out_dir: Path) -> MappingResult:
    """Build the database for `inputs.names`, map (one or two passes, see the module
    docstring), export, into `out_dir`.

    conf: the whole configuration; reads its mapping and runtime sections."""
    mode = conf["mapping"]["camera_mode"]
    if mode not in CAMERA_MODES:
        raise ImcError(f"unknown mapping.camera_mode '{mode}' (valid: {', '.join(CAMERA_MODES)})")
    max_seconds = inputs.max_seconds
    end = time.monotonic() + (math.inf if max_seconds is None else max_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    _log_colmap_to(out_dir)
    try:
        return _map_dataset(conf["mapping"], conf["runtime"], inputs, out_dir, end)
    finally:
        _close_colmap_log(out_dir)


def _map_dataset(
    conf: dict, runtime: dict, inputs: Inputs, out_dir: Path, end: float
) -> MappingResult:
    """mapping.main after its checks (`conf`: the mapping section): database, passes, export,
    clusters."""
    dataset, names = inputs.dataset, inputs.names
    features_path, verified = inputs.features_path, inputs.verified
    image_dir, db_names = database_names(dataset)
    logger.info(
        "mapping %s: %d images, %d verified pairs, %s",
        dataset.name,
        len(names),
        len(verified),
        conf,
    )
    if len(names) < 2 or not verified:
        build_database(
            out_dir / "database.db", names, db_names, features_path, verified,
            camera_model=conf["camera_model"],
        )  # fmt: skip
        logger.warning("mapping %s: nothing to reconstruct (no verified pair)", dataset.name)
        return MappingResult()
    mode = conf["camera_mode"]
    keys = camera_keys(dataset, names, features_path) if mode != "per_image" else {}
    _discard(out_dir, "-shared")  # of an earlier run in this folder
    run = MappingRun(
        conf, runtime, dataset.name, names, {v: k for k, v in db_names.items()}, db_names,
        image_dir, features_path, verified, out_dir, end,
        linked_groups=global_mapping.pair_groups(names, verified, conf["min_model_size"]),
        levels=global_mapping.relative_inlier_levels(conf),
        focals=exif_focals(dataset, names, features_path) if conf["exif_focal"] else {},
    )  # fmt: skip
    if run.focals:
        logger.info("mapping %s: EXIF focal lengths of %d images", dataset.name, len(run.focals))
    models = map_passes(run, mode, keys)
    export_models(models, out_dir, image_dir)
    result = run.result
    result.models = [model_stats(m) for m in models]
    result.preds = assign_clusters(models, run.name_of, conf["min_model_size"])
    if result.mapper == "global":
        result.global_database = out_dir / "sfm" / "database.db"
    logger.info(
        "mapping %s: %d %s models, %d of %d images registered, %s cameras%s",
        dataset.name,
        len(models),
        result.mapper,
        len(result.preds),
        len(dataset.images),
        result.cameras,
        " (stopped at the time limit)" if result.stopped else "",
    )
    return result


def _log_colmap_to(out_dir: Path) -> None:
    """pycolmap's log to `<out_dir>/colmap.log` (glog names it `colmap.log.<date>.<pid>`
    while it writes; `_close_colmap_log` renames it), not to the terminal."""
    (out_dir / "colmap.log").unlink(missing_ok=True)  # of an earlier run in this folder
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, str(out_dir / "colmap.log."))
    pycolmap.logging.logtostderr = False
    pycolmap.logging.alsologtostderr = False


def _close_colmap_log(out_dir: Path) -> None:
    """Make glog close the dataset's log (it opens the next file only when something logs,
    under the system's temporary folder) and gather what it wrote into `colmap.log`."""
    spare = Path(tempfile.gettempdir()) / "imc-colmap.log."
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, str(spare))
    parts = sorted(out_dir.glob("colmap.log.*"))
    if not parts:
        return
    with open(out_dir / "colmap.log", "ab") as log:
        for part in parts:
            log.write(part.read_bytes())
            part.unlink()


def map_passes(run: MappingRun, mode: str, keys: dict[str, tuple]) -> list[pycolmap.Reconstruction]:
    """The first pass (per-image cameras; in `shared` mode, the cameras of `keys` shared), then
    in `auto` mode a second pass with the shareable groups' cameras shared, kept if it does
    better (module docstring). Returns the kept pass's models, largest first. With a core to
    spare, `auto` maps both passes at once (_auto_side_by_side)."""
    result = run.result
    if mode == "auto" and concurrent_runs(run.runtime) > 1:
        return _auto_side_by_side(run, keys)
    models, result.mapper = one_pass(run, keys if mode == "shared" else {}, "")
    if mode == "shared":
        result.cameras, result.shared_groups = "shared", len(set(keys.values()))
    elif mode == "auto" and not result.stopped:
        groups = shareable_groups(models, run.name_of, keys)
        if groups and run.end - time.monotonic() < result.seconds[0]:
            logger.warning("mapping %s: no time for a pass with shared cameras", run.dataset)
        elif groups:
            second, second_mapper = one_pass(run, groups, "-shared")
            models = _choose(run, models, groups, second, second_mapper)
    return models


def _auto_side_by_side(run: MappingRun, keys: dict[str, tuple]) -> list[pycolmap.Reconstruction]:
    """`auto` with the shared pass started beside the per-image one, on the groups it gets when
    every image registers (`shareable_groups` of all of `keys`). If the per-image pass leaves
    a group short of MIN_GROUP_IMAGES, so that its groups differ, the early shared pass is
    discarded and mapped again on the right groups. Each pass is deterministic on its own
    (`runtime.mapping_threads`), so this gives what one pass after the other gives (tested);
    only the wall time differs."""
    result = run.result
    guess = _groups_with_enough(keys, set(keys))
    early = replace(run, result=MappingResult())  # the shared pass's own record
    with ThreadPoolExecutor(1, thread_name_prefix="shared-pass") as pool:
        ahead = pool.submit(one_pass, early, guess, "-shared") if guess else None
        models, result.mapper = one_pass(run, {}, "")
        second, second_mapper = ahead.result() if ahead else ([], "")
    groups = shareable_groups(models, run.name_of, keys)
    if result.stopped or not groups:
        _discard(run.out_dir, "-shared")
        return models
    if groups != guess:
        _discard(run.out_dir, "-shared")
        second, second_mapper = one_pass(run, groups, "-shared")
    else:  # what the shared pass would have written into the run's record
        result.seconds += early.result.seconds
        result.stopped |= early.result.stopped
        result.global_pairs = early.result.global_pairs or result.global_pairs
    return _choose(run, models, groups, second, second_mapper)


def _choose(
    run: MappingRun,
    models: list[pycolmap.Reconstruction],
    groups: dict[str, tuple],
    second: list[pycolmap.Reconstruction],
    second_mapper: str,
) -> list[pycolmap.Reconstruction]:
    """Of the per-image pass (`models`) and the pass with one camera per group of `groups`
    (name -> key; `second`), keep whichever registers more images, or as many within
    `reprojection_tolerance`. When as many are registered and one pass fell back to the global
    pipeline and the other did not, their reprojection errors do not compare (different
    mappers, different bundle adjustments): the pass whose models agree with clearly more
    verified inliers is kept (model_support, by more than SUPPORT_MARGIN), the errors deciding
    only within that margin."""
    conf, result = run.conf, run.result
    n1, n2 = (registered(m, run.name_of, conf["min_model_size"]) for m in (models, second))
    e1, e2 = reprojection_error(models), reprojection_error(second)
    logger.info(
        "mapping %s: per-image cameras %d images registered, %.3f px; "
        "%d shared %d images, %.3f px",
        run.dataset, n1, e1, len(set(groups.values())), n2, e2,
    )  # fmt: skip
    better = n2 > n1 or (n2 == n1 and e2 <= (1 + conf["reprojection_tolerance"]) * e1)
    if n2 == n1 and second_mapper != result.mapper:
        # one pass fell back to the global pipeline: errors of different mappers do not compare
        s1, s2 = (
            model_support(m, run.verified, run.features, run.name_of) for m in (models, second)
        )
        logger.info(
            "mapping %s: %d verified inliers agree with the per-image %s models, %d with the "
            "shared %s ones", run.dataset, s1, result.mapper, s2, second_mapper,
        )  # fmt: skip
        if clearly_more(s1, s2) or clearly_more(s2, s1):
            better = s2 > s1
    if better:
        result.cameras, result.mapper = "shared", second_mapper
        result.shared_groups = len(set(groups.values()))
        _keep(run.out_dir, "-shared")
        return second
    _discard(run.out_dir, "-shared")
    return models


def one_pass(
    run: MappingRun, shared: dict[str, tuple], suffix: str
) -> tuple[list[pycolmap.Reconstruction], str]:
    """One mapping pass into `database<suffix>.db` and `sfm<suffix>/`, cameras shared as
    `shared` says (name -> key). The configured mapper, then (incremental) the global fallback
    when it is on and time is left. Returns the models and the mapper that made them."""
    conf, result = run.conf, run.result
    t0 = time.monotonic()
    db_path, sfm_dir = run.out_dir / f"database{suffix}.db", run.out_dir / f"sfm{suffix}"
    build_database(
        db_path, run.names, run.db_names, run.features, run.verified, shared, run.focals,
        conf["camera_model"],
    )  # fmt: skip
    if conf["mapper"] == "global":
        models = global_mapping.map_levels(run, shared, sfm_dir)
    else:
        models = run_mapper(
            conf, db_path, run.image_dir, sfm_dir, run.runtime["mapping_threads"],
            run.runtime["seed"], run.end - t0,
        )  # fmt: skip
    limit = runtime_limit(run.end - t0)
    if limit is not None and time.monotonic() - t0 >= limit:
        result.stopped = True
    mapper = conf["mapper"]
    if mapper == "incremental" and conf["global_fallback"] > 0 and not result.stopped:
        models, mapper = global_mapping.fallback(run, models, shared, sfm_dir, t0)
    result.seconds.append(time.monotonic() - t0)
    return models, mapper


def _discard(out_dir: Path, suffix: str) -> None:
    (out_dir / f"database{suffix}.db").unlink(missing_ok=True)
    shutil.rmtree(out_dir / f"sfm{suffix}", ignore_errors=True)


def _keep(out_dir: Path, suffix: str) -> None:
    """Make the database and sfm folder of pass `suffix` the dataset's own."""
    os.replace(out_dir / f"database{suffix}.db", out_dir / "database.db")
    shutil.rmtree(out_dir / "sfm", ignore_errors=True)
    os.replace(out_dir / f"sfm{suffix}", out_dir / "sfm")
