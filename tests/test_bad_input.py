"""Bad input, end to end: one run over a Kaggle-like test folder that holds every case.

Dataset `mixed`: consecutive templeRing views (so that the odd ones can register too) stored
as grayscale, RGBA, 16-bit PNG, an EXIF-rotated JPEG, an 8000x6000 JPEG, names with spaces
and non-ASCII characters, a byte-identical duplicate, a 32x32 image, and three files that are
no image (truncated JPEG, empty file, text with a .png name). Dataset `single`: one image.
Dataset `nomatch`: three noise images that match nothing. Each case must leave a message
naming the file where there is something to say, and the submission must be complete, valid
and in the sample submission's order; unreadable images are outliers, nothing else is lost.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imc import config, formats, pipeline
from imc.cache import h5_key
from imc.data import OUTLIERS
from imc.log import logger
from imc.submission import check_submission, read_submission

SPACES, NON_ASCII = "name with spaces.png", "vue_\u00e9\u00e0_\u65e5\u672c.png"
UNREADABLE = {
    "truncated.jpg": "truncated.jpg: cannot be read as an image",
    "empty.jpg": "empty.jpg: empty file",
    "not_an_image.png": "not_an_image.png: cannot be read as an image",
}
READABLE = {  # name -> stored (W, H)
    "good1.png": (480, 360),
    "good2.png": (480, 360),
    "good3.png": (480, 360),
    "gray.png": (480, 360),
    "rgba.png": (480, 360),
    "sixteen_bit.png": (480, 360),
    "exif_rotated.jpg": (480, 360),  # EXIF says 90 degrees; the stored pixels are kept
    SPACES: (480, 360),
    NON_ASCII: (480, 360),
    "huge.jpg": (8000, 6000),
    "copy_of_good1.png": (480, 360),
    "tiny.png": (32, 32),
}


def _view(bench: Path, i: int) -> Image.Image:
    """templeRing view i (640x480) at 480x360."""
    im = Image.open(bench / "train" / "templeRing" / f"templeR{i:04d}.png").convert("RGB")
    return im.resize((480, 360), Image.BILINEAR)


def _mixed(folder: Path, bench: Path) -> None:
    folder.mkdir(parents=True)
    for i in (1, 2, 3):
        _view(bench, i).save(folder / f"good{i}.png")
    (folder / "copy_of_good1.png").write_bytes((folder / "good1.png").read_bytes())
    _view(bench, 4).convert("L").save(folder / "gray.png")
    rgba = _view(bench, 5).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    gray16 = np.asarray(_view(bench, 6).convert("L"), np.uint16) * 257
    Image.fromarray(gray16).save(folder / "sixteen_bit.png")
    rotated = _view(bench, 7)
    exif = rotated.getexif()
    exif[0x0112] = 6  # display rotated by 90 degrees
    rotated.save(folder / "exif_rotated.jpg", exif=exif, quality=92)
    _view(bench, 8).save(folder / SPACES)
    _view(bench, 9).save(folder / NON_ASCII)
    _view(bench, 10).resize((8000, 6000), Image.BILINEAR).save(folder / "huge.jpg", quality=80)
    _view(bench, 11).resize((32, 32), Image.BILINEAR).save(folder / "tiny.png")
    buf = io.BytesIO()
    _view(bench, 12).save(buf, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "not_an_image.png").write_text("this is not an image\n")


def _competition(root: Path, bench: Path) -> None:
    """test/{mixed,single,nomatch}/ and a sample submission listing every file."""
    _mixed(root / "test" / "mixed", bench)
    (root / "test" / "single").mkdir(parents=True)
    _view(bench, 20).save(root / "test" / "single" / "only.png")
    rng = np.random.default_rng(0)
    (root / "test" / "nomatch").mkdir(parents=True)
    for i in range(3):
        noise = (rng.random((240, 320, 3)) * 255).astype(np.uint8)
        Image.fromarray(noise).save(root / "test" / "nomatch" / f"noise{i}.png")
    rows = []
    for ds in ("mixed", "single", "nomatch"):
        for f in sorted((root / "test" / ds).iterdir()):
            nan = ";".join(["nan"] * 9), ";".join(["nan"] * 3)
            rows.append((f"{ds}_{f.name}", ds, OUTLIERS, f.name, *nan))
    columns = ["image_id", "dataset", "scene", "image", "rotation_matrix", "translation_vector"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "sample_submission.csv", index=False)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def run(tmp_path_factory, bench_root):
    tmp = tmp_path_factory.mktemp("bad_input")
    _competition(tmp / "comp", bench_root)
    comp = formats.read_competition(tmp / "comp", split="test")
    # pycolmap's 4 px observation filter: at 512 keypoints the default 2.3 px
    # (imc.colmap_options.INCREMENTAL_DEFAULTS, tuned for full-size runs) leaves a view of this
    # small scene out; these tests are about the inputs, not that setting
    overrides = [
        "features.max_keypoints=512",
        "orientation.num_neighbors=1",
        "mapping.options.filter_max_reproj_error=4.0",
    ]
    conf = config.resolve("fast", None, overrides)
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        sub = tmp / "submission.csv"
        pipeline.run(comp, conf, tmp / "run", tmp / "cache", sub)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    frame = read_submission(sub, 2025)
    summary = json.loads((tmp / "run" / "mixed" / "summary.json").read_text())
    return {"comp": comp, "frame": frame, "log": "\n".join(records.messages), "tmp": tmp}, summary


def _scene(frame: pd.DataFrame, dataset: str, image: str) -> str:
    row = frame[(frame["dataset"] == dataset) & (frame["image"] == image)]
    assert len(row) == 1, f"{dataset}/{image}: {len(row)} rows"
    return row["scene"].iloc[0]


def test_submission_is_complete_valid_and_in_order(run):
    r, _ = run
    assert check_submission(r["comp"], r["frame"]) == []
    sample = pd.read_csv(r["tmp"] / "comp" / "sample_submission.csv", dtype=str)
    assert list(r["frame"]["image_id"]) == list(sample["image_id"])
    assert "failed" not in r["log"]  # no dataset failed as a whole


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_unreadable_file_is_named_and_placed_in_outliers(run, name):
    r, summary = run
    assert UNREADABLE[name] in r["log"]
    assert name in summary["failed"] and UNREADABLE[name] in summary["failed"][name]
    assert _scene(r["frame"], "mixed", name) == OUTLIERS


@pytest.mark.parametrize("name", sorted(READABLE))
def test_odd_but_readable_image_is_kept(run, name):
    r, summary = run
    assert name not in summary["failed"]
    with h5py.File(summary["features"], "r") as f:
        g = f[h5_key(name)]
        assert tuple(int(v) for v in g.attrs["image_size"]) == READABLE[name]
        assert "failed" not in g.attrs and len(g["keypoints"]) > 0


def test_nothing_else_is_lost(run):
    """Every readable image with keypoints registers; odd names travel through COLMAP."""
    r, _ = run
    scenes = {n: _scene(r["frame"], "mixed", n) for n in READABLE if n != "tiny.png"}
    assert OUTLIERS not in scenes.values(), scenes
    assert scenes[SPACES] == scenes[NON_ASCII]  # neighbouring views


def test_tiny_image_is_reported(run):
    r, _ = run
    assert "tiny.png (32x32) has" in r["log"] and "can hardly be registered" in r["log"]


def test_duplicates_are_reported(run):
    r, _ = run
    assert "identical image files: copy_of_good1.png, good1.png" in r["log"]


def test_huge_image_is_resized_for_features(run):
    _, summary = run
    with h5py.File(summary["features"], "r") as f:
        g = f[h5_key("huge.jpg")]
        assert tuple(int(v) for v in g.attrs["upright_size"]) == (640, 480)  # fast preset
        kpts = g["keypoints"][()]
        assert kpts[:, 0].max() > 1000 and kpts[:, 1].max() > 1000  # in stored pixels


def test_single_image_dataset(run):
    r, _ = run
    assert _scene(r["frame"], "single", "only.png") == OUTLIERS
    assert "mapping single: nothing to reconstruct" in r["log"]


def test_dataset_where_nothing_matches(run):
    r, _ = run
    scenes = [_scene(r["frame"], "nomatch", f"noise{i}.png") for i in range(3)]
    assert scenes == [OUTLIERS] * 3
    assert "mapping nomatch" in r["log"]
