"""Mapping: verified matches -> pycolmap database -> incremental (or global) SfM -> clusters.

Each reconstructed model is a cluster; an image registered in several (overlapping) models is
given to the largest; images in no model (or in a leftover below `min_model_size`) are outliers.
Models are written in COLMAP's binary format with a PLY of the points, for COLMAP's viewer.

Cameras (`camera_mode`): `per_image` gives every image its own SIMPLE_RADIAL camera; `shared`
gives one camera to the images of the same stored size and EXIF make, model and focal length
(the size alone when the header has none); `auto` (the default) maps with per-image cameras, then
shares the camera of each such group with at least MIN_GROUP_IMAGES registered images and maps
again, keeping the second result if it registers more images, or as many with a mean
reprojection error at most `1 + reprojection_tolerance` times the first's. One camera per
group constrains bundle adjustment where the images really come from one camera (templeRing:
score 83.1 with per-image cameras, 100.0 shared); where a group mixes cameras of different focal
lengths, one shared camera cannot fit them and the reprojection error grows (synthetic: focal
lengths 768 and 900 px, 0.34 px per image, 0.67 px shared; the same camera: 0.34 either way;
imc-bench's one-camera datasets: within 3 %). A per-image focal length is a poor witness on its
own: on a narrow-angle ring (dinoSparseRing, about 11 degrees of field) the per-image estimates
scatter by 8-12 % although one camera took every image.

Global fallback (`global_fallback`): incremental mapping can leave a well-connected group of
images in pieces, as on a narrow-angle ring of a weakly textured object (dinoSparseRing: its
16 images, linked around the ring by pairs of hundreds of inliers, came back as overlapping
models of 11, 8, 3 and 3). When the best model of some connected group of the pair graph holds
less than `global_fallback` of its images, the verified pairs are also mapped by the global
pipeline (pycolmap's defaults; which pairs: below), and its result is kept if its best models
cover more images.

The global pipeline trusts each pair's relative pose, and a few false pairs bend its whole model,
where incremental mapping, checking every registration against the 3D points, sets them aside.
So it is given, for each level of `global_min_relative_inliers` in turn, only the pairs with at
least that fraction of the inliers of the strongest pair of the weaker of their two images (each
image keeps its strongest pair), and the models kept are those that agree with the most verified
inliers (`model_support`: the matches of every verified pair, the dropped ones included, within
SUPPORT_MAX_ERROR px of the epipolar geometry of the two posed cameras). Which pairs a sparse
ring keeps decides whether its arcs join at the right angle, in a way no single level predicts;
a model joined wrongly contradicts the pairs at the joint, and the count of agreeing inliers
shows it (dinoSparseRing: BENCHMARKS.md).

Time: `max_seconds` stops incremental mapping (pycolmap's `max_runtime_seconds`, checked between
image registrations, so a bundle adjustment in progress finishes first); the images registered by
then keep their poses, the rest are outliers.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pycolmap
import scipy.sparse.csgraph

from .cache import h5_key
from .clustering import relative_strength, weight_matrix
from .data import OUTLIERS, Dataset, Prediction
from .errors import ImcError
from .images import exif_camera
from .log import logger

PIPELINES = {"incremental", "global"}
CAMERA_MODES = ("auto", "per_image", "shared")
MIN_GROUP_IMAGES = 3  # registered images a camera group needs before `auto` tries sharing
SUPPORT_MAX_ERROR = 4.0  # px: a verified match agrees with a model's poses (model_support)


def focal_prior(width: int, height: int) -> float:
    """The focal length COLMAP assumes without EXIF: 1.2 x the long side."""
    return 1.2 * max(width, height)


def build_database(
    db_path: Path,
    names: list[str],
    db_names: dict[str, str],
    features_path: Path,
    verified: dict[tuple[str, str], dict],
    shared: dict[str, tuple] | None = None,
) -> dict[str, int]:
    """Write cameras, images, keypoints, matches and two-view geometries; return name -> image_id.

    One SIMPLE_RADIAL camera per image, except that the images `shared` maps to the same key
    share one. Keypoints are moved from imc's convention (pixel centre at 0) to COLMAP's (+0.5)
    here, and only here.
    """
    shared = shared or {}
    cameras: dict[tuple, int] = {}
    if db_path.exists():
        db_path.unlink()
    db = pycolmap.Database.open(str(db_path))
    ids: dict[str, int] = {}
    try:
        with h5py.File(features_path, "r") as ff:
            for name in names:
                g = ff[h5_key(name)]
                w, h = (int(v) for v in g.attrs["image_size"])
                cam = pycolmap.Camera(
                    model="SIMPLE_RADIAL",
                    width=w,
                    height=h,
                    params=[focal_prior(w, h), w / 2, h / 2, 0.0],
                )
                key = shared.get(name)
                cam_id = cameras.get(key) if key is not None else None
                if cam_id is None:
                    cam_id = db.write_camera(cam)
                    if key is not None:
                        cameras[key] = cam_id
                ids[name] = db.write_image(pycolmap.Image(name=db_names[name], camera_id=cam_id))
                kpts = g["keypoints"][()].astype(np.float32) + 0.5
                db.write_keypoints(ids[name], kpts.reshape(-1, 2))
        for (a, b), v in verified.items():
            if a not in ids or b not in ids:
                continue
            inl = v["inliers"].astype(np.uint32)
            db.write_matches(ids[a], ids[b], inl)
            tvg = pycolmap.TwoViewGeometry()
            tvg.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
            tvg.F = v["F"]
            tvg.inlier_matches = inl
            db.write_two_view_geometry(ids[a], ids[b], tvg)
    finally:
        db.close()
    return ids


# Incremental-pipeline options where imc's default differs from pycolmap's; `mapping.options`
# overrides them. filter_max_reproj_error 2.3 (pycolmap: 4.0): found by `imc tune` on imc-bench,
# ETs 57.5 -> 66.7 and templeRing 75.2 -> 83.1, held-out fountain unchanged (BENCHMARKS.md).
INCREMENTAL_DEFAULTS = {"filter_max_reproj_error": 2.3}


def _set_option(options, key: str, value) -> None:
    """Set `key` on the pipeline options and on every sub-option group that has it."""
    subs = ("mapper", "triangulation", "bundle_adjustment", "global_positioning")
    targets = [options] + [getattr(options, s) for s in subs if hasattr(options, s)]
    targets += [getattr(options.mapper, s) for s in subs[2:] if hasattr(options.mapper, s)]
    hits = [t for t in targets if hasattr(t, key)]
    if not hits:
        valid = sorted(
            {
                a
                for t in targets
                for a in dir(t)
                if not a.startswith("_") and not callable(getattr(t, a))
            }
        )
        raise ImcError(f"unknown mapping option '{key}' (valid: {', '.join(valid)})")
    for t in hits:
        setattr(t, key, value)


def runtime_limit(max_seconds: float | None) -> int | None:
    """pycolmap's `max_runtime_seconds` for a limit of `max_seconds`: whole seconds, at least 1
    (0 would mean no limit); None for no limit (None or inf)."""
    if max_seconds is None or not math.isfinite(max_seconds):
        return None
    return max(1, math.ceil(max_seconds))


def pipeline_options(conf: dict, num_threads: int, seed: int, max_seconds: float | None = None):
    """pycolmap pipeline options from the mapping section (every option reachable by name);
    `max_seconds` limits incremental mapping (see runtime_limit)."""
    if conf["mapper"] not in PIPELINES:
        raise ImcError(f"unknown mapper '{conf['mapper']}' (valid: {', '.join(sorted(PIPELINES))})")
    if conf["mapper"] == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.max_num_models = conf["max_num_models"]
        if runtime_limit(max_seconds) is not None:
            options.max_runtime_seconds = runtime_limit(max_seconds)
    else:
        options = pycolmap.GlobalPipelineOptions()
    options.min_model_size = conf["min_model_size"]
    for key, value in (("num_threads", num_threads), ("random_seed", seed)):
        _set_option(options, key, value)
    chosen = conf["options"]
    if conf["mapper"] == "incremental":
        chosen = {**INCREMENTAL_DEFAULTS, **chosen}
    for key, value in chosen.items():
        _set_option(options, key, value)
    return options


def run_mapper(
    conf: dict,
    db_path: Path,
    image_dir: Path,
    sfm_dir: Path,
    num_threads: int,
    seed: int,
    max_seconds: float | None = None,
) -> list[pycolmap.Reconstruction]:
    """Run the configured pipeline into `sfm_dir`; models sorted by registered images, largest
    first. `max_seconds`: see pipeline_options (the global pipeline has no such limit)."""
    if conf["mapper"] == "global" and runtime_limit(max_seconds) is not None:
        logger.warning("mapping: the global mapper cannot be stopped at the time limit")
    options = pipeline_options(conf, num_threads, seed, max_seconds)
    shutil.rmtree(sfm_dir, ignore_errors=True)
    sfm_dir.mkdir(parents=True)
    if conf["mapper"] == "incremental":
        models = pycolmap.incremental_mapping(db_path, image_dir, sfm_dir, options)
    else:
        models = pycolmap.global_mapping(db_path, image_dir, sfm_dir, options)
    return sorted(models.values(), key=lambda r: -r.num_reg_images())


def assign_clusters(
    models: list[pycolmap.Reconstruction], name_of: dict[str, str], min_model_size: int
) -> dict[str, Prediction]:
    """One cluster per model; shared images go to the larger model; small leftovers to outliers.

    name_of: database image name -> dataset image name.
    Returns: image name -> Prediction (registered images only).
    """
    preds: dict[str, Prediction] = {}
    k = 0
    for model in models:
        poses = {}
        for image in model.images.values():
            if not image.has_pose or name_of[image.name] in preds:
                continue
            m = image.cam_from_world().matrix()
            poses[name_of[image.name]] = (m[:, :3].copy(), m[:, 3].copy())
        if len(poses) < max(min_model_size, 1):
            continue
        for name, (R, t) in poses.items():
            preds[name] = Prediction(cluster=f"cluster{k}", R=R, t=t)
        k += 1
    return preds


def export_models(
    models: list[pycolmap.Reconstruction], out_dir: Path, image_dir: Path
) -> list[Path]:
    """Each model under `<out_dir>/models/<k>/` (see imc.export): COLMAP binary and text model,
    points.ply coloured from the images in `image_dir`, transforms.json for NeRF tools."""
    from .export import export_model

    root = out_dir / "models"
    shutil.rmtree(root, ignore_errors=True)
    return [export_model(model, root / str(k), image_dir) for k, model in enumerate(models)]


def database_names(dataset: Dataset) -> tuple[Path, dict[str, str]]:
    """The image folder COLMAP reads and each image's name relative to it."""
    parents = [str(im.path.parent.resolve()) for im in dataset.images]
    image_dir = Path(os.path.commonpath(parents)) if parents else Path(".")
    return image_dir, {
        im.name: str(im.path.resolve().relative_to(image_dir)) for im in dataset.images
    }


@dataclass
class MappingResult:
    """preds: image name -> Prediction (registered images only). mapper: the pipeline whose
    models were kept ('global' when the global fallback won). cameras: 'per_image', or
    'shared' with the groups that share one (`shared_groups`). global_pairs: the pairs given to
    the global pipeline (0 if it did not run). stopped: a pass reached its time limit. seconds:
    per pass."""

    preds: dict[str, Prediction] = field(default_factory=dict)
    mapper: str = "incremental"
    cameras: str = "per_image"
    shared_groups: int = 0
    global_pairs: int = 0
    stopped: bool = False
    seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mapper": self.mapper,
            "cameras": self.cameras,
            "shared_groups": self.shared_groups,
            "global_pairs": self.global_pairs,
            "stopped_at_time_limit": self.stopped,
            "seconds": [round(t, 1) for t in self.seconds],
        }


def camera_keys(dataset: Dataset, names: list[str], features_path: Path) -> dict[str, tuple]:
    """Image name -> the camera it may share with others: (width, height) as stored, then EXIF
    make, model and focal length when the header has them."""
    paths = {im.name: im.path for im in dataset.images}
    with h5py.File(features_path, "r") as ff:
        sizes = {n: tuple(int(v) for v in ff[h5_key(n)].attrs["image_size"]) for n in names}
    return {n: sizes[n] + (exif_camera(paths[n]) or ()) for n in names}


def shareable_groups(
    models: list[pycolmap.Reconstruction], name_of: dict[str, str], keys: dict[str, tuple]
) -> dict[str, tuple]:
    """The images (name -> key) of the camera groups with at least MIN_GROUP_IMAGES images
    registered in `models`."""
    seen = set().union(*(registered_names(m, name_of) for m in models))
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
    """The verified inliers that the models' poses agree with: for each pair registered in one
    model, the matches whose Sampson distance to the epipolar geometry of the two posed cameras
    is below `max_error` pixels (of the first camera's focal length)."""
    total = 0
    keypoints: dict[str, np.ndarray] = {}  # each image's, read once, in COLMAP's convention
    with h5py.File(features_path, "r") as ff:

        def read(name: str) -> np.ndarray:
            if name not in keypoints:
                keypoints[name] = ff[h5_key(name)]["keypoints"][()].astype(float) + 0.5
            return keypoints[name]

        for model in models:
            posed = {name_of[im.name]: im for im in model.images.values() if im.has_pose}
            for (a, b), v in verified.items():
                if a not in posed or b not in posed or not len(v["inliers"]):
                    continue
                ia, ib = posed[a], posed[b]
                ca, cb = model.cameras[ia.camera_id], model.cameras[ib.camera_id]
                xa = ca.cam_from_img(read(a)[v["inliers"][:, 0]])
                xb = cb.cam_from_img(read(b)[v["inliers"][:, 1]])
                xa, xb = np.c_[xa, np.ones(len(xa))], np.c_[xb, np.ones(len(xb))]
                ta, tb = ia.cam_from_world().matrix(), ib.cam_from_world().matrix()
                rot = tb[:, :3] @ ta[:, :3].T
                tx, ty, tz = tb[:, 3] - rot @ ta[:, 3]
                essential = np.array([[0, -tz, ty], [tz, 0, -tx], [-ty, tx, 0]]) @ rot
                ex, etx = xa @ essential.T, xb @ essential
                den = np.sqrt(ex[:, 0] ** 2 + ex[:, 1] ** 2 + etx[:, 0] ** 2 + etx[:, 1] ** 2)
                err = np.abs((xb * ex).sum(1)) / np.maximum(den, 1e-12) * ca.mean_focal_length()
                total += int((err < max_error).sum())
    return total


def registered_names(model: pycolmap.Reconstruction, name_of: dict[str, str]) -> set[str]:
    """The dataset names of the images `model` registers."""
    return {name_of[im.name] for im in model.images.values() if im.has_pose}


def registered(
    models: list[pycolmap.Reconstruction], name_of: dict[str, str], min_model_size: int
) -> int:
    """Images registered in the models that become clusters, each counted once (overlapping
    models share images)."""
    return len(assign_clusters(models, name_of, min_model_size))


def main(
    conf: dict,
    runtime: dict,
    dataset: Dataset,
    names: list[str],
    features_path: Path,
    verified: dict[tuple[str, str], dict],
    out_dir: Path,
    max_seconds: float | None = None,
) -> MappingResult:
    """Build the database for `names` (readable images), map (one or two passes, see the module
    docstring), export. `max_seconds`: the time for all of it (None or inf: no limit)."""
    mode = conf["camera_mode"]
    if mode not in CAMERA_MODES:
        raise ImcError(f"unknown mapping.camera_mode '{mode}' (valid: {', '.join(CAMERA_MODES)})")
    start = time.monotonic()
    end = start + (math.inf if max_seconds is None else max_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_dir, db_names = database_names(dataset)
    name_of = {v: k for k, v in db_names.items()}
    pycolmap.logging.set_log_destination(pycolmap.logging.INFO, str(out_dir / "colmap.log."))
    pycolmap.logging.logtostderr = False
    pycolmap.logging.alsologtostderr = False
    logger.info(
        "mapping %s: %d images, %d verified pairs, %s",
        dataset.name,
        len(names),
        len(verified),
        conf,
    )
    result = MappingResult()
    if len(names) < 2 or not verified:
        build_database(out_dir / "database.db", names, db_names, features_path, verified)
        logger.warning("mapping %s: nothing to reconstruct (no verified pair)", dataset.name)
        return result
    keys = camera_keys(dataset, names, features_path) if mode != "per_image" else {}
    _discard(out_dir, "-shared")  # of an earlier run in this folder

    linked_groups = pair_groups(names, verified, conf["min_model_size"])
    levels = conf["global_min_relative_inliers"]
    levels = list(levels) if isinstance(levels, (list, tuple)) else [levels]
    if not levels:
        raise ImcError("mapping.global_min_relative_inliers needs at least one value")

    def one_pass(
        shared: dict[str, tuple], suffix: str
    ) -> tuple[list[pycolmap.Reconstruction], str]:
        t0 = time.monotonic()
        db_path = out_dir / f"database{suffix}.db"
        build_database(db_path, names, db_names, features_path, verified, shared)
        if conf["mapper"] == "global":
            models = map_global(shared, out_dir / f"sfm{suffix}")
        else:
            models = run_mapper(
                conf, db_path, image_dir, out_dir / f"sfm{suffix}", runtime["mapping_threads"],
                runtime["seed"], end - t0,
            )  # fmt: skip
        limit = runtime_limit(end - t0)
        if limit is not None and time.monotonic() - t0 >= limit:
            result.stopped = True
        mapper = conf["mapper"]
        if mapper == "incremental" and conf["global_fallback"] > 0 and not result.stopped:
            models, mapper = global_fallback(models, shared, out_dir / f"sfm{suffix}", t0)
        result.seconds.append(time.monotonic() - t0)
        return models, mapper

    def map_global(shared: dict[str, tuple], sfm_dir: Path) -> list[pycolmap.Reconstruction]:
        """The global pipeline on the pairs of each level; the models that agree with the most
        verified inliers go to `sfm_dir` (with their database)."""
        best, best_support, supports, kept, took = [], -1, [], [], 0.0
        global_conf = {**conf, "mapper": "global"}
        if conf["mapper"] != "global":
            global_conf["options"] = {}  # the options are the incremental pipeline's
        for k, level in enumerate(levels):
            started = time.monotonic()
            if k and end - started < took:
                logger.warning("mapping %s: no time for more global levels", dataset.name)
                break
            pairs = global_pairs(names, verified, level)
            if kept and len(pairs) == kept[-1]:  # nested sets: the same pairs as the last level
                continue
            run_dir = sfm_dir.with_name(f"{sfm_dir.name}-global{k}")
            db_path = run_dir.with_name(run_dir.name + ".db")
            build_database(db_path, names, db_names, features_path, pairs, shared)
            models = run_mapper(
                global_conf, db_path, image_dir, run_dir, runtime["mapping_threads"],
                runtime["seed"],
            )  # fmt: skip
            os.replace(db_path, run_dir / "database.db")
            support = model_support(models, verified, features_path, name_of)
            took = time.monotonic() - started
            supports.append(support)
            kept.append(len(pairs))
            if support > best_support:
                shutil.rmtree(sfm_dir, ignore_errors=True)
                os.replace(run_dir, sfm_dir)
                best, best_support, result.global_pairs = models, support, len(pairs)
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
        logger.info(
            "mapping %s: global pipeline on %s of %d pairs (min_relative_inliers %s, repeated "
            "pair sets skipped): %s verified inliers agree with its models; kept %d pairs",
            dataset.name, kept, len(verified), levels, supports, result.global_pairs,
        )  # fmt: skip
        return best

    def global_fallback(models, shared: dict[str, tuple], sfm_dir: Path, t0: float):
        covered = coverage(models, linked_groups, name_of)
        if all(c >= conf["global_fallback"] * len(g) for c, g in zip(covered, linked_groups)):
            return models, "incremental"
        if end - time.monotonic() < time.monotonic() - t0:
            logger.warning("mapping %s: no time for the global fallback", dataset.name)
            return models, "incremental"
        alt_dir = sfm_dir.with_name(sfm_dir.name + "-global")
        alt = map_global(shared, alt_dir)
        alt_covered = coverage(alt, linked_groups, name_of)
        logger.info(
            "mapping %s: incremental models cover %s of groups of %s images, global ones %s",
            dataset.name, covered, [len(g) for g in linked_groups], alt_covered,
        )  # fmt: skip
        if sum(alt_covered) > sum(covered):
            shutil.rmtree(sfm_dir, ignore_errors=True)
            os.replace(alt_dir, sfm_dir)
            return alt, "global"
        shutil.rmtree(alt_dir, ignore_errors=True)
        return models, "incremental"

    models, result.mapper = one_pass(keys if mode == "shared" else {}, "")
    if mode == "shared":
        result.cameras, result.shared_groups = "shared", len(set(keys.values()))
    elif mode == "auto" and not result.stopped:
        groups = shareable_groups(models, name_of, keys)
        if groups and end - time.monotonic() < result.seconds[0]:
            logger.warning("mapping %s: no time for a pass with shared cameras", dataset.name)
        elif groups:
            second, second_mapper = one_pass(groups, "-shared")
            n1, n2 = (registered(m, name_of, conf["min_model_size"]) for m in (models, second))
            e1, e2 = reprojection_error(models), reprojection_error(second)
            logger.info(
                "mapping %s: per-image cameras %d images registered, %.3f px; "
                "%d shared %d images, %.3f px",
                dataset.name, n1, e1, len(set(groups.values())), n2, e2,
            )  # fmt: skip
            if n2 > n1 or (n2 == n1 and e2 <= (1 + conf["reprojection_tolerance"]) * e1):
                models, result.cameras, result.mapper = second, "shared", second_mapper
                result.shared_groups = len(set(groups.values()))
                _keep(out_dir, "-shared")
            else:
                _discard(out_dir, "-shared")
    export_models(models, out_dir, image_dir)
    result.preds = assign_clusters(models, name_of, conf["min_model_size"])
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


def _discard(out_dir: Path, suffix: str) -> None:
    (out_dir / f"database{suffix}.db").unlink(missing_ok=True)
    shutil.rmtree(out_dir / f"sfm{suffix}", ignore_errors=True)


def _keep(out_dir: Path, suffix: str) -> None:
    """Make the database and sfm folder of pass `suffix` the dataset's own."""
    os.replace(out_dir / f"database{suffix}.db", out_dir / "database.db")
    shutil.rmtree(out_dir / "sfm", ignore_errors=True)
    os.replace(out_dir / f"sfm{suffix}", out_dir / "sfm")


def unregistered(names: list[str]) -> dict[str, Prediction]:
    return {n: Prediction(cluster=OUTLIERS) for n in names}
