"""poses.csv (poses and intrinsics per image) and the EXIF focal-length prior."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from PIL import Image
from synthetic import make_scene, map_scene, toy_dataset

from imc.data import OUTLIERS, Competition, Dataset, ImageInfo, Prediction
from imc.poses import (
    EXIF_IFD,
    POSES_COLUMNS,
    _intrinsics,
    complete_run,
    focal_prior_px,
    read_poses,
    write_poses,
)

# ---------------------------------------------------------------- EXIF focal length


def _jpeg(path: Path, tags: dict[int, object], size=(400, 300)) -> Path:
    exif = Image.Exif()
    exif[271], exif[272] = "Make", "Model"
    exif.get_ifd(EXIF_IFD).update(tags)
    Image.new("RGB", size, (90, 90, 90)).save(path, exif=exif)
    return path


def test_focal_from_35mm_equivalent(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "a.jpg", {0xA405: 28, 0x920A: 4.0})  # 35 mm equivalent wins
    assert focal_prior_px(path, 400, 300) == pytest.approx(28 / 36 * 400)
    assert focal_prior_px(path, 300, 400) == pytest.approx(28 / 36 * 400)  # the long side


def test_focal_from_focal_length_and_sensor(tmp_path: Path) -> None:
    path = _jpeg(tmp_path / "b.jpg", {0x920A: 5.0})
    assert focal_prior_px(path, 400, 300) is None  # no sensor size known
    assert focal_prior_px(path, 400, 300, sensor_width_mm=6.4) == pytest.approx(5 / 6.4 * 400)
    # focal plane: 200 pixels per mm of an 800 x 600 image, stored at 400 x 300
    tags = {0x920A: 5.0, 0xA20E: 200.0, 0xA210: 4, 0xA002: 800, 0xA003: 600}
    path = _jpeg(tmp_path / "c.jpg", tags)
    assert focal_prior_px(path, 400, 300) == pytest.approx(5 * 200 / 2)
    tags = {0x920A: 5.0, 0xA20E: 2540.0}  # per inch (the default unit), size as stored
    assert focal_prior_px(_jpeg(tmp_path / "d.jpg", tags), 400, 300) == pytest.approx(500)


def test_no_or_broken_exif_gives_none(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "plain.png")
    assert focal_prior_px(tmp_path / "plain.png", 40, 30) is None
    assert focal_prior_px(_jpeg(tmp_path / "zero.jpg", {0xA405: 0}), 400, 300) is None
    assert focal_prior_px(_jpeg(tmp_path / "huge.jpg", {0xA405: 60000}), 400, 300) is None
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert focal_prior_px(tmp_path / "bad.jpg", 400, 300) is None
    assert focal_prior_px(tmp_path / "absent.jpg", 400, 300) is None


# ---------------------------------------------------------------- poses.csv


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """The synthetic scene mapped by imc.stages.mapping (models exported), plus one image that is in
    no model."""
    tmp = tmp_path_factory.mktemp("poses")
    scene = make_scene(n_cams=6, noise=0.2)
    names = [f"im{i}.png" for i in range(6)]
    ds, feats = toy_dataset(scene, names, tmp)
    preds = map_scene(scene, names, ds, feats, tmp / "out").preds
    assert len(preds) == 6
    Image.new("RGB", scene["size"]).save(tmp / "images" / "stray.png")
    ds.images.append(ImageInfo("stray.png", tmp / "images" / "stray.png"))
    return ds, preds, tmp / "out", scene


def test_poses_csv_of_a_mapped_dataset(mapped) -> None:
    ds, preds, out, scene = mapped
    path = write_poses(ds, preds, out)
    assert path == out / "poses.csv"
    frame = read_poses(path)
    assert list(frame.columns) == list(POSES_COLUMNS)
    assert frame["image"].tolist() == [im.name for im in ds.images]
    model = pycolmap.Reconstruction(str(out / "models" / "0"))
    cams = {im.name: model.cameras[im.camera_id] for im in model.images.values()}
    for row in frame.itertuples():
        if row.image == "stray.png":
            assert row.cluster == OUTLIERS
            assert [getattr(row, c) for c in POSES_COLUMNS[2:]] == [""] * 6
            continue
        p = preds[row.image]
        assert row.cluster == p.cluster
        np.testing.assert_array_equal(np.array(row.rotation_matrix.split(";"), float), p.R.ravel())
        np.testing.assert_array_equal(np.array(row.translation_vector.split(";"), float), p.t)
        cam = cams[row.image]
        assert (row.camera_model, int(row.width), int(row.height)) == (
            cam.model.name, *scene["size"]
        )  # fmt: skip
        np.testing.assert_array_equal(np.array(row.camera_params.split(";"), float), cam.params)
        assert cam.params[0] == pytest.approx(scene["K"][0, 0], rel=0.05)


def test_intrinsics_of_the_model_that_holds_the_pose() -> None:
    R, t = np.eye(3), np.array([1.0, 2.0, 3.0])
    pose = np.hstack([R, t[:, None]])
    other = pose + 0.1
    cands = [(other, ("PINHOLE", 10, 10, [1.0])), (pose, ("SIMPLE_RADIAL", 20, 20, [2.0]))]
    assert _intrinsics(Prediction("cluster1", R, t), cands)[0] == "SIMPLE_RADIAL"
    assert _intrinsics(Prediction("cluster1", R, t + 5), cands)[0] == "PINHOLE"  # the first
    assert _intrinsics(Prediction("cluster1", R, t), []) is None


def test_complete_run_writes_failed_skipped_and_stale_datasets(mapped, tmp_path: Path) -> None:
    ds, preds, _, _ = mapped
    a = Dataset("A", "A", list(ds.images))
    b = Dataset("B", "B", list(ds.images))
    comp = Competition(2025, tmp_path, "test", {"A": a, "B": b}, plain=True)
    all_preds = {(d, n): p for d in ("A", "B") for n, p in preds.items()}
    (tmp_path / "run/B").mkdir(parents=True)
    (tmp_path / "run/B/poses.csv").write_text("stale")
    old = time.time() - 100
    os.utime(tmp_path / "run/B/poses.csv", (old, old))
    since = time.time() - 10
    paths = complete_run(comp, all_preds, tmp_path / "run", since, {"A": "RuntimeError: boom"})
    assert paths == [tmp_path / "run/A/poses.csv", tmp_path / "run/B/poses.csv"]
    failed = read_poses(paths[0])
    assert (failed["cluster"] == OUTLIERS).all() and (failed["rotation_matrix"] == "").all()
    stale = read_poses(paths[1])  # rewritten from the predictions (no models: no intrinsics)
    assert (stale["rotation_matrix"] != "").sum() == len(preds)
    assert (stale["camera_model"] == "").all()


def test_exif_focal_starts_the_camera_as_a_prior(tmp_path: Path) -> None:
    """Mapping's database: an image whose EXIF gives a focal length gets a camera starting
    from it, marked as a prior; one without EXIF starts from 1.2 x the long side."""
    import h5py
    import pycolmap

    from imc.cache import h5_key
    from imc.stages import mapping

    paths = {"exif.jpg": _jpeg(tmp_path / "exif.jpg", {0xA405: 28})}
    paths["plain.png"] = tmp_path / "plain.png"
    Image.new("RGB", (400, 300)).save(paths["plain.png"])
    feats = tmp_path / "features.h5"
    with h5py.File(feats, "w") as f:
        for name in paths:
            g = f.create_group(h5_key(name))
            g.create_dataset("keypoints", data=np.zeros((4, 2), np.float32))
            g.attrs["image_size"], g.attrs["done"] = (400, 300), True
    ds = Dataset("d", "d", [ImageInfo(n, p) for n, p in paths.items()])
    focals = mapping.exif_focals(ds, list(paths), feats)
    assert focals == {"exif.jpg": pytest.approx(28 / 36 * 400)}
    ids = mapping.build_database(
        tmp_path / "db.db", list(paths), {n: n for n in paths}, feats, {}, None, focals
    )
    db = pycolmap.Database.open(str(tmp_path / "db.db"))
    try:
        cams = {n: db.read_camera(db.read_image(ids[n]).camera_id) for n in paths}
    finally:
        db.close()
    assert cams["exif.jpg"].params[0] == pytest.approx(28 / 36 * 400)
    assert cams["exif.jpg"].has_prior_focal_length
    assert cams["plain.png"].params[0] == pytest.approx(480.0)
    assert not cams["plain.png"].has_prior_focal_length
