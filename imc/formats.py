"""Read and write the three competition layouts (IMC2023, IMC2024, IMC2025); read photo folders.

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
    photos   <root>/<image>              one dataset, named after the folder, or else
             <root>/<dataset>/<image>    one dataset per subfolder; no labels (read_photos)

Sources: the IMC2023 evaluation code (Kaggle notebook eduardtrulls/imc2023-evaluation) and data
readers as reproduced in GitHub veichta/IMC-2023 (imc2023/utils/eval.py, utils.py); the IMC2024
metric and sample-submission parser as reproduced in GitHub yukkyo/Kaggle-IMC-2024
(src/metrics.py, src/sample_sub.py); the IMC2025 submission writer of the Kaggle baseline.

The submission columns, row keys and misses (unregistered images) of each year: imc.submission.

2023 and 2024 published no thresholds file (their metrics hard-code them); a
`train_thresholds.csv` at the root or in train/ is read if present, in this project's format:
2024 `dataset,scene,thresholds`, 2023 `dataset,scene,rotation_thresholds,translation_thresholds`.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .cache import atomic_write_text
from .csvio import format_floats, parse_floats, read_csv
from .data import OUTLIERS, Competition, Dataset, ImageInfo, Prediction, Predictions
from .errors import ImcError
from .log import logger
from .submission import POSE, SUBMISSION_COLUMNS, submission_frame, submission_key

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
SPLITS = ("train", "test")
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
ACCEPTED = (
    "accepted: a folder of images, a folder of image folders (one dataset each), or an "
    "IMC2023/2024/2025 competition folder (train_labels.csv or sample_submission.csv, or "
    "test|train/<dataset>/<image>, <scene>/images/ or <dataset>/<scene>/images/)"
)
LABELS_FILE = {
    2025: "train_labels.csv",
    2024: "train/train_labels.csv",
    2023: "train/train_labels.csv",
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
        raise ImcError(f"{root}: no such folder")
    year = _competition_year(root)
    if year is None:
        raise ImcError(f"{root}: not an IMC2023/2024/2025 folder; {ACCEPTED}")
    return year


def _competition_year(root: Path) -> int | None:
    """detect_year's answer, or None when `root` holds no competition layout."""
    if {"dataset", "scene", "image"} <= _csv_header(root / "train_labels.csv"):
        return 2025
    sample = _csv_header(root / "sample_submission.csv")
    if {"image_id", "image"} & sample:
        return 2025
    by_depth = [y for y in (_depth_year(root / s) for s in ("test", "train")) if y]
    if "image_path" in sample:
        if by_depth and by_depth[0] != 2025:
            return by_depth[0]
        first = read_csv(root / "sample_submission.csv", ("image_path",))["image_path"]
        parts = PurePosixPath(first.iloc[0]).parts if len(first) else ()
        return 2024 if parts and parts[0] in SPLITS and len(parts) == 4 else 2023
    labels = _csv_header(root / "train" / "train_labels.csv")
    if "image_name" in labels:
        return 2024
    if "image_path" in labels:
        return 2023
    return by_depth[0] if by_depth else None


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
    frame = read_csv(src, THRESHOLD_COLUMNS[comp.year])
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
    """Read a competition folder of any year, or a folder of photos (read_photos), into memory.

    split: `train` (images and poses from the labels), `test` (images from the sample
        submission, in its order, or every image file sorted), or None: `test` when test/
        holds images, else `train`. A train split without a labels file is read from disk.
    datasets: keep these, by Dataset.name or by the dataset column (file order is kept).
    """
    root = Path(root)
    if isinstance(datasets, str):
        datasets = [datasets]
    if not root.is_dir():
        raise ImcError(f"{root}: no such folder; {ACCEPTED}")
    year = _competition_year(root)
    if year is None:
        return read_photos(root, split, datasets)
    split = _choose_split(root, year, split)
    src = root / (LABELS_FILE[year] if split == "train" else "sample_submission.csv")
    if src.is_file():
        if split == "train":
            rows = _label_rows(root, year, read_csv(src, LABEL_COLUMNS[year]), src)
        else:
            required = (
                ("image_id", "dataset", "image") if year == 2025 else SUBMISSION_COLUMNS[year]
            )
            rows = _sample_rows(root, year, read_csv(src, required[:3]), src)
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


def _photo_rows(root: Path) -> list[_Row]:
    """The images directly in `root` (one dataset named after it), else those of each
    subfolder (one dataset each, named after the subfolder)."""
    own = _images(root)
    if own:
        name = root.resolve().name or "photos"
        nested = [d for d in _subdirs(root) if _images(d)]
        if nested:
            logger.warning(
                "%s: its own %d images are one dataset; the images of its subfolders (e.g. %s) "
                "are not read", root, len(own), nested[0],
            )  # fmt: skip
        return [_Row(name, name, None, f.name, f) for f in own]
    rows, empty = [], []
    for d in _subdirs(root):
        found = _images(d)
        rows += [_Row(d.name, d.name, None, f.name, f) for f in found]
        if not found:
            empty.append(d.name)
    if rows and empty:
        logger.warning("%s: subfolder(s) without images skipped: %s", root, ", ".join(empty))
    if not rows:
        if not [p for p in root.iterdir() if not p.name.startswith(".")]:
            raise ImcError(f"{root}: empty folder; {ACCEPTED}")
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ImcError(f"{root}: no images ({exts}) in it or in its subfolders; {ACCEPTED}")
    return rows


def read_photos(
    root: Path, split: str | None = None, datasets: list[str] | None = None
) -> Competition:
    """A folder of photos as a `plain` Competition: the images directly in `root` are one
    dataset named after the folder; without any, each subfolder with images is one dataset.
    Files are sorted by name; unrelated images may be among them (the pipeline's outliers).
    No labels: the split is `test` (asking for `train` is an error) and the submission takes
    the IMC2025 columns."""
    root = Path(root)
    if split == "train":
        raise ImcError(
            f"{root}: a folder of photos has no train split (no reference poses to score "
            f"against); {ACCEPTED}"
        )
    if split not in (None, "test"):
        raise ImcError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    rows = _select(_photo_rows(root), datasets, root)
    groups: dict[str, Dataset] = {}
    for r in rows:
        ds = groups.setdefault(r.key, Dataset(name=r.key, dataset=r.dataset, images=[]))
        ds.images.append(ImageInfo(r.name, r.path))
    comp = Competition(year=2025, root=root, split="test", datasets=groups, plain=True)
    logger.info("folder of photos %s: %d datasets, %d images", root, len(groups), comp.num_images)
    return comp


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
    sample = submission_frame(test, {})
    atomic_write_text(out_root / "sample_submission.csv", sample.to_csv(index=False))
    logger.info("test layout at %s: %d images", out_root, test.num_images)
    return out_root
