"""The synthetic demo folder: layout, exact poses for upright and rolled cameras, determinism."""

from __future__ import annotations

import json
import socket

import cv2
import numpy as np
import pandas as pd
import pytest

from imc.demo import (
    THRESHOLD_FACTORS,
    Camera,
    build_scenes,
    contact_sheet,
    intrinsics,
    load_textures,
    main,
    make_demo,
    render,
    render_view,
)
from imc.errors import ImcError

SMALL = (160, 120)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0)


@pytest.fixture(scope="module")
def labels(demo):
    return pd.read_csv(demo / "train_labels.csv")


def _pose(row) -> tuple[np.ndarray, np.ndarray]:
    R = np.array([float(x) for x in row.rotation_matrix.split(";")]).reshape(3, 3)
    return R, np.array([float(x) for x in row.translation_vector.split(";")])


def _read_rgb(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]


def _views():
    return [(scene, view) for scene in build_scenes() for view in scene.views]


def test_layout_and_columns(demo, labels):
    assert list(labels.columns) == [
        "dataset",
        "scene",
        "image",
        "rotation_matrix",
        "translation_vector",
    ]
    assert set(labels.dataset) == {"demo"}
    assert labels.scene.value_counts().to_dict() == {"boxes": 10, "wall": 8, "outliers": 3}
    assert labels.image.is_unique
    th = pd.read_csv(demo / "train_thresholds.csv")
    assert list(th.columns) == ["dataset", "scene", "thresholds"]
    assert th.scene.tolist() == ["boxes", "wall"]
    assert all(len(t.split(";")) == 6 for t in th.thresholds)
    on_disk = sorted(p.name for p in (demo / "train" / "demo").iterdir())
    assert on_disk == sorted(labels.image)
    rolls = {view.name: view.rot90 for _, view in _views()}
    assert sum(k % 2 == 1 for k in rolls.values()) >= 2 and 2 in rolls.values()
    for name in labels.image:
        h, w = _read_rgb(demo / "train" / "demo" / name).shape[:2]
        assert (w, h) == ((480, 640) if rolls.get(name, 0) % 2 else (640, 480)), name


def test_poses_are_rotations_and_outliers_nan(labels):
    for row in labels.itertuples():
        R, t = _pose(row)
        if row.scene == "outliers":
            assert np.isnan(R).all() and np.isnan(t).all()
            assert row.rotation_matrix == ";".join(["nan"] * 9)
            continue
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)


def test_labels_are_the_stored_cameras(labels):
    rows = {r.image: r for r in labels.itertuples()}
    for scene, view in _views():
        cam = view.camera.rotated(view.rot90)
        R, t = _pose(rows[view.name])
        assert rows[view.name].scene == scene.name
        np.testing.assert_array_equal(R, cam.R)  # written with repr: exact round trip
        np.testing.assert_array_equal(t, cam.t)


def test_rolled_camera_by_hand():
    """Point (1, 0.5, 4) in front of an identity camera: upright pixel (512, 336) in 640x480,
    f = 768. A quarter turn anticlockwise maps (x, y) -> (y, W - x) in the 480x640 image."""
    K = intrinsics(640, 480)
    assert K[0, 0] == 768 and (K[0, 2], K[1, 2]) == (320, 240)
    cam = Camera(K, np.eye(3), np.zeros(3), 640, 480)
    X = np.array([[1.0, 0.5, 4.0]])
    expected = {0: (512, 336), 1: (336, 128), 2: (128, 144), 3: (144, 512)}
    for k, xy in expected.items():
        rolled = cam.rotated(k)
        np.testing.assert_allclose(rolled.project(X)[0], xy, atol=1e-9)
        assert (rolled.width, rolled.height) == ((480, 640) if k % 2 else (640, 480))
        np.testing.assert_allclose(rolled.center, cam.center, atol=1e-12)


def test_rolled_camera_agrees_with_np_rot90():
    """Follow one pixel through np.rot90: its stored position is the rolled projection."""
    W, H = 64, 48
    cam = Camera(intrinsics(W, H), np.eye(3), np.zeros(3), W, H)
    index = np.arange(H * W).reshape(H, W)
    rng = np.random.default_rng(0)
    for k in range(4):
        for _ in range(5):
            col, row = int(rng.integers(W)), int(rng.integers(H))
            ray = np.linalg.inv(cam.K) @ [col + 0.5, row + 0.5, 1.0]  # COLMAP pixel centre
            r2, c2 = np.argwhere(np.rot90(index, k) == row * W + col)[0]
            xy = cam.rotated(k).project(3.0 * ray[None])[0]
            np.testing.assert_allclose(xy, (c2 + 0.5, r2 + 0.5), atol=1e-9)


def _coordinate_textures(scene, size: int = 64):
    """Per face an [n x n x 3] texture holding (u / n, v / n, face index + 1) at texel centres:
    bilinear sampling of a linear function is exact, so the rendering gives each pixel's
    texture coordinate."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(c, c)
    return [np.dstack([u, v, np.full_like(u, i + 1)]) for i in range(len(scene.faces))]


def _first_hit(scene, cam: Camera, pixels: np.ndarray) -> np.ndarray:
    """[N] index of the nearest face along each pixel's ray (-1 for none), by ray casting."""
    rays = (cam.R.T @ np.linalg.solve(cam.K, np.c_[pixels, np.ones(len(pixels))].T)).T
    best, depth = np.full(len(pixels), -1), np.full(len(pixels), np.inf)
    for i, f in enumerate(scene.faces):
        n = np.cross(f.v_edge, f.u_edge)
        if n @ (cam.center - f.origin) <= 0:
            continue
        lam = ((f.origin - cam.center) @ n) / (rays @ n)
        X = cam.center + lam[:, None] * rays
        A = np.c_[f.u_edge, f.v_edge]
        uv = np.linalg.lstsq(A, (X - f.origin).T, rcond=None)[0].T
        inside = (lam > 0) & np.all((uv >= 0) & (uv <= 1), axis=1) & (lam < depth)
        best[inside], depth[inside] = i, lam[inside]
    return best


def test_projection_lands_on_rendered_texture_point():
    """For upright and rolled views: the texture point rendered at a stored pixel projects,
    with the stored camera, back onto that pixel, and it belongs to the nearest face."""
    for scene in build_scenes():
        textures = _coordinate_textures(scene)
        views = [v for v in scene.views if v.rot90 or v is scene.views[0]]
        assert len(views) >= 3
        for view in views:
            image, cam = render_view(scene, view, textures, background=0.0)
            assert image.shape[:2] == (cam.height, cam.width)
            ids = image[..., 2]
            face = np.rint(ids).astype(int) - 1
            uv = image[..., :2]
            kernel = np.ones((3, 3), np.uint8)
            ok = (
                (np.abs(ids - np.rint(ids)) < 1e-4)
                & (cv2.erode(ids, kernel) == cv2.dilate(ids, kernel))  # not on a face's border
                & (face >= 0)
                & np.all((uv > 0.03) & (uv < 0.97), axis=2)
            )
            rows, cols = np.nonzero(ok)
            assert len(rows) > 0.3 * image.shape[0] * image.shape[1], view.name
            pick = np.random.default_rng(0).choice(len(rows), 2000, replace=False)
            rows, cols = rows[pick], cols[pick]
            X = np.stack(
                [
                    scene.faces[f].point(uv[r, c][None])[0]
                    for r, c, f in zip(rows, cols, face[rows, cols])
                ]
            )
            pixels = np.c_[cols + 0.5, rows + 0.5]
            err = np.linalg.norm(cam.project(X) - pixels, axis=1)
            assert np.max(err) < 0.05, (view.name, np.max(err))
            hit = _first_hit(scene, cam, pixels)
            assert np.mean(hit == face[rows, cols]) > 0.999, view.name


def _polygon_centroid(p: np.ndarray) -> np.ndarray:
    """[N x 2] vertices of a simple polygon -> [2] centroid of its area."""
    q = np.roll(p, -1, axis=0)
    cross = p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]
    return ((p + q) * cross[:, None]).sum(0) / (3 * cross.sum())


def test_markers_found_where_projected():
    """Bright 7x7-texel squares on black textures: in the stored image of each rolled view,
    every fully visible square is a blob centred where the projections of its 3D corners put
    it (the centroid of the projected quadrilateral), and every blob is one of them."""
    n, dots = 200, np.array([(40.5, 60.5), (100.5, 100.5), (150.5, 40.5), (60.5, 160.5)])
    tex = np.zeros((n, n, 3), np.float32)
    for u, v in dots.astype(int):
        tex[v - 3 : v + 4, u - 3 : u + 4] = 1.0
    corners = np.array([(0, 0), (-3.5, -3.5), (3.5, -3.5), (3.5, 3.5), (-3.5, 3.5)])
    for scene in build_scenes():
        for view in [v for v in scene.views if v.rot90]:
            image, cam = render_view(scene, view, [tex] * len(scene.faces), background=0.0)
            count, lab, _, _ = cv2.connectedComponentsWithStats(
                (image[..., 0] > 0.01).astype(np.uint8)
            )
            found = []
            for i in range(1, count):
                ys, xs = np.nonzero(lab == i)
                w = image[ys, xs, 0].astype(np.float64)
                found.append([(xs + 0.5) @ w / w.sum(), (ys + 0.5) @ w / w.sum()])
            found = np.array(found)
            quads, checked = [], 0
            for i, f in enumerate(scene.faces):
                for dot in dots:
                    X = f.point((dot + corners) / n)
                    xy = cam.project(X)
                    quads.append(xy[1:].astype(np.float32))
                    inside = np.all((xy > 4) & (xy < [cam.width - 4, cam.height - 4]))
                    sides = np.linalg.norm(xy[1:] - np.roll(xy[1:], 1, axis=0), axis=1)
                    if not inside or np.any(_first_hit(scene, cam, xy) != i) or sides.min() < 3:
                        continue  # cut by the image border, partly hidden or under 3 pixels
                    checked += 1
                    expected = _polygon_centroid(xy[1:])
                    assert np.linalg.norm(found - expected, axis=1).min() < 0.1, (view.name, i)
            assert checked >= 8, view.name
            for c in found:  # a blob lies inside a projected square (partly hidden ones too)
                inside = [cv2.pointPolygonTest(q, c, True) for q in quads]
                assert max(inside) > -0.5, (view.name, c)


def test_stored_pixels_follow_the_written_pose(demo, labels):
    """Render each stored image directly with the camera read from the labels (no rot90 on
    this path): it must match the PNG up to noise, and a half-turn of it must not."""
    textures = load_textures()
    scenes = {s.name: s for s in build_scenes()}
    rolls = {view.name: view.rot90 for _, view in _views()}
    first = labels.image.isin(["boxes_00.png", "wall_00.png"])
    some = labels[labels.image.map(rolls.get).isin([1, 2, 3]) | first]
    assert len(some) == 6
    for row in some.itertuples():
        stored = _read_rgb(demo / "train" / "demo" / row.image).astype(np.float32) / 255
        h, w = stored.shape[:2]
        R, t = _pose(row)
        scene = scenes[row.scene]
        direct = render(
            scene.faces,
            [textures[f.texture] for f in scene.faces],
            Camera(intrinsics(w, h), R, t, w, h),
        )
        corr = np.corrcoef(direct.ravel(), stored.ravel())[0, 1]
        wrong = np.corrcoef(direct[::-1, ::-1].ravel(), stored.ravel())[0, 1]
        assert corr > 0.97 and wrong < 0.6, (row.image, corr, wrong)
        assert np.median(np.abs(direct - stored)) < 0.06


def test_thresholds_from_camera_centres(labels, demo):
    th = pd.read_csv(demo / "train_thresholds.csv")
    for scene in ["boxes", "wall"]:
        rows = list(labels[labels.scene == scene].itertuples())
        centers = np.array([-R.T @ t for R, t in map(_pose, rows)])
        D = np.median(np.linalg.norm(centers - centers.mean(0), axis=1))
        assert 1.0 < D < 4.0
        got = [float(x) for x in th[th.scene == scene].thresholds.iloc[0].split(";")]
        np.testing.assert_allclose(got, D * np.array(THRESHOLD_FACTORS), rtol=1e-5)
        # neighbours are well apart at the loosest threshold, cameras look 10-25 degrees apart
        steps = np.linalg.norm(np.diff(centers, axis=0), axis=1)
        assert steps.min() > got[-1]
        axes = np.array([_pose(r)[0][2] for r in rows])
        angles = np.degrees(np.arccos(np.clip((axes[1:] * axes[:-1]).sum(1), -1, 1)))
        assert np.all((angles > 10) & (angles < 25)), angles


def test_deterministic_seeded_and_skips_when_complete(tmp_path):
    a = make_demo(tmp_path / "a", seed=0, image_size=SMALL)
    main([str(tmp_path / "b"), "--size", "160", "120", "--sheet", str(tmp_path / "sheet.png")])
    c = make_demo(tmp_path / "c", seed=1, image_size=SMALL)
    b = tmp_path / "b"
    labels = (a / "train_labels.csv").read_bytes()
    assert labels == (b / "train_labels.csv").read_bytes() == (c / "train_labels.csv").read_bytes()
    assert (a / "train_thresholds.csv").read_bytes() == (b / "train_thresholds.csv").read_bytes()
    names = sorted(p.name for p in (a / "train" / "demo").glob("*.png"))
    assert len(names) == 21
    for name in names:
        ia, ib, ic = (_read_rgb(r / "train" / "demo" / name) for r in (a, b, c))
        np.testing.assert_array_equal(ia, ib)
        assert ia.shape == ic.shape and np.mean(ia != ic) > 0.3, name
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*")}
    make_demo(a, seed=0, image_size=SMALL)
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*")} == before
    (a / "train" / "demo" / names[0]).unlink()  # incomplete: rebuilt
    make_demo(a, seed=0, image_size=SMALL)
    np.testing.assert_array_equal(
        _read_rgb(a / "train" / "demo" / names[0]), _read_rgb(b / "train" / "demo" / names[0])
    )
    (a / "demo.json").write_text("{not json")  # unreadable manifest: rebuilt, no crash
    make_demo(a, seed=0, image_size=SMALL)
    assert json.loads((a / "demo.json").read_text())["config"]["seed"] == 0


def test_refuses_foreign_folder_and_bad_arguments(tmp_path):
    (tmp_path / "train_labels.csv").write_text(
        "dataset,scene,image,rotation_matrix,translation_vector\nETs,ET,a.jpg,1;0;0;0;1;0;0;0;1,0;0;0\n"
    )
    with pytest.raises(ImcError, match="not written by the demo generator"):
        make_demo(tmp_path)
    assert not (tmp_path / "train").exists()
    with pytest.raises(ImcError, match="at least 32 pixels"):
        make_demo(tmp_path / "x", image_size=(16, 16))


def test_textures_offline_and_distinct_between_scenes(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    textures = load_textures()
    boxes, wall = ({f.texture for f in s.faces} for s in build_scenes())
    assert not boxes & wall and (boxes | wall | {"faces", "retina"}) <= set(textures)
    for t in textures.values():
        assert t.dtype == np.float32 and t.ndim == 3 and t.shape[2] == 3 and t.std() > 0.03


def test_contact_sheet_needs_images(tmp_path):
    with pytest.raises(ImcError, match="no PNG"):
        contact_sheet(tmp_path, tmp_path / "sheet.png")
