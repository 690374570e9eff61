"""What a run found per image, for people and tools rather than for Kaggle's scorer.

`<run_dir>/<dataset>/poses.csv`, one row per input image in the dataset's order:

    image               the image's name (the year's image column; a photo folder: file name)
    cluster             `cluster<k>` (the submission's cluster) or `outliers`
    rotation_matrix     R, 9 numbers, row-major, ';'-separated (world to camera, x_cam = R X + t)
    translation_vector  t, 3 numbers
    camera_model        COLMAP camera model of the image's camera (SIMPLE_RADIAL, ...)
    width, height       the camera's image size in pixels (the stored image)
    camera_params       the model's parameters in COLMAP's order, ';'-separated (COLMAP's pixel
                        convention: the centre of the top-left pixel at (0.5, 0.5))

An unregistered image has cluster `outliers` and every other field empty. Poses and clusters are
the run's predictions (the same as the submission's); the intrinsics are read back from the
COLMAP models the mapping stage exported under `models/<k>/` (imc.export).

Also here: `focal_prior_px`, the focal length in pixels that an image's EXIF header implies, for
the mapping stage's camera initialisation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pycolmap
from PIL import Image, UnidentifiedImageError

from .cache import atomic_write_text, safe_name
from .csvio import format_floats, read_csv
from .data import OUTLIERS, Competition, Dataset, Prediction, Predictions
from .log import logger
from .stages.reconstruction import database_names

POSES_FILE = "poses.csv"
POSES_COLUMNS = (
    "image", "cluster", "rotation_matrix", "translation_vector",
    "camera_model", "width", "height", "camera_params",
)  # fmt: skip

# EXIF tags (Exif IFD 0x8769).
EXIF_IFD = 0x8769
FOCAL_LENGTH = 0x920A  # mm
FOCAL_LENGTH_35MM = 0xA405  # mm, equivalent on a 36 x 24 mm frame
FOCAL_PLANE_X_RESOLUTION = 0xA20E  # pixels per unit on the sensor, along x
FOCAL_PLANE_RESOLUTION_UNIT = 0xA210  # 2 inch (the default), 3 cm, 4 mm, 5 micrometre
PIXEL_X_DIMENSION, PIXEL_Y_DIMENSION = 0xA002, 0xA003  # the image size the camera wrote
UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
FOCAL_RANGE = (0.1, 100.0)  # plausible focal length / long side; outside: a broken header


# ---------------------------------------------------------------- poses.csv


def model_cameras(models_dir: Path) -> dict[str, list[tuple[np.ndarray, tuple]]]:
    """COLMAP image name -> [(pose [3 x 4], (model, width, height, params))] over the models
    `<models_dir>/<k>/` in the order of k; an image may be registered in several models."""
    found: dict[str, list[tuple[np.ndarray, tuple]]] = {}
    dirs = [d for d in Path(models_dir).glob("*") if d.is_dir() and d.name.isdigit()]
    for d in sorted(dirs, key=lambda d: int(d.name)):
        try:
            model = pycolmap.Reconstruction(str(d))
        except Exception as e:  # a model that cannot be read costs its intrinsics only
            logger.warning("poses: model %s not read: %s", d, e)
            continue
        for image in model.images.values():
            if not image.has_pose:
                continue
            cam = model.cameras[image.camera_id]
            intr = (cam.model.name, int(cam.width), int(cam.height), np.asarray(cam.params))
            found.setdefault(image.name, []).append((image.cam_from_world().matrix(), intr))
    return found


def _intrinsics(pred: Prediction, candidates: list[tuple[np.ndarray, tuple]]) -> tuple | None:
    """The intrinsics of the model whose pose of the image is the prediction's (the first
    model registering it when none agrees: the mapping stage gives an image to the first)."""
    pose = np.hstack([np.asarray(pred.R).reshape(3, 3), np.asarray(pred.t).reshape(3, 1)])
    for m, intr in candidates:
        if np.allclose(m, pose, rtol=0, atol=1e-9):
            return intr
    return candidates[0][1] if candidates else None


def poses_frame(
    dataset: Dataset, preds: dict[str, Prediction], models_dir: Path, db_names: dict[str, str]
) -> pd.DataFrame:
    """The poses.csv table (module docstring) of `dataset`.

    preds: image name -> Prediction (registered ones at least); db_names: image name -> its
    name in the COLMAP models."""
    cameras = model_cameras(models_dir) if Path(models_dir).is_dir() else {}
    rows = []
    for im in dataset.images:
        pred = preds.get(im.name)
        if pred is None or not pred.registered:
            rows.append((im.name, OUTLIERS, "", "", "", "", "", ""))
            continue
        intr = _intrinsics(pred, cameras.get(db_names.get(im.name, im.name), []))
        model, w, h, params = intr if intr else ("", "", "", None)
        cam = "" if params is None else format_floats(params)
        rows.append(
            (im.name, pred.cluster, format_floats(pred.R), format_floats(pred.t), model, w, h, cam)
        )
    return pd.DataFrame(rows, columns=list(POSES_COLUMNS))


def write_poses(dataset: Dataset, preds: dict[str, Prediction], out_dir: Path) -> Path:
    """Write `<out_dir>/poses.csv` (atomically) for `dataset`, the intrinsics read from
    `<out_dir>/models/<k>/`. Returns its path."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = poses_frame(dataset, preds, out_dir / "models", database_names(dataset)[1])
    path = out_dir / POSES_FILE
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    n = int((frame["rotation_matrix"] != "").sum())
    logger.info("wrote %s: %d images, %d registered", path, len(frame), n)
    return path


def complete_run(
    comp: Competition, preds: Predictions, run_dir: Path, since: float, failed: dict[str, str]
) -> list[Path]:
    """Make sure every dataset of a run has its poses.csv: one that failed, or whose run wrote
    none at or after `since` (seconds since the epoch; skipped for time, or an older file),
    gets one from `preds` (a failed dataset: every image unregistered, as in the submission).
    Returns the paths in dataset order."""
    paths = []
    for ds in comp.datasets.values():
        out = Path(run_dir) / safe_name(ds.name)
        path = out / POSES_FILE
        if ds.name in failed or not path.is_file() or path.stat().st_mtime < since:
            own = {name: p for (d, name), p in preds.items() if d == ds.name}
            write_poses(ds, {} if ds.name in failed else own, out)
        paths.append(path)
    return paths


def read_poses(path: Path) -> pd.DataFrame:
    """A poses.csv as strings ('' for the empty fields of unregistered images)."""
    return read_csv(Path(path), POSES_COLUMNS)


# ---------------------------------------------------------------- EXIF focal length


def _exif_tags(path: str | Path) -> dict[int, object]:
    """The EXIF tags of the main and Exif IFDs (empty when there are none or the file cannot
    be read: the image's own reader reports that)."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            return {**dict(exif), **dict(exif.get_ifd(EXIF_IFD))}
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return {}


def _number(value: object) -> float | None:
    """A positive finite EXIF number (rationals included), else None."""
    try:
        x = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def focal_prior_px(
    path: str | Path, width: int, height: int, sensor_width_mm: float | None = None
) -> float | None:
    """Focal length in pixels of the stored image (`width` x `height` pixels) from its EXIF
    header, or None when the header does not give it.

    In order: FocalLengthIn35mmFilm, f_px = f35 / 36 x max(width, height) (36 mm: the long
    side of a 35 mm frame); FocalLength (mm) with `sensor_width_mm` (the sensor's long side,
    when the caller knows the camera), f_px = f / sensor_width_mm x max(width, height);
    FocalLength with FocalPlaneXResolution and its unit, scaled from the size the camera
    wrote (PixelX/YDimension, when given) to the stored one. A value outside FOCAL_RANGE x
    max(width, height) is a broken header: None.
    """
    long_side = max(int(width), int(height))
    if long_side <= 0:
        return None
    tags = _exif_tags(path)
    f35, f_mm = _number(tags.get(FOCAL_LENGTH_35MM)), _number(tags.get(FOCAL_LENGTH))
    focal = None
    if f35:
        focal = f35 / 36.0 * long_side
    elif f_mm and _number(sensor_width_mm):
        focal = f_mm / float(sensor_width_mm) * long_side
    elif f_mm:
        focal = _focal_from_plane(tags, f_mm, long_side)
    if focal is None or not FOCAL_RANGE[0] <= focal / long_side <= FOCAL_RANGE[1]:
        return None
    return float(focal)


def _focal_from_plane(tags: dict, f_mm: float, long_side: int) -> float | None:
    """f_mm x pixels per mm of the focal plane, in the pixels of the stored image."""
    resolution = _number(tags.get(FOCAL_PLANE_X_RESOLUTION))
    unit = UNIT_MM.get(int(_number(tags.get(FOCAL_PLANE_RESOLUTION_UNIT)) or 2))
    if not resolution or unit is None:
        return None
    focal = f_mm * resolution / unit
    written = [_number(tags.get(t)) for t in (PIXEL_X_DIMENSION, PIXEL_Y_DIMENSION)]
    if all(written):
        focal *= long_side / max(written)
    return focal
