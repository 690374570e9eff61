"""What the IMC metrics share (imc.metrics: IMC2024 and IMC2025, imc.metrics2023: IMC2023):
the ScoreReport they return, and the checks and parsing of the label and submission tables.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import ImcError, SubmissionError


@dataclass
class SceneScore:
    """One reference scene.

    mAA: the scene's own mAA (2025: of its chosen cluster, the official table value).
    registered: per threshold, the cameras within it after the best registration.
    cluster: 2025: the submitted cluster matched to the scene (None: `outliers` chosen).
    overlap / cluster_size: 2025: images in both / in that cluster.
    """

    scene: str
    n_images: int
    mAA: float
    registered: list[int] = field(default_factory=list)
    cluster: str | None = None
    overlap: int | None = None
    cluster_size: int | None = None


@dataclass
class DatasetScore:
    """One dataset: mAA, clusterness (2025 only) and the dataset score, in the report's scale."""

    dataset: str
    mAA: float
    score: float
    n_images: int
    clusterness: float | None = None
    scenes: list[SceneScore] = field(default_factory=list)


@dataclass
class ScoreReport:
    """A competition score. scale: 100 (IMC2025) or 1 (IMC2023, IMC2024), as the official."""

    year: int
    score: float
    scale: float
    mAA: float
    clusterness: float | None = None
    datasets: list[DatasetScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (plain floats and ints)."""
        return _plain(dataclasses.asdict(self))


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ---------------------------------------------------------------- validation and parsing


def check_columns(df: pd.DataFrame, expected: tuple[str, ...], what: str, exact: bool) -> None:
    """Raise if `df` lacks a column (or, when exact, has a column set other than `expected`)."""
    have = [str(c) for c in df.columns]
    missing = [c for c in expected if c not in have]
    extra = [c for c in have if c not in expected] if exact else []
    if missing or extra:
        err = SubmissionError if what == "submission" else ImcError
        raise err(
            f"{what}: columns must be {', '.join(expected)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )


def check_images(labels: pd.DataFrame, sub: pd.DataFrame, image: str, unit: str = "dataset"):
    """Every labelled (unit, image) exactly once in the submission, and nothing else.

    The unit column is `dataset` (IMC2023 passes dataset/scene there, with unit="scene").
    """
    lab_keys = list(zip(labels["dataset"], labels[image], strict=True))
    dup = pd.Series(lab_keys).duplicated().to_numpy()
    if dup.any():
        d, i = lab_keys[int(np.flatnonzero(dup)[0])]
        raise ImcError(f"labels: image '{i}' of {unit} '{d}' is listed twice")
    keys = list(zip(sub["dataset"], sub[image], strict=True))
    first: dict[tuple[str, str], str] = {}
    for (d, i), scene in zip(keys, sub["scene"], strict=True):
        if (d, i) in first:
            where = (
                f"in two clusters, '{first[(d, i)]}' and '{scene}'"
                if scene != first[(d, i)]
                else f"twice in '{scene}'"
            )
            raise SubmissionError(f"submission: image '{i}' of {unit} '{d}' is listed {where}")
        first[(d, i)] = scene
    known = set(lab_keys)
    for d, i in keys:
        if (d, i) not in known:
            raise SubmissionError(f"submission: unknown image '{i}' in {unit} '{d}'")
    missing = [k for k in lab_keys if k not in first]
    if missing:
        d, i = missing[0]
        raise SubmissionError(
            f"submission: image '{i}' of {unit} '{d}' is missing "
            f"({len(missing)} labelled image{'s' if len(missing) > 1 else ''} missing)"
        )


def parse_poses(df: pd.DataFrame, what: str, image: str) -> tuple[np.ndarray, np.ndarray]:
    """R [N x 3 x 3] and t [N x 3] from the ';'-separated columns ('nan' entries allowed)."""
    err = SubmissionError if what == "submission" else ImcError
    out = []
    for col, size in (("rotation_matrix", 9), ("translation_vector", 3)):
        values = df[col].tolist()
        try:
            arr = np.array([str(v).split(";") for v in values], dtype=np.float64)
            if arr.shape != (len(values), size):
                raise ValueError
        except ValueError:
            for v, name, d in zip(values, df[image], df["dataset"], strict=True):
                parts = str(v).split(";") if isinstance(v, str) else []
                try:
                    ok = len(parts) == size and bool(np.array(parts, dtype=np.float64).size)
                except ValueError:
                    ok = False
                if not ok:
                    raise err(
                        f"{what}: {col} of image '{name}' (dataset '{d}') is not {size} "
                        f"';'-separated numbers: {v!r}"
                    ) from None
            raise
        out.append(arr)
    return out[0].reshape(-1, 3, 3), out[1]


def as_text(df: pd.DataFrame, cols: tuple[str, ...]) -> pd.DataFrame:
    """A copy with the key columns as str (the official code reads every field as text)."""
    df = df.copy()
    for c in cols:
        df[c] = df[c].astype(str)
    return df
