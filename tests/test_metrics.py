"""IMC2024 / IMC2025 metrics and the triplet registration search, with hand-computed figures.

Thresholds in these tests: 6 per scene; IMC2025 leaves the first 2 out (Kaggle's
skip_top_thresholds=2) and subtracts to_dec=3 cameras per threshold, so a scene of m cameras
with r of them registered at the 4 remaining thresholds has mAA = 4 (r - 3) / (4 (m - 3)).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest

from imc.errors import ImcError, SubmissionError
from imc.metrics import score_imc2024, score_imc2025
from imc.registration import register_by_horn

TH = "0.01;0.02;0.05;0.1;0.2;0.5"
POSE = ("rotation_matrix", "translation_vector")


def rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def fmt(a) -> str:
    return ";".join(repr(float(x)) for x in np.ravel(a))


def labels_2025(scenes: dict[str, int], seed: int = 0, dataset: str = "d") -> pd.DataFrame:
    """Random reference poses: scene -> number of images (`outliers` rows get nan poses)."""
    rng = np.random.default_rng(seed)
    rows = []
    for scene, m in scenes.items():
        for k in range(m):
            if scene == "outliers":
                rows.append(
                    (dataset, scene, f"{scene}{k}.png", fmt([np.nan] * 9), fmt([np.nan] * 3))
                )
                continue
            r, c = rotation(rng), rng.normal(size=3) * 3
            rows.append((dataset, scene, f"{scene}{k}.png", fmt(r), fmt(-r @ c)))
    return pd.DataFrame(rows, columns=["dataset", "scene", "image", *POSE])


def thresholds(labels: pd.DataFrame) -> pd.DataFrame:
    keys = labels[["dataset", "scene"]].drop_duplicates()
    keys = keys[keys["scene"] != "outliers"]
    return keys.assign(thresholds=TH)


def centre_of(row) -> np.ndarray:
    r = np.array(row["rotation_matrix"].split(";"), float).reshape(3, 3)
    return -r.T @ np.array(row["translation_vector"].split(";"), float)


def submit(labels, cluster=lambda row: row["scene"], move=None, seed=1) -> pd.DataFrame:
    """The reference poses in another frame (random similarity), clusters from `cluster(row)`;
    move: image -> centre offset (in the reference frame) or None (nan pose)."""
    rng = np.random.default_rng(seed)
    s, q, b = rng.uniform(0.2, 5.0), rotation(rng), rng.normal(size=3) * 10
    rows = []
    for _, row in labels.iterrows():
        r = np.array(row["rotation_matrix"].split(";"), float).reshape(3, 3)
        c = centre_of(row)
        if move and row["image"] in move:
            c = None if move[row["image"]] is None else c + move[row["image"]]
        if c is None or not np.all(np.isfinite(c)):
            pose = (fmt([np.nan] * 9), fmt([np.nan] * 3))
        else:
            r2, c2 = r @ q.T, s * q @ c + b
            pose = (fmt(r2), fmt(-r2 @ c2))
        ident = f"{row['dataset']}_{row['image']}"
        rows.append((ident, row["dataset"], cluster(row), row["image"], *pose))
    return pd.DataFrame(rows, columns=["image_id", "dataset", "scene", "image", *POSE])


# ---------------------------------------------------------------- IMC2025 figures


def test_reference_against_itself_and_a_similarity_of_itself_scores_100():
    lab = labels_2025({"A": 9, "B": 7, "outliers": 3})
    same = lab.assign(image_id=lab["dataset"] + "_" + lab["image"])[
        ["image_id", "dataset", "scene", "image", *POSE]
    ]
    assert score_imc2025(lab, same, thresholds(lab)).score == pytest.approx(100.0)
    report = score_imc2025(lab, submit(lab), thresholds(lab))
    assert report.score == pytest.approx(100.0)
    assert [s.registered for s in report.datasets[0].scenes] == [[9] * 6, [7] * 6]


def test_one_camera_moved_past_the_loosest_threshold():
    lab = labels_2025({"A": 10})
    report = score_imc2025(
        lab, submit(lab, move={"A0.png": np.array([50.0, 0, 0])}), thresholds(lab)
    )
    maa = 4 * (9 - 3) / (4 * (10 - 3))  # 9 of 10 registered at every threshold
    assert report.datasets[0].mAA == pytest.approx(100 * maa)
    assert report.datasets[0].clusterness == pytest.approx(100.0)
    assert report.score == pytest.approx(100 * 2 * maa / (maa + 1))  # 92.31


def test_the_first_two_thresholds_are_left_out():
    # With 29 exact cameras pinning the similarity, A0 moved by 0.05 stays out at the first two
    # thresholds (0.001, 0.002) and in at the others (0.5 and up).
    lab = labels_2025({"A": 30})
    th = thresholds(lab).assign(thresholds="0.001;0.002;0.5;1;2;5")
    sub = submit(lab, move={"A0.png": np.array([0.0, 0.05, 0.0])})
    report = score_imc2025(lab, sub, th)
    assert report.datasets[0].scenes[0].registered == [29, 29, 30, 30, 30, 30]
    assert report.score == pytest.approx(100.0)
    maa = (2 * 26 + 4 * 27) / (6 * 27)
    full = score_imc2025(lab, sub, th, skip_top_thresholds=0)
    assert full.score == pytest.approx(100 * 2 * maa / (1 + maa))


def test_non_finite_centres_are_misses_but_stay_in_the_denominators():
    lab = labels_2025({"A": 10})
    report = score_imc2025(lab, submit(lab, move={"A0.png": None, "A1.png": None}), thresholds(lab))
    maa = 4 * (8 - 3) / (4 * (10 - 3))
    assert report.datasets[0].clusterness == pytest.approx(100.0)  # nan images still in the cluster
    assert report.score == pytest.approx(100 * 2 * maa / (1 + maa))  # 83.33


def test_split_scene_takes_the_largest_cluster():
    lab = labels_2025({"A": 10})
    sub = submit(lab, cluster=lambda row: "c1" if int(row["image"][1:-4]) < 6 else "c2")
    report = score_imc2025(lab, sub, thresholds(lab))
    scene = report.datasets[0].scenes[0]
    assert (scene.cluster, scene.overlap, scene.cluster_size) == ("c1", 6, 6)
    maa = 4 * (6 - 3) / (4 * (10 - 3))
    assert report.datasets[0].clusterness == pytest.approx(100.0)
    assert report.score == pytest.approx(100 * 2 * maa / (1 + maa))  # 60


def test_merged_scenes_share_one_cluster_not_one_to_one():
    lab = labels_2025({"A": 6, "B": 5})
    report = score_imc2025(lab, submit(lab, cluster=lambda row: "c"), thresholds(lab))
    row = report.datasets[0]
    assert [s.cluster for s in row.scenes] == ["c", "c"]
    assert row.clusterness == pytest.approx(100 * (6 + 5) / (11 + 11))
    assert row.mAA == pytest.approx(100 * (4 * 3 + 4 * 2) / (4 * (11 - 2 * 3)))
    assert report.score == pytest.approx(100 * 2 / 3)


def test_equal_overlap_goes_to_the_better_mAA():
    lab = labels_2025({"A": 8})
    junk = {f"A{k}.png": np.random.default_rng(k).normal(size=3) * 20 for k in range(4, 8)}
    sub = submit(
        lab, cluster=lambda row: "good" if int(row["image"][1:-4]) < 4 else "junk", move=junk
    )
    sub = pd.concat([sub[sub["scene"] == "junk"], sub[sub["scene"] == "good"]])  # junk first
    report = score_imc2025(lab, sub, thresholds(lab))
    assert report.datasets[0].scenes[0].cluster == "good"
    maa = 4 * (4 - 3) / (4 * (8 - 3))
    assert report.score == pytest.approx(100 * 2 * maa / (1 + maa))


def test_overlap_comes_before_mAA():
    # c1 holds 6 images of A with scrambled poses (mAA 0), c2 the other 4, exact (mAA 1/7):
    # the larger overlap wins, so A scores mAA 0 with clusterness 1.
    lab = labels_2025({"A": 10})
    rng = np.random.default_rng(4)
    junk = {f"A{k}.png": rng.normal(size=3) * 20 for k in range(6)}
    sub = submit(lab, cluster=lambda row: "c1" if int(row["image"][1:-4]) < 6 else "c2", move=junk)
    report = score_imc2025(lab, sub.iloc[::-1], thresholds(lab))  # c2 listed first
    scene = report.datasets[0].scenes[0]
    assert (scene.cluster, scene.overlap) == ("c1", 6) and max(scene.registered) <= 3
    assert report.datasets[0].clusterness == pytest.approx(100.0)
    assert report.score == 0.0


def test_outliers_cluster_is_a_candidate_and_row_order_breaks_ties():
    # A (5 images) is submitted as `outliers`, B (10) as cluster c: for A both have overlap 0
    # and mAA 0, so the cluster listed first wins. `outliers` adds nothing (not even A's size
    # to the mAA denominator, while A's to_dec is still subtracted); c adds A's 5 images and
    # c's 10 to the denominators.
    lab = labels_2025({"A": 5, "B": 10})
    sub = submit(lab, cluster=lambda row: "outliers" if row["scene"] == "A" else "c")
    outliers_first = pd.concat([sub[sub["scene"] == "outliers"], sub[sub["scene"] == "c"]])
    c_first = pd.concat([sub[sub["scene"] == "c"], sub[sub["scene"] == "outliers"]])
    r1 = score_imc2025(lab, outliers_first, thresholds(lab))
    assert r1.datasets[0].scenes[0].cluster is None
    maa, clu = 4 * 7 / (4 * (10 - 2 * 3)), 1.0  # 1.75: the official figure goes past 1
    assert r1.score == pytest.approx(100 * 2 * maa * clu / (maa + clu))  # 127.27
    r2 = score_imc2025(lab, c_first, thresholds(lab))
    assert r2.datasets[0].scenes[0].cluster == "c"
    maa, clu = 4 * 7 / (4 * (15 - 2 * 3)), 10 / 20
    assert r2.score == pytest.approx(100 * 2 * maa * clu / (maa + clu))  # 60.87


def test_reference_outliers_count_against_clusterness_only_inside_a_cluster():
    lab = labels_2025({"A": 10, "outliers": 3})
    apart = submit(lab)  # the 3 outliers submitted as `outliers`
    assert score_imc2025(lab, apart, thresholds(lab)).score == pytest.approx(100.0)
    inside = submit(lab, cluster=lambda row: "A")
    report = score_imc2025(lab, inside, thresholds(lab))
    assert report.datasets[0].clusterness == pytest.approx(100 * 10 / 13)
    assert report.score == pytest.approx(100 * 2 * (10 / 13) / (1 + 10 / 13))


def test_datasets_are_averaged_and_the_report_is_json():
    lab = pd.concat([labels_2025({"A": 10}, dataset="d1"), labels_2025({"A": 10}, dataset="d2")])
    sub = submit(lab, move={"A0.png": np.array([50.0, 0, 0])})  # moves A0 of both datasets
    sub.loc[sub["dataset"] == "d2", "scene"] = "outliers"
    report = score_imc2025(lab, sub, thresholds(lab))
    d1 = 100 * 2 * (6 / 7) / (1 + 6 / 7)
    assert [d.score for d in report.datasets] == pytest.approx([d1, 0.0])
    assert report.score == pytest.approx(d1 / 2)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["year"] == 2025 and data["scale"] == 100.0
    assert data["datasets"][0]["scenes"][0]["cluster"] == "A"


# ---------------------------------------------------------------- validation


@pytest.fixture
def case():
    lab = labels_2025({"A": 5, "B": 4})
    return lab, submit(lab), thresholds(lab)


def test_missing_image_is_a_clear_error(case):
    lab, sub, th = case
    with pytest.raises(
        SubmissionError, match=r"image 'B3.png' of dataset 'd' is missing \(1 labelled"
    ):
        score_imc2025(lab, sub.iloc[:-1], th)


def test_unknown_image_is_an_error(case):
    lab, sub, th = case
    extra = sub.iloc[:1].assign(image="ghost.png", image_id="d_ghost.png")
    with pytest.raises(SubmissionError, match="unknown image 'ghost.png' in dataset 'd'"):
        score_imc2025(lab, pd.concat([sub, extra]), th)


def test_image_listed_twice_or_in_two_clusters_is_an_error(case):
    lab, sub, th = case
    with pytest.raises(SubmissionError, match="'A0.png' of dataset 'd' is listed twice in 'A'"):
        score_imc2025(lab, pd.concat([sub, sub.iloc[:1]]), th)
    other = sub.iloc[:1].assign(scene="B")
    with pytest.raises(SubmissionError, match="in two clusters, 'A' and 'B'"):
        score_imc2025(lab, pd.concat([sub, other]), th)


def test_unparsable_pose_and_wrong_columns_are_errors(case):
    lab, sub, th = case
    bad = sub.copy()
    bad.loc[2, "rotation_matrix"] = "1;0;0;0;1;0;0;0"
    with pytest.raises(SubmissionError, match=r"rotation_matrix of image 'A2.png' .* not 9"):
        score_imc2025(lab, bad, th)
    bad.loc[2, "rotation_matrix"] = "1;0;0;0;one;0;0;0;1"
    with pytest.raises(SubmissionError, match="not 9 ';'-separated numbers"):
        score_imc2025(lab, bad, th)
    with pytest.raises(SubmissionError, match="missing image_id"):
        score_imc2025(lab, sub.drop(columns="image_id"), th)
    with pytest.raises(SubmissionError, match="unexpected extra"):
        score_imc2025(lab, sub.assign(extra=1), th)


def test_thresholds_must_cover_every_scene_with_one_length(case):
    lab, sub, th = case
    with pytest.raises(ImcError, match="no row for dataset 'd', scene 'B'"):
        score_imc2025(lab, sub, th.iloc[:1])
    with pytest.raises(ImcError, match="varies per scene"):
        score_imc2025(lab, sub, th.assign(thresholds=["0.1;0.2;0.3", TH]))
    as_dict = {("d", "A"): TH, ("d", "B"): [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]}
    assert score_imc2025(lab, sub, as_dict).score == pytest.approx(100.0)


# ---------------------------------------------------------------- IMC2024


def frames_2024(m: int, seed: int = 0):
    lab = labels_2025({"church": m}, seed=seed, dataset="church")
    lab = lab.assign(image_path="test/church/images/" + lab["image"])
    sub = submit(lab, move={"church0.png": np.array([50.0, 0, 0])})
    cols = ["image_path", "dataset", "scene", *POSE]
    return lab[cols], sub.assign(image_path=lab["image_path"].to_numpy())[cols]


def test_imc2024_scores_mean_over_all_thresholds_in_0_1():
    lab, sub = frames_2024(10)
    report = score_imc2024(lab, sub, {("church", "church"): TH})
    assert report.scale == 1.0
    assert report.score == pytest.approx(6 * (9 - 3) / (6 * (10 - 3)))  # no threshold skipped
    shuffled = sub.sample(frac=1.0, random_state=3)
    assert score_imc2024(lab, shuffled, {("church", "church"): TH}).score == report.score
    official = score_imc2024(lab, sub)  # church: the official 0.025 ... 1.0 m table
    assert official.datasets[0].scenes[0].registered == [9] * 6


def test_imc2024_nan_poses_are_misses():
    lab, sub = frames_2024(10)
    sub.loc[sub.index[1], ["rotation_matrix", "translation_vector"]] = [
        fmt([np.nan] * 9),
        "nan;nan;nan",
    ]
    report = score_imc2024(lab, sub, {("church", "church"): TH})
    assert report.score == pytest.approx(6 * (8 - 3) / (6 * 7))


# ---------------------------------------------------------------- registration


def slow_registration(ev, gt, th):
    """The official search written plainly: every triplet's Horn fit, every inlier set of more
    than two cameras refit (Kabsch + RMS scale) and scored at every threshold."""
    ok = np.all(np.isfinite(ev), axis=1)
    ev, gt = ev[ok], gt[ok]
    count, total = np.zeros(len(th)), np.full(len(th), np.inf)
    best = np.full((len(ev), len(th)), np.inf)

    def fit(p, q, horn):
        p0, q0 = p - p.mean(0), q - q.mean(0)
        if horn:
            s = p0.T @ q0
            n = np.zeros((4, 4))
            n[0] = [np.trace(s), s[1, 2] - s[2, 1], s[2, 0] - s[0, 2], s[0, 1] - s[1, 0]]
            n[1:, 1:] = s + s.T - np.trace(s) * np.eye(3)
            n[1:, 0] = n[0, 1:]
            w, v = np.linalg.eigh(n)
            a, x, y, z = v[:, np.argmax(w)]
            r = np.array(
                [
                    [a * a + x * x - y * y - z * z, 2 * (x * y - a * z), 2 * (x * z + a * y)],
                    [2 * (x * y + a * z), a * a - x * x + y * y - z * z, 2 * (y * z - a * x)],
                    [2 * (x * z - a * y), 2 * (y * z + a * x), a * a - x * x - y * y + z * z],
                ]
            )
        else:
            u, _, vt = np.linalg.svd(q0.T @ p0)
            r = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
        r = r * np.sqrt(np.sum(q0**2) / np.sum(p0**2))
        return np.sum((ev @ r.T + (q.mean(0) - r @ p.mean(0)) - gt) ** 2, axis=1)

    for t in itertools.combinations(range(len(ev)), 3):
        err = fit(ev[list(t)], gt[list(t)], horn=True)
        for k in range(len(th)):
            inl = err < th[k] ** 2
            if inl.sum() > 2:
                e2 = fit(ev[inl], gt[inl], horn=False)
                c = np.sum(e2[:, None] < th[None] ** 2, axis=0)
                up = (c > count) | ((c == count) & (e2.sum() < total))
                count[up], total[up] = c[up], e2.sum()
                best[:, up] = np.sqrt(e2)[:, None]
    return best, count


@pytest.mark.parametrize("seed", range(12))
def test_registration_matches_the_plain_search(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 10))
    gt = rng.normal(size=(n, 3)) * 2
    ev = 3 * gt @ rotation(rng).T + 1 + rng.normal(size=(n, 3)) * rng.choice([0.01, 0.05, 0.2])
    ev[rng.random(n) < 0.2] = rng.normal(size=3) * 5
    ev[rng.random(n) < 0.15] = np.nan
    th = np.sort(rng.uniform(0.02, 0.6, size=5))
    want_err, want_count = slow_registration(ev, gt, th)
    got = register_by_horn(ev, gt, th, workers=1, batch=int(rng.choice([4, 50])))
    assert np.array_equal(got.valid, np.all(np.isfinite(ev), axis=1))
    assert np.array_equal(got.n_inliers, want_count)
    assert np.array_equal(np.isinf(got.err), np.isinf(want_err))
    fin = np.isfinite(want_err)
    np.testing.assert_allclose(got.err[fin], want_err[fin], rtol=1e-9, atol=1e-9)


def test_registration_does_not_depend_on_threads_or_batches():
    rng = np.random.default_rng(5)
    gt = rng.normal(size=(24, 3))
    ev = gt @ rotation(rng).T * 2 + rng.normal(size=(24, 3)) * 0.03
    th = np.array([0.01, 0.03, 0.1, 0.3])
    a = register_by_horn(ev, gt, th, workers=1, batch=37)
    b = register_by_horn(ev, gt, th, workers=2, batch=37)
    assert np.array_equal(a.err, b.err) and np.array_equal(a.transforms, b.transforms)
    c = register_by_horn(ev, gt, th, workers=2, batch=5000)  # other BLAS blocking: last bits
    assert np.array_equal(a.n_inliers, c.n_inliers)
    np.testing.assert_allclose(a.err, c.err, rtol=1e-12, atol=1e-14)


def test_registration_degenerate_inputs():
    th = np.array([0.1, 1.0])
    two = register_by_horn(np.ones((2, 3)), np.ones((2, 3)), th)
    assert two.err.shape == (2, 2) and np.all(np.isinf(two.err))
    same = register_by_horn(np.zeros((6, 3)), np.random.default_rng(0).normal(size=(6, 3)), th)
    assert np.all(same.n_inliers == 0)  # all centres in one point: no similarity exists


def test_150_cameras_inliers_and_outliers_exactly():
    rng = np.random.default_rng(7)
    gt = rng.normal(size=(150, 3)) * 5
    ev = 0.3 * gt @ rotation(rng).T + np.array([10.0, -2, 4])
    far = rng.choice(150, 15, replace=False)
    ev[far] += rng.normal(size=(15, 3)) * 3
    th = np.array([0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    reg = register_by_horn(ev, gt, th)
    assert reg.n_inliers.tolist() == [135] * 6
    good = np.setdiff1d(np.arange(150), far)
    assert np.all(reg.err[good] < 1e-9) and np.all(reg.err[far] > 0.5)
    assert np.allclose(reg.transforms[:, :, :3] @ ev[good].T + reg.transforms[:, :, 3:], gt[good].T)


# ---------------------------------------------------------------- on imc-bench


def _similar(labels: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every dataset's reference poses under its own random rotation, scale and translation."""
    out = []
    for i, (_, lab) in enumerate(labels.groupby("dataset", sort=False)):
        out.append(submit(lab, seed=seed + i))
    return pd.concat(out)


@pytest.mark.bench
def test_imc_bench_reference_transformed_scores_100_and_all_outliers_0(bench_root):
    lab = pd.read_csv(bench_root / "train_labels.csv")
    th = pd.read_csv(bench_root / "train_thresholds.csv")
    report = score_imc2025(lab, _similar(lab, seed=11), th)
    assert report.score == pytest.approx(100.0)
    assert {d.dataset for d in report.datasets} == set(lab["dataset"])
    none = submit(lab, cluster=lambda row: "outliers")
    assert score_imc2025(lab, none, th).score == 0.0
