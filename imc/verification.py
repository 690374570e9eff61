"""Geometric verification: MAGSAC (cv2.USAC_MAGSAC) on the fundamental matrix of each matched pair.

The threshold is given in pixels of the feature-extraction resolution (where keypoint noise
lives) and converted per pair to pixels of the stored images, in which keypoints are kept.
Output `verified.h5`: per pair `a/b` the inlier matches [K x 2] int32 (indices into the stored
keypoints), F [3 x 3] float64 (x1^T F x0 = 0 in stored pixels) and attrs num_matches, num_inliers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from .cache import h5_key, pair_key, resumable_h5
from .log import logger

METHODS = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.FM_RANSAC, "lmeds": cv2.FM_LMEDS}


def verify_pair(
    kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray, threshold: float, conf: dict
) -> tuple[np.ndarray, np.ndarray | None]:
    """Robustly fit F to the matched keypoints.

    kpts0, kpts1: [N0 x 2], [N1 x 2] float32, stored pixels. matches: [M x 2] int indices.
    threshold: inlier threshold in stored pixels.
    Returns: inlier matches [K x 2] int32 and F [3 x 3] (None when fewer than 8 matches or no fit).
    """
    empty = np.zeros((0, 2), np.int32)
    if len(matches) < 8:
        return empty, None
    method = conf["method"]
    if method not in METHODS:
        raise ValueError(f"unknown verification method '{method}' (valid: {', '.join(METHODS)})")
    F, mask = fit_fundamental(
        kpts0[matches[:, 0]],
        kpts1[matches[:, 1]],
        METHODS[method],
        threshold,
        conf["confidence"],
        conf["max_iters"],
    )
    if F is None:
        return empty, None
    return matches[mask].astype(np.int32), F


def fit_fundamental(
    p0: np.ndarray, p1: np.ndarray, method: int, threshold: float, confidence: float, max_iters: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """cv2.findFundamentalMat, seeded, with every kind of failure as "no model".

    p0, p1: [M x 2] matched points. Returns F [3 x 3] float64 and the inlier mask [M] bool, or
    (None, None). OpenCV's USAC raises an assertion error (`!model.empty()`) on some
    near-degenerate point sets instead of returning no model; that is a failed fit, not a crash.
    """
    cv2.setRNGSeed(0)
    try:
        F, mask = cv2.findFundamentalMat(
            np.asarray(p0, np.float64),
            np.asarray(p1, np.float64),
            method,
            threshold,
            confidence,
            max_iters,
        )
    except cv2.error:
        return None, None
    if F is None or mask is None or F.shape != (3, 3):
        return None, None
    return F, mask.ravel().astype(bool)


def pair_threshold(conf: dict, feature_conf: dict, size0, size1) -> float:
    """conf['threshold'] (pixels at the extraction resolution) -> stored pixels of this pair."""
    long_side = feature_conf.get("resize_long_side") or 0
    scales = []
    for w, h in (size0, size1):
        m = max(w, h)
        scales.append(m / long_side if long_side and m > long_side else 1.0)
    return float(conf["threshold"] * np.mean(scales))


def main(
    conf: dict,
    feature_conf: dict,
    pairs: list[tuple[str, str]],
    features_path: Path,
    matches_path: Path,
    out_dir: Path,
) -> Path:
    """Verify every matched pair; write `<out_dir>/verified.h5` (resumable)."""
    out = Path(out_dir) / "verified.h5"
    logger.info("verification: %d pairs, %s", len(pairs), conf)
    with (
        h5py.File(features_path, "r") as ff,
        h5py.File(matches_path, "r") as fm,
        resumable_h5(out) as fo,
    ):
        for a, b in tqdm(pairs, desc="verification", unit="pair", mininterval=2):
            key = pair_key(a, b)
            if key in fo and fo[key].attrs.get("done", False):
                continue
            if key not in fm:
                continue
            g0, g1 = ff[h5_key(a)], ff[h5_key(b)]
            matches = fm[key]["matches"][()]
            thr = pair_threshold(conf, feature_conf, g0.attrs["image_size"], g1.attrs["image_size"])
            inliers, F = verify_pair(g0["keypoints"][()], g1["keypoints"][()], matches, thr, conf)
            if key in fo:
                del fo[key]
            g = fo.create_group(key)
            g.create_dataset("inliers", data=inliers)
            g.create_dataset("F", data=F if F is not None else np.full((3, 3), np.nan))
            g.attrs["num_matches"] = len(matches)
            g.attrs["num_inliers"] = len(inliers)
            g.attrs["done"] = True
    return out


def load_verified(path: Path, min_inliers: int = 0) -> dict[tuple[str, str], dict]:
    """(a, b) -> {inliers [K x 2] int32, F [3 x 3], num_matches} for pairs with >= min_inliers."""
    from .cache import h5_name

    out: dict[tuple[str, str], dict] = {}
    with h5py.File(path, "r") as f:
        for ka, ga in f.items():
            for kb, g in ga.items():
                n = int(g.attrs["num_inliers"])
                if n < max(min_inliers, 1):
                    continue
                out[(h5_name(ka), h5_name(kb))] = {
                    "inliers": g["inliers"][()],
                    "F": g["F"][()],
                    "num_matches": int(g.attrs["num_matches"]),
                }
    return out
