"""Folders of photos: read as datasets without labels, run end to end, poses.csv per dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from imc import formats
from imc.cli import main
from imc.data import OUTLIERS
from imc.demo import make_demo
from imc.errors import ImcError
from imc.poses import POSES_COLUMNS, read_poses
from imc.submission import SUBMISSION_COLUMNS

# Small images and keypoint budget: the two end-to-end runs stay within CI's time.
FAST = ["--preset", "fast", "--set", "features.resize_long_side=320"]
FAST += ["--set", "features.max_keypoints=512"]


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (8, 12, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def _one_line(e: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


# ---------------------------------------------------------------- reading


def test_a_folder_of_images_is_one_dataset(tmp_path: Path) -> None:
    root = tmp_path / "garden"
    for i, name in enumerate(["b.JPG", "a.png", "c.jpeg"]):
        _png(root / name, i)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    comp = formats.read_competition(root)
    assert comp.plain and (comp.year, comp.split) == (2025, "test")
    assert comp.layout == "folder of photos" and not comp.has_reference_poses
    assert list(comp.datasets) == ["garden"]
    ds = comp.datasets["garden"]
    assert [im.name for im in ds.images] == ["a.png", "b.JPG", "c.jpeg"]
    assert all(im.path == root / im.name and im.scene is None for im in ds.images)
    assert not ds.has_labels


def test_a_folder_of_folders_is_one_dataset_each(tmp_path: Path, caplog) -> None:
    _png(tmp_path / "photos/house/1.png")
    _png(tmp_path / "photos/house/2.png", 1)
    _png(tmp_path / "photos/bridge/x.jpg", 2)
    (tmp_path / "photos/empty").mkdir()
    comp = formats.read_competition(tmp_path / "photos")
    assert {k: len(d.images) for k, d in comp.datasets.items()} == {"bridge": 1, "house": 2}
    assert "empty" in caplog.text
    only = formats.read_competition(tmp_path / "photos", datasets=["house"])
    assert list(only.datasets) == ["house"]
    with pytest.raises(ImcError) as e:
        formats.read_competition(tmp_path / "photos", datasets=["castle"])
    _one_line(e, "castle", "bridge, house")


def test_own_images_win_over_subfolders(tmp_path: Path, caplog) -> None:
    _png(tmp_path / "p/a.png")
    _png(tmp_path / "p/sub/b.png", 1)
    comp = formats.read_competition(tmp_path / "p")
    assert [im.name for im in comp.datasets["p"].images] == ["a.png"]
    assert "sub" in caplog.text


def test_empty_and_imageless_folders_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImcError) as e:
        formats.read_competition(tmp_path / "empty")
    _one_line(e, str(tmp_path / "empty"), "empty folder", "a folder of images", "IMC2023/2024/2025")
    (tmp_path / "docs/sub").mkdir(parents=True)
    (tmp_path / "docs/readme.txt").write_text("x")
    with pytest.raises(ImcError) as e:
        formats.read_competition(tmp_path / "docs")
    _one_line(e, str(tmp_path / "docs"), "no images", ".jpg", "accepted:")
    with pytest.raises(ImcError) as e:
        formats.read_competition(tmp_path / "absent")
    _one_line(e, "absent", "no such folder")


def test_a_folder_of_photos_has_no_train_split(tmp_path: Path) -> None:
    _png(tmp_path / "p/a.png")
    with pytest.raises(ImcError) as e:
        formats.read_competition(tmp_path / "p", split="train")
    _one_line(e, "no train split")
    assert formats.read_competition(tmp_path / "p", split="test").plain


def test_competition_layouts_are_not_read_as_photos(tmp_path: Path) -> None:
    _png(tmp_path / "c/test/D/a.png")
    comp = formats.read_competition(tmp_path / "c")
    assert not comp.plain and comp.layout == "IMC2025 test"


def test_check_accepts_a_photo_run_submission(tmp_path: Path, capsys) -> None:
    from imc.submission import write_submission

    _png(tmp_path / "p/a.png")
    _png(tmp_path / "p/b.png", 1)
    comp = formats.read_competition(tmp_path / "p")
    path = write_submission(comp, {}, tmp_path / "s.csv")
    assert main(["check", str(path), str(tmp_path / "p")]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    assert main(["score", str(path), str(tmp_path / "p")]) == 2  # nothing to score against
    assert "no train split" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory) -> Path:
    """The demo scene's images (two scenes and three outliers), small."""
    root = make_demo(tmp_path_factory.mktemp("demo"), image_size=(320, 240))
    return root / "train" / "demo"


def _run(data: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    args = ["run", str(data), "--run-dir", str(tmp_path / "run")]
    code = main([*args, "--cache-dir", str(tmp_path / "cache"), *FAST])
    return code, capsys.readouterr().out


def _check_poses(path: Path, images: list[str], min_registered: int) -> pd.DataFrame:
    """One row per image in order; registered rows carry a rotation and the intrinsics."""
    frame = read_poses(path)
    assert list(frame.columns) == list(POSES_COLUMNS)
    assert frame["image"].tolist() == images
    reg = frame[frame["rotation_matrix"] != ""]
    assert len(reg) >= min_registered, frame
    for row in reg.itertuples():
        R = np.array(row.rotation_matrix.split(";"), float).reshape(3, 3)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
        assert len(row.translation_vector.split(";")) == 3
        assert row.cluster.startswith("cluster") and row.camera_model
        assert {int(row.width), int(row.height)} == {320, 240}
        focal = float(row.camera_params.split(";")[0])
        assert focal == pytest.approx(1.2 * 320, rel=0.1)  # the demo's cameras
    empty = frame[frame["rotation_matrix"] == ""]
    assert (empty["cluster"] == OUTLIERS).all() and (empty["camera_model"] == "").all()
    return frame


@pytest.mark.slow
def test_run_on_a_folder_of_photos(demo_images: Path, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "my photos"
    photos.mkdir()
    for f in demo_images.glob("*.png"):
        shutil.copy2(f, photos / f.name)
    code, out = _run(photos, tmp_path, capsys)
    assert code == 0
    run = tmp_path / "run"
    names = sorted(f.name for f in photos.glob("*.png"))
    frame = _check_poses(run / "my_photos" / "poses.csv", names, min_registered=14)
    # the two scenes are two clusters, the unrelated images are left out
    clusters = dict(zip(frame["image"], frame["cluster"], strict=True))
    boxes = {c for n, c in clusters.items() if n.startswith("boxes")} - {OUTLIERS}
    wall = {c for n, c in clusters.items() if n.startswith("wall")} - {OUTLIERS}
    assert len(boxes) == len(wall) == 1 and boxes != wall
    assert sum(clusters[n] == OUTLIERS for n in names if n.startswith("outlier")) == 3
    sub = pd.read_csv(run / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == list(SUBMISSION_COLUMNS[2025])
    assert sorted(sub["image"]) == names and set(sub["dataset"]) == {"my photos"}
    assert (run / "report.html").is_file()
    assert "score:" not in out and f"poses: {run / 'my_photos' / 'poses.csv'}" in out


@pytest.mark.slow
def test_run_on_a_folder_of_photo_folders(demo_images: Path, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    for f in demo_images.glob("*.png"):
        folder = photos / ("boxes" if f.name.startswith(("boxes", "outlier_00")) else "wall")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, folder / f.name)
    code, out = _run(photos, tmp_path, capsys)
    assert code == 0
    run = tmp_path / "run"
    for name, scene_images in (("boxes", 10), ("wall", 8)):
        names = sorted(f.name for f in (photos / name).glob("*.png"))
        frame = _check_poses(run / name / "poses.csv", names, min_registered=scene_images - 3)
        assert frame["cluster"].nunique() <= 2  # one cluster, and the outliers
    assert (run / "report.html").is_file() and "score:" not in out
