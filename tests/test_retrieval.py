"""Global descriptors: a tiny DINOv2 loaded from disk, the ALIKED VLAD fallback, the stage."""

from __future__ import annotations

import json
import logging

import cv2
import h5py
import numpy as np
import pytest
import torch

from imc import config
from imc.cache import h5_key
from imc.data import Dataset, ImageInfo
from imc.errors import ImcError, WeightsError
from imc.stages import retrieval
from imc.stages.retrieval import (
    aggregate_local_descriptors,
    global_from_local,
    load_dinov2,
    load_global,
    local_descriptors_from_h5,
    main,
    preprocess,
)

HIDDEN = 32


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """A randomly initialised, seeded DINOv2 saved the way a Kaggle model input holds one."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=56,
    )
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).eval().save_pretrained(folder)
    return folder


def conf(**kw):
    """The whole configuration, with a small retrieval section updated by `kw`."""
    base = {
        "model": "dinov2",
        "dinov2_dir": None,
        "image_size": 56,
        "num_neighbors": 3,
        "min_similarity": 0.2,
        "exhaustive_below": 0,
    }
    return {**config.DEFAULTS, "retrieval": {**base, **kw}}  # the whole configuration


def make_dataset(tmp_path, n=3, broken=True):
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        path = tmp_path / f"im{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (60 + 10 * i, 90, 3), dtype=np.uint8))
        images.append(ImageInfo(name=f"im{i}.png", path=path))
    if broken:
        (tmp_path / "broken.png").write_bytes(b"not an image")
        images.insert(1, ImageInfo(name="broken.png", path=tmp_path / "broken.png"))
    return Dataset(name="toy", dataset="toy", images=images)


# ----------------------------------------------------------------------------- DINOv2


def test_preprocess_shape_and_normalisation():
    image = np.full((100, 150, 3), 255, np.uint8)
    x = preprocess(image, image_size=56, patch_size=14)
    assert x.shape == (1, 3, 56, 84) and x.dtype == torch.float32  # 150 * 0.56 = 84
    white = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]  # ImageNet mean/std
    np.testing.assert_allclose(x[0, :, 0, 0], white, rtol=1e-6)
    # image_size 50 rounds to 56; a portrait keeps its orientation; 130 * 56 / 90 = 80.9 -> 84.
    assert preprocess(np.zeros((130, 90, 3), np.uint8), 50, 14).shape == (1, 3, 84, 56)


def test_tiny_dinov2_from_disk(tiny_dinov2, tmp_path):
    model = load_dinov2(tiny_dinov2)
    assert not model.training
    image = np.random.default_rng(1).integers(0, 255, (70, 100, 3), dtype=np.uint8)
    d1 = retrieval.dinov2_descriptor(model, image, 56)
    assert d1.shape == (2 * HIDDEN,) and d1.dtype == np.float32
    assert np.linalg.norm(d1) == pytest.approx(1.0, abs=1e-5)
    # Both halves (CLS, mean patch token) carry unit-norm / sqrt(2) each.
    assert np.linalg.norm(d1[:HIDDEN]) == pytest.approx(2**-0.5, abs=1e-5)
    d2 = retrieval.dinov2_descriptor(load_dinov2(tiny_dinov2), image, 56)
    np.testing.assert_array_equal(d1, d2)
    other = retrieval.dinov2_descriptor(model, image[::-1].copy(), 56)
    assert not np.allclose(d1, other)


def test_dinov2_folder_errors(tiny_dinov2, tmp_path):
    with pytest.raises(ImcError, match="not found"):
        load_dinov2(tmp_path / "nowhere")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((tiny_dinov2 / "model.safetensors").read_bytes())
    with pytest.raises(ImcError, match=f"{no_config}.*config.json"):
        load_dinov2(no_config)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_dinov2 / "config.json").read_text())
    with pytest.raises(ImcError, match=f"{no_weights} has no weights.*config.json"):
        load_dinov2(no_weights)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    cfg = json.loads((tiny_dinov2 / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**cfg, "model_type": "vit"}))
    (wrong / "model.safetensors").write_bytes(b"")
    with pytest.raises(ImcError, match="model_type is 'vit'"):
        load_dinov2(wrong)
    deeper = tmp_path / "deeper"  # a config with one layer more than the weights hold
    deeper.mkdir()
    (deeper / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    (deeper / "model.safetensors").write_bytes((tiny_dinov2 / "model.safetensors").read_bytes())
    with pytest.raises(WeightsError, match=r"deeper.*missing_keys.*encoder\.layer\.2"):
        load_dinov2(deeper)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text(json.dumps(cfg))
    (truncated / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ImcError, match=str(truncated)):
        load_dinov2(truncated)


def test_stage_dinov2_skips_unreadable_and_resumes(tiny_dinov2, tmp_path, caplog, monkeypatch):
    dataset = make_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="imc"):
        out = main(conf(dinov2_dir=str(tiny_dinov2)), retrieval.Inputs(dataset), tmp_path)
    assert "broken.png" in caplog.text
    names, desc = load_global(out)
    assert names == ["im0.png", "im1.png", "im2.png"]  # dataset order, broken one skipped
    assert desc.shape == (3, 2 * HIDDEN) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-5)
    with h5py.File(out) as f:
        assert f.attrs["model"] == "dinov2"

    # A rerun computes only what is missing: here nothing, so no model is loaded.
    def no_load(*a, **k):
        raise AssertionError("model loaded although every image is done")

    monkeypatch.setattr(retrieval, "load_dinov2", no_load)
    dataset.images = [im for im in dataset.images if im.name != "broken.png"]
    again = main(conf(dinov2_dir=str(tiny_dinov2)), retrieval.Inputs(dataset), tmp_path)
    np.testing.assert_array_equal(load_global(again)[1], desc)


# ----------------------------------------------------------------------------- ALIKED aggregate


def test_aggregate_hand_computed():
    codebook = np.array([[1, 0], [0, 1]], np.float32)
    # Normalised: [1, 0] -> centroid 0, residual 0; [0.6, 0.8] -> centroid 1 (squared
    # distances 0.8 and 0.4), residual [0.6, -0.2]; [0, 1] -> centroid 1, residual 0.
    # Mean [1.6, 1.8] / 3; VLAD [0, 0, sqrt .6, -sqrt .2] / sqrt .8; halves / sqrt 2.
    desc = np.array([[2, 0], [0.6, 0.8], [0, 1]], np.float32)
    v = aggregate_local_descriptors(desc, codebook)
    mean = np.array([1.6, 1.8]) / 5.8**0.5
    vlad = np.array([0, 0, 0.75**0.5, -0.5])
    np.testing.assert_allclose(v, np.concatenate([mean, vlad]) / 2**0.5, atol=1e-6)
    assert v.dtype == np.float32
    # [0.8, 0.6] -> centroid 0, residual [-0.2, 0.6]; the mean becomes [1, 1] / sqrt 2.
    v = aggregate_local_descriptors(np.vstack([desc, [[0.8, 0.6]]]), codebook)
    vlad = np.array([-(0.2**0.5), 0.6**0.5, 0.6**0.5, -(0.2**0.5)]) / 1.6**0.5
    np.testing.assert_allclose(v, np.concatenate([[0.5**0.5] * 2, vlad]) / 2**0.5, atol=1e-6)
    assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)
    empty = aggregate_local_descriptors(np.zeros((0, 2), np.float32), codebook)
    np.testing.assert_array_equal(empty, np.zeros(6))


def two_scene_descriptors(num_images=6, seed=0):
    """Images of scene A draw descriptors near 8 prototypes, those of B near 8 others."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(16, 128))
    local = {}
    for i in range(2 * num_images):
        scene = i % 2
        pick = rng.integers(0, 8, 300) + 8 * scene
        d = protos[pick] + 0.5 * rng.normal(size=(300, 128))
        local[f"{'AB'[scene]}{i}"] = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(
            np.float32
        )
    return local


def test_aggregate_separates_scenes_and_is_deterministic():
    local = two_scene_descriptors()
    g = global_from_local(local, num_clusters=16)
    names = list(g)
    x = np.stack([g[n] for n in names])
    assert x.shape == (12, 128 + 16 * 128)
    sims = x @ x.T
    same = np.array([[a[0] == b[0] for b in names] for a in names])
    off_diag = ~np.eye(12, dtype=bool)
    for q in range(12):
        assert sims[q][same[q] & off_diag[q]].min() > sims[q][~same[q]].max()
    g2 = global_from_local(local, num_clusters=16)
    for n in names:
        np.testing.assert_array_equal(g[n], g2[n])


def test_local_descriptors_from_h5(tmp_path):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        grp = f.create_group(h5_key("sub/a.jpg"))
        grp.create_dataset("descriptors", data=np.eye(3, 128, dtype=np.float32))
        grp.create_dataset("scores", data=np.ones(3, np.float32))
    read = local_descriptors_from_h5(path)
    np.testing.assert_array_equal(read("sub/a.jpg"), np.eye(3, 128))
    with pytest.raises(ImcError, match="b.jpg"):
        read("b.jpg")


def test_fallback_when_no_dinov2(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(retrieval, "dinov2_dirs", lambda: [])
    local = two_scene_descriptors(num_images=3)
    images = [ImageInfo(name=n, path=tmp_path / n) for n in local]
    images.append(ImageInfo(name="nofeat.jpg", path=tmp_path / "nofeat.jpg"))
    dataset = Dataset(name="toy", dataset="toy", images=images)

    def read(name):
        if name not in local:
            raise ImcError(f"features.h5: no descriptors for image '{name}'")
        return local[name]

    with caplog.at_level(logging.WARNING, logger="imc"):
        out = main(conf(), retrieval.Inputs(dataset, local_descriptors=read), tmp_path)
    assert "no DINOv2 model found" in caplog.text and "weights" in caplog.text
    assert "nofeat.jpg" in caplog.text
    names, desc = load_global(out)
    assert names == list(local)
    assert desc.shape == (6, 128 + retrieval.VLAD_CLUSTERS * 128)
    with h5py.File(out) as f:
        assert f.attrs["model"] == "aliked"
    with pytest.raises(ImcError, match="local descriptors"):
        main(conf(model="aliked"), retrieval.Inputs(dataset), tmp_path / "other")


def test_unknown_model_and_missing_file(tmp_path):
    with pytest.raises(ImcError, match="valid: dinov2, aliked"):
        retrieval.resolve_model(conf(model="netvlad")["retrieval"])
    with pytest.raises(ImcError, match="not found"):
        load_global(tmp_path / "global.h5")


def test_new_dinov2_folder_replaces_fallback_descriptors(tiny_dinov2, tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path, broken=False)
    local = two_scene_descriptors(num_images=2)
    by_image = dict(zip([im.name for im in dataset.images], local.values()))
    found: list = []
    monkeypatch.setattr(retrieval, "dinov2_dirs", lambda: found)
    out = main(conf(), retrieval.Inputs(dataset, local_descriptors=by_image.__getitem__), tmp_path)
    assert load_global(out)[1].shape == (3, 128 + retrieval.VLAD_CLUSTERS * 128)
    found.append(tiny_dinov2)  # same configuration, but a DINOv2 folder is now installed
    out = main(conf(), retrieval.Inputs(dataset), tmp_path)
    names, desc = load_global(out)
    assert names == ["im0.png", "im1.png", "im2.png"] and desc.shape == (3, 2 * HIDDEN)
    with h5py.File(out) as f:
        assert f.attrs["model"] == "dinov2" and f.attrs["source"] == str(tiny_dinov2.resolve())
