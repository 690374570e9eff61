import math
import sqlite3
import time
import types

import cv2
import numpy as np
import pycolmap
import pytest
from PIL import Image
from synthetic import make_scene, map_scene, toy_dataset, verified_pairs

from imc import colmap_options, config
from imc.errors import ImcError
from imc.stages import global_mapping, mapping


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
    result = map_scene(scene, names, ds, feats, tmp_path / "out")
    preds = result.preds
    assert set(preds) == set(names)
    assert {p.cluster for p in preds.values()} == {"cluster0"}
    (stats,) = result.to_dict()["models"]  # one model, its statistics for summary.json
    assert stats["registered_images"] == 6 and stats["points3D"] > 100
    assert stats["mean_track_length"] >= 2 and 0 < stats["mean_reprojection_error_px"] < 1.5
    est = _centres([(preds[n].R, preds[n].t) for n in names])
    ref = _centres(scene["poses"])
    assert _align_error(est, ref) < 0.02 * np.linalg.norm(ref - ref.mean(0), axis=1).mean()
    assert (tmp_path / "out" / "models" / "0" / "points.ply").is_file()
    assert (tmp_path / "out" / "models" / "0" / "cameras.bin").is_file()
    log = tmp_path / "out" / "colmap.log"  # COLMAP's own log, under the name the README gives
    assert "Registering image" in log.read_text() or "register" in log.read_text().lower()
    assert not list((tmp_path / "out").glob("colmap.log.*"))


def test_mapping_is_deterministic(tmp_path):
    scene = make_scene(n_cams=5, noise=0.5, seed=3)
    names = [f"im{i}.png" for i in range(5)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    runs = [map_scene(scene, names, ds, feats, tmp_path / f"out{k}").preds for k in range(2)]
    for n in names:
        assert np.array_equal(runs[0][n].R, runs[1][n].R)
        assert np.array_equal(runs[0][n].t, runs[1][n].t)


def test_no_pairs_means_no_model(tmp_path):
    scene = make_scene(n_cams=2)
    names = ["a.png", "b.png"]
    ds, feats = toy_dataset(scene, names, tmp_path)
    conf = config.DEFAULTS
    result = mapping.main(conf, mapping.Inputs(ds, names, feats, {}), tmp_path / "o")
    assert result.preds == {} and result.seconds == []
    bad = config.merge(conf, {"mapping": {"camera_mode": "single"}})
    with pytest.raises(ImcError, match="camera_mode 'single'.*auto, per_image, shared"):
        mapping.main(bad, mapping.Inputs(ds, names, feats, {}), tmp_path / "o")


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
    preds = map_scene(scene, names, ds, feats, tmp_path / "g", conf).preds
    assert set(preds) == set(names)
    est = _centres([(preds[n].R, preds[n].t) for n in names])
    ref = _centres(scene["poses"])
    assert _align_error(est, ref) < 0.02 * np.linalg.norm(ref - ref.mean(0), axis=1).mean()


def test_incremental_defaults_apply_to_the_incremental_pipeline_only():
    conf = config.resolve()["mapping"]
    opts = mapping.pipeline_options(conf, 1, 0)
    assert (
        opts.mapper.filter_max_reproj_error
        == colmap_options.INCREMENTAL_DEFAULTS["filter_max_reproj_error"]
    )
    conf["options"] = {"filter_max_reproj_error": 3.0}  # the configuration wins
    assert mapping.pipeline_options(conf, 1, 0).mapper.filter_max_reproj_error == 3.0
    conf = config.resolve(overrides=["mapping.mapper=global"])["mapping"]
    mapping.pipeline_options(conf, 1, 0)  # no incremental option reaches the global pipeline


def _cameras_in(db_path) -> int:
    with sqlite3.connect(db_path) as c:
        return c.execute("select count(*) from cameras").fetchone()[0]


def _six_views_of_one_camera(tmp_path, mapping_conf: dict):
    """Map six noisy views of the synthetic scene (one camera) with the mapping section's
    `mapping_conf`; (scene, result), every view registered."""
    scene = make_scene(n_cams=6, noise=0.2)
    names = [f"im{i}.png" for i in range(6)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    conf = config.merge(config.DEFAULTS, {"mapping": mapping_conf})
    result = map_scene(scene, names, ds, feats, tmp_path, conf)
    assert set(result.preds) == set(names)
    return scene, result


@pytest.mark.parametrize(("mode", "cameras"), [("per_image", 6), ("shared", 1), ("auto", 1)])
def test_camera_modes(tmp_path, mode, cameras):
    """One camera: the six views come from one camera (same size, same focal length), which
    `auto` finds from their per-image focal lengths."""
    scene, result = _six_views_of_one_camera(tmp_path, {"camera_mode": mode})
    assert result.cameras == ("per_image" if mode == "per_image" else "shared")
    assert _cameras_in(tmp_path / "database.db") == cameras
    model = pycolmap.Reconstruction(tmp_path / "models" / "0")
    assert model.num_cameras() == cameras
    f = scene["K"][0, 0]
    assert all(abs(c.focal_length / f - 1) < 0.02 for c in model.cameras.values())
    assert not (tmp_path / "database-shared.db").exists()
    assert not (tmp_path / "sfm-shared").exists()


@pytest.mark.parametrize("model", ["SIMPLE_PINHOLE", "OPENCV"])
def test_camera_model(tmp_path, model):
    """`mapping.camera_model`: every camera of the database and of the models is of it, and the
    focal length is still found."""
    scene, _ = _six_views_of_one_camera(tmp_path, {"camera_model": model})
    db = pycolmap.Database.open(str(tmp_path / "database.db"))
    try:
        assert {c.model.name for c in db.read_all_cameras()} == {model}
    finally:
        db.close()
    rec = pycolmap.Reconstruction(tmp_path / "models" / "0")
    assert {c.model.name for c in rec.cameras.values()} == {model}
    f = scene["K"][0, 0]
    assert all(abs(c.mean_focal_length() / f - 1) < 0.02 for c in rec.cameras.values())


def test_auto_keeps_one_camera_per_image_when_a_group_mixes_two_cameras(tmp_path, caplog):
    """Eight views of one size, four at 768 px focal length and four at 900 px: the shared pass
    registers them all, but one camera cannot fit both focal lengths (its reprojection error
    about doubles), so `auto` keeps per-image cameras."""
    scene = make_scene(n_cams=8, focals=[768] * 4 + [900] * 4)
    names = [f"im{i}.png" for i in range(8)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    with caplog.at_level("INFO", logger="imc"):
        result = map_scene(scene, names, ds, feats, tmp_path)
    assert "1 shared 8 images" in caplog.text  # the shared pass ran
    assert set(result.preds) == set(names) and result.cameras == "per_image"
    assert len(result.seconds) == 2
    assert _cameras_in(tmp_path / "database.db") == 8
    model = pycolmap.Reconstruction(tmp_path / "models" / "0")
    for image in model.images.values():
        f = scene["Ks"][names.index(image.name)][0, 0]
        assert abs(model.cameras[image.camera_id].focal_length / f - 1) < 0.02


def test_groups_with_too_few_registered_images_are_not_shared():
    class Im:
        def __init__(self, name, registered=True):
            self.name, self.has_pose = name, registered

    class Model:
        def __init__(self, images):
            self.images = dict(enumerate(images))

    keys = {f"a{i}": (640, 480) for i in range(3)} | {f"b{i}": (480, 640) for i in range(3)}
    keys |= {"c": (10, 10)}
    models = [
        Model([Im("a0"), Im("a1"), Im("b0"), Im("b1")]),
        Model([Im("a2"), Im("b2", registered=False), Im("c")]),
    ]
    groups = mapping.shareable_groups(models, {n: n for n in keys}, keys)
    assert groups == {n: (640, 480) for n in ("a0", "a1", "a2")}


@pytest.mark.parametrize(
    ("groups_after", "max_seconds"),
    [("as_guessed", None), ("fewer", None), ("none", None), ("as_guessed", 3600.0)],
)
def test_auto_maps_its_two_passes_side_by_side_as_one_after_the_other(
    tmp_path, monkeypatch, groups_after, max_seconds
):
    """With a core to spare, `auto` starts the shared pass beside the per-image one on the
    groups it guesses (every image registered); the result is the one of the passes mapped one
    after the other: the same poses, cameras, mapper and passes. When the per-image pass gives
    other groups (here forced: fewer images, or none), the early pass is dropped and, if any
    group is left, mapped again on the right groups. A time limit that leaves time for both
    changes nothing."""
    scene = make_scene(n_cams=8, focals=[768] * 4 + [900] * 4)
    names = [f"im{i}.png" for i in range(8)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    real = mapping.shareable_groups
    if groups_after == "fewer":
        monkeypatch.setattr(
            mapping, "shareable_groups", lambda *a: dict(list(real(*a).items())[:5])
        )
    elif groups_after == "none":
        monkeypatch.setattr(mapping, "shareable_groups", lambda *a: {})
    side = []
    monkeypatch.setattr(
        mapping,
        "_auto_side_by_side",
        lambda *a, f=mapping._auto_side_by_side: side.append(1) or f(*a),
    )
    runs = {}
    for width in (1, 2):
        monkeypatch.setattr(mapping, "concurrent_runs", lambda runtime, w=width: w)
        runs[width] = map_scene(scene, names, ds, feats, tmp_path / f"w{width}", None, max_seconds)
        assert not list((tmp_path / f"w{width}").glob("*-shared*"))
    assert side == [1]  # only the two-wide run took the side-by-side path
    one, two = runs[1], runs[2]
    assert (one.cameras, one.mapper, one.shared_groups) == (
        two.cameras,
        two.mapper,
        two.shared_groups,
    )
    assert len(one.seconds) == len(two.seconds) == (1 if groups_after == "none" else 2)
    assert set(one.preds) == set(two.preds) == set(names)
    for n in names:
        assert np.array_equal(one.preds[n].R, two.preds[n].R)
        assert np.array_equal(one.preds[n].t, two.preds[n].t)
    assert _cameras_in(tmp_path / "w1" / "database.db") == _cameras_in(
        tmp_path / "w2" / "database.db"
    )


def test_reprojection_error_weighs_models_by_observations(tmp_path):
    scene = make_scene(n_cams=4, noise=0.2)
    names = [f"im{i}.png" for i in range(4)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    map_scene(scene, names, ds, feats, tmp_path)
    model = pycolmap.Reconstruction(tmp_path / "models" / "0")
    e = model.compute_mean_reprojection_error()
    assert 0 < e < 1
    assert mapping.reprojection_error([model, model]) == pytest.approx(e)
    assert mapping.reprojection_error([]) == float("inf")


class _Im:
    def __init__(self, name):
        self.name, self.has_pose = name, True


class _Model:
    """Stands for a pycolmap.Reconstruction where only its registered names matter."""

    def __init__(self, names):
        self.images = {i: _Im(n) for i, n in enumerate(names)}


def test_pair_groups_and_their_coverage():
    names = ["a", "b", "c", "d", "e", "f", "g"]
    pairs = [("a", "b"), ("b", "c"), ("d", "e"), ("f", "g"), ("x", "a")]
    verified = {p: {"inliers": np.zeros((20, 2), np.int32)} for p in pairs}
    groups = global_mapping.pair_groups(names, verified, 3)
    assert groups == [{"a", "b", "c"}]
    assert global_mapping.pair_groups(names, verified, 2) == [
        {"a", "b", "c"},
        {"d", "e"},
        {"f", "g"},
    ]
    assert global_mapping.pair_groups(names, {}, 2) == []

    models = [_Model(["a", "b", "d"]), _Model(["b", "c", "d", "e"])]
    groups = global_mapping.pair_groups(names, verified, 2)
    assert global_mapping.coverage(models, groups, {n: n for n in names}) == [2, 2, 0]
    # a-b-c and d-e are each registered in both models: split; f-g in none
    assert global_mapping.split(models, groups, {n: n for n in names}) == [True, True, False]
    assert global_mapping.split(models[:1], groups, {n: n for n in names}) == [False] * 3


@pytest.mark.parametrize(
    "supports, kept",
    [((1000, 1003), "global"), ((1000, 1001), "incremental"), ((1003, 1000), "incremental")],
)
def test_a_split_group_is_mapped_globally_and_support_decides_on_equal_coverage(
    tmp_path, monkeypatch, caplog, supports, kept
):
    """Incremental models a-b-c-d | d-e hold 4 of the 5 images of a group (at the 0.8 share)
    but split it, so the global pipeline runs too; its models cover as many, and are kept only
    with more than SUPPORT_MARGIN (0.2 %) more agreeing inliers."""
    incremental, alt = [_Model("abcd"), _Model("de")], [_Model("abcd")]
    names = {n: n for n in "abcde"}
    run = types.SimpleNamespace(
        conf={"global_fallback": 0.8}, linked_groups=[set("abcde")], name_of=names,
        end=math.inf, dataset="toy", verified={}, features=None,
    )  # fmt: skip

    def map_levels(run, shared, alt_dir):
        alt_dir.mkdir()
        return alt

    monkeypatch.setattr(global_mapping, "map_levels", map_levels)
    monkeypatch.setattr(
        global_mapping, "model_support", lambda m, *a: supports[0 if m is incremental else 1]
    )
    sfm = tmp_path / "sfm"
    sfm.mkdir()
    with caplog.at_level("INFO", logger="imc"):
        models, mapper = global_mapping.fallback(run, incremental, {}, sfm, time.monotonic())
    assert "as many images covered" in caplog.text
    assert mapper == kept and models is (alt if kept == "global" else incremental)
    assert sfm.is_dir() and not (tmp_path / "sfm-global").exists()
    # one model holding 4 of 5 (the share) and no second piece: no global pipeline
    calls = []
    monkeypatch.setattr(global_mapping, "map_levels", lambda *a: calls.append(a))
    whole = [_Model("abcd")]
    assert global_mapping.fallback(run, whole, {}, sfm, time.monotonic()) == (
        whole, "incremental",
    )  # fmt: skip
    assert calls == []


@pytest.mark.parametrize(
    "second_mapper, supports, cameras",
    [
        ("global", (53009, 53578), "shared"),  # mappers differ: support, clearly more
        ("global", (53009, 53050), "per_image"),  # within the margin: the errors decide
        ("incremental", (53009, 53578), "per_image"),  # same mapper: the errors decide
    ],
)
def test_passes_of_different_mappers_are_chosen_by_support(
    monkeypatch, second_mapper, supports, cameras
):
    """The per-image pass (incremental, 0.454 px) against the shared pass: as many images
    registered, the shared pass's error above the tolerance (0.562 px). Made by the same
    mapper, the errors decide; when the shared pass fell back to the global pipeline, errors of
    different mappers do not compare and clearly more agreeing inliers decide."""
    first, second = [_Model("abc")], [_Model("abc")]
    monkeypatch.setattr(mapping, "registered", lambda m, *a: 3)
    monkeypatch.setattr(mapping, "reprojection_error", lambda m: 0.454 if m is first else 0.562)
    support = {id(first): supports[0], id(second): supports[1]}
    monkeypatch.setattr(mapping, "model_support", lambda m, *a: support[id(m)])
    for name in ("_keep", "_discard"):
        monkeypatch.setattr(mapping, name, lambda *a: None)
    result = mapping.MappingResult()
    result.mapper = "incremental"
    run = types.SimpleNamespace(
        conf={"min_model_size": 3, "reprojection_tolerance": 0.2}, result=result,
        name_of={}, dataset="toy", verified={}, features=None, out_dir=None,
    )  # fmt: skip
    kept = mapping._choose(run, first, {"a": 1}, second, second_mapper)
    assert result.cameras == cameras
    assert kept is (second if cameras == "shared" else first)
    assert result.mapper == (second_mapper if cameras == "shared" else "incremental")


def test_global_fallback_maps_what_incremental_mapping_leaves_unmapped(tmp_path, caplog):
    """Incremental mapping told to need more inliers than any pair has registers nothing; the
    fallback maps the scene with the global pipeline (pycolmap's defaults)."""
    scene = make_scene(n_cams=6, noise=0.2, seed=5)
    names = [f"im{i}.png" for i in range(6)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    strict = {"options": {"init_min_num_inliers": 100000}, "camera_mode": "per_image"}
    conf = config.merge(config.DEFAULTS, {"mapping": strict})
    with caplog.at_level("INFO", logger="imc"):
        result = map_scene(scene, names, ds, feats, tmp_path / "on", conf)
    assert "incremental models cover [0] of groups of [6] images, global ones [6]" in caplog.text
    assert result.mapper == "global" and set(result.preds) == set(names)
    assert result.to_dict()["mapper"] == "global"
    assert result.to_dict()["global_pairs"] == 15  # every pair of 6 cameras: all strong
    est = _centres([(result.preds[n].R, result.preds[n].t) for n in names])
    ref = _centres(scene["poses"])
    assert _align_error(est, ref) < 0.02 * np.linalg.norm(ref - ref.mean(0), axis=1).mean()
    assert (tmp_path / "on" / "sfm" / "0").is_dir()
    assert (tmp_path / "on" / "sfm" / "database.db").is_file()  # the global pipeline's pairs
    assert result.to_dict()["global_database"] == str(tmp_path / "on" / "sfm" / "database.db")
    assert not (tmp_path / "on" / "sfm-global").exists()
    off = config.merge(conf, {"mapping": {"global_fallback": 0}})
    result = map_scene(scene, names, ds, feats, tmp_path / "off", off)
    assert result.mapper == "incremental" and result.preds == {}
    assert result.to_dict()["global_database"] is None


def test_global_fallback_is_not_tried_when_incremental_mapping_covers_the_scene(tmp_path, caplog):
    scene = make_scene(n_cams=6, noise=0.2)
    names = [f"im{i}.png" for i in range(6)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    with caplog.at_level("INFO", logger="imc"):
        result = map_scene(scene, names, ds, feats, tmp_path)
    assert result.mapper == "incremental" and set(result.preds) == set(names)
    assert "global ones" not in caplog.text


def test_global_pairs_keep_each_images_strongest_pair():
    names = ["a", "b", "c", "d"]
    pairs = {("a", "b"): 400, ("b", "c"): 300, ("a", "c"): 60, ("c", "d"): 40, ("a", "d"): 9}
    verified = {p: {"inliers": np.zeros((n, 2), int)} for p, n in pairs.items()}
    kept = global_mapping.global_pairs(names, verified, 0.25)
    # a-c: 60 < 0.25 x 300 (c's strongest); a-d: 9 < 0.25 x 40 (d's strongest, its only other
    # pair, weak as it is, is kept)
    assert set(kept) == {("a", "b"), ("b", "c"), ("c", "d")}
    assert global_mapping.global_pairs(names, verified, 0.0) == verified


def _arc_with_false_pairs(n, tmp_path):
    """n cameras on an arc, neighbours verified, and four far pairs of 20 random
    correspondences with their 8-point F (as a repetitive texture gives)."""
    scene = make_scene(n_cams=n, noise=0.3)
    names = [f"im{i}.png" for i in range(n)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    pairs = {
        p: v
        for p, v in verified_pairs(scene, names).items()
        if names.index(p[1]) - names.index(p[0]) == 1
    }
    rng = np.random.default_rng(0)
    for i, j in [(0, 4), (1, 6), (2, 7), (3, 7)]:
        m = np.stack([rng.choice(600, 20, replace=False), rng.choice(600, 20, replace=False)], 1)
        p0, p1 = scene["keypoints"][i][m[:, 0]], scene["keypoints"][j][m[:, 1]]
        F, _ = cv2.findFundamentalMat(p0.astype(float), p1.astype(float), cv2.FM_8POINT)
        pairs[(names[i], names[j])] = {"inliers": m, "F": F, "num_matches": 20}
    return scene, names, ds, feats, pairs


def test_the_global_pipeline_is_spared_weak_false_pairs(tmp_path, caplog):
    """Neighbours on an arc share hundreds of inliers; four far pairs of 20 random
    correspondences (with their 8-point F, as a repetitive texture gives) pull the global
    pipeline's model apart unless the relatively weak pairs are dropped first. Given both
    levels, the models that agree with more verified inliers (the unbroken ones) are kept."""
    n = 8
    scene, names, ds, feats, pairs = _arc_with_false_pairs(n, tmp_path)
    ref = _centres(scene["poses"])
    spread = np.linalg.norm(ref - ref.mean(0), axis=1).mean()
    errors = {}
    for levels in (0.0, [0.25], [0.0, 0.25]):
        over = {"mapper": "global", "camera_mode": "per_image"}
        conf = config.merge(config.DEFAULTS, {"mapping": over})
        conf["mapping"]["global_min_relative_inliers"] = levels
        out = tmp_path / f"levels{levels}"
        with caplog.at_level("INFO", logger="imc"):
            result = mapping.main(conf, mapping.Inputs(ds, names, feats, pairs), out)
        assert set(result.preds) == set(names)
        est = _centres([(result.preds[k].R, result.preds[k].t) for k in names])
        errors[str(levels)] = _align_error(est, ref) / spread
        with sqlite3.connect(out / "sfm" / "database.db") as db:  # the kept models' pairs
            stored = db.execute("select count(*) from two_view_geometries").fetchone()[0]
        assert stored == result.global_pairs == (n - 1 + 4 if levels == 0.0 else n - 1)
        with sqlite3.connect(out / "database.db") as db:  # every verified pair
            assert db.execute("select count(*) from two_view_geometries").fetchone()[0] == n + 3
    assert errors["0.0"] > 0.1 and errors["[0.25]"] < 0.02 and errors["[0.0, 0.25]"] < 0.02
    assert "global pipeline on [11, 7] of 11 pairs" in caplog.text


def test_each_global_level_is_mapped_with_each_seed_and_support_chooses(tmp_path, caplog):
    """With `global_seeds` 2, the global pipeline maps its level with runtime.seed and
    runtime.seed + 1; the models kept are those of the run with the most agreeing inliers,
    as the log's counts say, and their folder is the only one left."""
    scene = make_scene(n_cams=6, noise=0.3)
    names = [f"im{i}.png" for i in range(6)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    pairs = verified_pairs(scene, names)
    over = {"mapper": "global", "camera_mode": "per_image", "global_seeds": 2}
    conf = config.merge(config.DEFAULTS, {"mapping": over, "runtime": {"seed": 5}})
    conf["mapping"]["global_min_relative_inliers"] = [0.0]
    with caplog.at_level("INFO", logger="imc"):
        result = mapping.main(conf, mapping.Inputs(ds, names, feats, pairs), tmp_path / "out")
    assert set(result.preds) == set(names)
    line = next(r.message for r in caplog.records if "global pipeline on" in r.message)
    assert "seed 5, then seeds [6] on levels [0.0]" in line
    counts = [int(c) for c in line.split("agree")[0].split("): [")[1].split("]")[0].split(",")]
    assert len(counts) == 2  # one level, two seeds
    model = [pycolmap.Reconstruction(d) for d in sorted((tmp_path / "out" / "sfm").glob("[0-9]*"))]
    _, db_names = mapping.database_names(ds)
    name_of = {v: k for k, v in db_names.items()}
    assert global_mapping.model_support(model, pairs, feats, name_of) == max(counts)
    assert not list((tmp_path / "out").glob("*global*"))


def test_more_seeds_go_to_the_levels_with_the_most_agreeing_inliers(tmp_path, caplog):
    """Every level is mapped with runtime.seed first; then only the `global_restart_levels`
    levels whose models agree with the most verified inliers get the other seeds (here the
    level that drops the false pairs), or every level with 0. The models kept are those of the
    run with the most agreeing inliers."""
    scene, names, ds, feats, pairs = _arc_with_false_pairs(8, tmp_path)
    for top in (1, 0):
        over = {"mapper": "global", "camera_mode": "per_image", "global_seeds": 2}
        over["global_restart_levels"] = top
        conf = config.merge(config.DEFAULTS, {"mapping": over, "runtime": {"seed": 3}})
        conf["mapping"]["global_min_relative_inliers"] = [0.0, 0.25]
        out = tmp_path / f"top{top}"
        caplog.clear()
        with caplog.at_level("INFO", logger="imc"):
            result = mapping.main(conf, mapping.Inputs(ds, names, feats, pairs), out)
        assert set(result.preds) == set(names)
        line = next(r.message for r in caplog.records if "global pipeline on" in r.message)
        counts = [int(c) for c in line.split("agree")[0].split("): [")[1].split("]")[0].split(",")]
        model = [pycolmap.Reconstruction(d) for d in sorted((out / "sfm").glob("[0-9]*"))]
        name_of = {v: k for k, v in mapping.database_names(ds)[1].items()}
        assert global_mapping.model_support(model, pairs, feats, name_of) == max(counts)
        assert result.global_pairs == len(names) - 1  # a run of the level without false pairs
        if top == 1:
            assert counts[1] > counts[0]  # the false pairs bend level 0.0's model
            assert len(counts) == 3 and "seed 3, then seeds [4] on levels [0.25]" in line
        else:
            assert len(counts) == 4 and "seed 3, then seeds [4] on levels [0.0, 0.25]" in line
        assert not list(out.glob("*global*"))


def test_model_support_counts_the_matches_that_fit_the_poses(tmp_path):
    scene = make_scene(n_cams=4, noise=0.3, outlier_frac=0.0)
    names = [f"im{i}.png" for i in range(4)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    pairs = verified_pairs(scene, names)
    result = map_scene(scene, names, ds, feats, tmp_path / "out")
    model = pycolmap.Reconstruction(tmp_path / "out" / "sfm" / "0")
    _, db_names = mapping.database_names(ds)
    name_of = {v: k for k, v in db_names.items()}
    total = sum(len(v["inliers"]) for v in pairs.values())
    assert len(result.preds) == 4
    assert global_mapping.model_support([model], pairs, feats, name_of) > 0.95 * total
    # tilt one camera by 5 degrees (across the epipolar lines): its three pairs no longer fit
    image = next(im for im in model.images.values() if name_of[im.name] == "im1.png")
    turned = pycolmap.Rotation3d(
        np.array([np.sin(np.deg2rad(2.5)), 0.0, 0.0, np.cos(np.deg2rad(2.5))])
    )
    frame = model.frames[image.frame_id]
    pose = frame.rig_from_world
    frame.rig_from_world = pycolmap.Rigid3d(turned * pose.rotation, pose.translation)
    three = sum(len(v["inliers"]) for p, v in pairs.items() if "im1.png" in p)
    assert (
        global_mapping.model_support([model], pairs, feats, name_of) < 0.05 * three + total - three
    )


def test_model_support_counts_the_poses_the_submission_takes(tmp_path):
    """Each image takes its pose from the first model (largest first) that registers it, as
    the submission does: the same model twice has the support of one copy, a copy with a
    camera tilted counts only where it comes first, and a pair whose images take their poses
    from two different models counts nothing."""
    scene = make_scene(n_cams=4, noise=0.3, outlier_frac=0.0)
    names = [f"im{i}.png" for i in range(4)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    pairs = verified_pairs(scene, names)
    map_scene(scene, names, ds, feats, tmp_path / "out")
    model = pycolmap.Reconstruction(tmp_path / "out" / "sfm" / "0")
    _, db_names = mapping.database_names(ds)
    name_of = {v: k for k, v in db_names.items()}
    one = global_mapping.model_support([model], pairs, feats, name_of)
    assert one > 0
    assert global_mapping.model_support([model, model], pairs, feats, name_of) == one
    tilted = pycolmap.Reconstruction(model)
    image = next(im for im in tilted.images.values() if name_of[im.name] == "im1.png")
    turned = pycolmap.Rotation3d(
        np.array([np.sin(np.deg2rad(2.5)), 0.0, 0.0, np.cos(np.deg2rad(2.5))])
    )
    frame = tilted.frames[image.frame_id]
    frame.rig_from_world = pycolmap.Rigid3d(
        turned * frame.rig_from_world.rotation, frame.rig_from_world.translation
    )
    worse = global_mapping.model_support([tilted], pairs, feats, name_of)
    assert worse < one
    assert global_mapping.model_support([model, tilted], pairs, feats, name_of) == one
    assert global_mapping.model_support([tilted, model], pairs, feats, name_of) == worse
    # a piece holding im0 and im1 first: im2 and im3 take their poses from the whole model
    piece = pycolmap.Reconstruction(model)
    for im in list(piece.images.values()):
        if name_of[im.name] in ("im2.png", "im3.png"):
            piece.deregister_frame(im.frame_id)
    kept = {p: v for p, v in pairs.items() if p in (("im0.png", "im1.png"), ("im2.png", "im3.png"))}
    assert len(kept) == 2
    within = global_mapping.model_support([model], kept, feats, name_of)
    assert 0 < within < one
    assert global_mapping.model_support([piece, model], pairs, feats, name_of) == within


def test_camera_keys_tell_exif_cameras_apart(tmp_path):
    scene = make_scene(n_cams=4)
    names = [f"im{i}.jpg" for i in range(4)]
    paths = [tmp_path / n for n in names]
    w, h = scene["size"]
    for i, p in enumerate(paths):
        exif = Image.Exif()
        if i < 3:
            exif[271], exif[272] = "Canon", "PowerShot A10"
            exif.get_ifd(0x8769)[37386] = 5.4 if i < 2 else 12.0
        Image.new("RGB", (w, h), (90, 90, 90)).save(p, exif=exif)
    ds, feats = toy_dataset(scene, names, tmp_path, paths)
    keys = mapping.camera_keys(ds, names, feats)
    assert keys["im0.jpg"] == keys["im1.jpg"] == (w, h, "Canon", "PowerShot A10", 5.4)
    assert keys["im2.jpg"] == (w, h, "Canon", "PowerShot A10", 12.0)
    assert keys["im3.jpg"] == (w, h)


def test_mapping_stops_at_its_time_limit(tmp_path):
    """24 views with all 276 pairs take about 4 s per pass here; with one second, mapping stops
    early and what it registered by then is kept."""
    scene = make_scene(n_cams=24, n_points=1200, seed=1)
    names = [f"im{i:02d}.png" for i in range(24)]
    ds, feats = toy_dataset(scene, names, tmp_path)
    conf = config.DEFAULTS
    result = map_scene(scene, names, ds, feats, tmp_path / "o", max_seconds=1.0)
    assert result.stopped
    assert len(result.seconds) == 1  # no second pass after a stop
    assert 2 <= len(result.preds) < len(names)
    assert mapping.pipeline_options(conf["mapping"], 1, 0, 7.2).max_runtime_seconds == 8
    assert mapping.pipeline_options(conf["mapping"], 1, 0, 0.01).max_runtime_seconds == 1
    assert mapping.pipeline_options(conf["mapping"], 1, 0, None).max_runtime_seconds == -1
