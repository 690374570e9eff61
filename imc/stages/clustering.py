"""Scene separation: cut the verified-pair graph where two groups hang together weakly.

Look-alike scenes (IMC2025's ETs) give false pairs with tens of inliers, enough for the mapper
to merge two scenes into one model. Within a real scene, images are tied by many strong pairs;
between look-alike scenes by few, weak ones. The graph (images, pairs weighted by inliers) is
split recursively along its spectral (Fiedler) sweep cut while the cut's conductance
`w(S, ~S) / min(vol S, vol ~S)` is below `max_cut_ratio`, the strongest pair across it is
weaker than `max_cross_ratio` x the median pair inside each side (a sparse ring of a weakly
textured object has a low-conductance cut too, but its pairs across are typical ones), and
both sides keep at least `min_size` images; pairs across accepted cuts are removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse.csgraph as csgraph

from ..log import logger


def weight_matrix(names: list[str], verified: dict[tuple[str, str], dict]) -> np.ndarray:
    """[N x N] symmetric inlier counts."""
    index = {n: i for i, n in enumerate(names)}
    w = np.zeros((len(names), len(names)))
    for (a, b), v in verified.items():
        if a in index and b in index:
            i, j = index[a], index[b]
            w[i, j] = w[j, i] = len(v["inliers"])
    return w


def relative_strength(w: np.ndarray) -> np.ndarray:
    """[N x N] each pair's weight / the strongest pair of the weaker of its two images (so each
    image's strongest pair scores at least 1)."""
    best = w.max(1, initial=0.0)
    return w / np.maximum(np.minimum(best[:, None], best[None, :]), 1e-12)


def best_sweep_cut(w: np.ndarray) -> tuple[np.ndarray, float]:
    """The sweep cut of the Fiedler vector of the normalised Laplacian with least conductance.

    w: [n x n] weights of one connected group (n >= 2). Returns: boolean side [n], conductance.
    """
    deg = w.sum(1)
    d = 1.0 / np.sqrt(np.maximum(deg, 1e-12))
    lap = np.eye(len(w)) - d[:, None] * w * d[None, :]
    _, vecs = np.linalg.eigh(lap)
    order = np.argsort(vecs[:, 1] * d, kind="stable")
    total = deg.sum()
    best, best_phi = None, np.inf
    inside = np.zeros(len(w), bool)
    cut, vol = 0.0, 0.0
    for pos in order[:-1]:
        # moving `pos` inside: edges to inside stop being cut, edges to outside start
        cut += w[pos, ~inside].sum() - w[pos, inside].sum() - w[pos, pos]
        inside[pos] = True
        vol += deg[pos]
        phi = cut / max(min(vol, total - vol), 1e-12)
        if phi < best_phi:
            best_phi, best = phi, inside.copy()
    return best, float(best_phi)


def cross_ratio(w: np.ndarray, side: np.ndarray) -> float:
    """Strongest pair across the cut / the smaller of the two sides' median inside pairs."""
    cross = w[np.ix_(side, ~side)].max(initial=0.0)
    medians = []
    for s in (side, ~side):
        inside = w[np.ix_(s, s)][np.triu_indices(int(s.sum()), 1)]
        inside = inside[inside > 0]
        medians.append(np.median(inside) if len(inside) else 0.0)
    return float(cross / max(min(medians), 1e-12))


def split_groups(
    w: np.ndarray, max_cut_ratio: float, min_size: int, max_cross_ratio: float = np.inf
) -> list[np.ndarray]:
    """Connected groups, recursively split at weak cuts; a list of index arrays."""
    n_comp, labels = csgraph.connected_components(w > 0, directed=False)
    todo = [np.flatnonzero(labels == c) for c in range(n_comp)]
    done = []
    while todo:
        idx = todo.pop()
        if len(idx) < 2 * min_size:
            done.append(idx)
            continue
        side, phi = best_sweep_cut(w[np.ix_(idx, idx)])
        small = min(side.sum(), (~side).sum())
        weak = phi < max_cut_ratio and small >= min_size
        if weak and cross_ratio(w[np.ix_(idx, idx)], side) < max_cross_ratio:
            logger.info(
                "clustering: cut %d | %d images (conductance %.3f)", side.sum(), (~side).sum(), phi
            )
            todo += [idx[side], idx[~side]]
        else:
            done.append(idx)
    return sorted(done, key=lambda g: (-len(g), g[0]))


@dataclass(frozen=True)
class Inputs:
    """What scene separation reads besides the configuration.

    names: the images of the graph (the readable ones), in dataset order.
    verified: the verified pairs kept (imc.stages.verification.load_verified): (a, b) -> a dict
        whose `inliers` ([K x 2] int32) weigh the pair; both images must be in `names`.
    """

    names: list[str]
    verified: dict[tuple[str, str], dict]


def main(conf: dict, inputs: Inputs, out_dir: Path | None = None) -> dict[tuple[str, str], dict]:
    """Remove the pairs that join weakly tied groups; returns the verified pairs kept
    (`inputs.verified` itself when disabled, or with fewer than two images or no pair).

    conf: the whole configuration; reads its clustering section. out_dir: unused (the stage
    writes nothing; the stages' common shape)."""
    cconf, names, verified = conf["clustering"], inputs.names, inputs.verified
    if not cconf["enabled"] or len(names) < 2 or not verified:
        return verified
    w = weight_matrix(names, verified)
    groups = split_groups(w, cconf["max_cut_ratio"], cconf["min_size"], cconf["max_cross_ratio"])
    label = np.empty(len(names), int)
    for g, idx in enumerate(groups):
        label[idx] = g
    index = {n: i for i, n in enumerate(names)}
    kept = {p: v for p, v in verified.items() if label[index[p[0]]] == label[index[p[1]]]}
    logger.info(
        "clustering: %d groups %s, %d of %d pairs kept",
        len(groups),
        [len(g) for g in groups],
        len(kept),
        len(verified),
    )
    return kept
