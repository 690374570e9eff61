"""Rotation canonicalization: each image's in-plane rotation in 90-degree steps.

ALIKED and LightGlue are not rotation invariant. For each image, small features are extracted at
0/90/180/270 degrees. Each image is paired with its most similar images (a rotation-robust
global descriptor: the best over rotations of mean-pooled ALIKED descriptors), and for each pair
the query's four rotations are matched against the neighbour upright; the rotation with the
most MAGSAC inliers gives the relative rotation `k_i - k_j (mod 4)`. Relative rotations are
chained along a maximum spanning tree of the confident pairs, and each connected group is
offset so that most of its images keep their stored orientation.

Output: image name -> k, where `imc.images.rotate(image, k)` is the image to extract features on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from ..cache import atomic_write_text
from ..images import ImageReadError, read_ahead
from ..log import logger
from ..parallel import PerThread, cpu_workers, ordered_map
from .verification import fit_fundamental

if TYPE_CHECKING:
    import torch


def rotated_features(model, image: np.ndarray, conf: dict, device) -> list[dict]:
    """Small features of `rotate(image, k)` for k = 0..3 (see features.extract_image)."""
    from .features import extract_image

    return [extract_image(model, image, conf, rotation_k=k, device=device) for k in range(4)]


def pooled_descriptor(descriptors: np.ndarray) -> np.ndarray:
    """[N x D] local descriptors -> [D] L2-normalised mean (zeros when N == 0)."""
    if len(descriptors) == 0:
        return np.zeros(descriptors.shape[1] if descriptors.ndim == 2 else 128, np.float32)
    g = descriptors.astype(np.float64).mean(0)
    return (g / max(np.linalg.norm(g), 1e-12)).astype(np.float32)


def neighbour_pairs(pooled: np.ndarray, num_neighbors: int) -> list[tuple[int, int]]:
    """pooled: [N x 4 x D]. Pairs (i, j), i < j, linking each image to its most similar ones,
    similarity being the best over the relative rotation of <g_i(r), g_j(0)>."""
    n = len(pooled)
    if n < 2:
        return []
    sim = np.einsum("ird,jd->ijr", pooled, pooled[:, 0]).max(axis=2)
    sim = np.maximum(sim, sim.T)
    np.fill_diagonal(sim, -np.inf)
    pairs = set()
    for i in range(n):
        for j in np.argsort(-sim[i], kind="stable")[: min(num_neighbors, n - 1)]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def count_inliers(f0: dict, f1: dict, matches: np.ndarray) -> int:
    """MAGSAC inliers of matches between two upright feature sets."""
    if len(matches) < 8:
        return 0
    _, mask = fit_fundamental(
        f0["keypoints_upright"][matches[:, 0]],
        f1["keypoints_upright"][matches[:, 1]],
        cv2.USAC_MAGSAC,
        1.0,
        0.999,
        2000,
    )
    return 0 if mask is None else int(mask.sum())


def relative_rotations(
    match_many, feats: list[list[dict]], pairs: list[tuple[int, int]], accept_inliers: int
) -> np.ndarray:
    """[P x 4] inlier counts: for pair (i, j), image i rotated by r matched against image j
    upright. match_many: list of (features 0, features 1) -> list of (matches, scores), in
    batches where the device allows.

    The other rotations of a pair are tried only when r = 0 gives fewer than `accept_inliers`
    (a wrong rotation gives a few tens at most); their counts are then left at 0.
    """
    counts = np.zeros((len(pairs), 4), int)
    upright = match_many([(feats[i][0], feats[j][0]) for i, j in pairs])
    for p, ((i, j), (matches, _)) in enumerate(zip(pairs, upright)):
        counts[p, 0] = count_inliers(feats[i][0], feats[j][0], matches)
    retry = [p for p in range(len(pairs)) if counts[p, 0] < accept_inliers]
    jobs = [(p, r) for p in retry for r in (1, 2, 3)]
    found = match_many([(feats[pairs[p][0]][r], feats[pairs[p][1]][0]) for p, r in jobs])
    for (p, r), (matches, _) in zip(jobs, found):
        i, j = pairs[p]
        counts[p, r] = count_inliers(feats[i][r], feats[j][0], matches)
    return counts


def solve_rotations(n: int, edges: list[tuple[int, int, int, float]]) -> np.ndarray:
    """Absolute rotations from relative ones.

    edges: (i, j, r, weight) meaning k_i = k_j + r (mod 4), with a confidence weight.
    Returns: [n] int k; chained along a maximum spanning tree (Kruskal), each connected group
    offset so that as many of its images as possible have k = 0 (ties: the smaller offset).
    """
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    adj: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i, j, r, _ in sorted(edges, key=lambda e: (-e[3], e[0], e[1])):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            adj[i].append((j, r))  # k_i = k_j + r
            adj[j].append((i, -r))  # k_j = k_i - r
    k = np.full(n, -1)
    for start in range(n):
        if k[start] >= 0:
            continue
        group, k[start], stack = [start], 0, [start]
        while stack:
            a = stack.pop()
            for b, r in adj[a]:  # k_a = k_b + r  ->  k_b = k_a - r
                if k[b] < 0:
                    k[b] = (k[a] - r) % 4
                    group.append(b)
                    stack.append(b)
        counts = np.bincount(k[group], minlength=4)
        offset = int(np.argmax(counts))  # shift so that the commonest rotation becomes 0
        k[group] = (k[group] - offset) % 4
    return k


@dataclass(frozen=True)
class Inputs:
    """What the orientation stage reads besides the configuration.

    names: the dataset's image names, in dataset order.
    paths: image name -> its file.
    load_model: returns the run's feature model (imc.pipeline.Models.aliked); called once,
        when rotations are estimated (not when cached, disabled or for a single image); on
        the CPU each worker thread describes its images with a copy of it (imc.parallel).
    match_many: a list of feature pairs (imc.stages.features.extract_image dicts) -> per pair
        (matches [M x 2] int32, scores [M] float32), batched where the device allows
        (imc.pipeline.Models.match_many).
    device: where the feature model runs.
    """

    names: list[str]
    paths: dict[str, Path]
    load_model: Callable[[], torch.nn.Module]
    match_many: Callable[[list[tuple[dict, dict]]], list[tuple[np.ndarray, np.ndarray]]]
    device: str | torch.device = "cpu"


def main(conf: dict, inputs: Inputs, out_dir: Path) -> dict[str, int]:
    """Estimate each image's rotation; cached as `<out_dir>/rotations.json`.

    conf: the whole configuration; reads its orientation section, images.apply_exif_orientation
    and the detection settings of its features section (the small features' budget and size
    are orientation's own)."""
    names, oconf = inputs.names, conf["orientation"]
    out = Path(out_dir) / "rotations.json"
    if out.exists():
        cached = json.loads(out.read_text())
        if set(cached) == set(names):
            return {n: int(v) for n, v in cached.items()}
    if not oconf["enabled"] or len(names) < 2:
        return {n: 0 for n in names}
    small = {
        **conf["features"],
        "resize_long_side": oconf["resize_long_side"],
        "max_keypoints": oconf["max_keypoints"],
        "min_keypoints": 0,
        "min_long_side": 0,  # orientation's small features are never upscaled
    }
    workers = cpu_workers(inputs.device)
    model = PerThread(inputs.load_model, workers)  # a copy per worker thread

    def describe(image: np.ndarray | ImageReadError) -> list[dict]:
        if isinstance(image, ImageReadError):
            image = np.zeros((64, 64, 3), np.uint8)  # reported by the feature stage
        return rotated_features(model(), image, small, inputs.device)

    apply_exif = conf["images"]["apply_exif_orientation"]
    images = read_ahead([inputs.paths[n] for n in names], apply_exif)
    described = ordered_map(describe, images, workers)
    bar = tqdm(described, total=len(names), desc="orientation features", unit="img", mininterval=2)
    feats = [fs for _, fs in bar]
    pooled = np.stack([[pooled_descriptor(f["descriptors"]) for f in fs] for fs in feats])
    pairs = neighbour_pairs(pooled, oconf["num_neighbors"])
    edges = []
    logger.info("orientation: %d pairs of %d images", len(pairs), len(names))
    found = relative_rotations(inputs.match_many, feats, pairs, oconf["accept_inliers"])
    for (i, j), counts in zip(pairs, found):
        order = np.argsort(-counts, kind="stable")
        best, second = counts[order[0]], counts[order[1]]
        if best >= 15 and best >= oconf["min_ratio"] * max(second, 1):
            edges.append((i, j, int(order[0]), float(best)))
    k = solve_rotations(len(names), edges)
    result = {n: int(k[i]) for i, n in enumerate(names)}
    rotated = {n: v for n, v in result.items() if v}
    logger.info("orientation: %d of %d images rotated %s", len(rotated), len(names), rotated)
    atomic_write_text(out, json.dumps(result, indent=1, sort_keys=True))
    return result
