"""Mapping: verified matches -> pycolmap database -> incremental (or global) SfM -> clusters.

Each reconstructed model is a cluster; an image registered in several (overlapping) models is
given to the largest; images in no model (or in a leftover below `min_model_size`) are outliers.
Models are written in COLMAP's binary format with a PLY of the points, for COLMAP's viewer.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pycolmap

from .cache import h5_key
from .data import OUTLIERS, Dataset, Prediction
from .errors import ImcError
from .log import logger

PIPELINES = {"incremental", "global"}


def focal_prior(width: int, height: int) -> float:
    """The focal length COLMAP assumes without EXIF: 1.2 x the long side."""
    return 1.2 * max(width, height)


def build_database(
    db_path: Path,
    names: list[str],
    db_names: dict[str, str],
    features_path: Path,
    verified: dict[tuple[str, str], dict],
) -> dict[str, int]:
    """Write cameras, images, keypoints, matches and two-view geometries; return name -> image_id.

    One SIMPLE_RADIAL camera per image (IMC images come from many cameras). Keypoints are moved
    from imc's convention (pixel centre at 0) to COLMAP's (+0.5) here, and only here.
    """
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
                cam_id = db.write_camera(cam)
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


def pipeline_options(conf: dict, num_threads: int, seed: int):
    """pycolmap pipeline options from the mapping section (every option reachable by name)."""
    if conf["mapper"] not in PIPELINES:
        raise ImcError(f"unknown mapper '{conf['mapper']}' (valid: {', '.join(sorted(PIPELINES))})")
    if conf["mapper"] == "incremental":
        options = pycolmap.IncrementalPipelineOptions()
        options.max_num_models = conf["max_num_models"]
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
    conf: dict, db_path: Path, image_dir: Path, out_dir: Path, num_threads: int, seed: int
) -> list[pycolmap.Reconstruction]:
    """Run the configured pipeline; models sorted by registered images, largest first."""
    options = pipeline_options(conf, num_threads, seed)
    sfm_dir = out_dir / "sfm"
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


def main(
    conf: dict,
    runtime: dict,
    dataset: Dataset,
    names: list[str],
    features_path: Path,
    verified: dict[tuple[str, str], dict],
    out_dir: Path,
) -> dict[str, Prediction]:
    """Build the database for `names` (readable images), map, export; image name -> Prediction."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image_dir, db_names = database_names(dataset)
    db_path = out_dir / "database.db"
    build_database(db_path, names, db_names, features_path, verified)
    threads = runtime["mapping_threads"]
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
    if len(names) < 2 or not verified:
        logger.warning("mapping %s: nothing to reconstruct (no verified pair)", dataset.name)
        return {}
    models = run_mapper(conf, db_path, image_dir, out_dir, threads, runtime["seed"])
    export_models(models, out_dir, image_dir)
    name_of = {v: k for k, v in db_names.items()}
    preds = assign_clusters(models, name_of, conf["min_model_size"])
    logger.info(
        "mapping %s: %d models, %d of %d images registered",
        dataset.name,
        len(models),
        len(preds),
        len(dataset.images),
    )
    return preds


def unregistered(names: list[str]) -> dict[str, Prediction]:
    return {n: Prediction(cluster=OUTLIERS) for n in names}
