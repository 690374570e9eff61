"""imc's keypoints (pixel centre at 0) reach COLMAP (pixel centre at 0.5) through one function,
imc.stages.reconstruction.colmap_keypoints: the database and the global pipeline's model support
read it."""

import h5py
import numpy as np
import pycolmap
import pytest

from imc.cache import h5_key
from imc.stages import global_mapping
from imc.stages import reconstruction as mapping

# an ordinary keypoint, one at the origin, and one just below a power of two whose k + 0.5
# float32 cannot hold (float32 rounds it; float64 keeps it exact)
KEYPOINTS = np.array([[10.0, 20.25], [0.0, 0.0], [2047.5 + 2**-13, 3.0]], np.float32)


def _features(path, keypoints: dict[str, np.ndarray], size=(2100, 1500)):
    with h5py.File(path, "w") as f:
        for name, k in keypoints.items():
            g = f.create_group(h5_key(name))
            g.create_dataset("keypoints", data=k)
            g.attrs["image_size"] = size
            g.attrs["done"] = True
    return path


def test_keypoints_at_k_come_out_at_k_plus_a_half(tmp_path):
    feats = _features(tmp_path / "features.h5", {"a/x.png": KEYPOINTS, "b.png": KEYPOINTS[:0]})
    out = mapping.colmap_keypoints(feats, ["a/x.png", "b.png"])
    assert out["a/x.png"].shape == (3, 2) and out["a/x.png"].dtype == np.float64
    assert np.array_equal(out["a/x.png"], KEYPOINTS.astype(np.float64) + 0.5)
    assert out["b.png"].shape == (0, 2)  # no keypoints: an empty [0 x 2]
    assert mapping.COLMAP_PIXEL_CENTRE == 0.5
    assert mapping.image_sizes(feats, ["b.png"]) == {"b.png": (2100, 1500)}


@pytest.mark.parametrize("batch", [1, mapping.KEYPOINT_BATCH])
def test_the_database_holds_the_converted_keypoints(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(mapping, "KEYPOINT_BATCH", batch)  # one image at a time, or all
    feats = _features(tmp_path / "features.h5", {"a.png": KEYPOINTS, "b.png": KEYPOINTS[::-1]})
    names = ["a.png", "b.png"]
    db_path = tmp_path / "database.db"
    ids = mapping.build_database(db_path, names, {n: n for n in names}, feats, {})
    db = pycolmap.Database.open(str(db_path))
    try:
        for name, k in (("a.png", KEYPOINTS), ("b.png", KEYPOINTS[::-1])):
            stored = np.asarray(db.read_keypoints(ids[name]))[:, :2]
            assert np.array_equal(stored, k + np.float32(0.5))  # float32, as before
    finally:
        db.close()


def test_model_support_reads_keypoints_in_colmaps_convention(tmp_path, monkeypatch):
    """model_support asks colmap_keypoints (and nothing else) for the keypoints it uses."""
    asked = []

    def fake(features_path, names):
        asked.append(list(names))
        return {}

    monkeypatch.setattr(global_mapping, "colmap_keypoints", fake)
    assert global_mapping.model_support([], {}, tmp_path / "features.h5", {}) == 0
    assert asked == [[]]
