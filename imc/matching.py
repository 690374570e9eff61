"""Matching: LightGlue on the upright (rotation-canonicalized) keypoints of every pair.

LightGlue sees `keypoints_upright` with the `upright_size` of each image, so two images that
the orientation stage turned upright are matched as upright views; the matches index the
stored keypoints (same order). Output `matches.h5`, one group per pair
`h5_key(a)/h5_key(b)` (imc.cache.pair_key):

    matches   [M x 2] int32, column 0 indexes the keypoints of a, column 1 those of b
    scores    [M] float32, LightGlue's matching scores
    attrs: done
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from .cache import h5_key, pair_key, resumable_h5
from .errors import ImcError
from .features import failed_images
from .log import logger
from .weights import load_state_dict, load_strict

CACHE_IMAGES = 256  # images whose features stay in memory (and on the device) while matching


@dataclass(frozen=True)
class MatcherSpec:
    """A LightGlue variant: its weight file and the descriptor size it takes."""

    weights: str
    input_dim: int
    allowed_missing: tuple[str, ...] = ()


MODELS: dict[str, MatcherSpec] = {
    # confidence_thresholds is a buffer computed at construction, absent from the file.
    "lightglue-aliked": MatcherSpec("aliked_lightglue.pth", 128, ("confidence_thresholds",)),
}


def build_model(conf: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """LightGlue for `conf["model"]`, weights checked and strictly loaded, in eval mode.

    Built with `features=None` so that kornia downloads nothing; `input_dim` comes from the
    registry (128 for ALIKED: with kornia's default 256 the input projection would be left
    untrained). float16 with `half_precision` on CUDA, bfloat16 with `cpu_bfloat16` on CPU,
    else float32.
    """
    from kornia.feature import LightGlue

    if conf["model"] not in MODELS:
        raise ImcError(f"unknown matcher '{conf['model']}' (valid: {', '.join(MODELS)})")
    spec = MODELS[conf["model"]]
    model = LightGlue(
        features=None,
        weights=None,
        input_dim=spec.input_dim,
        filter_threshold=conf["filter_threshold"],
        depth_confidence=conf["depth_confidence"],
        width_confidence=conf["width_confidence"],
    )
    load_strict(model, load_state_dict(spec.weights), spec.allowed_missing, name=spec.weights)
    device = torch.device(device)
    dtype = torch.float32
    if device.type == "cuda" and conf.get("half_precision", False):
        dtype = torch.float16
    elif device.type == "cpu" and conf.get("cpu_bfloat16", False):
        dtype = torch.bfloat16
    return model.eval().to(device=device, dtype=dtype)


def _inputs(feats: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """One image's LightGlue inputs: keypoints [1 x N x 2] float32 (upright pixels),
    descriptors [1 x N x D] in the model's dtype, image_size [1 x 2] (W, H) of the upright
    image, from which LightGlue normalises the keypoints."""
    kpts = np.asarray(feats["keypoints_upright"], np.float32).reshape(-1, 2)
    desc = np.asarray(feats["descriptors"], np.float32)
    return {
        "keypoints": torch.from_numpy(kpts)[None].to(device),
        "descriptors": torch.from_numpy(desc)[None].to(device=device, dtype=dtype),
        "image_size": torch.tensor([feats["upright_size"]], dtype=torch.float32, device=device),
    }


def _match(model: torch.nn.Module, data0: dict, data1: dict) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
    if data0["keypoints"].shape[1] < 2 or data1["keypoints"].shape[1] < 2:
        return empty
    for data in (data0, data1):
        dim = data["descriptors"].shape[-1]
        if dim != model.conf.input_dim:
            raise ImcError(f"descriptors of size {dim}; this matcher takes {model.conf.input_dim}")
    with torch.inference_mode():
        out = model({"image0": data0, "image1": data1})
    matches = out["matches"][0].cpu().numpy().astype(np.int32).reshape(-1, 2)
    scores = out["scores"][0].float().cpu().numpy().astype(np.float32).reshape(-1)
    return matches, scores


def match_pair(
    model: torch.nn.Module, feats0: dict, feats1: dict, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Match two images' features (dicts as returned by imc.features.extract_image or
    load_features: keypoints_upright [N x 2], descriptors [N x D], upright_size (W, H)).

    Returns: matches [M x 2] int32 (indices into the keypoints of image 0 and image 1, the
    stored and upright keypoints having the same order) and scores [M] float32. Empty when
    either image has fewer than two keypoints.
    """
    device = torch.device(device)
    dtype = next(model.parameters()).dtype
    return _match(model, _inputs(feats0, device, dtype), _inputs(feats1, device, dtype))


class _FeatureCache:
    """LightGlue inputs of recently used images, read from an open features.h5."""

    def __init__(self, f: h5py.File, device: torch.device, dtype: torch.dtype):
        self.f, self.device, self.dtype = f, device, dtype
        self.items: OrderedDict[str, dict] = OrderedDict()

    def __getitem__(self, name: str) -> dict:
        if name in self.items:
            self.items.move_to_end(name)
            return self.items[name]
        key = h5_key(name)
        if key not in self.f:
            raise ImcError(f"{self.f.filename}: no features for image '{name}'")
        g = self.f[key]
        feats = {
            "keypoints_upright": g["keypoints_upright"][()],
            "descriptors": g["descriptors"][()],
            "upright_size": tuple(int(v) for v in g.attrs["upright_size"]),
        }
        self.items[name] = _inputs(feats, self.device, self.dtype)
        if len(self.items) > CACHE_IMAGES:
            self.items.popitem(last=False)
        return self.items[name]


def main(
    conf: dict,
    pairs: list[tuple[str, str]],
    features_path: Path,
    out_dir: Path,
    device: str | torch.device = "cpu",
    deadline: float | None = None,
) -> Path:
    """Match every pair of `pairs` into `<out_dir>/matches.h5` (resumable: pairs already done
    are skipped). Pairs involving an image whose features failed are left out. With a
    `deadline` (a `time.monotonic()` value), matching stops when it has passed and the pairs
    left are not written."""
    out = Path(out_dir) / "matches.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("matching: %d pairs, %s", len(pairs), conf)
    failed = failed_images(features_path)
    device = torch.device(device)
    model = None
    skipped = 0
    with h5py.File(features_path, "r") as ff, resumable_h5(out) as f:
        todo = [(a, b) for a, b in pairs if not _is_done(f, pair_key(a, b))]
        if len(todo) < len(pairs):
            logger.info("matching: %d pairs already done", len(pairs) - len(todo))
        cache = None
        for i, (a, b) in enumerate(
            tqdm(todo, desc="matching", unit="pair", mininterval=2, disable=not todo)
        ):
            if deadline is not None and time.monotonic() > deadline:
                logger.warning(
                    "matching: deadline reached, %d of %d pairs left", len(todo) - i, len(todo)
                )
                break
            if a in failed or b in failed:
                skipped += 1
                continue
            if model is None:
                model = build_model(conf, device)
                cache = _FeatureCache(ff, device, next(model.parameters()).dtype)
            matches, scores = _match(model, cache[a], cache[b])
            _write(f, pair_key(a, b), matches, scores)
            f.flush()  # a killed run keeps every pair written so far (about 3 ms)
    if skipped:
        logger.warning("matching: %d pairs skipped (unreadable images: %s)", skipped, failed)
    return out


def _is_done(f: h5py.File, key: str) -> bool:
    return key in f and bool(f[key].attrs.get("done", False))


def _write(f: h5py.File, key: str, matches: np.ndarray, scores: np.ndarray) -> None:
    if key in f:
        del f[key]
    g = f.create_group(key)  # creates the parent group h5_key(a) when needed
    g.create_dataset("matches", data=matches.astype(np.int32).reshape(-1, 2))
    g.create_dataset("scores", data=scores.astype(np.float32).reshape(-1))
    g.attrs["done"] = True


def load_matches(path: Path, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """matches [M x 2] int32 and scores [M] float32 of pair (a, b) from a matches.h5.

    Raises ImcError when the pair is absent (never matched, or an image failed)."""
    key = pair_key(a, b)
    with h5py.File(path, "r") as f:
        if key not in f or not f[key].attrs.get("done", False):
            raise ImcError(f"{path}: no matches for pair ({a}, {b})")
        return f[key]["matches"][()], f[key]["scores"][()]
