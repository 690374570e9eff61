"""The three competition layouts: detection, reading, submissions, labels and test layouts."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from imc import formats
from imc.data import OUTLIERS, Prediction
from imc.errors import ImcError, SubmissionError
from imc.submission import (
    check_submission,
    predictions_from_frame,
    read_submission,
    submission_frame,
    write_submission,
)

NAN9, NAN3 = ";".join(["nan"] * 9), "nan;nan;nan"
EYE9, ZERO3 = "1.0;0.0;0.0;0.0;1.0;0.0;0.0;0.0;1.0", "0.0;0.0;0.0"


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (8, 12, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def _csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


def _rot(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def _pose(deg: float, t: tuple) -> str:
    return f"{formats.format_floats(_rot(deg))},{formats.format_floats(np.array(t, float))}"


def _one_line_error(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


@pytest.fixture()
def root2025(tmp_path: Path) -> Path:
    """train/A (3 images, one outlier), train/B (2), with labels and thresholds."""
    root = tmp_path / "c25"
    for i, name in enumerate(["A/a1.png", "A/a2.png", "A/a3.png", "B/b1.png", "B/b2.png"]):
        _png(root / "train" / name, i)
    _csv(
        root / "train_labels.csv",
        "dataset,scene,image,rotation_matrix,translation_vector",
        [
            f"A,s1,a2.png,{_pose(10, (1, 2, 3))}",
            f"A,{OUTLIERS},a3.png,{NAN9},{NAN3}",
            f"A,s1,a1.png,{_pose(20, (0.1, 0.2, 0.3))}",
            f"B,s2,b1.png,{_pose(0, (0, 0, 1))}",
            f"B,s2,b2.png,{_pose(5, (0, 1, 0))}",
        ],
    )
    _csv(root / "train_thresholds.csv", "dataset,scene,thresholds", ["A,s1,0.1;0.2", "B,s2,1;2"])
    return root


@pytest.fixture()
def root2024(tmp_path: Path) -> Path:
    root = tmp_path / "c24"
    for i, name in enumerate(["church/images/00046.png", "church/images/00090.png"]):
        _png(root / "test" / name, i)
    _png(root / "test/church/images/00001.png", 3)
    _png(root / "test/lizard/images/x.png", 4)
    _png(root / "test/lizard/images/y.png", 5)
    _csv(
        root / "sample_submission.csv",
        "image_path,dataset,scene,rotation_matrix,translation_vector",
        [
            f"test/church/images/{n},church,church,{EYE9},{ZERO3}"
            for n in ["00090.png", "00001.png", "00046.png"]
        ]
        + [f"test/lizard/images/{n},lizard,lizard,{EYE9},{ZERO3}" for n in ["y.png", "x.png"]],
    )
    _png(root / "train/church/images/1.png", 6)
    _png(root / "train/church/images/2.png", 7)
    _csv(
        root / "train/train_labels.csv",
        "dataset,scene,image_name,rotation_matrix,translation_vector,calibration_matrix",
        [f"church,church,{n}.png,{_pose(3 * k, (k, 0, 0))},{EYE9}" for k, n in enumerate("12", 1)],
    )
    return root


@pytest.fixture()
def root2023(tmp_path: Path) -> Path:
    root = tmp_path / "c23"
    for i, name in enumerate(["haiper/bike/images/b.png", "haiper/bike/images/a.png"]):
        _png(root / "test" / name, i)
    _png(root / "test/urban/kyiv/images/k1.png", 2)
    _csv(
        root / "sample_submission.csv",
        "image_path,dataset,scene,rotation_matrix,translation_vector",
        [
            f"haiper/bike/images/b.png,haiper,bike,{EYE9},{ZERO3}",
            f"haiper/bike/images/a.png,haiper,bike,{EYE9},{ZERO3}",
            f"urban/kyiv/images/k1.png,urban,kyiv,{EYE9},{ZERO3}",
        ],
    )
    for i, n in enumerate("abc"):
        _png(root / f"train/haiper/bike/images/{n}.png", 10 + i)
    _csv(
        root / "train/train_labels.csv",
        "dataset,scene,image_path,rotation_matrix,translation_vector",
        [f"haiper,bike,haiper/bike/images/{n}.png,{_pose(7 * k, (0, k, 1))}" for k, n in
         enumerate("cab")],
    )  # fmt: skip
    return root


# ---------------------------------------------------------------- imc-bench (IMC2025 train)


def test_bench_is_read_as_2025_train(bench_root: Path) -> None:
    assert formats.detect_year(bench_root) == 2025
    comp = formats.read_competition(bench_root)  # no test/: the train split
    assert (comp.year, comp.split) == (2025, "train")
    labels = pd.read_csv(bench_root / "train_labels.csv")
    counts = {k: len(d.images) for k, d in comp.datasets.items()}
    assert counts == labels.groupby("dataset", sort=False).size().to_dict()  # in file order
    assert {"ETs", "templeRing", "dinoSparseRing", "fountain"} <= set(counts)  # SOURCES.md
    for name, ds in comp.datasets.items():
        scenes = labels[(labels.dataset == name) & (labels.scene != OUTLIERS)].scene
        assert ds.reference_scenes() == list(dict.fromkeys(scenes))
    ets = comp.datasets["ETs"]
    scenes = [im.scene for im in ets.images]
    assert {s: scenes.count(s) for s in set(scenes)} == {"ET": 9, "another_ET": 10, OUTLIERS: 3}
    assert ets.reference_scenes() == ["ET", "another_ET"]
    im = next(im for im in ets.images if im.name == "et007.jpg")
    assert im.R[0].tolist() == [0.00247891042925, -0.124054209152, 0.992272345777]
    assert im.t.tolist() == [-4.55514736922, -0.968525565429, 2.70579612965]
    assert im.path == bench_root / "train/ETs/et007.jpg"
    outlier = next(im for im in ets.images if im.scene == OUTLIERS)
    assert outlier.R.shape == (3, 3) and np.isnan(outlier.R).all() and not outlier.has_pose
    assert ets.thresholds["ET"].tolist() == [0.002, 0.005, 0.008, 0.01, 0.02, 0.04]
    assert comp.datasets["fountain"].reference_scenes() == ["fountain-P11"]


def test_bench_submission_round_trip(bench_root: Path, tmp_path: Path) -> None:
    comp = formats.read_competition(bench_root, split="train")
    ref = formats.reference_predictions(comp)
    path = write_submission(comp, ref, tmp_path / "sub" / "submission.csv")
    frame = read_submission(path, 2025)
    assert list(frame.columns) == list(formats.SUBMISSION_COLUMNS[2025])
    order = [(d.dataset, im.name) for d in comp.datasets.values() for im in d.images]
    assert list(zip(frame["dataset"], frame["image"])) == order  # every image once, in order
    assert check_submission(comp, frame) == []
    back = predictions_from_frame(comp, frame)
    assert back.keys() == ref.keys()
    for key, p in ref.items():
        assert back[key].registered == p.registered
        assert back[key].cluster == p.cluster
        if p.registered:  # shortest round-trip formatting: exact, not just close
            np.testing.assert_array_equal(back[key].R, p.R)
            np.testing.assert_array_equal(back[key].t, p.t)
    labels = pd.read_csv(bench_root / "train_labels.csv")
    assert sum(p.registered for p in back.values()) == (labels.scene != OUTLIERS).sum()
    assert len(frame) == len(labels)


def test_missing_and_unregistered_predictions(bench_root: Path) -> None:
    comp = formats.read_competition(bench_root, split="train", datasets=["ETs"])
    preds = formats.reference_predictions(comp)
    del preds[("ETs", "et001.jpg")]
    preds[("ETs", "et002.jpg")] = Prediction("cluster7")  # a cluster but no pose
    frame = submission_frame(comp, preds).set_index("image")
    assert len(frame) == 22
    for name in ["et001.jpg", "et002.jpg"]:
        row = frame.loc[name]
        assert (row.scene, row.rotation_matrix, row.translation_vector) == (OUTLIERS, NAN9, NAN3)
    assert frame.loc["et003.jpg"].scene == "ET"
    assert frame.loc["et003.jpg"].translation_vector != NAN3


def test_labels_and_thresholds_frames_rebuild_the_files(bench_root: Path) -> None:
    comp = formats.read_competition(bench_root, split="train")
    for ours, name in [
        (formats.labels_frame(comp), "train_labels.csv"),
        (formats.thresholds_frame(comp), "train_thresholds.csv"),
    ]:
        theirs = pd.read_csv(bench_root / name, dtype=str, keep_default_na=False)
        assert list(ours.columns) == list(theirs.columns)
        assert len(ours) == len(theirs)
        for col in ours.columns:
            if col in ("dataset", "scene", "image"):
                assert ours[col].tolist() == theirs[col].tolist()
            else:
                for x, y in zip(ours[col], theirs[col]):
                    np.testing.assert_array_equal(formats.parse_floats(x), formats.parse_floats(y))


def test_datasets_filter(bench_root: Path) -> None:
    comp = formats.read_competition(bench_root, datasets=["fountain"])
    assert list(comp.datasets) == ["fountain"] and comp.num_images == 11
    with pytest.raises(ImcError) as e:
        formats.read_competition(bench_root, datasets=["fountain", "nope"])
    _one_line_error(e, "nope", "templeRing", "ETs")


def test_test_layout_round_trip(bench_root: Path, tmp_path: Path) -> None:
    comp = formats.read_competition(bench_root, datasets=["ETs", "fountain"])
    out = formats.write_test_layout(comp, tmp_path / "kaggle")
    assert formats.detect_year(out) == 2025
    test = formats.read_competition(out)  # test/ holds images: the test split
    assert test.split == "test" and list(test.datasets) == ["ETs", "fountain"]
    for name, ds in comp.datasets.items():
        got = test.datasets[name].images
        assert [im.name for im in got] == [im.name for im in ds.images]  # label order, not sorted
        assert all(os.path.samefile(a.path, b.path) for a, b in zip(got, ds.images))
        assert all(im.scene is None and im.image_id and im.R is None for im in got)
    sample = pd.read_csv(out / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert set(sample["scene"]) == {OUTLIERS} and set(sample["translation_vector"]) == {NAN3}
    # the order comes from the sample submission: reverse it and read again
    sample.iloc[::-1].to_csv(out / "sample_submission.csv", index=False)
    again = formats.read_competition(out, split="test")
    assert [im.name for im in again.datasets["ETs"].images] == [
        im.name for im in reversed(comp.datasets["ETs"].images)
    ]
    preds = {k: p for k, p in formats.reference_predictions(comp).items()}
    frame = submission_frame(again, preds)
    assert check_submission(again, frame) == []
    assert list(frame["image_id"]) == list(sample["image_id"].iloc[::-1])


# ---------------------------------------------------------------- synthetic 2025, 2024, 2023


def test_2025_synthetic(root2025: Path) -> None:
    comp = formats.read_competition(root2025)
    assert [im.name for im in comp.datasets["A"].images] == ["a2.png", "a3.png", "a1.png"]
    np.testing.assert_allclose(comp.datasets["A"].images[2].R, _rot(20), atol=0)
    assert comp.datasets["B"].thresholds == {"s2": pytest.approx(np.array([1.0, 2.0]))}


def test_2024_synthetic(root2024: Path) -> None:
    assert formats.detect_year(root2024) == 2024
    comp = formats.read_competition(root2024)
    assert comp.split == "test" and list(comp.datasets) == ["church", "lizard"]
    church = comp.datasets["church"]
    assert (church.dataset, church.scene) == ("church", "church")
    assert [im.name for im in church.images] == ["00090.png", "00001.png", "00046.png"]
    assert church.images[0].image_id == "test/church/images/00090.png"
    assert church.images[0].path == root2024 / "test/church/images/00090.png"
    preds = {("church", "00001.png"): Prediction("x", _rot(30), np.array([1.0, 2, 3]))}
    frame = submission_frame(comp, preds)
    assert list(frame.columns) == list(formats.SUBMISSION_COLUMNS[2024])
    assert (
        frame["image_path"].tolist()
        == pd.read_csv(root2024 / "sample_submission.csv")["image_path"].tolist()
    )
    assert frame["scene"].tolist() == ["church"] * 3 + ["lizard"] * 2  # the folder's scene
    assert frame["translation_vector"].tolist() == [NAN3, "1.0;2.0;3.0", NAN3, NAN3, NAN3]
    train = formats.read_competition(root2024, split="train")
    im = train.datasets["church"].images[1]
    assert (im.name, im.scene) == ("2.png", "church")
    np.testing.assert_allclose(im.R, _rot(6), atol=0)
    labels = formats.labels_frame(train)
    assert labels["image_path"].tolist() == [
        "train/church/images/1.png",
        "train/church/images/2.png",
    ]
    (root2024 / "sample_submission.csv").unlink()  # no sample: every file, sorted
    comp = formats.read_competition(root2024, split="test")
    assert [im.name for im in comp.datasets["church"].images] == [
        "00001.png", "00046.png", "00090.png",
    ]  # fmt: skip


def test_2023_synthetic(root2023: Path, tmp_path: Path) -> None:
    assert formats.detect_year(root2023) == 2023
    comp = formats.read_competition(root2023)
    assert comp.split == "test" and list(comp.datasets) == ["haiper/bike", "urban/kyiv"]
    bike = comp.datasets["haiper/bike"]
    assert (bike.dataset, bike.scene) == ("haiper", "bike")
    assert [im.name for im in bike.images] == [
        "haiper/bike/images/b.png",
        "haiper/bike/images/a.png",
    ]
    assert bike.images[0].path == root2023 / "test/haiper/bike/images/b.png"
    only = formats.read_competition(root2023, datasets=["haiper"])
    assert list(only.datasets) == ["haiper/bike"]
    frame = submission_frame(comp, {})
    assert frame["rotation_matrix"].tolist() == [EYE9] * 3  # the metric raises on nan
    assert frame["translation_vector"].tolist() == [ZERO3] * 3
    assert frame["scene"].tolist() == ["bike", "bike", "kyiv"]
    train = formats.read_competition(root2023, split="train")
    names = [im.name for im in train.datasets["haiper/bike"].images]
    assert names == [f"haiper/bike/images/{n}.png" for n in "cab"]
    np.testing.assert_allclose(train.datasets["haiper/bike"].images[1].R, _rot(7), atol=0)
    out = formats.write_test_layout(train, tmp_path / "t23")
    back = formats.read_competition(out)
    assert (back.year, back.split) == (2023, "test")
    assert [im.name for im in back.datasets["haiper/bike"].images] == names


def test_check_submission_names_problems(root2023: Path, tmp_path: Path) -> None:
    comp = formats.read_competition(root2023)
    frame = submission_frame(comp, {})
    assert check_submission(comp, frame) == []
    frame.loc[0, "rotation_matrix"] = NAN9  # crashes the 2023 metric
    frame.loc[1, "scene"] = "car"
    frame.loc[2, "image_path"] = "urban/kyiv/images/k2.png"
    problems = check_submission(comp, frame)
    assert len(problems) == 4, problems
    assert "non-finite" in problems[0] and "'car'" in problems[1]
    assert "k2.png" in problems[2] and "1 image(s) have no row" in problems[3]
    with pytest.raises(SubmissionError) as e:
        predictions_from_frame(comp, frame)
    _one_line_error(e, "k2.png")
    with pytest.raises(ImcError) as e:  # writing a test layout over its own images
        formats.write_test_layout(comp, root2023)
    _one_line_error(e, "overwrite")
    assert (root2023 / "test/haiper/bike/images/b.png").is_file()


@pytest.mark.parametrize(
    "year,files",
    [
        (2025, ["test/D/z.png", "test/D/a.png", "test/E/e.jpg"]),
        (2024, ["test/D/images/z.png", "test/D/images/a.png", "test/E/images/e.jpg"]),
        (2023, ["test/D/S/images/z.png", "test/D/S/images/a.png", "test/E/F/images/e.jpg"]),
    ],
)
def test_detect_by_folder_depth(tmp_path: Path, year: int, files: list[str]) -> None:
    for i, f in enumerate(files):
        _png(tmp_path / f, i)
    assert formats.detect_year(tmp_path) == year
    comp = formats.read_competition(tmp_path)
    assert comp.split == "test" and len(comp.datasets) == 2
    first = next(iter(comp.datasets.values()))
    assert [Path(im.name).name for im in first.images] == ["a.png", "z.png"]


def test_parse_floats_reads_strings_and_sequences() -> None:
    """The one parser of ';'-separated numbers (CSV cells, the metrics' thresholds)."""
    np.testing.assert_array_equal(formats.parse_floats("1; 2.5;nan", 3), [1, 2.5, np.nan])
    np.testing.assert_array_equal(formats.parse_floats([[1, 2], [3, 4]]), [1, 2, 3, 4])
    with pytest.raises(ImcError, match="row 2: cannot parse '1;x'"):
        formats.parse_floats("1;x", where="row 2")
    with pytest.raises(ImcError, match="expected 3 values, got 2"):
        formats.parse_floats("1;2", 3)
    with pytest.raises(ImcError, match="cannot parse 'None'"):
        formats.parse_floats(None)


def test_floats_round_trip_exactly() -> None:
    x = np.random.default_rng(1).normal(size=600) * 10.0 ** np.arange(-300, 300)
    np.testing.assert_array_equal(formats.parse_floats(formats.format_floats(x), 600), x)


# ---------------------------------------------------------------- errors


def test_missing_root_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ImcError) as e:
        formats.read_competition(tmp_path / "absent")
    _one_line_error(e, "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImcError) as e:
        formats.read_competition(tmp_path / "empty")
    _one_line_error(e, str(tmp_path / "empty"), "empty folder", "IMC2023/2024/2025")


def test_labels_and_disk_disagree(root2025: Path) -> None:
    (root2025 / "train/A/a1.png").unlink()
    with pytest.raises(ImcError) as e:
        formats.read_competition(root2025)
    _one_line_error(e, "train_labels.csv", "a1.png", "not found")
    _png(root2025 / "train/A/a1.png")
    _png(root2025 / "train/B/stray.png")
    with pytest.raises(ImcError) as e:
        formats.read_competition(root2025)
    _one_line_error(e, "train_labels.csv", "stray.png")
    assert formats.read_competition(root2025, datasets=["A"]).num_images == 3
    with pytest.raises(ImcError) as e:
        formats.read_competition(root2025, split="val")
    _one_line_error(e, "val")


H25 = "dataset,scene,image,rotation_matrix,translation_vector"


@pytest.mark.parametrize(
    "body,expect",
    [
        (f"{H25}\nA,s,a.png,1,2,3,4\n", "malformed"),  # more fields than columns
        (f'{H25}\nA,s,a.png,{NAN9},{NAN3}\n"', "malformed"),  # unclosed quote
        ("dataset,scene,image,rotation_matrix\nA,s,a.png,1\n", "translation_vector"),
        (f"{H25}\nA,s,a.png,{NAN9},1;2;x\n", "'1;2;x'"),
        (f"{H25}\nA,s,a.png,{NAN9},1;2\n", "expected 3 values"),
        (f"{H25}\nA,,a.png,{NAN9},{NAN3}\n", "empty"),
        ("", "malformed"),
    ],
)
def test_malformed_submission(tmp_path: Path, body: str, expect: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ImcError) as e:
        read_submission(path, 2025)
    _one_line_error(e, "bad.csv", expect)


def test_duplicated_submission_row(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    row = f"A,s,a.png,{NAN9},{NAN3}"
    _csv(path, H25, [row, row])
    with pytest.raises(SubmissionError) as e:
        read_submission(path, 2025)
    _one_line_error(e, "dup.csv", "A/a.png")
