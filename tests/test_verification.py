import numpy as np
from synthetic import make_scene

from imc import config, verification


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
