"""The in-memory model of a competition folder: datasets of images, optional poses and scenes.

One model serves the three competition years. A `Dataset` is one unit of reconstruction
(a folder of images that the pipeline turns into clusters and poses):

- IMC2025: one `train/<dataset>/` or `test/<dataset>/` folder; `scene` comes from the labels
  (reference scene, or `outliers`) and is unknown on the test split.
- IMC2024: one `test/<scene>/images/` folder; the metric's dataset and scene columns name it.
- IMC2023: one `test/<dataset>/<scene>/images/` folder.
- A folder of photos (`Competition.plain`): the folder itself, or each of its subfolders; no
  labels, written as an IMC2025 test submission.

Poses follow the competition convention: `x_cam = R @ X + t`, camera centre `-R.T @ t`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OUTLIERS = "outliers"
YEARS = (2023, 2024, 2025)


@dataclass
class ImageInfo:
    """One input image.

    name: the value of the year's image column (2025: file name in the dataset folder;
        2024: `image_name`; 2023: `image_path` relative to the split folder,
        `<dataset>/<scene>/images/<file>`).
    path: the file on disk.
    scene: reference scene label (labels present; `outliers` for unrelated images), or the
        scene column of the test folder (2023/2024); None when unknown.
    R: [3 x 3] float64 world-to-camera rotation, or None (no reference pose).
    t: [3] float64 translation, or None.
    image_id: the sample submission's row key: `image_id` (2025) or `image_path` (2023/2024).
    """

    name: str
    path: Path
    scene: str | None = None
    R: np.ndarray | None = None
    t: np.ndarray | None = None
    image_id: str | None = None

    @property
    def has_pose(self) -> bool:
        return (
            self.R is not None
            and self.t is not None
            and bool(np.all(np.isfinite(self.R)) and np.all(np.isfinite(self.t)))
        )

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre `-R^T t` (NaN when the pose is unknown)."""
        if not self.has_pose:
            return np.full(3, np.nan)
        return -self.R.T @ self.t


@dataclass
class Dataset:
    """A unit of reconstruction.

    name: unique key within the competition (2025: dataset; 2024: scene; 2023: `dataset/scene`).
    dataset: the metric's `dataset` column.
    scene: the metric's `scene` column for 2023/2024 (the folder's scene); None for 2025.
    images: in the order of the labels or sample submission, else sorted by name.
    thresholds: reference scene -> [K] thresholds (metres or the scene's units), or for 2023
        scene -> [2 x K] (rotation degrees row, translation row).
    """

    name: str
    dataset: str
    images: list[ImageInfo]
    scene: str | None = None
    thresholds: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_labels(self) -> bool:
        return bool(self.images) and all(im.scene is not None for im in self.images)

    def reference_scenes(self) -> list[str]:
        """Scene labels in first-seen order, `outliers` excluded."""
        seen: dict[str, None] = {}
        for im in self.images:
            if im.scene is not None and im.scene != OUTLIERS:
                seen.setdefault(im.scene, None)
        return list(seen)


@dataclass
class Competition:
    """A competition folder read into memory.

    year: 2023, 2024 or 2025 (detected from the files present); 2025 for a folder of photos,
        whose submission takes that year's columns (every image one row, its own cluster).
    split: `train` or `test` (`test` for a folder of photos).
    datasets: name -> Dataset, in file order.
    plain: a folder of photos (or of photo folders), not a competition: no labels, never scored.
    """

    year: int
    root: Path
    split: str
    datasets: dict[str, Dataset]
    plain: bool = False

    @property
    def num_images(self) -> int:
        return sum(len(d.images) for d in self.datasets.values())

    @property
    def has_reference_poses(self) -> bool:
        """True when some image has a reference pose: the split can be scored."""
        return any(im.has_pose for d in self.datasets.values() for im in d.images)

    @property
    def layout(self) -> str:
        """`IMC2025 train`, ..., or `folder of photos`: what was read, for messages."""
        return "folder of photos" if self.plain else f"IMC{self.year} {self.split}"


@dataclass
class Prediction:
    """What the pipeline says of one image.

    cluster: 2025: the submitted scene label (`cluster<k>` or `outliers`); ignored by the
        2023/2024 writers, which write the folder's scene.
    R: [3 x 3] world-to-camera rotation, or None when the image is not registered.
    t: [3] translation, or None.
    """

    cluster: str = OUTLIERS
    R: np.ndarray | None = None
    t: np.ndarray | None = None

    @property
    def registered(self) -> bool:
        return self.R is not None and self.t is not None


# Predictions for a whole competition: (Dataset.name, ImageInfo.name) -> Prediction.
Predictions = dict[tuple[str, str], Prediction]
