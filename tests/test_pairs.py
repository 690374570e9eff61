"""Pair selection: FAISS k-NN against hand-computed and brute-force pairs, files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from imc import config
from imc.cache import h5_key
from imc.errors import ImcError
from imc.stages.pairs import (
    MIN_SIMILARITY,
    Inputs,
    main,
    min_similarity,
    pairs_from_descriptors,
    read_pairs,
)


def unit(degrees: list[float]) -> np.ndarray:
    a = np.radians(degrees)
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def brute_force(desc: np.ndarray, k: int, min_sim: float) -> set[tuple[int, int]]:
    x = desc / np.linalg.norm(desc, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    out = set()
    for q in range(len(x)):
        for j in np.argsort(-sims[q])[:k]:
            if sims[q, j] >= min_sim:
                out.add((min(q, j), max(q, j)))
    return out


def test_hand_computed_neighbours():
    # Angles 0, 10, 30, 100, 180 degrees: nearest neighbours 1, 0, 1, 2, 3.
    names = ["a", "b", "c", "d", "e"]
    desc = unit([0, 10, 30, 100, 180])
    pairs = pairs_from_descriptors(names, desc, k=1, min_similarity=-1, exhaustive_below=0)
    assert pairs == [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]
    # cos 70 deg = 0.342 (c-d) and cos 80 deg = 0.174 (d-e) fall below 0.5.
    pairs = pairs_from_descriptors(names, desc, k=1, min_similarity=0.5, exhaustive_below=0)
    assert pairs == [("a", "b"), ("b", "c")]
    scored = pairs_from_descriptors(names, desc, 1, 0.5, 0, with_scores=True)
    assert [s[:2] for s in scored] == pairs
    np.testing.assert_allclose([s[2] for s in scored], np.cos(np.radians([10, 20])), atol=1e-6)


def test_two_neighbours_and_unnormalised_input():
    names = list("abcde")
    desc = unit([0, 10, 30, 100, 180]) * np.array([[1], [3], [0.5], [7], [2]], np.float32)
    # k=2: a{b,c} b{a,c} c{b,a} d{c (70 deg), e (80)} e{d (80), c (150)}
    expected = [("a", "b"), ("a", "c"), ("b", "c"), ("c", "d"), ("c", "e"), ("d", "e")]
    assert pairs_from_descriptors(names, desc, 2, -1, 0) == expected


@pytest.mark.parametrize("k", [1, 3, 7, 60])
@pytest.mark.parametrize("min_sim", [-1.0, 0.0, 0.15])
def test_faiss_equals_brute_force(k, min_sim):
    rng = np.random.default_rng(k)
    desc = rng.normal(size=(50, 16)).astype(np.float32)  # continuous: no ties
    names = [f"im{i:02d}" for i in range(50)]
    pairs = pairs_from_descriptors(names, desc, k, min_sim, exhaustive_below=10)
    got = {(names.index(a), names.index(b)) for a, b in pairs}
    assert got == brute_force(desc, k, min_sim)
    assert len(got) == len(pairs)  # no duplicate
    assert pairs == sorted(pairs, key=lambda p: (names.index(p[0]), names.index(p[1])))
    assert all(names.index(a) < names.index(b) for a, b in pairs)


def test_identical_descriptors_still_pair():
    # Two identical images: whichever of the tied pair faiss lists first, each gets the other.
    desc = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    pairs = pairs_from_descriptors(["x", "y", "z"], desc, 1, 0.5, 0)
    assert pairs == [("x", "y")]


def test_exhaustive_below_size():
    desc = unit([0, 90, 180, 270, 45])
    names = list("abcde")
    pairs = pairs_from_descriptors(names, desc, k=1, min_similarity=-1, exhaustive_below=6)
    assert len(pairs) == 10 and len(set(pairs)) == 10
    assert pairs[:4] == [("a", "b"), ("a", "c"), ("a", "d"), ("a", "e")]
    # At exactly exhaustive_below images the k-NN mode applies: one neighbour each, at most
    # five pairs.
    assert len(pairs_from_descriptors(names, desc, 1, -1, exhaustive_below=5)) <= 5


def test_all_pairs_drop_the_dissimilar_ones():
    # Angles 0, 90, 180, 270, 45: cosines 0 (90 deg apart), -1, 0.707 (45 deg).
    names = list("abcde")
    desc = unit([0, 90, 180, 270, 45])
    pairs = pairs_from_descriptors(names, desc, 1, 0.5, exhaustive_below=6, with_scores=True)
    assert [p[:2] for p in pairs] == [("a", "e"), ("b", "e")]
    np.testing.assert_allclose([p[2] for p in pairs], [np.cos(np.radians(45))] * 2, atol=1e-6)
    at_zero = pairs_from_descriptors(names, desc, 1, 0.0, exhaustive_below=6)
    assert ("a", "b") in at_zero and ("a", "c") not in at_zero  # cos 90 deg = 0 stays


def test_empty_and_single():
    assert pairs_from_descriptors([], np.zeros((0, 8), np.float32), 5, 0.0, 0) == []
    assert pairs_from_descriptors(["a"], np.ones((1, 8), np.float32), 5, 0.0, 0) == []
    assert pairs_from_descriptors(["a"], np.ones((1, 8), np.float32), 5, 0.0, 10) == []
    with pytest.raises(ValueError):
        pairs_from_descriptors(["a", "b"], np.ones((3, 8), np.float32), 5, 0.0, 0)


def write_global(path, names, desc):
    with h5py.File(path, "w") as f:
        f.attrs["model"] = "test"
        for i, (n, d) in enumerate(zip(names, desc)):
            f.create_dataset(h5_key(n), data=d).attrs["index"] = i


def _whole(retrieval: dict) -> dict:
    """The whole configuration with `retrieval` as its retrieval section."""
    return {**config.DEFAULTS, "retrieval": retrieval}


def test_main_writes_pairs_file_round_trip(tmp_path):
    # Dataset order differs from alphabetical order, and a name holds a folder.
    names = ["z.jpg", "sub/b.jpg", "a.jpg", "c.jpg"]
    write_global(tmp_path / "global.h5", names, unit([0, 10, 30, 100]))
    conf = {"num_neighbors": 1, "min_similarity": 0.5, "exhaustive_below": 0}
    out = main(_whole(conf), Inputs(tmp_path / "global.h5"), tmp_path)
    assert out == tmp_path / "pairs.txt"
    assert out.read_text() == "z.jpg sub/b.jpg\nsub/b.jpg a.jpg\n"
    assert read_pairs(out) == [("z.jpg", "sub/b.jpg"), ("sub/b.jpg", "a.jpg")]
    conf["exhaustive_below"] = 5  # all pairs of at least 0.5: within 60 degrees
    assert read_pairs(main(_whole(conf), Inputs(tmp_path / "global.h5"), tmp_path)) == [
        ("z.jpg", "sub/b.jpg"), ("z.jpg", "a.jpg"), ("sub/b.jpg", "a.jpg"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "model, setting, expected",
    [("aliked", None, 0.5), ("dinov2", None, 0.2), ("test", None, 0.2), ("aliked", 0.3, 0.3)],
)
def test_a_null_floor_is_the_descriptors_own(tmp_path, model, setting, expected):
    path = tmp_path / "global.h5"
    write_global(path, ["a.jpg", "b.jpg"], unit([0, 10]))
    with h5py.File(path, "a") as f:
        f.attrs["model"] = model
    conf = {"num_neighbors": 1, "min_similarity": setting, "exhaustive_below": 40}
    assert min_similarity(conf, path) == expected
    assert MIN_SIMILARITY["aliked"] == 0.5 and MIN_SIMILARITY["dinov2"] == 0.2


def test_main_drops_pairs_below_the_descriptors_floor(tmp_path):
    # 0, 50 and 70 degrees: cosines 0.64 (a-b), 0.34 (a-c), 0.94 (b-c). ALIKED's floor of 0.5
    # drops a-c; DINOv2's of 0.2 keeps it.
    path = tmp_path / "global.h5"
    names = ["a.jpg", "b.jpg", "c.jpg"]
    conf = {"num_neighbors": 5, "min_similarity": None, "exhaustive_below": 40}
    for model, expected in [("aliked", 2), ("dinov2", 3)]:
        write_global(path, names, unit([0, 50, 70]))
        with h5py.File(path, "a") as f:
            f.attrs["model"] = model
        assert len(read_pairs(main(_whole(conf), Inputs(path), tmp_path))) == expected


def test_main_single_image_writes_empty_file(tmp_path):
    write_global(tmp_path / "global.h5", ["a.jpg"], unit([0]))
    conf = {"num_neighbors": 5, "min_similarity": 0.2, "exhaustive_below": 40}
    out = main(_whole(conf), Inputs(tmp_path / "global.h5"), tmp_path)
    assert out.read_text() == "" and read_pairs(out) == []


def test_read_pairs_errors(tmp_path):
    with pytest.raises(ImcError, match="not found"):
        read_pairs(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("# comment\na b\n\nc d e\n")
    with pytest.raises(ImcError, match=r"bad\.txt:4"):
        read_pairs(bad)


def test_names_with_spaces_and_non_ascii_round_trip(tmp_path):
    names = ["a b.jpg", "vue_\u00e9\u65e5.png", "100%#x.jpg", "tab\there.png"]
    write_global(tmp_path / "global.h5", names, unit([0, 10, 20, 30]))
    conf = {"num_neighbors": 1, "min_similarity": 0.0, "exhaustive_below": 10}
    out = main(_whole(conf), Inputs(tmp_path / "global.h5"), tmp_path)
    first = out.read_text(encoding="utf-8").splitlines()[0]
    assert first == "a%20b.jpg vue_%C3%A9%E6%97%A5.png"  # UTF-8 bytes, hand-encoded
    assert out.read_bytes().isascii()
    assert read_pairs(out) == [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
