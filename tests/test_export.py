"""Model exports: transforms.json by hand and round trip, intrinsics, coloured PLY, text model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest
from synthetic import make_scene, map_scene, toy_dataset

from imc.errors import ImcError
from imc.export import (
    camera_intrinsics,
    link_images,
    model_stats,
    pose_from_transform,
    transform_from_pose,
)

RGB = (200, 30, 60)  # every synthetic image is this colour: every point must be too


def test_transform_of_an_identity_camera_flips_y_and_z():
    expected = np.diag([1.0, -1.0, -1.0, 1.0])
    np.testing.assert_array_equal(transform_from_pose(np.eye(4)[:3]), expected)


def test_transform_by_hand():
    """Camera at (5, 0, 0) looking at the origin: R = rotation of +90 degrees about y (its
    third row, the viewing direction, is (-1, 0, 0)), t = -R C = (0, 0, 5).
    Camera-to-world in OpenCV axes: [R^T | C] with R^T columns (0,0,1), (0,1,0), (-1,0,0);
    OpenGL negates the y and z columns."""
    R = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    pose = np.concatenate([R, [[0.0], [0], [5]]], axis=1)
    expected = np.array(
        [
            [0.0, 0, 1, 5],
            [0, -1, 0, 0],
            [1, 0, 0, 0],
            [0, 0, 0, 1],
        ]
    )
    got = transform_from_pose(pose)
    np.testing.assert_allclose(got, expected, atol=1e-15)
    np.testing.assert_allclose(pose_from_transform(got), pose, atol=1e-15)


def test_intrinsics_per_camera_model():
    cam = pycolmap.Camera(model="SIMPLE_RADIAL", width=640, height=480, params=[700, 320, 240, 0.1])
    assert camera_intrinsics(cam) == {
        "camera_model": "OPENCV",
        **{"fl_x": 700.0, "fl_y": 700.0, "cx": 320.0, "cy": 240.0, "w": 640, "h": 480},
        **{"k1": 0.1, "k2": 0.0, "p1": 0.0, "p2": 0.0},
    }
    cam = pycolmap.Camera(model="PINHOLE", width=100, height=50, params=[90, 95, 49.5, 24.5])
    got = camera_intrinsics(cam)
    assert (got["fl_x"], got["fl_y"], got["cx"], got["cy"], got["k1"]) == (90, 95, 49.5, 24.5, 0)
    params = [500, 510, 300, 200, 0.1, -0.02, 0.001, 0.002]
    cam = pycolmap.Camera(model="OPENCV", width=600, height=400, params=params)
    got = camera_intrinsics(cam)
    assert [got[k] for k in ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2")] == params
    cam = pycolmap.Camera(model="FOV", width=600, height=400, params=[500, 500, 300, 200, 0.5])
    with pytest.raises(ImcError, match="FOV"):
        camera_intrinsics(cam)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The synthetic scene mapped by imc.stages.mapping (which calls the exporter); images in a
    sub-folder so that the relative image paths have to climb out of the model folder."""
    tmp = tmp_path_factory.mktemp("export")
    scene = make_scene(n_cams=6, noise=0.2)
    names = [f"im{i}.png" for i in range(6)]
    w, h = scene["size"]
    (tmp / "data" / "images").mkdir(parents=True)
    paths = [tmp / "data" / "images" / n for n in names]
    for p in paths:
        cv2.imwrite(str(p), np.full((h, w, 3), RGB[::-1], np.uint8))
    ds, feats = toy_dataset(scene, names, tmp, paths)
    preds = map_scene(scene, names, ds, feats, tmp / "out").preds
    assert len(preds) == 6
    return tmp / "out" / "models" / "0", paths


def test_files_of_a_model(exported):
    d, _ = exported
    for f in ("cameras.bin", "images.bin", "points3D.bin", "points.ply", "transforms.json"):
        assert (d / f).is_file(), f
    for f in ("cameras.txt", "images.txt", "points3D.txt"):
        assert (d / "text" / f).is_file(), f


def test_transforms_round_trip(exported):
    d, paths = exported
    model = pycolmap.Reconstruction(str(d))
    meta = json.loads((d / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["ply_file_path"] == "points.ply"
    assert len(meta["frames"]) == model.num_reg_images() == 6
    by_name = {im.name: im for im in model.images.values()}
    for frame in meta["frames"]:
        assert frame["file_path"] == f"images/{Path(frame['file_path']).name}"
        image_path = (d / frame["file_path"]).resolve()
        assert image_path in {p.resolve() for p in paths}
        image = by_name[image_path.name]
        assert frame["colmap_im_id"] == image.image_id
        pose = pose_from_transform(np.array(frame["transform_matrix"]))
        assert np.abs(pose - image.cam_from_world().matrix()).max() < 1e-6
        c2w = np.array(frame["transform_matrix"])
        np.testing.assert_allclose(c2w[:3, 3], image.projection_center(), atol=1e-9)
        # OpenGL: the camera looks along its -z axis.
        np.testing.assert_allclose(-c2w[:3, 2], image.viewing_direction(), atol=1e-9)
        cam = model.cameras[image.camera_id]
        f, cx, cy, k = cam.params
        assert (frame["w"], frame["h"]) == (cam.width, cam.height) == (640, 480)
        assert (frame["fl_x"], frame["fl_y"], frame["cx"], frame["cy"]) == (f, f, cx, cy)
        assert (frame["k1"], frame["k2"], frame["p1"], frame["p2"]) == (k, 0.0, 0.0, 0.0)


def _read_ply(path) -> tuple[list[str], np.ndarray]:
    """(property lines, structured vertex array) of a binary little-endian PLY."""
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    assert "format binary_little_endian 1.0" in lines
    count = int(next(x for x in lines if x.startswith("element vertex")).split()[-1])
    props = [x.split() for x in lines if x.startswith("property")]
    kinds = {"float": "<f4", "double": "<f8", "uchar": "u1"}
    dtype = np.dtype([(p[2], kinds[p[1]]) for p in props])
    return [p[2] for p in props], np.frombuffer(body, dtype=dtype, count=count)


def test_ply_is_coloured_from_the_images(exported):
    d, _ = exported
    model = pycolmap.Reconstruction(str(d))
    names, vertices = _read_ply(d / "points.ply")
    assert names[:3] == ["x", "y", "z"] and {"red", "green", "blue"} <= set(names)
    assert len(vertices) == model.num_points3D() > 100
    rgb = np.stack([vertices["red"], vertices["green"], vertices["blue"]], 1)
    assert (rgb == RGB).all()  # RGB order, not OpenCV's BGR
    xyz = np.stack([vertices[a] for a in "xyz"], 1)
    ref = np.array([p.xyz for p in model.points3D.values()])
    assert np.abs(np.sort(xyz, 0) - np.sort(ref, 0)).max() < 1e-5


def test_text_model_equals_binary(exported):
    d, _ = exported
    binary, text = pycolmap.Reconstruction(str(d)), pycolmap.Reconstruction(str(d / "text"))
    assert text.num_reg_images() == binary.num_reg_images()
    assert text.num_points3D() == binary.num_points3D()
    for image_id, image in binary.images.items():
        other = text.images[image_id].cam_from_world().matrix()
        assert np.abs(other - image.cam_from_world().matrix()).max() < 1e-9


def test_transforms_survive_moving_the_run_folder(exported, tmp_path):
    """Every file_path still resolves to its image after the model folder moves elsewhere."""
    d, paths = exported
    moved = tmp_path / "elsewhere" / "run" / "models" / "0"
    moved.parent.mkdir(parents=True)
    shutil.copytree(d, moved, symlinks=True)  # as `mv` would: the links themselves
    meta = json.loads((moved / "transforms.json").read_text())
    assert len(meta["frames"]) == 6
    originals = {p.name: p.read_bytes() for p in paths}
    for frame in meta["frames"]:
        path = moved / frame["file_path"]
        assert path.is_symlink() and path.is_file()
        assert path.read_bytes() == originals[path.name]
    assert (moved / meta["ply_file_path"]).is_file()


def test_link_images_keeps_folders_and_replaces_old_links(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    for name in ("a/x.png", "y.png"):
        (tmp_path / "data" / name).write_bytes(name.encode())
    out = tmp_path / "model"
    out.mkdir()
    assert link_images(["a/x.png"], tmp_path / "data", out) == ["images/a/x.png"]
    assert link_images(["y.png"], tmp_path / "data", out) == ["images/y.png"]
    assert not (out / "images" / "a").exists()  # the earlier export's links are gone
    assert (tmp_path / "data" / "a" / "x.png").read_bytes() == b"a/x.png"  # not their targets
    assert (out / "images" / "y.png").read_bytes() == b"y.png"


def test_model_stats(exported):
    d, _ = exported
    model = pycolmap.Reconstruction(str(d))
    stats = model_stats(model)
    assert list(stats) == [
        "registered_images",
        "points3D",
        "mean_track_length",
        "mean_reprojection_error_px",
    ]
    assert stats["registered_images"] == 6 and stats["points3D"] == model.num_points3D() > 100
    observations = sum(p.track.length() for p in model.points3D.values())
    assert stats["mean_track_length"] == pytest.approx(observations / stats["points3D"], abs=1e-3)
    assert 2 <= stats["mean_track_length"] <= 6
    assert 0 < stats["mean_reprojection_error_px"] < 2  # the synthetic noise: 0.2 px
    json.dumps(stats)  # ready for summary.json


def test_model_stats_of_a_model_without_points():
    stats = model_stats(pycolmap.Reconstruction())
    assert stats == {
        "registered_images": 0,
        "points3D": 0,
        "mean_track_length": None,
        "mean_reprojection_error_px": None,
    }
