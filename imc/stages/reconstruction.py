"""The COLMAP side of mapping: keypoints in COLMAP's convention, the database of verified
pairs, pycolmap's pipeline options and runs, and the records a dataset's mapping fills in
(`MappingRun`, what every pass reads; `MappingResult`, what it gives). imc.stages.mapping (camera
modes, passes, clusters) and imc.stages.global_mapping (the global pipeline) build on it.

Keypoints: features.h5 holds them with the pixel centre at 0 (imc.stages.features), COLMAP
wants it at 0.5; `colmap_keypoints` makes that change, for the database and for any other reader.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from ..colmap_options import INCREMENTAL_DEFAULTS, PIPELINE_OPTIONS, set_option
from ..data import Dataset, Prediction
from ..errors import ImcError
from ..log import logger
from .feature_file import image_sizes, read_array

PIPELINES = set(PIPELINE_OPTIONS)
COLMAP_PIXEL_CENTRE = 0.5  # px: where COLMAP puts a pixel's centre; imc puts it at 0
KEYPOINT_BATCH = 256  # images whose keypoints build_database holds at once


def focal_prior(width: int, height: int) -> float:
    """The focal length COLMAP assumes without EXIF: 1.2 x the long side."""
    return 1.2 * max(width, height)


def colmap_keypoints(features_path: Path, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Each image's keypoints in COLMAP's convention: name -> [N x 2] float64, stored-image
    pixels with the pixel centre at COLMAP_PIXEL_CENTRE (features.h5 has it at 0).

    The one place where keypoints change convention. float64 holds k + 0.5 of the stored
    float32 k exactly (the database writer rounds it back to float32).
    """
    stored = read_array(features_path, names, "keypoints")
    return {n: k.astype(np.float64).reshape(-1, 2) + COLMAP_PIXEL_CENTRE for n, k in stored.items()}


def build_database(
    db_path: Path,
    names: list[str],
    db_names: dict[str, str],
    features_path: Path,
    verified: dict[tuple[str, str], dict],
    shared: dict[str, tuple] | None = None,
    focals: dict[str, float] | None = None,
    camera_model: str = "SIMPLE_RADIAL",
) -> dict[str, int]:
    """Write cameras, images, keypoints (colmap_keypoints), matches and two-view geometries;
    return name -> image_id.

    One camera of `camera_model` (mapping.camera_model) per image, except that the images
    `shared` maps to the same key share one. focals: name -> focal length (px) known before
    mapping (EXIF), which the camera starts from and marks as a prior, as COLMAP's feature
    extractor does; else focal_prior.
    verified: (a, b) -> inliers [M x 2] (indices into a's and b's keypoints) and F [3 x 3];
    pairs with an image not in `names` are left out.
    """
    shared, focals = shared or {}, focals or {}
    sizes = image_sizes(features_path, names)
    cameras: dict[tuple, int] = {}
    if db_path.exists():
        db_path.unlink()
    db = pycolmap.Database.open(str(db_path))
    ids: dict[str, int] = {}
    try:
        for start in range(0, len(names), KEYPOINT_BATCH):
            batch = names[start : start + KEYPOINT_BATCH]
            keypoints = colmap_keypoints(features_path, batch)
            for name in batch:
                key, focal = shared.get(name), focals.get(name)
                cam_id = _camera_id(db, cameras, sizes[name], key, focal, camera_model)
                ids[name] = db.write_image(pycolmap.Image(name=db_names[name], camera_id=cam_id))
                db.write_keypoints(ids[name], keypoints[name].astype(np.float32))
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


def _camera_id(
    db,
    cameras: dict[tuple, int],
    size: tuple[int, int],
    key: tuple | None,
    focal: float | None,
    model: str = "SIMPLE_RADIAL",
) -> int:
    """The camera of an image of `size` (W, H): the one written for `key` before, else a new
    camera of `model` (remembered in `cameras` under `key` unless it is None), starting from
    `focal` (a prior) or from focal_prior, the principal point at the centre, no distortion."""
    cam_id = cameras.get(key) if key is not None else None
    if cam_id is None:
        w, h = size
        f = focal if focal else focal_prior(w, h)
        cam = pycolmap.Camera.create_from_model_name(0, model, f, w, h)
        cam.has_prior_focal_length = bool(focal)
        cam_id = db.write_camera(cam)
        if key is not None:
            cameras[key] = cam_id
    return cam_id


def runtime_limit(max_seconds: float | None) -> int | None:
    """pycolmap's `max_runtime_seconds` for a limit of `max_seconds`: whole seconds, at least 1
    (0 would mean no limit); None for no limit (None or inf)."""
    if max_seconds is None or not math.isfinite(max_seconds):
        return None
    return max(1, math.ceil(max_seconds))


def pipeline_options(conf: dict, num_threads: int, seed: int, max_seconds: float | None = None):
    """pycolmap pipeline options from the mapping section (every option reachable by name:
    imc.colmap_options); `max_seconds` limits incremental mapping (see runtime_limit)."""
    if conf["mapper"] not in PIPELINES:
        raise ImcError(f"unknown mapper '{conf['mapper']}' (valid: {', '.join(sorted(PIPELINES))})")
    options = PIPELINE_OPTIONS[conf["mapper"]]()
    if conf["mapper"] == "incremental":
        options.max_num_models = conf["max_num_models"]
        if runtime_limit(max_seconds) is not None:
            options.max_runtime_seconds = runtime_limit(max_seconds)
    options.min_model_size = conf["min_model_size"]
    for key, value in (("num_threads", num_threads), ("random_seed", seed)):
        set_option(options, key, value)
    chosen = conf["options"]
    if conf["mapper"] == "incremental":
        chosen = {**INCREMENTAL_DEFAULTS, **chosen}
    for key, value in chosen.items():
        set_option(options, key, value)
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
    the global pipeline (0 if it did not run). global_database: the global pipeline's database
    of the kept models, `<out_dir>/sfm/database.db` (None when they are incremental ones).
    stopped: a pass reached its time limit. seconds: per pass. models: per kept model, its
    statistics (imc.export.model_stats: registered images, 3D points, mean track length, mean
    reprojection error in px), largest first."""

    preds: dict[str, Prediction] = field(default_factory=dict)
    mapper: str = "incremental"
    cameras: str = "per_image"
    shared_groups: int = 0
    global_pairs: int = 0
    global_database: Path | None = None
    stopped: bool = False
    seconds: list[float] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "mapper": self.mapper,
            "cameras": self.cameras,
            "shared_groups": self.shared_groups,
            "global_pairs": self.global_pairs,
            "global_database": None if self.global_database is None else str(self.global_database),
            "stopped_at_time_limit": self.stopped,
            "seconds": [round(t, 1) for t in self.seconds],
            "models": self.models,
        }


@dataclass
class MappingRun:
    """What every mapping pass of one dataset reads, and the result the passes fill in.

    conf, runtime: the mapping and runtime sections. dataset: its name (for the log). names:
    the readable images. db_names: name -> the image's path under `image_dir` (the name in the
    database); name_of: the reverse. features: features.h5. verified: (a, b) -> inliers
    [M x 2], F [3 x 3]. out_dir: the dataset's mapping folder. end: time.monotonic() by which
    mapping should be done (inf: no limit). linked_groups: the connected groups of the pair
    graph (imc.stages.global_mapping.pair_groups). levels: the global pipeline's
    `global_min_relative_inliers`, in the order tried.
    """

    conf: dict
    runtime: dict
    dataset: str
    names: list[str]
    name_of: dict[str, str]
    db_names: dict[str, str]
    image_dir: Path
    features: Path
    verified: dict[tuple[str, str], dict]
    out_dir: Path
    end: float
    linked_groups: list[set[str]]
    levels: list[float]
    result: MappingResult = field(default_factory=MappingResult)
    focals: dict[str, float] = field(default_factory=dict)  # name -> EXIF focal length, px


def registered_names(model: pycolmap.Reconstruction, name_of: dict[str, str]) -> set[str]:
    """The dataset names of the images `model` registers."""
    return {name_of[im.name] for im in model.images.values() if im.has_pose}


def submitted_images(
    models: list[pycolmap.Reconstruction], name_of: dict[str, str], min_model_size: int = 1
) -> list[dict[str, pycolmap.Image]]:
    """For each of `models` (largest first), the registered images the submission takes from
    it (dataset name -> image): those no earlier model took; none if they are fewer than
    `min_model_size`, which leaves them to later models."""
    taken: set[str] = set()
    found = []
    for model in models:
        images = {
            name_of[im.name]: im
            for im in model.images.values()
            if im.has_pose and name_of[im.name] not in taken
        }
        if len(images) < max(min_model_size, 1):
            images = {}
        taken |= set(images)
        found.append(images)
    return found
