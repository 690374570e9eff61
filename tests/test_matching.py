"""LightGlue matching: strict weights, real-pair quality, upright matching of a rotated image,
empty cases, and the resumable matches.h5 stage."""

from __future__ import annotations

import cv2
import h5py
import numpy as np
import pytest
import torch

from imc import config
from imc.cache import h5_key, pair_key
from imc.data import Dataset, ImageInfo
from imc.errors import ImcError
from imc.images import read_image
from imc.parallel import cpu_workers, one_thread
from imc.settings import weights_dirs
from imc.stages import feature_file, features, matching
from imc.weights import load_state_dict

FEATURES = {
    "model": "aliked-n16",
    "resize_long_side": 512,
    "max_keypoints": 512,
    "detection_threshold": 0.2,
    "nms_radius": 2,
}
CONF = {
    "model": "lightglue-aliked",
    "filter_threshold": 0.1,
    "depth_confidence": 0.95,
    "width_confidence": 0.99,
    "half_precision": False,
    "cpu_bfloat16": False,
}
WHOLE = {**config.DEFAULTS, "features": FEATURES, "matching": CONF}  # as the stages take it
WEIGHTS = ("aliked-n16.pth", "aliked_lightglue.pth")


@pytest.fixture(scope="module")
def models():
    if not all(any((d / n).is_file() for d in weights_dirs()) for n in WEIGHTS):
        pytest.skip("weights absent: run `make weights` (python -m imc.weights fetch)")
    return features.build_model(FEATURES), matching.build_model(CONF)


@pytest.fixture(scope="module")
def temple(bench_root, models):
    """Neighbouring templeRing views 1 and 2, and view 2 stored upside down (k=2 upright)."""
    paths = [bench_root / "train" / "templeRing" / f"templeR000{i}.png" for i in (1, 2)]
    images = [read_image(p) for p in paths]
    aliked = models[0]
    flipped = np.ascontiguousarray(images[1][::-1, ::-1])
    with one_thread():  # as the stage describes each image on the CPU (imc.parallel)
        feats = [features.extract_image(aliked, im, FEATURES) for im in images]
        upside = features.extract_image(aliked, flipped, FEATURES, rotation_k=2)
    return paths, images, feats, upside


def magsac_inlier_ratio(k0: np.ndarray, k1: np.ndarray, matches: np.ndarray) -> float:
    cv2.setRNGSeed(0)
    p0, p1 = k0[matches[:, 0]].astype(np.float64), k1[matches[:, 1]].astype(np.float64)
    _, mask = cv2.findFundamentalMat(p0, p1, cv2.USAC_MAGSAC, 1.0, 0.9999, 10000)
    return float(mask.mean())


def test_unknown_matcher_lists_valid():
    with pytest.raises(ImcError, match=r"unknown matcher 'superglue' \(valid: lightglue-aliked\)"):
        matching.build_model({**CONF, "model": "superglue"})


def test_model_built_without_download_and_loaded_strictly(models):
    lg = models[1]
    assert not lg.training and lg.conf.input_dim == 128
    assert lg.conf.filter_threshold == 0.1 and lg.conf.width_confidence == 0.99
    state = load_state_dict("aliked_lightglue.pth")
    assert torch.equal(lg.input_proj.weight, state["input_proj.weight"])
    assert lg.input_proj.weight.shape == (256, 128)
    assert {p.dtype for p in lg.parameters()} == {torch.float32}  # half only on CUDA


def test_neighbouring_views_match(models, temple):
    _, _, (f0, f1), _ = temple
    matches, scores = matching.match_pair(models[1], f0, f1)
    assert matches.dtype == np.int32 and matches.shape[1] == 2
    assert scores.dtype == np.float32 and scores.shape == (len(matches),)
    assert len(matches) > 100
    assert matches[:, 0].max() < len(f0["keypoints"]) and matches[:, 1].max() < len(f1["keypoints"])
    assert len(np.unique(matches[:, 0])) == len(matches)  # mutual one-to-one
    assert len(np.unique(matches[:, 1])) == len(matches)
    assert scores.min() > 0.1 and scores.max() <= 1
    assert magsac_inlier_ratio(f0["keypoints"], f1["keypoints"], matches) > 0.8


def test_rotated_image_matches_upright_and_indexes_stored_keypoints(models, temple):
    """View 2 stored upside down and canonicalized (k=2) matches like the upright one, and
    the matches index its stored keypoints: the epipolar fit holds in stored pixels."""
    _, _, (f0, f1), f1_flipped = temple
    matches, _ = matching.match_pair(models[1], f0, f1_flipped)
    upright, _ = matching.match_pair(models[1], f0, f1)
    assert len(matches) == len(upright)
    np.testing.assert_array_equal(matches, upright)  # the network saw the same pixels
    assert magsac_inlier_ratio(f0["keypoints"], f1_flipped["keypoints"], matches) > 0.8
    # Stored keypoints of the flipped copy are (W-1-x, H-1-y) of the upright ones.
    np.testing.assert_allclose(f1_flipped["keypoints"], [639, 479] - f1["keypoints"], atol=1e-3)


def test_precision_choice(models, temple):
    """half_precision applies on CUDA only; cpu_bfloat16 runs LightGlue in bfloat16 on CPU,
    with nearly the same matches."""
    assert next(matching.build_model({**CONF, "half_precision": True}).parameters()).dtype == (
        torch.float32
    )
    bf16 = matching.build_model({**CONF, "cpu_bfloat16": True})
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    _, _, (f0, f1), _ = temple
    matches, scores = matching.match_pair(bf16, f0, f1)
    reference, _ = matching.match_pair(models[1], f0, f1)
    assert scores.dtype == np.float32
    common = {tuple(m) for m in matches} & {tuple(m) for m in reference}
    assert len(common) > 0.9 * len(reference)


def test_few_keypoints_give_empty(models, temple):
    f0 = temple[2][0]
    for n in (0, 1):
        few = {**f0, "keypoints_upright": f0["keypoints_upright"][:n]}
        few["descriptors"] = f0["descriptors"][:n]
        for a, b in ((few, f0), (f0, few)):
            matches, scores = matching.match_pair(models[1], a, b)
            assert matches.shape == (0, 2) and matches.dtype == np.int32
            assert scores.shape == (0,) and scores.dtype == np.float32


def test_descriptor_size_mismatch(models, temple):
    f0 = temple[2][0]
    wrong = {**f0, "descriptors": np.zeros((len(f0["descriptors"]), 256), np.float32)}
    with pytest.raises(ImcError, match="descriptors of size 256; this matcher takes 128"):
        matching.match_pair(models[1], f0, wrong)


def test_stage_writes_resumes_and_skips_failed(models, temple, tmp_path):
    paths, _, (f0, f1), _ = temple
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"")
    a, b = "scene/templeR0001.png", "templeR0002.png"
    ds = Dataset("t", "t", [ImageInfo(a, paths[0]), ImageInfo(b, paths[1]), ImageInfo("x", bad)])
    mp = pytest.MonkeyPatch()
    mp.setattr(features, "build_model", lambda conf, device="cpu": models[0])
    mp.setattr(matching, "build_model", lambda conf, device="cpu": models[1])
    calls = []
    real = matching.match_inputs

    def counting(*args):
        calls.append(1)
        if crash and len(calls) == 2:
            raise RuntimeError("crash")
        return real(*args)

    mp.setattr(matching, "match_inputs", counting)
    try:
        feats = features.main(WHOLE, features.Inputs(ds), tmp_path / "f")
        inputs = matching.Inputs([(a, b), (a, "x"), (b, a)], feats)
        crash = True
        with pytest.raises(RuntimeError, match="crash"):
            matching.main(WHOLE, inputs, tmp_path / "m")
        assert (tmp_path / "m" / "matches.h5.partial").exists()
        crash = False
        out = matching.main(WHOLE, inputs, tmp_path / "m")
        assert len(calls) == 3  # (a, b) kept; (b, a) redone; (a, x) skipped
        matching.main(WHOLE, inputs, tmp_path / "m")
        assert len(calls) == 3  # second run: no work
    finally:
        mp.undo()
    assert out == tmp_path / "m" / "matches.h5"
    with h5py.File(out, "r") as f:
        assert pair_key(a, b) == f"{h5_key(a)}/{h5_key(b)}" == "scene-SL-templeR0001.png/" + b
        assert set(f[h5_key(a)]) == {h5_key(b)}  # nothing with the failed image
        g = f[pair_key(a, b)]
        assert g.attrs["done"] and g["matches"].dtype == np.int32 and g["matches"].shape[1] == 2
    matches, scores = matching.load_matches(out, a, b)
    expected, expected_scores = matching.match_pair(models[1], f0, f1)
    np.testing.assert_array_equal(matches, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    back, _ = matching.load_matches(out, b, a)
    assert abs(len(back) - len(matches)) <= 0.1 * len(matches)
    with pytest.raises(ImcError, match=r"no matches for pair \(scene/templeR0001.png, x\)"):
        matching.load_matches(out, a, "x")


def test_batched_and_pair_by_pair_give_the_same_matches(models, tmp_path):
    """The demo scene's pairs (some overlapping, some not; keypoint counts differ per image)
    matched in padded batches and one by one, point pruning off in both (a batch never
    prunes): the same matches and scores, also for pairs that stop at different layers."""
    from imc.demo import make_demo

    root = make_demo(tmp_path / "demo")
    paths = sorted((root / "train" / "demo").glob("*.png"))[:7]
    conf = {**CONF, "width_confidence": -1}
    glue = matching.build_model(conf)
    feats = []
    for k, p in enumerate(paths):  # different budgets: padding in every batch
        fc = {**FEATURES, "max_keypoints": 256 + 64 * k}
        feats.append(features.extract_image(models[0], read_image(p), fc))
    feats.append({**feats[0], "keypoints_upright": np.zeros((1, 2), np.float32),
                  "descriptors": feats[0]["descriptors"][:1]})  # fmt: skip
    inputs = [matching.inputs(f, torch.device("cpu"), torch.float32) for f in feats]
    pairs = [(i, j) for i in range(len(feats)) for j in range(i + 1, len(feats))]
    one = [matching.match_inputs(glue, inputs[i], inputs[j]) for i, j in pairs]
    batched = []
    for start in range(0, len(pairs), 5):
        chunk = pairs[start : start + 5]
        batched += matching.match_batch(glue, [(inputs[i], inputs[j]) for i, j in chunk])
    assert sum(len(m) > 50 for m, _ in one) >= 3  # overlapping pairs among them
    assert any(len(m) == 0 for m, _ in one)  # the one-keypoint image
    for (m1, s1), (m2, s2) in zip(one, batched):
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_allclose(s1, s2, rtol=1e-3, atol=1e-4)


def test_fused_cross_attention_gives_kornias_outputs_and_matches(models, temple):
    """The CPU cross-attention (one SDPA call per direction) against kornia's own
    CrossBlock.forward: the same outputs within float32 rounding, with and without a padding
    mask, and the same matches on a real pair."""
    from kornia.feature import LightGlue
    from kornia.feature.lightglue import CrossBlock

    glue = models[1]
    block = glue.transformers[0].cross_attn
    assert block.forward.__func__ is matching.cross_attention  # installed on the CPU model
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 300, 256, generator=gen), torch.randn(2, 200, 256, generator=gen)
    mask0 = torch.ones(2, 1, 300, 1, dtype=torch.bool)
    mask1 = torch.ones(2, 1, 200, 1, dtype=torch.bool)
    mask0[1, :, 250:], mask1[0, :, 120:] = False, False
    with torch.inference_mode():
        for mask in (None, mask0 & mask1.transpose(-1, -2)):
            ours = block(x0, x1, mask)
            theirs = CrossBlock.forward(block, x0, x1, mask)
            for a, b in zip(ours, theirs):
                assert torch.isfinite(a).all()
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    kornia_glue = LightGlue(features=None, weights=None, input_dim=128).eval()
    kornia_glue.load_state_dict(glue.state_dict(), strict=False)
    assert kornia_glue.transformers[0].cross_attn.forward.__func__ is CrossBlock.forward
    _, _, feats, _ = temple
    d0, d1 = (matching.inputs(f, torch.device("cpu"), torch.float32) for f in feats[:2])
    m_ours, s_ours = matching.match_inputs(glue, d0, d1)
    m_theirs, s_theirs = matching.match_inputs(kornia_glue, d0, d1)
    assert len(m_ours) > 100
    np.testing.assert_array_equal(m_ours, m_theirs)
    np.testing.assert_allclose(s_ours, s_theirs, rtol=1e-3, atol=1e-4)


def test_stage_in_batches_writes_what_pair_by_pair_writes(models, temple, tmp_path):
    paths, *_ = temple
    names = ["templeR0001.png", "templeR0002.png"]
    ds = Dataset("t", "t", [ImageInfo(n, p) for n, p in zip(names, paths)])
    feats = features.main(WHOLE, features.Inputs(ds, load_model=lambda: models[0]), tmp_path / "f")
    conf = {**CONF, "width_confidence": -1}
    glue = matching.build_model(conf)
    pairs = [(names[0], names[1]), (names[1], names[0])]
    inputs = matching.Inputs(pairs, feats, load_model=lambda: glue)
    one = matching.main({**WHOLE, "matching": {**conf, "batch_size": 1}}, inputs, tmp_path / "a")
    two = matching.main({**WHOLE, "matching": {**conf, "batch_size": 2}}, inputs, tmp_path / "b")
    for a, b in pairs:
        np.testing.assert_array_equal(
            matching.load_matches(one, a, b)[0], matching.load_matches(two, a, b)[0]
        )


def test_pairs_matched_two_at_once_give_what_one_at_a_time_gives(models, tmp_path):
    """The stage on the demo scene with one torch thread (pairs one after another) and with
    two (two pairs at once, one thread each): the same matches."""
    from imc.demo import make_demo

    root = make_demo(tmp_path / "demo")
    paths = sorted((root / "train" / "demo").glob("*.png"))[:6]
    names = [p.name for p in paths]
    ds = Dataset("d", "d", [ImageInfo(n, p) for n, p in zip(names, paths)])
    feats = features.main(WHOLE, features.Inputs(ds, load_model=lambda: models[0]), tmp_path / "f")
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    inputs = matching.Inputs(pairs, feats, load_model=lambda: models[1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert cpu_workers("cpu") == 1
        one = matching.main(WHOLE, inputs, tmp_path / "one")
        torch.set_num_threads(2)
        assert cpu_workers("cpu") == 2 and cpu_workers("cuda") == 1
        two = matching.main(WHOLE, inputs, tmp_path / "two")
    finally:
        torch.set_num_threads(threads)
    a, b = matching.load_all_matches(one), matching.load_all_matches(two)
    assert a.keys() == b.keys() == set(pairs)
    assert sum(len(m) > 50 for m in a.values()) >= 3
    for key in pairs:
        np.testing.assert_array_equal(a[key], b[key])


def test_batch_size_from_the_device():
    cpu = torch.device("cpu")

    def never() -> int:
        raise AssertionError("the keypoint count is read only for an automatic size on CUDA")

    assert matching.batch_size({"batch_size": 0}, cpu, never, torch.float32) == 1
    assert matching.batch_size({"batch_size": 8}, cpu, never, torch.float32) == 8


def test_sift_matches_are_mutual_nearest_neighbours_passing_the_ratio_test():
    rng = np.random.default_rng(0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    d0 = unit(rng.normal(size=(50, 128)))
    perm = rng.permutation(50)
    d1 = unit(d0[perm] + 0.05 * rng.normal(size=(50, 128)))  # d1[j] is a noisy d0[perm[j]]
    d1[7] = unit(d0[perm[6]] + 0.05 * rng.normal(size=128))  # d0[perm[6]] gets two look-alikes
    d1 = np.concatenate([d1, unit(d0[:1] + 0.5 * rng.normal(size=(1, 128)))])  # a far copy of d0[0]
    t0, t1 = torch.from_numpy(d0).float(), torch.from_numpy(d1).float()
    matches, scores = matching.match_sift(t0, t1, 0.8)
    expected = {(perm[j], j) for j in range(50) if j not in (6, 7)}  # ambiguous pair dropped
    assert {tuple(m) for m in matches.tolist()} == expected
    assert matches.dtype == np.int32 and list(matches[:, 0]) == sorted(matches[:, 0])
    assert scores.shape == (48,) and 0.2 < scores.min() and scores.max() <= 1
    loose, _ = matching.match_sift(t0, t1, 1.0)  # no ratio test: mutual nearest only
    assert len(loose) == 49  # perm[6] finds one of its two look-alikes
    empty, _ = matching.match_sift(t0[:1], t1, 0.8)
    assert empty.shape == (0, 2)


def test_stage_merges_sift_matches_after_lightglues(models, temple, tmp_path):
    """With SIFT keypoints, a pair's group holds LightGlue's matches as without them, then the
    SIFT matches, which index the SIFT rows of the keypoints and are mostly geometric inliers."""
    paths, *_ = temple
    names = ["templeR0001.png", "templeR0002.png"]
    ds = Dataset("t", "t", [ImageInfo(n, p) for n, p in zip(names, paths)])
    glue = matching.build_model(CONF)
    inputs = features.Inputs(ds, load_model=lambda: models[0])
    with_sift = {**WHOLE, "features": {**FEATURES, "sift_max_keypoints": 1000},
                 "matching": {**CONF, "sift_ratio": 0.8}}  # fmt: skip
    runs = {}
    for tag, whole in (("plain", WHOLE), ("sift", with_sift)):
        feats = features.main(whole, inputs, tmp_path / tag / "f")
        pairs = matching.Inputs([tuple(names)], feats, load_model=lambda: glue)
        runs[tag] = feats, matching.main(whole, pairs, tmp_path / tag / "m")
    plain, _ = matching.load_matches(runs["plain"][1], *names)
    merged, scores = matching.load_matches(runs["sift"][1], *names)
    np.testing.assert_array_equal(merged[: len(plain)], plain)
    sift = merged[len(plain) :]
    kpts = feature_file.read_array(runs["sift"][0], names, "keypoints")
    n = feature_file.keypoint_counts(runs["sift"][0], "descriptors")
    assert len(sift) > 100 and len(scores) == len(merged)
    assert sift[:, 0].min() >= n[names[0]] and sift[:, 1].min() >= n[names[1]]
    assert sift[:, 0].max() < len(kpts[names[0]]) and sift[:, 1].max() < len(kpts[names[1]])
    assert magsac_inlier_ratio(kpts[names[0]], kpts[names[1]], sift) > 0.6
