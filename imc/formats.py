"""Read and write the three competition layouts (IMC2023, IMC2024, IMC2025).

    IMC2025  <root>/{train,test}/<dataset>/<image>
             train_labels.csv        dataset,scene,image,rotation_matrix,translation_vector
             train_thresholds.csv    dataset,scene,thresholds
             sample_submission.csv   image_id,dataset,scene,image,rotation_matrix,translation_vector
    IMC2024  <root>/{train,test}/<scene>/images/<image>
             train/train_labels.csv  dataset,scene,image_name,rotation_matrix,translation_vector,
                                     calibration_matrix  (files at train/<dataset>/images/<name>)
             sample_submission.csv   image_path,dataset,scene,rotation_matrix,translation_vector
                                     (image_path relative to the root: test/<scene>/images/<f>)
    IMC2023  <root>/{train,test}/<dataset>/<scene>/images/<image>
             train/train_labels.csv  dataset,scene,image_path,rotation_matrix,translation_vector
             sample_submission.csv   image_path,dataset,scene,rotation_matrix,translation_vector
                                     (image_path relative to test/: <dataset>/<scene>/images/<f>)

Sources: the IMC2023 evaluation code (Kaggle notebook eduardtrulls/imc2023-evaluation) and data
readers as reproduced in GitHub veichta/IMC-2023 (imc2023/utils/eval.py, utils.py); the IMC2024
metric and sample-submission parser as reproduced in GitHub yukkyo/Kaggle-IMC-2024
(src/metrics.py, src/sample_sub.py); the IMC2025 submission writer of the Kaggle baseline.

An image that is not registered is written the way the year's metric scores as a miss:
- 2025: scene `outliers`, `nan` poses (the metric ignores non-finite poses);
- 2024: `nan` poses: the metric drops cameras with non-finite centres before registering them,
  so they count as misses (a missing row would too, but Kaggle wants every row);
- 2023: identity rotation and zero translation, the organisers' baseline convention: `nan`
  makes the metric's quaternion eigen-decomposition raise, and a missing row fails its assert.

2023 and 2024 published no thresholds file (their metrics hard-code them); a
`train_thresholds.csv` at the root or in train/ is read if present, in this project's format:
2024 `dataset,scene,thresholds`, 2023 `dataset,scene,rotation_thresholds,translation_thresholds`.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .cache import atomic_write_text
from .data import OUTLIERS, Competition, Dataset, ImageInfo, Prediction, Predictions
from .errors import ImcError
from .log import logger

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
SPLITS = ("train", "test")
POSE = ("rotation_matrix", "translation_vector")
SUBMISSION_COLUMNS = {
    2025: ("image_id", "dataset", "scene", "image", *POSE),
    2024: ("image_path", "dataset", "scene", *POSE),
    2023: ("image_path", "dataset", "scene", *POSE),
}
LABEL_COLUMNS = {
    2025: ("dataset", "scene", "image", *POSE),
    2024: ("dataset", "scene", "image_name", *POSE),
    2023: ("dataset", "scene", "image_path", *POSE),
}
THRESHOLD_COLUMNS = {
    2025: ("dataset", "scene", "thresholds"),
    2024: ("dataset", "scene", "thresholds"),
    2023: ("dataset", "scene", "rotation_thresholds", "translation_thresholds"),
}
LABELS_FILE = {
    2025: "train_labels.csv",
    2024: "train/train_labels.csv",
    2023: "train/train_labels.csv",
}
UNREGISTERED = {
    2025: (np.full(9, np.nan), np.full(3, np.nan)),
    2024: (np.full(9, np.nan), np.full(3, np.nan)),
    2023: (np.eye(3).ravel(), np.zeros(3)),
}


@dataclass
class _Row:
    """One image as listed by a CSV file or found on disk, before grouping into Datasets."""

    key: str  # Dataset.name
    dataset: str  # the metric's dataset column
    scene: str | None  # Dataset.scene (2023/2024)
    name: str
    path: Path
    label: str | None = None  # ImageInfo.scene
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    image_id: str | None = None


# ---------------------------------------------------------------- small helpers


def _short(text: object, n: int = 60) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 3] + "..."


def parse_floats(text: object, n: int | None = None, where: str = "") -> np.ndarray:
    """A ';'-separated row-major string -> [n] float64 (`nan` allowed); ImcError naming `where`."""
    try:
        values = np.array([float(x) for x in str(text).split(";")], dtype=np.float64)
    except ValueError:
        raise ImcError(f"{where}: cannot parse {_short(text)!r} as ';'-separated numbers") from None
    if n is not None and values.size != n:
        raise ImcError(f"{where}: expected {n} values, got {values.size} in {_short(text)!r}")
    return values


def format_floats(values: np.ndarray) -> str:
    """Row-major ';'-joined, each number in its shortest exact (round-trip) form."""
    return ";".join(repr(float(x)) for x in np.asarray(values, dtype=np.float64).ravel())


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A CSV as strings ('' for empty cells); one-line ImcError if malformed or short of columns."""
    try:
        with warnings.catch_warnings():  # rows longer than the header: an error, not data loss
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path, dtype=str, keep_default_na=False, skipinitialspace=True, index_col=False
            )
    except FileNotFoundError:
        raise ImcError(f"{path}: no such file") from None
    except (ValueError, OSError, pd.errors.ParserWarning) as e:  # also UnicodeDecodeError
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImcError(f"{path}: malformed CSV ({detail})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ImcError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})"
        )
    return frame.fillna("")


def _csv_header(path: Path) -> set[str]:
    try:
        with open(path, newline="") as f:
            return {c.strip() for c in next(csv.reader(f), [])}
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def _subdirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(path: Path) -> list[Path]:
    """Image files directly in `path`, sorted by name."""
    if not path.is_dir():
        return []
    return sorted(
        p
        for p in path.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _first_existing(*candidates: Path) -> Path:
    return next((p for p in candidates if p.is_file()), candidates[0])


# ---------------------------------------------------------------- year and split


def _depth_year(split_dir: Path) -> int | None:
    """The year a split folder's depth implies: 2025 `<d>/<image>`, 2024 `<s>/images/`,
    2023 `<d>/<s>/images/`; None when it holds none of them."""
    for d in _subdirs(split_dir):
        if _images(d):
            return 2025
        if (d / "images").is_dir():
            return 2024
        if any((s / "images").is_dir() for s in _subdirs(d)):
            return 2023
    return None


def detect_year(root: Path) -> int:
    """2023, 2024 or 2025, from the CSV columns when they decide it, else the folder depth."""
    root = Path(root)
    if not root.is_dir():
        raise ImcError(f"{root}: no such competition folder")
    if {"dataset", "scene", "image"} <= _csv_header(root / "train_labels.csv"):
        return 2025
    sample = _csv_header(root / "sample_submission.csv")
    if {"image_id", "image"} & sample:
        return 2025
    by_depth = [y for y in (_depth_year(root / s) for s in ("test", "train")) if y]
    if "image_path" in sample:
        if by_depth and by_depth[0] != 2025:
            return by_depth[0]
        first = _read_csv(root / "sample_submission.csv", ("image_path",))["image_path"]
        parts = PurePosixPath(first.iloc[0]).parts if len(first) else ()
        return 2024 if parts and parts[0] in SPLITS and len(parts) == 4 else 2023
    labels = _csv_header(root / "train" / "train_labels.csv")
    if "image_name" in labels:
        return 2024
    if "image_path" in labels:
        return 2023
    if by_depth:
        return by_depth[0]
    raise ImcError(
        f"{root}: not an IMC2023/2024/2025 folder (no train_labels.csv or sample_submission.csv, "
        "and no test|train/<dataset>/<image>, <scene>/images/ or <dataset>/<scene>/images/)"
    )


def _choose_split(root: Path, year: int, split: str | None) -> str:
    """`None` -> `test` when test/ holds images in the year's layout (a Kaggle run), else
    `train` (a local folder with labels)."""
    if split is None:
        split = "test" if _depth_year(root / "test") == year else "train"
    if split not in SPLITS:
        raise ImcError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if not (root / split).is_dir():
        raise ImcError(f"{root}: no {split}/ folder")
    return split


# ---------------------------------------------------------------- rows from files and disk


def _label_rows(root: Path, year: int, frame: pd.DataFrame, src: Path) -> list[_Row]:
    """Train rows from the labels file, poses parsed."""
    col = LABEL_COLUMNS[year][2]
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        where = f"{src} line {i + 2}"
        ds, scene, image = rec["dataset"], rec["scene"], rec[col]
        if not (ds and scene and image):
            raise ImcError(f"{where}: empty dataset, scene or {col}")
        R = parse_floats(rec[POSE[0]], 9, where).reshape(3, 3)
        t = parse_floats(rec[POSE[1]], 3, where)
        if year == 2025:
            row = _Row(ds, ds, None, image, root / "train" / ds / image)
        elif year == 2024:
            row = _Row(ds, ds, scene, image, root / "train" / ds / "images" / image)
        else:
            path = _first_existing(root / "train" / image, root / image)
            row = _Row(f"{ds}/{scene}", ds, scene, image, path)
        row.label, row.R, row.t = scene, R, t
        rows.append(row)
    return rows


def _sample_rows(root: Path, year: int, frame: pd.DataFrame, src: Path) -> list[_Row]:
    """Test rows from the sample submission, in its order."""
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        ds = rec["dataset"]
        if year == 2025:
            if not (ds and rec["image"]):
                raise ImcError(f"{src} line {i + 2}: empty dataset or image")
            path = root / "test" / ds / rec["image"]
            rows.append(_Row(ds, ds, None, rec["image"], path, image_id=rec["image_id"] or None))
            continue
        p, scene = rec["image_path"], rec["scene"]
        if not (p and ds and scene):
            raise ImcError(f"{src} line {i + 2}: empty image_path, dataset or scene")
        parts = PurePosixPath(p).parts
        if year == 2024:
            folder = parts[-3] if len(parts) >= 3 and parts[-2] == "images" else ds
            path = _first_existing(root / p, root / "test" / p)
            rows.append(_Row(folder, ds, scene, parts[-1], path, scene, image_id=p))
        else:
            path = _first_existing(root / "test" / p, root / p)
            rows.append(_Row(f"{ds}/{scene}", ds, scene, p, path, scene, image_id=p))
    return rows


def _disk_rows(root: Path, year: int, split: str) -> list[_Row]:
    """Every image file of the split in the year's layout, folders and files sorted."""
    rows = []
    for d in _subdirs(root / split):
        if year == 2025:
            rows += [_Row(d.name, d.name, None, f.name, f) for f in _images(d)]
        elif year == 2024:
            rows += [_Row(d.name, d.name, d.name, f.name, f, d.name) for f in _images(d / "images")]
        else:
            for s in _subdirs(d):
                key = f"{d.name}/{s.name}"
                rows += [
                    _Row(key, d.name, s.name, f"{key}/images/{f.name}", f, s.name)
                    for f in _images(s / "images")
                ]
    return rows


def _select(rows: list[_Row], datasets: list[str] | None, root: Path) -> list[_Row]:
    """Rows of the datasets named by Dataset.name or by the dataset column, in file order."""
    if datasets is None:
        return rows
    valid = sorted({r.key for r in rows} | {r.dataset for r in rows})
    unknown = [d for d in datasets if d not in valid]
    if unknown:
        raise ImcError(
            f"{root}: unknown dataset(s) {', '.join(unknown)}; valid names: {', '.join(valid)}"
        )
    return [r for r in rows if r.key in datasets or r.dataset in datasets]


def _check_listed(rows: list[_Row], disk: list[_Row], src: Path, strict: bool) -> None:
    """Listed files must exist and be listed once; files on disk missing from the list are an
    error when `strict` (IMC2025 train), else reported and skipped."""
    missing = [r.path for r in rows if not r.path.is_file()]
    if missing:
        raise ImcError(f"{src}: {len(missing)} listed image(s) not found, e.g. {missing[0]}")
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r.key, r.name) in seen:
            raise ImcError(f"{src}: image {r.name} of {r.key} is listed twice")
        seen.add((r.key, r.name))
    listed = {os.path.normpath(r.path) for r in rows}
    extra = [r.path for r in disk if os.path.normpath(r.path) not in listed]
    if extra and strict:
        raise ImcError(f"{src}: {len(extra)} image(s) on disk not in this file, e.g. {extra[0]}")
    if extra:
        logger.warning("%d image(s) not listed in %s skipped, e.g. %s", len(extra), src, extra[0])


def _attach_thresholds(comp: Competition) -> None:
    """Dataset.thresholds from train_thresholds.csv (root, or train/ for 2023/2024)."""
    src = _first_existing(
        comp.root / "train_thresholds.csv", comp.root / "train/train_thresholds.csv"
    )
    if not src.is_file():
        return
    frame = _read_csv(src, THRESHOLD_COLUMNS[comp.year])
    for i, rec in enumerate(frame.to_dict("records")):
        where = f"{src} line {i + 2}"
        if comp.year == 2023:
            rot = parse_floats(rec["rotation_thresholds"], None, where)
            trans = parse_floats(rec["translation_thresholds"], rot.size, where)
            value = np.stack([rot, trans])
        else:
            value = parse_floats(rec["thresholds"], None, where)
        for ds in comp.datasets.values():
            if ds.dataset == rec["dataset"] and (comp.year != 2023 or ds.scene == rec["scene"]):
                ds.thresholds[rec["scene"]] = value


def read_competition(
    root: Path, split: str | None = None, datasets: list[str] | None = None
) -> Competition:
    """Read a competition folder of any year into memory.

    split: `train` (images and poses from the labels), `test` (images from the sample
        submission, in its order, or every image file sorted), or None: `test` when test/
        holds images, else `train`. A train split without a labels file is read from disk.
    datasets: keep these, by Dataset.name or by the dataset column (file order is kept).
    """
    root = Path(root)
    year = detect_year(root)
    split = _choose_split(root, year, split)
    if isinstance(datasets, str):
        datasets = [datasets]
    src = root / (LABELS_FILE[year] if split == "train" else "sample_submission.csv")
    if src.is_file():
        if split == "train":
            rows = _label_rows(root, year, _read_csv(src, LABEL_COLUMNS[year]), src)
        else:
            required = (
                ("image_id", "dataset", "image") if year == 2025 else SUBMISSION_COLUMNS[year]
            )
            rows = _sample_rows(root, year, _read_csv(src, required[:3]), src)
        rows = _select(rows, datasets, root)
        disk = _disk_rows(root, year, split)
        if datasets is not None:
            disk = [r for r in disk if r.key in {x.key for x in rows}]
        _check_listed(rows, disk, src, strict=(year == 2025 and split == "train"))
    else:
        if split == "train":
            logger.warning("%s not found: reading %s/train without reference poses", src, root)
        rows = _select(_disk_rows(root, year, split), datasets, root)
    groups: dict[str, Dataset] = {}
    for r in rows:
        ds = groups.setdefault(
            r.key, Dataset(name=r.key, dataset=r.dataset, images=[], scene=r.scene)
        )
        ds.images.append(ImageInfo(r.name, r.path, r.label, r.R, r.t, r.image_id))
    comp = Competition(year=year, root=root, split=split, datasets=groups)
    if comp.num_images == 0:
        raise ImcError(f"{root}: no images in the {split} split")
    _attach_thresholds(comp)
    logger.info(
        "IMC%d %s split of %s: %d datasets, %d images",
        year, split, root, len(groups), comp.num_images,
    )  # fmt: skip
    return comp


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


# ---------------------------------------------------------------- labels, thresholds, layouts


def labels_frame(comp: Competition) -> pd.DataFrame:
    """The year's train_labels.csv rebuilt from the images with reference poses (2024 without
    calibration_matrix, which the model does not keep, and with the metric's `image_path`)."""
    cols = LABEL_COLUMNS[comp.year] + (("image_path",) if comp.year == 2024 else ())
    rows = []
    for ds in comp.datasets.values():
        for im in ds.images:
            if im.R is None or im.t is None:
                continue
            row = [ds.dataset, im.scene or ds.scene, im.name, format_floats(im.R)]
            row.append(format_floats(im.t))
            if comp.year == 2024:
                row.append(submission_key(comp, ds, im))
            rows.append(row)
    if not rows:
        raise ImcError(f"{comp.root}: the {comp.split} split has no reference poses")
    return pd.DataFrame(rows, columns=list(cols))


def thresholds_frame(comp: Competition) -> pd.DataFrame:
    """The thresholds file of the year (see the module docstring) rebuilt from the model."""
    rows = []
    for ds in comp.datasets.values():
        for scene, th in ds.thresholds.items():
            th = np.asarray(th, dtype=np.float64)
            if comp.year == 2023:
                rows.append((ds.dataset, scene, format_floats(th[0]), format_floats(th[1])))
            else:
                rows.append((ds.dataset, scene, format_floats(th)))
    return pd.DataFrame(rows, columns=list(THRESHOLD_COLUMNS[comp.year]))


def reference_predictions(comp: Competition) -> Predictions:
    """The reference poses as predictions, clusters = reference scenes (images without a
    reference pose: unregistered `outliers`)."""
    preds = {}
    for ds in comp.datasets.values():
        for im in ds.images:
            if im.has_pose:
                scene = im.scene or ds.scene or OUTLIERS
                preds[(ds.name, im.name)] = Prediction(scene, im.R.copy(), im.t.copy())
            else:
                preds[(ds.name, im.name)] = Prediction(OUTLIERS)
    return preds


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and not dst.is_symlink() and os.path.samefile(src, dst):
        raise ImcError(f"{dst}: the test layout would overwrite its own source image")
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if not copy:
        try:
            os.symlink(Path(src).resolve(), dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def write_test_layout(comp: Competition, out_root: Path, copy: bool = False) -> Path:
    """A Kaggle-like test folder of the same year at `out_root`: test/ with the images
    (symlinked, or copied when `copy` or links fail) and sample_submission.csv with placeholder
    poses (the year's miss). Returns `out_root`."""
    out_root = Path(out_root)
    groups: dict[str, Dataset] = {}
    for ds in comp.datasets.values():
        images = []
        for im in ds.images:
            if comp.year == 2025:
                rel, name, image_id = f"{ds.name}/{im.name}", im.name, im.image_id
            elif comp.year == 2024:
                rel = f"{ds.name}/images/{im.name}"
                name, image_id = im.name, f"test/{rel}"
            else:
                rel = f"{ds.dataset}/{ds.scene}/images/{PurePosixPath(im.name).name}"
                name, image_id = rel, rel
            _place(im.path, out_root / "test" / rel, copy)
            scene = None if comp.year == 2025 else (ds.scene or im.scene)
            images.append(ImageInfo(name, out_root / "test" / rel, scene, image_id=image_id))
        groups[ds.name] = Dataset(ds.name, ds.dataset, images, ds.scene)
    test = Competition(year=comp.year, root=out_root, split="test", datasets=groups)
    from .submission import submission_frame

    sample = submission_frame(test, {})
    atomic_write_text(out_root / "sample_submission.csv", sample.to_csv(index=False))
    logger.info("test layout at %s: %d images", out_root, test.num_images)
    return out_root
