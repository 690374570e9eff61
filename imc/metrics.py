"""The IMC2024 and IMC2025 metrics: exact re-implementations on pandas DataFrames (IMC2023:
imc.metrics2023; the ScoreReport and the table checks they share: imc.metric_common).

Sources (public Kaggle metric code, read for behaviour; no code is copied):
- IMC2025 "mAA + clusterness": the "IMC 3D error metric code" of the IMC2025 metric (Kaggle
  defaults `inl_cf=0, strict_cf=-1, skip_top_thresholds=2, to_dec=3`, harmonic combination),
  as also published in the organisers' repository (GitHub fb82/IMPED).
- IMC2024: kaggle.com/code/fabiobellavia/imc2024-3d-metric-evaluation-example (`evaluate_rec`
  with `inl_cf=0, strict_cf=-1, skip_top_thresholds=0, to_dec=3`, one mean per dataset).
- IMC2023: kaggle.com/code/eduardtrulls/imc2023-evaluation (see `imc.metrics2023`).

Scales, as the official code returns them: IMC2025 scores are in 0-100, IMC2024 and IMC2023
scores in 0-1. Every figure of a `ScoreReport` (dataset rows included) uses its year's scale.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .csvio import parse_floats
from .data import OUTLIERS
from .errors import ImcError
from .metric_common import (
    DatasetScore,
    SceneScore,
    ScoreReport,
    as_text,
    check_columns,
    check_images,
    parse_poses,
)
from .registration import register_by_horn

COLUMNS_2025 = ("image_id", "dataset", "scene", "image", "rotation_matrix", "translation_vector")
LABELS_2025 = ("dataset", "scene", "image", "rotation_matrix", "translation_vector")
COLUMNS_2024 = ("image_path", "dataset", "scene", "rotation_matrix", "translation_vector")

# The IMC2024 notebook's thresholds (metres), keyed by its `dataset` column.
THRESHOLDS_2024 = {
    **{s: np.array([0.025, 0.05, 0.1, 0.2, 0.5, 1.0]) for s in ("church", "dioscuri", "lizard")},
    **{
        s: np.array([0.025, 0.05, 0.1, 0.2, 0.5, 1.0])
        for s in ("multi-temporal-temple-baalshamin", "pond")
    },
    **{
        s: np.array([0.0025, 0.005, 0.01, 0.02, 0.05, 0.1])
        for s in ("transp_obj_glass_cylinder", "transp_obj_glass_cup")
    },
}


# ---------------------------------------------------------------- validation and parsing


def centres(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """[N x 3] camera centres -R^T t (NaN where the pose is not finite)."""
    return -np.einsum("nji,nj->ni", rot, trans)


def threshold_table(thresholds) -> dict[tuple[str, str], np.ndarray]:
    """{(dataset, scene): [K] float} from a `dataset,scene,thresholds` DataFrame (';'-separated)
    or a dict keyed by (dataset, scene) or {dataset: {scene: values}}."""
    if thresholds is None:
        return {}
    if isinstance(thresholds, pd.DataFrame):
        check_columns(thresholds, ("dataset", "scene", "thresholds"), "thresholds", exact=False)
        out = {}
        for d, s, v in zip(
            thresholds["dataset"], thresholds["scene"], thresholds["thresholds"], strict=True
        ):
            out[(str(d), str(s))] = parse_floats(str(v), where="thresholds")
        return out
    if isinstance(thresholds, Mapping):
        out = {}
        for key, v in thresholds.items():
            if isinstance(v, Mapping):
                out.update(
                    {(str(key), str(s)): parse_floats(t, where="thresholds") for s, t in v.items()}
                )
            else:
                d, s = key
                out[(str(d), str(s))] = parse_floats(v, where="thresholds")
        return out
    raise ImcError(f"thresholds: expected a DataFrame or a dict, got {type(thresholds).__name__}")


def maa_counts(err: np.ndarray, ths: np.ndarray, skip: int, to_dec: int) -> int:
    """Sum over thresholds (the first `skip` left out) of max(0, #(err < th) - to_dec).

    err: [V x K] registration errors of the valid cameras (columns: thresholds).
    """
    below = np.sum(err[:, skip:] < ths[None, skip:], axis=0)
    return int(np.sum(np.maximum(below - to_dec, 0)))


def scene_maa(err: np.ndarray, ths: np.ndarray, m: int, skip: int, to_dec: int) -> float:
    """The official `mAA_on_cameras`: maa_counts / (K' (m - to_dec)), 0 when nothing counts."""
    num = maa_counts(err, ths, skip, to_dec)
    return 0.0 if num == 0 else num / (len(ths[skip:]) * (m - to_dec))


# ---------------------------------------------------------------- IMC2025


def score_imc2025(
    labels: pd.DataFrame,
    submission: pd.DataFrame,
    thresholds,
    *,
    skip_top_thresholds: int = 2,
    to_dec: int = 3,
    workers: int | None = None,
) -> ScoreReport:
    """The IMC2025 score (0-100) of `submission` against `labels`.

    labels: dataset, scene, image, rotation_matrix, translation_vector (train_labels.csv).
    submission: image_id, dataset, scene, image, rotation_matrix, translation_vector; its
        scene column is the submitted cluster (`outliers`: no cluster).
    thresholds: DataFrame dataset, scene, thresholds (';'-separated), or a dict.
    """
    check_columns(labels, LABELS_2025, "labels", exact=False)
    check_columns(submission, COLUMNS_2025, "submission", exact=True)
    labels = as_text(labels, ("dataset", "scene", "image"))
    submission = as_text(submission, ("dataset", "scene", "image"))
    check_images(labels, submission, "image")
    gt_c = centres(*parse_poses(labels, "labels", "image"))
    sub_c = centres(*parse_poses(submission, "submission", "image"))
    scored = labels["scene"] != OUTLIERS
    bad = scored.to_numpy() & ~np.all(np.isfinite(gt_c), axis=1)
    if bad.any():
        row = labels[bad].iloc[0]
        raise ImcError(f"labels: image '{row['image']}' of scene '{row['scene']}' has no pose")
    ths = threshold_table(thresholds)
    sizes = set()
    for d, s in set(zip(labels["dataset"][scored], labels["scene"][scored], strict=True)):
        if (d, s) not in ths:
            raise ImcError(f"thresholds: no row for dataset '{d}', scene '{s}'")
        sizes.add(len(ths[(d, s)]))
    if len(sizes) > 1:
        raise ImcError(f"thresholds: the number of thresholds varies per scene: {sorted(sizes)}")
    lt = max(sizes) - skip_top_thresholds if sizes else 0
    rows = []
    for dataset in labels["dataset"].unique():
        lab = labels["dataset"] == dataset
        sub = submission["dataset"] == dataset
        rows.append(
            _dataset_2025(
                labels[lab], gt_c[lab.to_numpy()], submission[sub], sub_c[sub.to_numpy()],
                ths, lt, skip_top_thresholds, to_dec, workers,
            )
        )  # fmt: skip
    return ScoreReport(
        year=2025,
        score=100 * float(np.mean([r.score for r in rows])),
        scale=100.0,
        mAA=100 * float(np.mean([r.mAA for r in rows])),
        clusterness=100 * float(np.mean([r.clusterness for r in rows])),
        datasets=[_scaled(r, 100.0) for r in rows],
    )


def _dataset_2025(lab, gt_c, sub, sub_c, ths, lt, skip, to_dec, workers) -> DatasetScore:
    """One dataset: every (reference scene, cluster) pair registered, then the official
    greedy choice per scene: most overlap, then best mAA, then the cluster seen first."""
    dataset = str(lab["dataset"].iloc[0])
    clusters = list(sub["scene"].unique())  # first-seen order, as the official dict keys
    sub_pos = {img: i for i, img in enumerate(sub["image"])}
    sub_scene = sub["scene"].to_numpy()
    scenes = []
    totals = np.zeros(4)  # mAA numerator, reference images, overlaps, cluster sizes
    n_ref = 0
    for scene in lab["scene"].unique():
        if scene == OUTLIERS:
            continue
        n_ref += 1
        sel = (lab["scene"] == scene).to_numpy()
        pos = np.array([sub_pos[i] for i in lab["image"].to_numpy()[sel]], dtype=int)
        m, t = len(pos), ths[(dataset, scene)]
        table = []  # (overlap, mAA, numerator, registered, cluster, cluster size)
        for cluster in clusters:
            if cluster == OUTLIERS:  # a candidate too: overlap 0, mAA 0, adds nothing
                table.append((0, 0.0, 0, [], None, 0))
                continue
            keep = sub_scene[pos] == cluster
            reg = register_by_horn(sub_c[pos[keep]], gt_c[sel][keep], t, workers=workers)
            num = maa_counts(reg.err, t, skip, to_dec)
            maa = 0.0 if num == 0 else num / (len(t[skip:]) * (m - to_dec))
            registered = np.sum(reg.err < t[None], axis=0).tolist()
            size = int(np.sum(sub_scene == cluster))
            table.append((int(keep.sum()), maa, num, registered, cluster, size))
        overlaps, maas = np.array([r[0] for r in table]), np.array([r[1] for r in table])
        overlap, maa, num, registered, cluster, size = table[np.lexsort((-maas, -overlaps))[0]]
        if cluster is not None:
            totals += [num, m, overlap, size]
        scenes.append(SceneScore(scene, m, maa, registered, cluster, overlap, size))
    den = max(0, lt * (totals[1] - n_ref * to_dec))
    maa = 0.0 if den == 0 else totals[0] / den
    clusterness = 0.0 if totals[3] == 0 else totals[2] / totals[3]
    score = 0.0 if maa + clusterness == 0 else 2 * maa * clusterness / (maa + clusterness)
    return DatasetScore(dataset, maa, score, len(lab), clusterness, scenes)


def _scaled(row: DatasetScore, scale: float) -> DatasetScore:
    for s in row.scenes:
        s.mAA *= scale
    row.mAA *= scale
    row.score *= scale
    if row.clusterness is not None:
        row.clusterness *= scale
    return row


# ---------------------------------------------------------------- IMC2024


def score_imc2024(
    labels: pd.DataFrame, submission: pd.DataFrame, thresholds=None, *, workers: int | None = None
) -> ScoreReport:
    """The IMC2024 score (0-1): mean over datasets of the camera-centre mAA.

    labels and submission: image_path, dataset, scene, rotation_matrix, translation_vector
        (labels may hold more columns). Each (dataset, scene) is registered on its own, its
        images sorted by image_path as the official code does; a dataset's mAA is the mean of
        its scenes' (IMC2024 has one scene per dataset, where this is the official figure).
    thresholds: DataFrame dataset, scene, thresholds, or a dict; scenes it lacks fall back to
        the official table (`THRESHOLDS_2024`, keyed by dataset).
    The official skip_top_thresholds=0 and to_dec=3 apply; a scene of 3 images or fewer
    scores 0 (the official code divides by zero there).
    """
    check_columns(labels, COLUMNS_2024, "labels", exact=False)
    check_columns(submission, COLUMNS_2024, "submission", exact=True)
    labels = as_text(labels, ("dataset", "scene", "image_path"))
    submission = as_text(submission, ("dataset", "scene", "image_path"))
    check_images(labels.rename(columns={"image_path": "image"}), _renamed(submission), "image")
    gt_c = centres(*parse_poses(labels, "labels", "image_path"))
    sub_c = centres(*parse_poses(submission, "submission", "image_path"))
    keys = zip(submission["dataset"], submission["image_path"], strict=True)
    sub_pos = {key: k for k, key in enumerate(keys)}
    ths = threshold_table(thresholds)
    rows = []
    for dataset in labels["dataset"].unique():
        scenes = []
        for scene in labels.loc[labels["dataset"] == dataset, "scene"].unique():
            t = ths.get((dataset, scene), THRESHOLDS_2024.get(dataset))
            if t is None:
                raise ImcError(f"thresholds: no row for dataset '{dataset}', scene '{scene}'")
            sel = np.flatnonzero((labels["dataset"] == dataset) & (labels["scene"] == scene))
            order = sel[np.argsort(labels["image_path"].to_numpy()[sel], kind="stable")]
            idx = [sub_pos[(dataset, labels["image_path"].iloc[k])] for k in order]
            reg = register_by_horn(sub_c[idx], gt_c[order], t, workers=workers)
            m = len(order)
            maa = scene_maa(reg.err, t, m, 0, 3) if m > 3 else 0.0
            registered = np.sum(reg.err < t[None], axis=0).tolist()
            scenes.append(SceneScore(scene, m, maa, registered))
        maa = float(np.mean([s.mAA for s in scenes]))
        n = sum(s.n_images for s in scenes)
        rows.append(DatasetScore(dataset, maa, maa, n, None, scenes))
    score = float(np.mean([r.score for r in rows]))
    return ScoreReport(year=2024, score=score, scale=1.0, mAA=score, datasets=rows)


def _renamed(df: pd.DataFrame) -> pd.DataFrame:
    return df.rename(columns={"image_path": "image"})
