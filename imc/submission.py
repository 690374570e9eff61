"""Submissions: one row per input image in the year's sample-submission columns, written
atomically; read back, checked against a competition and turned into Predictions.

An image that is not registered is written the way the year's metric scores as a miss
(`UNREGISTERED`):
- 2025: scene `outliers`, `nan` poses (the metric ignores non-finite poses);
- 2024: `nan` poses: the metric drops cameras with non-finite centres before registering them,
  so they count as misses (a missing row would too, but Kaggle wants every row);
- 2023: identity rotation and zero translation, the organisers' baseline convention: `nan`
  makes the metric's quaternion eigen-decomposition raise, and a missing row fails its assert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write_text
from .csvio import format_floats, parse_floats, read_csv
from .data import OUTLIERS, YEARS, Competition, Dataset, ImageInfo, Prediction, Predictions
from .errors import ImcError, SubmissionError
from .log import logger

POSE = ("rotation_matrix", "translation_vector")
SUBMISSION_COLUMNS = {
    2025: ("image_id", "dataset", "scene", "image", *POSE),
    2024: ("image_path", "dataset", "scene", *POSE),
    2023: ("image_path", "dataset", "scene", *POSE),
}
UNREGISTERED = {
    2025: (np.full(9, np.nan), np.full(3, np.nan)),
    2024: (np.full(9, np.nan), np.full(3, np.nan)),
    2023: (np.eye(3).ravel(), np.zeros(3)),
}


def submission_key(comp: Competition, ds: Dataset, im: ImageInfo) -> str:
    """The submission's row key of an image: 2025 `image_id`, 2023/2024 `image_path` (the
    sample submission's value when the image came from one, else the year's convention)."""
    if im.image_id:
        return im.image_id
    if comp.year == 2025:
        return f"{ds.dataset}_{im.name}"
    if comp.year == 2024:
        return f"{comp.split}/{ds.name}/images/{im.name}"
    return im.name


def _pose_strings(pred: Prediction | None, year: int, where: str) -> tuple[str, str, bool]:
    """(rotation, translation, registered) strings of a prediction, or the year's miss."""
    if pred is not None and pred.registered:
        R = np.asarray(pred.R, dtype=np.float64)
        t = np.asarray(pred.t, dtype=np.float64)
        if R.size != 9 or t.size != 3:
            raise SubmissionError(f"prediction for {where}: R has {R.size} values, t {t.size}")
        if np.all(np.isfinite(R)) and np.all(np.isfinite(t)):
            return format_floats(R), format_floats(t), True
    R0, t0 = UNREGISTERED[year]
    return format_floats(R0), format_floats(t0), False


def submission_frame(comp: Competition, preds: Predictions) -> pd.DataFrame:
    """One row per image of `comp`, in its order, with the year's sample-submission columns.

    2025: scene = Prediction.cluster; a missing or unregistered prediction is written
    `outliers` with nan poses. 2023/2024: scene = the folder's scene; misses as in the module
    docstring.
    """
    rows, known = [], set()
    for ds in comp.datasets.values():
        for im in ds.images:
            known.add((ds.name, im.name))
            pred = preds.get((ds.name, im.name))
            R, t, ok = _pose_strings(pred, comp.year, f"{ds.name}/{im.name}")
            key = submission_key(comp, ds, im)
            if comp.year == 2025:
                scene = pred.cluster if ok else OUTLIERS
                if not isinstance(scene, str) or not scene.strip() or "," in scene:
                    raise SubmissionError(
                        f"prediction for {ds.name}/{im.name}: bad cluster {scene!r}"
                    )
                rows.append((key, ds.dataset, scene, im.name, R, t))
            else:
                rows.append((key, ds.dataset, im.scene or ds.scene, R, t))
    stray = [k for k in preds if k not in known]
    if stray:
        logger.warning("%d prediction(s) for unknown images ignored, e.g. %s", len(stray), stray[0])
    return pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS[comp.year]))


def write_submission(comp: Competition, preds: Predictions, path: Path) -> Path:
    """Write `submission_frame` atomically (temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = submission_frame(comp, preds)
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    registered = sum(1 for p in preds.values() if p.registered)
    logger.info("wrote %s: %d rows, %d registered predictions", path, len(frame), registered)
    return path


def read_submission(path: Path, year: int) -> pd.DataFrame:
    """A submission CSV as strings, its columns and pose strings checked (ImcError, one line).

    2025 submissions may lack `image_id` (the train-split form, whose rows dataset + image
    identify): the column is then filled with `<dataset>_<image>`, the key of a train image
    (submission_key), so that the metric, which wants every column, scores it; `frame.attrs
    ["filled"]` names it (check_submission reports it on a test split). Duplicated images raise
    SubmissionError.
    """
    path = Path(path)
    if year not in YEARS:
        raise ImcError(f"unknown competition year {year}: expected one of {YEARS}")
    if not path.is_file():
        raise ImcError(f"{path}: no such submission file")
    required = SUBMISSION_COLUMNS[year][1:] if year == 2025 else SUBMISSION_COLUMNS[year]
    frame = read_csv(path, required)
    keys = ["dataset", "image"] if year == 2025 else ["image_path"]
    for i, rec in enumerate(frame.to_dict("records")):
        where = f"{path} line {i + 2}"
        empty = [c for c in dict.fromkeys([*keys, "dataset", "scene"]) if not rec[c]]
        if empty:
            raise ImcError(f"{where}: empty {', '.join(empty)}")
        parse_floats(rec[POSE[0]], 9, where)
        parse_floats(rec[POSE[1]], 3, where)
    dup = frame[frame.duplicated(subset=keys)]
    if len(dup):
        raise SubmissionError(f"{path}: {'/'.join(dup.iloc[0][keys])} has more than one row")
    if year == 2025 and "image_id" not in frame.columns:
        frame.insert(0, "image_id", frame["dataset"] + "_" + frame["image"])
        frame.attrs["filled"] = ["image_id"]
    return frame


def _row_index(comp: Competition) -> dict:
    """Submission row key -> (Dataset, ImageInfo)."""
    index = {}
    for ds in comp.datasets.values():
        for im in ds.images:
            k = (ds.dataset, im.name) if comp.year == 2025 else submission_key(comp, ds, im)
            index[k] = (ds, im)
    return index


def _frame_key(year: int, rec: dict):
    return (rec["dataset"], rec["image"]) if year == 2025 else rec["image_path"]


def predictions_from_frame(comp: Competition, frame: pd.DataFrame) -> Predictions:
    """A submission frame back into Predictions (non-finite poses -> unregistered; 2023's
    identity/zero miss reads back as that pose). Rows naming no image of `comp` raise."""
    index, preds, unknown = _row_index(comp), {}, []
    for i, rec in enumerate(frame.to_dict("records")):
        key = _frame_key(comp.year, rec)
        if key not in index:
            unknown.append(key)
            continue
        ds, im = index[key]
        R = parse_floats(rec[POSE[0]], 9, f"submission row {i + 2}").reshape(3, 3)
        t = parse_floats(rec[POSE[1]], 3, f"submission row {i + 2}")
        ok = bool(np.all(np.isfinite(R)) and np.all(np.isfinite(t)))
        preds[(ds.name, im.name)] = Prediction(rec["scene"], R if ok else None, t if ok else None)
    if unknown:
        raise SubmissionError(f"{len(unknown)} submission row(s) name unknown images: {unknown[0]}")
    return preds


def check_submission(comp: Competition, frame: pd.DataFrame) -> list[str]:
    """What would make the year's metric fail on or misread `frame` (a read_submission
    result), one line each; empty when the submission is complete and consistent."""
    index, problems, seen = _row_index(comp), [], set()
    filled = "image_id" in frame.attrs.get("filled", ())
    if filled and comp.split == "test" and not comp.plain:
        problems.append("no image_id column (Kaggle's scorer needs it on the test split)")
    for i, rec in enumerate(frame.to_dict("records")):
        key = _frame_key(comp.year, rec)
        if key not in index:
            problems.append(f"row {i + 2}: {key} is not an image of the competition")
            continue
        ds, im = index[key]
        if (ds.name, im.name) in seen:
            problems.append(f"row {i + 2}: second row for {key}")
        seen.add((ds.name, im.name))
        if comp.year == 2025 and not filled and im.image_id and rec["image_id"] != im.image_id:
            problems.append(f"row {i + 2}: image_id {rec['image_id']!r}, expected {im.image_id!r}")
        if rec["dataset"] != ds.dataset:
            problems.append(f"row {i + 2}: dataset {rec['dataset']!r}, expected {ds.dataset!r}")
        scene = im.scene or ds.scene
        if comp.year != 2025 and scene and rec["scene"] != scene:
            problems.append(f"row {i + 2}: scene {rec['scene']!r}, expected {scene!r}")
        pose = np.concatenate([parse_floats(rec[c], None, f"row {i + 2}") for c in POSE])
        if comp.year == 2023 and not np.all(np.isfinite(pose)):
            problems.append(f"row {i + 2}: non-finite pose (the IMC2023 metric raises on it)")
    missing = [
        f"{ds.name}/{im.name}" for ds, im in index.values() if (ds.name, im.name) not in seen
    ]
    if missing:
        problems.append(f"{len(missing)} image(s) have no row, e.g. {missing[0]}")
    return problems
