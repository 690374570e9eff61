import h5py
import numpy as np
import pytest
from synthetic import make_scene, write_features

from imc import config
from imc.cache import pair_key
from imc.errors import ImcError
from imc.stages import orientation, verification


def test_magsac_keeps_true_matches_and_rejects_outliers():
    scene = make_scene(n_cams=2, outlier_frac=0.3)
    m = scene["matches"][(0, 1)]
    conf = config.DEFAULTS["verification"]
    inliers, F = verification.verify_pair(*scene["keypoints"], m, 1.0, conf)
    true = set(map(tuple, m[m[:, 0] == m[:, 1]]))
    got = set(map(tuple, inliers))
    assert F.shape == (3, 3)
    assert len(got & true) / len(true) > 0.95
    assert len(got - true) / len(got) < 0.03  # random matches rarely fit the epipolar geometry


def test_verify_matches_is_the_pair_threshold_the_fit_and_min_inliers():
    scene = make_scene(n_cams=2, outlier_frac=0.3, w=2048, h=1536)
    m, (k0, k1) = scene["matches"][(0, 1)], scene["keypoints"]
    conf = config.DEFAULTS["verification"]
    size = (2048, 1536)  # stored images twice the extraction size: a 2 px threshold

    def verify(conf, matches):
        return verification.verify_matches(
            conf, {"resize_long_side": 1024}, k0, k1, size, size, matches
        )

    inliers, F, kept = verify(conf, m)
    expected, expected_F = verification.verify_pair(k0, k1, m, 2.0 * conf["threshold"], conf)
    np.testing.assert_array_equal(inliers, expected)
    np.testing.assert_array_equal(F, expected_F)
    assert kept and len(inliers) >= conf["min_inliers"]
    assert not verify({**conf, "min_inliers": len(inliers) + 1}, m)[2]
    assert verify({**conf, "min_inliers": 0}, m[:5])[1:] == (None, False)  # no fit: dropped


def test_too_few_matches_give_no_geometry():
    k = np.zeros((5, 2), np.float32)
    inl, F = verification.verify_pair(
        k, k, np.zeros((5, 2), np.int32), 1.0, config.DEFAULTS["verification"]
    )
    assert inl.shape == (0, 2) and F is None


def test_threshold_scales_with_the_resize():
    conf = {"threshold": 1.0}
    assert (
        verification.pair_threshold(conf, {"resize_long_side": 1024}, (640, 480), (640, 480)) == 1.0
    )
    assert (
        verification.pair_threshold(conf, {"resize_long_side": 1024}, (3072, 2048), (3072, 2048))
        == 3.0
    )


# Twelve matches (x0, y0, x1, y1) from a dark, weakly textured image pair (dinoSparseRing, upright
# frame) on which cv2.findFundamentalMat(USAC_MAGSAC, 1 px) raises "!model.empty()" instead of
# returning no model.
DEGENERATE_MATCHES = [
    (130.7830047607422, 192.02197265625, 185.1988983154297, 75.9438705444336),
    (60.81145477294922, 242.35340881347656, 98.20257568359375, 166.3753204345703),
    (77.87062072753906, 23.85529136657715, 104.9724349975586, 41.99424743652344),
    (61.87807846069336, 258.27264404296875, 102.00421142578125, 185.9989776611328),
    (89.62109375, 245.73814392089844, 121.71375274658203, 179.12745666503906),
    (50.055519104003906, 239.92262268066406, 86.00908660888672, 163.01588439941406),
    (76.04044342041016, 243.9209442138672, 109.74854278564453, 171.65658569335938),
    (55.0521354675293, 258.9002380371094, 94.99951934814453, 182.99911499023438),
    (23.971717834472656, 283.9469299316406, 75.6463851928711, 201.04405212402344),
    (56.98084259033203, 233.06704711914062, 91.99928283691406, 158.99569702148438),
    (73.03036499023438, 239.02549743652344, 111.15483093261719, 163.42494201660156),
    (67.98783874511719, 16.00690269470215, 78.00242614746094, 24.00234603881836),
]


def test_an_opencv_assertion_on_degenerate_matches_is_no_geometry():
    points = np.array(DEGENERATE_MATCHES, np.float32)
    k0, k1 = points[:, :2], points[:, 2:]
    m = np.stack([np.arange(12), np.arange(12)], 1)
    inl, F = verification.verify_pair(k0, k1, m, 1.0, config.DEFAULTS["verification"])
    assert F is None and inl.shape == (0, 2)
    orientation_inliers = orientation.count_inliers(
        {"keypoints_upright": k0}, {"keypoints_upright": k1}, m
    )
    assert orientation_inliers == 0


def _matched_files(tmp_path, n_cams=4):
    """features.h5 and matches.h5 of a synthetic scene: the pairs, and each pair's (matches,
    scores) as matching hands them over."""
    scene = make_scene(n_cams=n_cams, outlier_frac=0.3)
    names = [f"im{i}.png" for i in range(n_cams)]
    feats = write_features(scene, names, tmp_path / "features.h5")
    keys = sorted(scene["matches"])
    pairs = [(names[i], names[j]) for i, j in keys]
    found = [(scene["matches"][k], np.ones(len(scene["matches"][k]))) for k in keys]
    with h5py.File(tmp_path / "matches.h5", "w") as f:
        for (a, b), (m, _) in zip(pairs, found):
            f.create_group(pair_key(a, b)).create_dataset("matches", data=m.astype(np.int32))
    return feats, tmp_path / "matches.h5", pairs, found


def _verified(path):
    with h5py.File(path, "r") as f:
        return {
            (ka, kb): (g["inliers"][()], g["F"][()], dict(g.attrs))
            for ka, ga in f.items()
            for kb, g in ga.items()
        }


def test_verifying_while_matching_writes_what_verification_writes_after(tmp_path):
    """Background (pairs verified as matching hands them over, in batches) and the stage's own
    loop give the same verified.h5, array for array."""
    feats, matches, pairs, found = _matched_files(tmp_path)
    conf = config.DEFAULTS
    after = verification.main(conf, verification.Inputs(pairs, feats, matches), tmp_path / "a")
    with verification.Background(conf, feats) as early:
        early.submit(pairs[:2], found[:2])  # two batches, as matching hands them over
        early.submit(pairs[2:], found[2:])
    assert set(early.results) == set(pairs)
    inputs = verification.Inputs(pairs, feats, matches, early.results)
    during = verification.main(conf, inputs, tmp_path / "b")
    a, b = _verified(after), _verified(during)
    assert a.keys() == b.keys() and len(a) == len(pairs)
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0])
        np.testing.assert_array_equal(a[key][1], b[key][1])
        assert a[key][2] == b[key][2]
        assert len(a[key][0]) > 0
    # what was verified early is written as it is, not verified again
    marked = {**early.results, pairs[0]: (np.zeros((0, 2), np.int32), None, 7)}
    inputs = verification.Inputs(pairs, feats, matches, marked)
    c = _verified(verification.main(conf, inputs, tmp_path / "c"))
    first = next(iter(c.values()))
    assert first[0].shape == (0, 2) and first[2]["num_matches"] == 7


def test_an_error_on_the_verification_thread_is_raised_in_the_caller(tmp_path):
    feats, _, pairs, found = _matched_files(tmp_path, n_cams=2)
    with pytest.raises(ImcError, match="no features for image 'missing.png'"):
        with verification.Background(config.DEFAULTS, feats) as early:
            early.submit([("missing.png", pairs[0][1])], found[:1])
