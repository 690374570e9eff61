"""The IMC2023 metric: relative-pose mAA over all image pairs of each scene (0-1).

Source, read for behaviour: kaggle.com/code/eduardtrulls/imc2023-evaluation. For every pair
(i, j), i < j in the order of the labels, the relative pose dR = R_j R_i^T, dT = T_j - dR T_i of
the submission is compared with the reference: the rotation error is the angle between the two
quaternions (each the top eigenvector of the symmetric matrix of Bar-Itzhack's method), the
translation error is |dT_gt -+ s dT| with the predicted dT rescaled to the reference norm, the
smaller of the two signs. A pair is accurate at the k-th threshold pair when both errors are
`<=` their thresholds; the scene's mAA is the mean over the 10 pairs of thresholds of the
fraction of accurate pairs (float32 means, as the official code takes them), a dataset's the mean
of its scenes', the score the mean of the datasets'.

Beyond the official code: a non-finite submitted pose makes its pairs inaccurate (the official
code stops on it), and a scene with fewer than two images (no pairs) is left out of the means.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .csvio import parse_floats
from .errors import ImcError
from .log import logger
from .metric_common import (
    DatasetScore,
    SceneScore,
    ScoreReport,
    as_text,
    check_columns,
    check_images,
    parse_poses,
)

COLUMNS_2023 = ("image_path", "dataset", "scene", "rotation_matrix", "translation_vector")
_EPS = 1e-15

# The official thresholds: (rotation degrees [10], translation [10]) per (dataset, scene).
_R10, _R_WALL = np.linspace(1, 10, 10), np.linspace(0.2, 10, 10)
THRESHOLDS_2023 = {
    **{("haiper", s): (_R10, np.geomspace(0.05, 0.5, 10)) for s in ("bike", "chairs", "fountain")},
    **{("heritage", s): (_R10, np.geomspace(0.1, 2, 10)) for s in ("cyprus", "dioscuri")},
    ("heritage", "wall"): (_R_WALL, np.geomspace(0.05, 1, 10)),
    ("urban", "kyiv-puppet-theater"): (_R10, np.geomspace(0.5, 5, 10)),
}


def score_imc2023(labels: pd.DataFrame, submission: pd.DataFrame, thresholds=None) -> ScoreReport:
    """The IMC2023 score (0-1) of `submission` against `labels`.

    labels: dataset, scene, image_path, rotation_matrix, translation_vector (more allowed).
    submission: image_path, dataset, scene, rotation_matrix, translation_vector.
    thresholds: for scenes outside the official table, a DataFrame dataset, scene,
        rotation_thresholds, translation_thresholds (';'-separated, degrees and the scene's
        units, paired), or a dict (dataset, scene) -> (rotation [K], translation [K]).
    """
    check_columns(labels, COLUMNS_2023, "labels", exact=False)
    check_columns(submission, COLUMNS_2023, "submission", exact=True)
    labels = as_text(labels, ("dataset", "scene", "image_path"))
    submission = as_text(submission, ("dataset", "scene", "image_path"))
    check_images(_keyed(labels), _keyed(submission), "image_path", unit="scene")
    gt_r, gt_t = parse_poses(labels, "labels", "image_path")
    if not (np.all(np.isfinite(gt_r)) and np.all(np.isfinite(gt_t))):
        raise ImcError("labels: every labelled image needs a finite pose for IMC2023")
    sub_r, sub_t = parse_poses(submission, "submission", "image_path")
    keys = zip(submission["dataset"], submission["scene"], submission["image_path"], strict=True)
    pos = {key: k for k, key in enumerate(keys)}
    table = {**THRESHOLDS_2023, **pair_thresholds(thresholds)}
    rows = []
    for dataset in labels["dataset"].unique():
        scenes = []
        for scene in labels.loc[labels["dataset"] == dataset, "scene"].unique():
            if (dataset, scene) not in table:
                raise ImcError(f"thresholds: no row for dataset '{dataset}', scene '{scene}'")
            sel = np.flatnonzero((labels["dataset"] == dataset) & (labels["scene"] == scene))
            if len(sel) < 2:
                logger.warning("IMC2023 metric: %s/%s has no image pair, left out", dataset, scene)
                continue
            idx = [pos[(dataset, scene, labels["image_path"].iloc[k])] for k in sel]
            th_r, th_t = table[(dataset, scene)]
            acc, hits = _scene_accuracy(gt_r[sel], gt_t[sel], sub_r[idx], sub_t[idx], th_r, th_t)
            maa = np.array(acc).mean()  # float32, as the official
            scenes.append(SceneScore(scene, len(sel), maa, hits))
        if scenes:
            maa = np.mean([s.mAA for s in scenes])
            n = sum(s.n_images for s in scenes)
            rows.append(DatasetScore(dataset, maa, maa, n, None, scenes))
    score = float(np.mean([r.score for r in rows])) if rows else 0.0
    for r in rows:
        r.mAA = r.score = float(r.mAA)
        for s in r.scenes:
            s.mAA = float(s.mAA)
    return ScoreReport(year=2023, score=score, scale=1.0, mAA=score, datasets=rows)


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with `dataset` replaced by dataset/scene, the unit images are matched in."""
    out = df.copy()
    out["dataset"] = df["dataset"] + "/" + df["scene"]
    return out


def pair_thresholds(thresholds) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """{(dataset, scene): (rotation degrees [K], translation [K])} from a table or dict."""
    if thresholds is None:
        return {}
    out = {}
    if isinstance(thresholds, pd.DataFrame):
        cols = ("dataset", "scene", "rotation_thresholds", "translation_thresholds")
        check_columns(thresholds, cols, "thresholds", exact=False)
        items = [
            ((str(d), str(s)), (r, t))
            for d, s, r, t in zip(*(thresholds[c] for c in cols), strict=True)
        ]
    elif isinstance(thresholds, Mapping):
        items = list(thresholds.items())
    else:
        raise ImcError(f"thresholds: expected a DataFrame or a dict, got {type(thresholds)}")
    for key, (rot, trans) in items:
        rot, trans = parse_floats(rot, where="thresholds"), parse_floats(trans, where="thresholds")
        if rot.shape != trans.shape:
            raise ImcError(f"thresholds: {key}: rotation and translation lists differ in length")
        out[(str(key[0]), str(key[1]))] = (rot, trans)
    return out


def _scene_accuracy(gt_r, gt_t, r, t, th_r, th_t) -> tuple[list, list[int]]:
    """Per threshold pair, the float32 fraction of accurate pairs among all pairs i < j, and
    their number (poses: R [n x 3 x 3], t [n x 3])."""
    i, j = np.triu_indices(len(gt_r), 1)  # row-major: the official (i, j) loop order
    d_rgt, d_tgt = _relative(gt_r, gt_t, i, j)
    d_r, d_t = _relative(r, t, i, j)
    err_q = np.full(len(i), np.inf)
    err_t = np.full(len(i), np.inf)
    ok = np.all(np.isfinite(d_r), axis=(1, 2)) & np.all(np.isfinite(d_t), axis=1)
    if ok.any():
        err_q[ok], err_t[ok] = _pose_errors(d_rgt[ok], d_tgt[ok], d_r[ok], d_t[ok])
    acc, hits = [], []
    for tq, tt in zip(th_r, th_t, strict=True):
        hit = (err_q <= tq) & (err_t <= tt)
        acc.append(hit.astype(np.float32).mean())
        hits.append(int(hit.sum()))
    return acc, hits


def _relative(rot, trans, i, j) -> tuple[np.ndarray, np.ndarray]:
    """dR = R_j R_i^T [P x 3 x 3], dT = T_j - dR T_i [P x 3] for pairs (i, j)."""
    with np.errstate(invalid="ignore", over="ignore"):
        d_r = np.matmul(rot[j], rot[i].transpose(0, 2, 1))
        d_t = trans[j] - np.einsum("pab,pb->pa", d_r, trans[i])
    return d_r, d_t


def _pose_errors(r_gt, t_gt, r, t) -> tuple[np.ndarray, np.ndarray]:
    """Rotation error (degrees) and scale-free translation error per pair."""
    q_gt, q = _quaternions(r_gt), _quaternions(r)
    q = q / (np.linalg.norm(q, axis=1, keepdims=True) + _EPS)
    q_gt = q_gt / (np.linalg.norm(q_gt, axis=1, keepdims=True) + _EPS)
    loss_q = np.maximum(_EPS, 1.0 - np.sum(q * q_gt, axis=1) ** 2)
    err_q = np.degrees(np.arccos(1 - 2 * loss_q))
    scale = np.linalg.norm(t_gt, axis=1, keepdims=True)
    t = scale * (t / (np.linalg.norm(t, axis=1, keepdims=True) + _EPS))
    err_t = np.minimum(np.linalg.norm(t_gt - t, axis=1), np.linalg.norm(t_gt + t, axis=1))
    return err_q, err_t


def _quaternions(rot: np.ndarray) -> np.ndarray:
    """[P x 4] (w, x, y, z): top eigenvector of the symmetric matrix of each rotation."""
    m = rot
    k = np.zeros((len(rot), 4, 4))
    k[:, 0, 0] = m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2]
    k[:, 1, 0] = m[:, 0, 1] + m[:, 1, 0]
    k[:, 1, 1] = m[:, 1, 1] - m[:, 0, 0] - m[:, 2, 2]
    k[:, 2, 0] = m[:, 0, 2] + m[:, 2, 0]
    k[:, 2, 1] = m[:, 1, 2] + m[:, 2, 1]
    k[:, 2, 2] = m[:, 2, 2] - m[:, 0, 0] - m[:, 1, 1]
    k[:, 3, 0] = m[:, 2, 1] - m[:, 1, 2]
    k[:, 3, 1] = m[:, 0, 2] - m[:, 2, 0]
    k[:, 3, 2] = m[:, 1, 0] - m[:, 0, 1]
    k[:, 3, 3] = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    k /= 3.0
    w, v = np.linalg.eigh(k)  # lower triangle, as the official call
    q = np.take_along_axis(v, np.argmax(w, axis=1)[:, None, None], axis=2)[..., 0]
    return q[:, [3, 0, 1, 2]]
