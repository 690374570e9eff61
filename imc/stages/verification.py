"""Geometric verification: MAGSAC (cv2.USAC_MAGSAC) on the fundamental matrix of each matched pair.

The threshold is given in pixels of the feature-extraction resolution (where keypoint noise
lives) and converted per pair to pixels of the stored images, in which keypoints are kept.
Output `verified.h5`: per pair `a/b` the inlier matches [K x 2] int32 (indices into the stored
keypoints), F [3 x 3] float64 (x1^T F x0 = 0 in stored pixels) and attrs num_matches, num_inliers.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from ..cache import h5_name, pair_key, resumable_h5
from ..log import logger
from . import feature_file

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
    """conf['threshold'] (pixels at the extraction resolution of a downscaled image) -> stored
    pixels of this pair. An image at or below `resize_long_side`, upscaled by
    `features.min_long_side` or not, keeps the threshold in its stored pixels."""
    long_side = feature_conf.get("resize_long_side") or 0
    scales = []
    for w, h in (size0, size1):
        m = max(w, h)
        scales.append(m / long_side if long_side and m > long_side else 1.0)
    return float(conf["threshold"] * np.mean(scales))


def kept(num_inliers: int, min_inliers: int) -> bool:
    """Whether a verified pair with `num_inliers` inliers is kept: at least `min_inliers`, and
    at least one."""
    return num_inliers >= max(min_inliers, 1)


def verify_matches(
    conf: dict,
    feature_conf: dict,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    size0: tuple[int, int],
    size1: tuple[int, int],
    matches: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Verify one pair's raw matches: conf's threshold in this pair's stored pixels
    (`pair_threshold`), the robust fit (`verify_pair`) and the `min_inliers` decision.

    kpts0, kpts1: [N0 x 2], [N1 x 2] float32, stored pixels. size0, size1: (W, H) of the stored
    images. matches: [M x 2] int, indices into kpts0 and kpts1.
    Returns: inlier matches [K x 2] int32, F [3 x 3] (None: no fit) and whether the pair is kept.
    """
    threshold = pair_threshold(conf, feature_conf, size0, size1)
    inliers, F = verify_pair(kpts0, kpts1, matches, threshold, conf)
    return inliers, F, kept(len(inliers), conf["min_inliers"])


class _Keypoints:
    """Stored keypoints [N x 2] and image size (W, H) per image of an open features.h5, each
    image read once."""

    def __init__(self, f: h5py.File):
        self.f = f
        self.items: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}

    def __getitem__(self, name: str) -> tuple[np.ndarray, tuple[int, int]]:
        if name not in self.items:
            feats = feature_file.read_group(feature_file.group(self.f, name), name, ("keypoints",))
            self.items[name] = feats["keypoints"], feats["image_size"]
        return self.items[name]


@dataclass(frozen=True)
class Inputs:
    """What the verification stage reads besides the configuration.

    pairs: the image pairs (a, b) to verify, in order; a pair absent from the matches is
        skipped.
    features_path: the features stage's `features.h5` (imc.stages.features: stored keypoints and
        image sizes).
    matches_path: the matching stage's `matches.h5` (imc.stages.matching).
    early: pairs already verified while they were matched (`Background.results`), written as
        they are instead of verified again.
    """

    pairs: list[tuple[str, str]]
    features_path: Path
    matches_path: Path
    early: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None, int]] | None = None


def main(conf: dict, inputs: Inputs, out_dir: Path) -> Path:
    """Verify every matched pair; write `<out_dir>/verified.h5` (resumable). Every pair is
    written, kept or not: `load_verified` applies `min_inliers`.

    conf: the whole configuration; reads its verification section and
    features.resize_long_side (the scale of the threshold, `pair_threshold`)."""
    vconf, fconf, pairs = conf["verification"], conf["features"], inputs.pairs
    early = inputs.early or {}
    out = Path(out_dir) / "verified.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("verification: %d pairs (%d verified early), %s", len(pairs), len(early), vconf)
    with (
        h5py.File(inputs.features_path, "r") as ff,
        h5py.File(inputs.matches_path, "r") as fm,
        resumable_h5(out) as fo,
    ):
        images = _Keypoints(ff)
        for a, b in tqdm(pairs, desc="verification", unit="pair", mininterval=2):
            key = pair_key(a, b)
            if key in fo and fo[key].attrs.get("done", False):
                continue
            if (a, b) in early:
                _write(fo, key, *early[(a, b)])
                continue
            if key not in fm:
                continue
            (k0, size0), (k1, size1) = images[a], images[b]
            matches = fm[key]["matches"][()]
            inliers, F, _ = verify_matches(vconf, fconf, k0, k1, size0, size1, matches)
            _write(fo, key, inliers, F, len(matches))
    return out


def _write(
    f: h5py.File, key: str, inliers: np.ndarray, F: np.ndarray | None, num_matches: int
) -> None:
    if key in f:
        del f[key]
    g = f.create_group(key)
    g.create_dataset("inliers", data=inliers)
    g.create_dataset("F", data=F if F is not None else np.full((3, 3), np.nan))
    g.attrs["num_matches"] = num_matches
    g.attrs["num_inliers"] = len(inliers)
    g.attrs["done"] = True


class Background:
    """Verification of pairs as they are matched, on a thread of its own (OpenCV releases the
    GIL), so that it overlaps the matching of the next batch:

        with Background(conf, features_path) as early:
            ... matching.Inputs(..., on_matched=early.submit) ...
        verification.Inputs(pairs, features_path, matches_path, early.results)

    The same computation as `main` (verify_matches on the same keypoints and matches), so the
    results are those `main` would write. Leaving the block waits for the pairs submitted; an
    error of the thread is raised there."""

    def __init__(self, conf: dict, features_path: Path):
        self.vconf, self.fconf, self.features_path = (
            conf["verification"],
            conf["features"],
            Path(features_path),
        )
        self.results: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None, int]] = {}
        self._todo: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verification", daemon=True)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def submit(self, pairs: list[tuple[str, str]], found: list[tuple[np.ndarray, np.ndarray]]):
        """Queue matched pairs: (a, b) and their (matches [M x 2], scores [M])."""
        for ab, (matches, _) in zip(pairs, found):
            self._todo.put((ab, matches))

    def _run(self) -> None:
        try:
            with h5py.File(self.features_path, "r") as ff:
                images = _Keypoints(ff)
                while (item := self._todo.get()) is not None and not self._stop.is_set():
                    (a, b), matches = item
                    (k0, size0), (k1, size1) = images[a], images[b]
                    inliers, F, _ = verify_matches(
                        self.vconf, self.fconf, k0, k1, size0, size1, matches
                    )
                    self.results[(a, b)] = (inliers, F, len(matches))
        except BaseException as e:  # raised by __exit__ in the caller's thread
            self._error = e

    def __exit__(self, kind, error, tb) -> None:
        if error is not None:
            self._stop.set()
        self._todo.put(None)
        self._thread.join()
        if self._error is not None and error is None:
            raise self._error


def _groups(f: h5py.File, pairs: list[tuple[str, str]] | None):
    """((a, b), group) of the pairs stored in an open verified.h5: all in key order, or those
    of `pairs` that it holds, in their order."""
    if pairs is None:
        for ka, ga in f.items():
            for kb, g in ga.items():
                yield (h5_name(ka), h5_name(kb)), g
        return
    for a, b in pairs:
        key = pair_key(a, b)
        if key in f:
            yield (a, b), f[key]


def load_verified(
    path: Path, min_inliers: int = 0, pairs: list[tuple[str, str]] | None = None
) -> dict[tuple[str, str], dict]:
    """(a, b) -> {inliers [K x 2] int32, F [3 x 3], num_matches} for the pairs kept with
    `min_inliers` (see `kept`); pairs: only these (None: every pair, in h5 key order)."""
    out: dict[tuple[str, str], dict] = {}
    with h5py.File(path, "r") as f:
        for ab, g in _groups(f, pairs):
            if not kept(int(g.attrs["num_inliers"]), min_inliers):
                continue
            out[ab] = {
                "inliers": g["inliers"][()],
                "F": g["F"][()],
                "num_matches": int(g.attrs["num_matches"]),
            }
    return out


def pair_counts(path: Path, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(a, b) -> (raw matches, inliers) of the pairs of `pairs` in a verified.h5, kept or not."""
    with h5py.File(path, "r") as f:
        return {
            ab: (int(g.attrs.get("num_matches", 0)), int(g.attrs.get("num_inliers", 0)))
            for ab, g in _groups(f, pairs)
        }
