import numpy as np
import pytest
from synthetic import make_scene, toy_dataset, verified_pairs

from imc import config, mapping
from imc.errors import ImcError


def _centres(poses):
    return np.array([-R.T @ t for R, t in poses])


def _align_error(est: np.ndarray, ref: np.ndarray) -> float:
    """Max centre error after a least-squares similarity (Umeyama)."""
    me, mr = est.mean(0), ref.mean(0)
    e, r = est - me, ref - mr
    u, s, vt = np.linalg.svd(r.T @ e)
    d = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = (s * np.diag(d)).sum() / (e**2).sum()
    return float(np.abs(scale * e @ rot.T + mr - ref).max())


def test_mapping_recovers_the_synthetic_cameras(tmp_path):
    scene = make_scene(n_cams=6, noise=0.2)
    names = [f"im{i}.png" for i in range(6)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    conf = config.DEFAULTS
    preds = mapping.main(
        conf["mapping"],
        conf["runtime"],
        ds,
        names,
        feats,
        verified_pairs(scene, names),
        tmp_path / "out",
    )
    assert set(preds) == set(names)
    assert {p.cluster for p in preds.values()} == {"cluster0"}
    est = _centres([(preds[n].R, preds[n].t) for n in names])
    ref = _centres(scene["poses"])
    assert _align_error(est, ref) < 0.02 * np.linalg.norm(ref - ref.mean(0), axis=1).mean()
    assert (tmp_path / "out" / "models" / "0" / "points.ply").is_file()
    assert (tmp_path / "out" / "models" / "0" / "cameras.bin").is_file()


def test_mapping_is_deterministic(tmp_path):
    scene = make_scene(n_cams=5, noise=0.5, seed=3)
    names = [f"im{i}.png" for i in range(5)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    conf = config.DEFAULTS
    runs = [
        mapping.main(
            conf["mapping"],
            conf["runtime"],
            ds,
            names,
            feats,
            verified_pairs(scene, names),
            tmp_path / f"out{k}",
        )
        for k in range(2)
    ]
    for n in names:
        assert np.array_equal(runs[0][n].R, runs[1][n].R)
        assert np.array_equal(runs[0][n].t, runs[1][n].t)


def test_no_pairs_means_no_model(tmp_path):
    scene = make_scene(n_cams=2)
    names = ["a.png", "b.png"]
    ds, feats = toy_dataset(scene, names, tmp_path)
    conf = config.DEFAULTS
    assert (
        mapping.main(conf["mapping"], conf["runtime"], ds, names, feats, {}, tmp_path / "o") == {}
    )


def test_overlapping_models_give_each_image_one_cluster():
    class FakeImage:
        def __init__(self, name):
            self.name, self.has_pose = name, True

        def cam_from_world(self):
            class P:
                def matrix(self):
                    return np.hstack([np.eye(3), np.zeros((3, 1))])

            return P()

    class FakeModel:
        def __init__(self, names):
            self.images = {i: FakeImage(n) for i, n in enumerate(names)}

    big = FakeModel(["a", "b", "c", "d"])
    overlap = FakeModel(["c", "d", "e"])  # only 'e' is new: below min_model_size
    other = FakeModel(["f", "g", "h"])
    preds = mapping.assign_clusters([big, overlap, other], {n: n for n in "abcdefgh"}, 3)
    assert {n: p.cluster for n, p in preds.items()} == {
        "a": "cluster0",
        "b": "cluster0",
        "c": "cluster0",
        "d": "cluster0",
        "f": "cluster1",
        "g": "cluster1",
        "h": "cluster1",
    }


def test_unknown_mapper_option_is_an_error():
    conf = config.merge(config.DEFAULTS["mapping"], {"options": {"init_min_tri_angel": 3}})
    with pytest.raises(ImcError, match="init_min_tri_angel.*init_min_tri_angle"):
        mapping.pipeline_options(conf, 1, 0)
    conf = config.merge(
        config.DEFAULTS["mapping"],
        {"options": {"init_min_tri_angle": 3.0, "ba_global_max_num_iterations": 7}},
    )
    opts = mapping.pipeline_options(conf, 1, 0)
    assert opts.mapper.init_min_tri_angle == 3.0 and opts.ba_global_max_num_iterations == 7


def test_global_mapper_recovers_the_synthetic_cameras(tmp_path):
    scene = make_scene(n_cams=6, noise=0.2, seed=5)
    names = [f"im{i}.png" for i in range(6)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    conf = config.merge(config.DEFAULTS, {"mapping": {"mapper": "global"}})
    preds = mapping.main(
        conf["mapping"],
        conf["runtime"],
        ds,
        names,
        feats,
        verified_pairs(scene, names),
        tmp_path / "g",
    )
    assert set(preds) == set(names)
    est = _centres([(preds[n].R, preds[n].t) for n in names])
    ref = _centres(scene["poses"])
    assert _align_error(est, ref) < 0.02 * np.linalg.norm(ref - ref.mean(0), axis=1).mean()


def test_incremental_defaults_apply_to_the_incremental_pipeline_only():
    conf = config.resolve()["mapping"]
    opts = mapping.pipeline_options(conf, 1, 0)
    assert (
        opts.mapper.filter_max_reproj_error
        == mapping.INCREMENTAL_DEFAULTS["filter_max_reproj_error"]
    )
    conf["options"] = {"filter_max_reproj_error": 3.0}  # the configuration wins
    assert mapping.pipeline_options(conf, 1, 0).mapper.filter_max_reproj_error == 3.0
    conf = config.resolve(overrides=["mapping.mapper=global"])["mapping"]
    mapping.pipeline_options(conf, 1, 0)  # no incremental option reaches the global pipeline
