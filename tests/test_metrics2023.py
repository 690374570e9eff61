"""IMC2023 relative-pose mAA, with hand-computed figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from imc.errors import ImcError, SubmissionError
from imc.metrics2023 import THRESHOLDS_2023, _pose_errors, _relative, score_imc2023

POSE = ("rotation_matrix", "translation_vector")
COLS = ["image_path", "dataset", "scene", *POSE]


def rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def rot_axis(axis, degrees) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def fmt(a) -> str:
    return ";".join(repr(float(x)) for x in np.ravel(a))


def frame(poses, dataset="haiper", scene="bike") -> pd.DataFrame:
    """poses: list of (R, centre) -> rows in the submission column order."""
    rows = [
        (f"{dataset}/{scene}/images/{k}.png", dataset, scene, fmt(r), fmt(-r @ c))
        for k, (r, c) in enumerate(poses)
    ]
    return pd.DataFrame(rows, columns=COLS)


def as_labels(sub: pd.DataFrame) -> pd.DataFrame:
    return sub[["dataset", "scene", "image_path", *POSE]]


def scene(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rotation(rng), rng.normal(size=3) * 2) for _ in range(n)]


def test_reference_and_a_similarity_of_it_score_1():
    poses = scene(6)
    lab = as_labels(frame(poses))
    assert score_imc2023(lab, frame(poses)).score == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    q, s, b = rotation(rng), 3.7, rng.normal(size=3) * 5
    moved = [(r @ q.T, s * q @ c + b) for r, c in poses]  # world rotated, scaled, shifted
    report = score_imc2023(lab, frame(moved).sample(frac=1.0, random_state=2))
    assert report.score == pytest.approx(1.0) and report.scale == 1.0


def test_translation_is_sign_agnostic():
    poses = scene(5)
    mirrored = [(r, -c) for r, c in poses]  # every relative translation flips sign
    assert score_imc2023(as_labels(frame(poses)), frame(mirrored)).score == pytest.approx(1.0)


def test_rotation_error_of_one_camera_hand_computed():
    # Three cameras on the x axis; camera 2 turned by 5.5 degrees about that axis (in its own
    # frame), centre kept: pairs (0,2) and (1,2) have a 5.5 degree rotation error and no
    # translation error, pair (0,1) none. Thresholds 1..10 degrees: accuracy 1/3 for 1..5,
    # 1 for 6..10, mAA = (5/3 + 5) / 10 = 2/3.
    rng = np.random.default_rng(3)
    poses = [(rotation(rng), np.array([x, 0.0, 0.0])) for x in (0.0, 1.0, 3.0)]
    r2, c2 = poses[2]
    turned = poses[:2] + [(rot_axis(r2 @ np.array([1.0, 0, 0]), 5.5) @ r2, c2)]
    report = score_imc2023(as_labels(frame(poses)), frame(turned))
    assert report.score == pytest.approx(2 / 3, abs=1e-6)  # float32 means, as the official
    assert report.datasets[0].scenes[0].registered == [1] * 5 + [3] * 5


def test_pairs_follow_the_reference_order():
    # gt: camera 1 one unit along x from camera 0, both unrotated. Submitted camera 1 is
    # turned 90 degrees about z. Pair (0,1): dT = (0,-1,0) against (-1,0,0): error sqrt(2).
    # Pair (1,0): dT = (1,0,0) against (1,0,0): error 0.
    eye = np.eye(3)
    gt = [(eye, np.zeros(3)), (eye, np.array([1.0, 0, 0]))]
    sub = frame([gt[0], (rot_axis([0, 0, 1], 90), gt[1][1])])
    loose = {("haiper", "bike"): (np.full(10, 100.0), np.full(10, 0.5))}
    assert score_imc2023(as_labels(frame(gt)), sub, loose).score == 0.0
    assert score_imc2023(as_labels(frame(gt)).iloc[::-1], sub, loose).score == 1.0


def test_both_threshold_tests_are_inclusive():
    poses = scene(2)
    sub = [poses[0], (rot_axis([0, 1, 0], 3.0) @ poses[1][0], poses[1][1] + 0.2)]
    d_rgt, d_tgt = _relative(*_stack(poses), np.array([0]), np.array([1]))
    d_r, d_t = _relative(*_stack(sub), np.array([0]), np.array([1]))
    err_q, err_t = (float(e[0]) for e in _pose_errors(d_rgt, d_tgt, d_r, d_t))
    lab = as_labels(frame(poses))
    exact = {("haiper", "bike"): ([err_q], [err_t])}
    assert score_imc2023(lab, frame(sub), exact).score == 1.0
    below_q = {("haiper", "bike"): ([np.nextafter(err_q, 0)], [err_t])}
    below_t = {("haiper", "bike"): ([err_q], [np.nextafter(err_t, 0)])}
    assert score_imc2023(lab, frame(sub), below_q).score == 0.0
    assert score_imc2023(lab, frame(sub), below_t).score == 0.0


def _stack(poses):
    rot = np.stack([r for r, _ in poses])
    return rot, -np.einsum("nij,nj->ni", rot, np.stack([c for _, c in poses]))


def test_scenes_then_datasets_are_averaged_and_nan_poses_miss():
    a, b = scene(4, seed=1), scene(3, seed=2)
    lab = pd.concat([frame(a, "heritage", "wall"), frame(b, "heritage", "cyprus")])
    c = scene(5, seed=4)
    lab = as_labels(pd.concat([lab, frame(c, "urban", "kyiv-puppet-theater")]))
    sub = pd.concat(
        [
            frame(a, "heritage", "wall"),
            frame(b, "heritage", "cyprus"),
            frame(c, "urban", "kyiv-puppet-theater"),
        ]
    )
    sub.loc[sub["image_path"] == "heritage/cyprus/images/0.png", list(POSE)] = [
        fmt([np.nan] * 9),
        fmt([np.nan] * 3),
    ]
    report = score_imc2023(lab, sub)  # the official thresholds of these scenes
    cyprus = 1 / 3  # of 3 pairs, the two with image 0 miss
    assert [s.mAA for s in report.datasets[0].scenes] == pytest.approx([1.0, cyprus])
    assert report.score == pytest.approx(((1 + cyprus) / 2 + 1) / 2, abs=1e-6)


def test_official_threshold_table():
    rot, trans = THRESHOLDS_2023[("heritage", "wall")]
    np.testing.assert_allclose(rot, np.linspace(0.2, 10, 10))
    np.testing.assert_allclose(trans, np.geomspace(0.05, 1, 10))
    assert np.allclose(
        THRESHOLDS_2023[("urban", "kyiv-puppet-theater")][1], np.geomspace(0.5, 5, 10)
    )
    assert np.allclose(THRESHOLDS_2023[("haiper", "chairs")][1], np.geomspace(0.05, 0.5, 10))


def test_other_scenes_need_a_thresholds_table_and_submissions_are_checked():
    poses = scene(3)
    sub = frame(poses, "mine", "room")
    lab = as_labels(sub)
    with pytest.raises(ImcError, match="no row for dataset 'mine', scene 'room'"):
        score_imc2023(lab, sub)
    table = pd.DataFrame(
        [("mine", "room", "1;2;3", "0.1;0.2;0.3")],
        columns=["dataset", "scene", "rotation_thresholds", "translation_thresholds"],
    )
    assert score_imc2023(lab, sub, table).score == pytest.approx(1.0)
    with pytest.raises(
        SubmissionError, match=r"image 'mine/room/images/2.png' of scene 'mine/room' is missing"
    ):
        score_imc2023(lab, sub.iloc[:2], table)
    wrong_scene = sub.assign(scene=["room", "room", "hall"])
    with pytest.raises(SubmissionError, match="unknown image"):
        score_imc2023(lab, wrong_scene, table)
