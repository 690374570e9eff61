"""ALIKED features: registry, shapes, the pixel convention through rotation and resizing,
empty images, and the resumable features.h5 stage."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch

from imc import config
from imc.cache import h5_key
from imc.data import Dataset, ImageInfo
from imc.errors import ImcError
from imc.images import read_image
from imc.parallel import one_thread
from imc.settings import weights_dirs
from imc.stages import feature_file, features

CONF = {
    "model": "aliked-n16",
    "resize_long_side": 512,
    "max_keypoints": 512,
    "detection_threshold": 0.2,
    "nms_radius": 2,
}
WHOLE = {**config.DEFAULTS, "features": CONF}  # the whole configuration, as the stage takes it
needs_weights = pytest.mark.skipif(
    not any((d / "aliked-n16.pth").is_file() for d in weights_dirs()),
    reason="aliked-n16.pth absent: run `make weights` (python -m imc.weights fetch)",
)


@pytest.fixture(scope="module")
def model():
    if not any((d / "aliked-n16.pth").is_file() for d in weights_dirs()):
        pytest.skip("aliked-n16.pth absent: run `make weights` (python -m imc.weights fetch)")
    torch.manual_seed(0)
    return features.build_model(CONF)


@pytest.fixture(scope="module")
def temple(bench_root):
    """The first two templeRing views (640 x 480 PNG)."""
    paths = [bench_root / "train" / "templeRing" / f"templeR000{i}.png" for i in (1, 2)]
    return paths, [read_image(p) for p in paths]


@pytest.fixture(scope="module")
def temple_feats(model, temple):
    with one_thread():  # as the stage describes each image on the CPU (imc.parallel)
        return [features.extract_image(model, im, CONF) for im in temple[1]]


def test_unknown_model_lists_valid():
    with pytest.raises(ImcError, match=r"unknown feature model 'sift' \(valid: aliked-n16\)"):
        features.build_model({**CONF, "model": "sift"})


@needs_weights
def test_model_is_eval_fp32(model):
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@needs_weights
def test_channels_last_model_gives_what_a_contiguous_one_gives(model, temple, temple_feats):
    """The CPU model's convolution weights are channels-last; a copy left contiguous finds
    the same keypoints (a near-tie may swap two in order) with the same descriptors."""
    from scipy.spatial import cKDTree

    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    plain = features.build_model(CONF).to(memory_format=torch.contiguous_format)
    for image, ours in zip(temple[1], temple_feats):
        theirs = features.extract_image(plain, image, CONF)
        assert len(ours["keypoints"]) == len(theirs["keypoints"]) > 100
        dist, index = cKDTree(theirs["keypoints"]).query(ours["keypoints"])
        assert dist.max() < 1e-2
        assert len(set(index.tolist())) == len(index)
        np.testing.assert_allclose(ours["descriptors"], theirs["descriptors"][index], atol=1e-4)


def test_real_images_shapes_and_bounds(temple_feats):
    for f in temple_feats:
        n = len(f["keypoints"])
        assert 200 < n <= 512
        assert f["keypoints"].shape == (n, 2) and f["keypoints"].dtype == np.float32
        assert f["keypoints_upright"].shape == (n, 2)
        assert f["descriptors"].shape == (n, 128) and f["descriptors"].dtype == np.float32
        assert f["scores"].shape == (n,) and f["scores"].dtype == np.float32
        assert f["image_size"] == (640, 480) and f["upright_size"] == (512, 384)
        np.testing.assert_allclose(np.linalg.norm(f["descriptors"], axis=1), 1, atol=1e-4)
        k = f["keypoints"]
        assert k.min() >= 0 and k[:, 0].max() <= 639 and k[:, 1].max() <= 479
        # 640 -> 512 is a scale of 0.8: stored = (upright + 0.5) / 0.8 - 0.5.
        np.testing.assert_allclose(k, (f["keypoints_upright"] + 0.5) / 0.8 - 0.5, atol=1e-4)


def test_a_small_image_is_upscaled_to_min_long_side(model, temple):
    """640 x 480 up to 1024: keypoints found in the upscaled image, given in the stored frame."""
    f = features.extract_image(
        model, temple[1][0], {**CONF, "resize_long_side": 1024, "min_long_side": 1024}
    )
    assert f["image_size"] == (640, 480) and f["upright_size"] == (1024, 768)
    k = f["keypoints"]
    assert len(k) > 200 and k.min() >= -0.5 and k[:, 0].max() <= 639.5 and k[:, 1].max() <= 479.5
    np.testing.assert_allclose(k, (f["keypoints_upright"] + 0.5) / 1.6 - 0.5, atol=1e-4)


def test_rotation_round_trip_is_exact(model, temple, temple_feats):
    """A copy rotated 90 degrees clockwise, extracted with k=1, shows the network the original
    pixels: the same upright keypoints, and stored-frame keypoints that are the original ones
    moved into the copy's frame."""
    image = temple[1][0]
    h, w = image.shape[:2]
    marker = np.zeros((h, w))
    marker[100, 30] = 1  # (x, y) = (30, 100)
    rot_marker = np.rot90(marker, -1)
    assert np.argwhere(rot_marker == 1).tolist() == [[30, h - 1 - 100]]  # row 30, col 379
    # So a point (x, y) of the original is at (h - 1 - y, x) in the copy.
    copy = np.ascontiguousarray(np.rot90(image, -1))
    with one_thread():
        f = features.extract_image(model, copy, CONF, rotation_k=1)
    ref = temple_feats[0]
    assert f["image_size"] == (h, w) and f["upright_size"] == ref["upright_size"]
    np.testing.assert_array_equal(f["keypoints_upright"], ref["keypoints_upright"])
    np.testing.assert_array_equal(f["descriptors"], ref["descriptors"])
    x, y = ref["keypoints"][:, 0], ref["keypoints"][:, 1]
    np.testing.assert_allclose(f["keypoints"], np.stack([h - 1 - y, x], 1), atol=1e-3)


@needs_weights
def test_rotations_move_a_systematic_offset_with_the_image(model):
    """Gaussian blobs at known centres. ALIKED-n16 puts one keypoint per blob, offset from its
    centre by a constant vector of the network's input frame; in the stored frame that vector
    must turn with k (k=1: (dx, dy) -> (-dy, dx))."""
    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w]
    grid = np.stack(np.meshgrid(np.arange(60, w - 40, 80), np.arange(60, h - 40, 80)), -1)
    centres = grid.reshape(-1, 2) + np.random.default_rng(0).uniform(-0.5, 0.5, (35, 2))
    blobs = sum(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0) for cx, cy in centres)
    image = np.repeat((np.clip(blobs, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    offsets = []
    for k in range(4):
        kp = features.extract_image(model, image, CONF, rotation_k=k)["keypoints"]
        d = np.linalg.norm(kp[None] - centres[:, None], axis=2)
        assert np.all(d.min(1) < 6)  # every blob found
        offsets.append((kp[d.argmin(1)] - centres).mean(0))
    dx, dy = offsets[0]
    assert 1.0 < abs(dx) < 5 and 1.0 < abs(dy) < 5  # not a noise-level offset
    expected = [(dx, dy), (-dy, dx), (-dx, -dy), (dy, -dx)]
    # Measured: 0.03 px. A convention slip of 1/8 px (e.g. k / s for (k + 0.5) / s - 0.5)
    # gives 0.28 px.
    np.testing.assert_allclose(offsets, expected, atol=0.1)


@needs_weights
def test_flat_image_has_no_keypoints(model):
    f = features.extract_image(model, np.full((64, 64, 3), 128, np.uint8), CONF, rotation_k=3)
    assert f["keypoints"].shape == (0, 2) and f["keypoints"].dtype == np.float32
    assert f["keypoints_upright"].shape == (0, 2)
    assert f["descriptors"].shape == (0, 128) and f["scores"].shape == (0,)
    assert f["image_size"] == (64, 64) and f["upright_size"] == (64, 64)


@needs_weights
def test_conf_budget_applies_to_a_shared_model(model, temple):
    small = features.extract_image(model, temple[1][0], {**CONF, "max_keypoints": 100})
    assert len(small["keypoints"]) == 100
    with pytest.raises(ImcError, match="nms_radius"):
        features.extract_image(model, temple[1][0], {**CONF, "nms_radius": 3})


@needs_weights
def test_dark_image_gets_its_strongest_keypoints_up_to_the_floor(model, bench_root):
    """dinoSparseRing: dark and weakly textured, few maxima score above the threshold."""
    image = read_image(bench_root / "train" / "dinoSparseRing" / "dinoSR0001.png")
    above = features.extract_image(model, image, CONF)
    floored = features.extract_image(model, image, {**CONF, "min_keypoints": 400})
    assert 20 < len(above["keypoints"]) < 400
    assert len(floored["keypoints"]) == 400
    assert floored["descriptors"].shape == (400, 128) and floored["scores"].shape == (400,)
    kept = {tuple(k) for k in floored["keypoints_upright"].tolist()}
    assert all(tuple(k) in kept for k in above["keypoints_upright"].tolist())


@needs_weights
def test_floor_leaves_an_image_with_enough_keypoints_alone(model, temple, temple_feats):
    with one_thread():
        floored = features.extract_image(model, temple[1][0], {**CONF, "min_keypoints": 100})
    assert len(temple_feats[0]["keypoints"]) > 100
    for name in feature_file.ARRAYS:
        np.testing.assert_array_equal(floored[name], temple_feats[0][name])


def _dataset(temple, tmp_path) -> Dataset:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    images = [
        ImageInfo("sub/templeR0001.png", temple[0][0]),
        ImageInfo("broken.png", bad),
        ImageInfo("templeR0002.png", temple[0][1]),
    ]
    return Dataset("templeRing", "templeRing", images)


def test_stage_writes_resumes_and_records_failures(model, temple, temple_feats, tmp_path, caplog):
    ds = _dataset(temple, tmp_path)
    calls = []
    real = features.extract_image

    def counting(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("rotation_k", 0))
        if len(calls) == 2 and crash:
            raise KeyboardInterrupt  # a crash after the first image
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(features, "extract_image", counting)
    mp.setattr(features, "build_model", lambda conf, device="cpu": model)
    try:
        crash = True
        with pytest.raises(KeyboardInterrupt):
            features.main(WHOLE, features.Inputs(ds), tmp_path)
        assert not (tmp_path / "features.h5").exists()
        assert (tmp_path / "features.h5.partial").exists()
        crash = False
        with caplog.at_level("WARNING", logger="imc"):
            out = features.main(WHOLE, features.Inputs(ds, {"templeR0002.png": 0}), tmp_path)
        assert out == tmp_path / "features.h5" and out.exists()
        assert len(calls) == 3  # the crashed image again; the first was kept
        assert "broken.png" in caplog.text
        features.main(WHOLE, features.Inputs(ds), tmp_path)  # all done: no work
        assert len(calls) == 3
        features.main(WHOLE, features.Inputs(ds, {"sub/templeR0001.png": 2}), tmp_path)
        assert calls[3:] == [2]  # a changed rotation is redone
    finally:
        mp.undo()

    with h5py.File(out, "r") as f:
        assert sorted(f) == sorted(
            h5_key(n) for n in ("sub/templeR0001.png", "broken.png", "templeR0002.png")
        )
        assert "sub-SL-templeR0001.png" in f
        g = f[h5_key("templeR0002.png")]
        assert g.attrs["done"] and g.attrs["rotation"] == 0
        assert tuple(g.attrs["image_size"]) == (640, 480)
        assert tuple(g.attrs["upright_size"]) == (512, 384)
    loaded = feature_file.load_features(out, "templeR0002.png")
    for key in feature_file.ARRAYS:
        np.testing.assert_array_equal(loaded[key], temple_feats[1][key])
    rotated = feature_file.load_features(out, "sub/templeR0001.png")
    assert rotated["rotation"] == 2
    assert feature_file.failed_images(out).keys() == {"broken.png"}
    assert "broken.png" in feature_file.failed_images(out)["broken.png"]
    with pytest.raises(ImcError, match="failed"):
        feature_file.load_features(out, "broken.png")
    with pytest.raises(ImcError, match="no features for image 'nope.png'"):
        feature_file.load_features(out, "nope.png")


def test_sift_keypoints_follow_alikeds_in_the_stored_frame(temple, temple_feats):
    """SIFT on the image resized as ALIKED's (640 -> 512, not rotated): its keypoints appended
    after ALIKED's, moved to the stored frame by the same rule, with unit RootSIFT descriptors;
    ALIKED's own arrays untouched, and the same result twice."""
    conf = {**CONF, "sift_max_keypoints": 300}
    image, ref = temple[1][0], temple_feats[0]
    merged = features.add_sift(ref, image, conf)
    n = len(ref["keypoints"])
    np.testing.assert_array_equal(merged["keypoints"][:n], ref["keypoints"])
    for name in ("keypoints_upright", "descriptors", "scores"):
        assert merged[name] is ref[name]
    sift_kpts, desc = merged["keypoints"][n:], merged["sift_descriptors"]
    assert len(sift_kpts) == 300 and desc.shape == (300, 128) and desc.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-5)
    assert desc.min() >= 0
    gray = cv2.resize(
        cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (512, 384), interpolation=cv2.INTER_AREA
    )
    direct = np.array([k.pt for k in cv2.SIFT_create(nfeatures=300).detect(gray, None)])
    in_resized = (sift_kpts.astype(np.float64) + 0.5) * 0.8 - 0.5  # back to the 512 x 384 frame
    nearest = np.linalg.norm(in_resized[:, None] - direct[None], axis=2).min(1)
    assert nearest.max() < 1e-3  # every keypoint one of OpenCV's detections there
    again = features.add_sift(ref, image, conf)
    np.testing.assert_array_equal(again["keypoints"], merged["keypoints"])
    np.testing.assert_array_equal(again["sift_descriptors"], desc)
    assert features.add_sift(ref, image, {**CONF, "sift_max_keypoints": 0}) is ref


@needs_weights
def test_stage_stores_sift_and_counts_both_kinds(model, temple, temple_feats, tmp_path):
    ds = Dataset("t", "t", [ImageInfo("a.png", temple[0][0])])
    whole = {**WHOLE, "features": {**CONF, "sift_max_keypoints": 200}}
    out = features.main(whole, features.Inputs(ds, load_model=lambda: model), tmp_path)
    stored = feature_file.load_features(out, "a.png", feature_file.ARRAYS + (feature_file.SIFT,))
    n = len(temple_feats[0]["keypoints"])
    assert stored["keypoints"].shape == (n + 200, 2)
    assert stored["sift_descriptors"].shape == (200, 128)
    np.testing.assert_array_equal(stored["descriptors"], temple_feats[0]["descriptors"])
    assert feature_file.keypoint_counts(out) == {"a.png": n + 200}
    assert feature_file.keypoint_counts(out, "descriptors") == {"a.png": n}
    plain = features.main(WHOLE, features.Inputs(ds, load_model=lambda: model), tmp_path / "p")
    without = feature_file.load_features(plain, "a.png", feature_file.ARRAYS + (feature_file.SIFT,))
    assert feature_file.SIFT not in without and len(without["keypoints"]) == n


@needs_weights
def test_images_described_two_at_once_give_what_one_at_a_time_gives(model, temple, tmp_path):
    """The stage with one torch thread (images one after another) and with two (two images at
    once, one thread each, a model copy each): the same arrays, in dataset order, and the
    unreadable image recorded as failed in both."""
    ds = _dataset(temple, tmp_path)
    rotations = {"templeR0002.png": 1}
    threads, written = torch.get_num_threads(), []
    mp = pytest.MonkeyPatch()
    for name in ("_write", "_write_failed"):
        real = getattr(features, name)
        mp.setattr(
            features, name, lambda f, key, *a, real=real: (written.append(key), real(f, key, *a))
        )
    try:
        torch.set_num_threads(1)
        one = features.main(
            WHOLE, features.Inputs(ds, rotations, load_model=lambda: model), tmp_path / "1"
        )
        torch.set_num_threads(2)
        two = features.main(
            WHOLE, features.Inputs(ds, rotations, load_model=lambda: model), tmp_path / "2"
        )
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    assert written == [h5_key(im.name) for im in ds.images] * 2  # in dataset order
    for name in ("sub/templeR0001.png", "templeR0002.png"):
        a, b = feature_file.load_features(one, name), feature_file.load_features(two, name)
        assert a["rotation"] == b["rotation"] == rotations.get(name, 0)
        for key in feature_file.ARRAYS:
            np.testing.assert_array_equal(a[key], b[key])
    assert (
        feature_file.failed_images(one).keys()
        == feature_file.failed_images(two).keys()
        == {"broken.png"}
    )
