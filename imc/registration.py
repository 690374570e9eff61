"""Exact, vectorized similarity registration of camera centres (the IMC2024/IMC2025 search).

The official metric (IMC2025 "mAA + clusterness", and the IMC2024 metric notebook) registers the
submitted camera centres to the reference ones by a search over every camera triplet: each
triplet gives a similarity by Horn's quaternion method; for every threshold whose inlier set
(squared error < threshold^2) holds more than two cameras, the similarity is refit on those
inliers (SVD rotation, scale = ratio of RMS deviations from the centroids) and the refit is scored
at every threshold. Per threshold the best refit has the most inliers, then the smaller sum of
squared errors over all cameras; an equal one never replaces it, so the earliest wins ties.

With Kaggle's parameters (`inl_cf=0`, `strict_cf=-1`) no triplet is skipped, so the result is
the best, in loop order, of the refits of all (triplet, threshold) inlier sets. A refit depends
on its inlier set only and replaces the best only when strictly better, so refitting each
distinct inlier set once, at its first occurrence, gives the same result (this also covers the
official per-triplet "already done for this set of inliers" check). Triplet fits and refits
are batched (Horn's rotation in closed form, `imc.horn`), inlier sets are deduplicated as packed
bit rows, and batches run on worker threads while the order-dependent steps stay sequential.
Where a rotation is not unique (collinear or coinciding centres) the official computation is
replayed operation by operation, since there the result depends on LAPACK's pick.
Cost: about n^3 / 6 triplets and as many distinct inlier sets, each evaluated on n cameras.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from .horn import horn_matrix, lapack_rotation, top_rotation

_BATCH_ELEMENTS = 600_000  # triplets (or sets) x cameras per batch: ~30 MB of temporaries
_SMALL_LEVEL = 65_536  # hashes kept in the small sorted level of `_SeenSets`


@dataclass
class Registration:
    """The best similarity per threshold.

    valid: [N] bool, the submitted centre is finite (others are left out of the search).
    err: [V x K] float64, distance of each valid camera (V = valid.sum()) to its reference
        centre after the best similarity for threshold k; inf when no refit was ever made.
    n_inliers: [K] int, cameras with squared error < threshold^2 for that similarity.
    transforms: [K x 3 x 4] float64, `x -> T[:, :3] @ x + T[:, 3]`; NaN when none.
    """

    valid: np.ndarray
    err: np.ndarray
    n_inliers: np.ndarray
    transforms: np.ndarray


def register_by_horn(
    ev: np.ndarray,
    gt: np.ndarray,
    thresholds: np.ndarray,
    workers: int | None = None,
    batch: int | None = None,
) -> Registration:
    """Register submitted centres `ev` [N x 3] to reference centres `gt` [N x 3].

    thresholds: [K] distances in the reference units. Non-finite rows of `ev` are dropped
    (as the official code does); `gt` must be finite where `ev` is.
    workers: threads for the batched stages (default: up to 2); results do not depend on it.
    batch: triplets or inlier sets per batch (default: about 600,000 / N).
    """
    ev = np.asarray(ev, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 3)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    valid = np.all(np.isfinite(ev), axis=1)
    ev, gt = ev[valid], gt[valid]
    n, k = len(ev), len(thresholds)
    best = _Best(n, k)
    if n >= 3:
        size = batch or max(64, _BATCH_ELEMENTS // n)
        workers = workers or min(2, os.cpu_count() or 1)
        with _one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            _search(best, ev, gt, thresholds**2, size, pool, depth=2 * workers)
    return Registration(
        valid=valid,
        err=np.sqrt(best.err2.T),
        n_inliers=best.count.astype(int),
        transforms=best.transform,
    )


def _search(
    best: _Best,
    ev: np.ndarray,
    gt: np.ndarray,
    thr2: np.ndarray,
    size: int,
    pool: Executor,
    depth: int,
) -> None:
    """Triplet fits -> new inlier sets (in loop order) -> refits offered to `best` in order.

    Batches run in the pool (at most `depth` of each kind in flight); the order-dependent
    steps (which sets are new, which refit is best) run here, on results in submission order.
    """
    n = len(ev)
    pts = np.vstack([ev.T, np.ones(n), gt.T])  # [7 x n]
    moments = _Moments(ev, gt)
    seen = _SeenSets((n + 7) // 8)
    pending: deque = deque()
    fresh: list[np.ndarray] = []
    held = 0

    def drain(limit: int) -> None:
        while len(pending) > limit:
            best.offer(*pending.popleft().result())

    def submit(rows: list[np.ndarray]) -> None:
        pending.append(pool.submit(_refit_batch, np.concatenate(rows), moments, pts, thr2))
        drain(depth)

    tasks = (
        pool.submit(_triplet_candidates, ev[t], gt[t], pts, thr2) for t in _triplet_batches(n, size)
    )
    for packed, hashes in _prefetch(tasks, depth):
        rows = seen.new(packed, hashes)
        fresh.append(rows)
        held += len(rows)
        while held >= size:
            rows = np.concatenate(fresh)
            submit([rows[:size]])
            fresh, held = [rows[size:]], len(rows) - size
    if held:
        submit(fresh)
    drain(0)


def _one_blas_thread():
    """BLAS limited to one thread: its threads only compete with the workers on these sizes
    (measured here: 150 cameras, 2 workers, 8.5 s against 20 s with OpenBLAS's own threads)."""
    return threadpool_limits(1, user_api="blas")


def _prefetch(futures, depth: int):
    """Yield the results of an iterator of futures in order, keeping `depth` in flight."""
    window: deque = deque()
    for fut in futures:
        window.append(fut)
        if len(window) > depth:
            yield window.popleft().result()
    while window:
        yield window.popleft().result()


class _Best:
    """The official per-threshold state: inlier count, error sum, errors and transform."""

    def __init__(self, n: int, k: int):
        self.count = np.zeros(k)
        self.sum = np.full(k, np.inf)
        self.err2 = np.full((k, n), np.inf)
        self.transform = np.full((k, 3, 4), np.nan)

    def offer(self, counts: np.ndarray, sums: np.ndarray, err2: np.ndarray, tr: np.ndarray):
        """Apply candidates in order as the official sequential update would: a candidate
        replaces the best for a threshold if it has more inliers, or as many and a smaller
        error sum. counts: [U x K]; sums: [U]; err2: [U x n]; tr: [U x 3 x 4]."""
        if np.isnan(sums).any():  # NaN breaks the total order: replay one by one
            for u in range(len(sums)):
                better = (counts[u] > self.count) | (
                    (counts[u] == self.count) & (sums[u] < self.sum)
                )
                self._take(np.flatnonzero(better), counts[u], sums[u], err2[u], tr[u])
            return
        for q in range(counts.shape[1]):
            c = counts[:, q]
            top = c == c.max()
            u = int(np.flatnonzero(top & (sums == sums[top].min()))[0])
            if c[u] > self.count[q] or (c[u] == self.count[q] and sums[u] < self.sum[q]):
                self._take([q], counts[u], sums[u], err2[u], tr[u])

    def _take(self, qs, counts, total, err2, tr) -> None:
        for q in qs:
            self.count[q], self.sum[q] = counts[q], total
            self.err2[q], self.transform[q] = err2, tr


def _triplet_batches(n: int, size: int):
    """Yield [B x 3] int arrays of all triplets i < j < k in the official loop order."""
    buf: list[np.ndarray] = []
    held = 0
    for i in range(n - 2):
        j, k = np.triu_indices(n - i - 1, 1)
        block = np.column_stack([np.full(len(j), i), j + i + 1, k + i + 1])
        buf.append(block)
        held += len(block)
        if held >= size:
            yield np.concatenate(buf)
            buf, held = [], 0
    if buf:
        yield np.concatenate(buf)


def _triplet_fit(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Similarities [B x 3 x 4] taking point triplets p [B x 3 x 3] to q by Horn's method.

    Centroids, cross terms and Horn's matrix are formed as `affine_matrix_from_points(...,
    usesvd=False)` forms them, so that where the rotation is not unique (collinear or
    coinciding points) the LAPACK fallback picks the official rotation.
    """
    c0, c1 = p.mean(axis=1), q.mean(axis=1)
    v0, v1 = p - c0[:, None], q - c1[:, None]
    cross = (v0[:, :, :, None] * v1[:, :, None, :]).sum(axis=1)  # [B x 3 x 3]: sum v0_a v1_b
    rot, ok = top_rotation(cross)
    if not ok.all():
        rot[~ok] = lapack_rotation(horn_matrix(cross[~ok]))
    sq0 = np.ascontiguousarray((v0 * v0).transpose(0, 2, 1)).reshape(len(p), -1)
    sq1 = np.ascontiguousarray((v1 * v1).transpose(0, 2, 1)).reshape(len(p), -1)
    return _similarity(rot, sq0.sum(axis=1), sq1.sum(axis=1), c0, c1)


def _similarity(
    rot: np.ndarray, ss0: np.ndarray, ss1: np.ndarray, c0: np.ndarray, c1: np.ndarray
) -> np.ndarray:
    """[B x 3 x 4] similarity `s R (x - c0) + c1`, s = sqrt(ss1 / ss0) (ratio of RMS deviations)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = rot * np.sqrt(ss1 / ss0)[:, None, None]
        t = -c0
        shift = a[:, :, 0] * t[:, None, 0] + a[:, :, 1] * t[:, None, 1] + a[:, :, 2] * t[:, None, 2]
        return np.concatenate([a, (shift + c1)[:, :, None]], axis=2)


def _squared_errors(transforms: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """[B x n] squared distances |T x - y|^2 for transforms [B x 3 x 4], pts [7 x n] = (x, 1, y)."""
    b, n = len(transforms), pts.shape[1]
    full = np.concatenate([transforms, np.broadcast_to(-np.eye(3), (b, 3, 3))], axis=2)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = (full.reshape(-1, 7) @ pts).reshape(b, 3, n)
        return np.einsum("bkn,bkn->bn", diff, diff)


def _count_below(err2: np.ndarray, thr2: np.ndarray) -> np.ndarray:
    """[B x K] int: entries of err2 [B x n] below each squared threshold."""
    counts = np.empty((len(err2), len(thr2)), dtype=np.int64)
    below = np.empty(err2.shape, dtype=bool)
    for q, t in enumerate(thr2):
        np.less(err2, t, out=below)
        counts[:, q] = np.count_nonzero(below, axis=1)
    return counts


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


def _triplet_candidates(p: np.ndarray, q: np.ndarray, pts: np.ndarray, thr2: np.ndarray):
    """Inlier sets of more than two cameras for point triplets p, q [B x 3 x 3].

    Returns packed bit rows [C x ceil(n/8)] of the distinct sets in first-seen order, and
    their [C] uint64 hashes; the candidates come triplet by triplet, and within a triplet
    threshold by threshold, as in the official loop.
    """
    err2 = _squared_errors(_triplet_fit(p, q), pts)  # [B x n]
    packed = np.empty((len(err2), len(thr2), (err2.shape[1] + 7) // 8), dtype=np.uint8)
    for k, t in enumerate(thr2):
        packed[:, k] = np.packbits(err2 < t, axis=1)
    counts = _POPCOUNT[packed].sum(axis=2, dtype=np.int64)  # [B x K] inliers
    packed = packed[counts > 2]  # [C x nbytes], (triplet, threshold) order
    first, hashes = _first_occurrences(packed)
    return packed[first], hashes[first]


def _first_occurrences(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices of the first occurrence of each distinct row of packed [C x nbytes],
    and the [C] uint64 hashes of all rows."""
    width = -(-packed.shape[1] // 8) * 8
    words = np.zeros((len(packed), width), dtype=np.uint8)
    words[:, : packed.shape[1]] = packed
    words = words.view(np.uint64)  # [C x w]
    h = np.zeros(len(words), dtype=np.uint64)
    for i in range(words.shape[1]):
        h = (h ^ words[:, i]) * _MIX[i % 3]
        h ^= h >> np.uint64(31)
    order = np.argsort(h)
    start = np.ones(len(h), dtype=bool)
    start[1:] = h[order[1:]] != h[order[:-1]]
    run = np.flatnonzero(~start)  # sorted rows that repeat the previous row's hash
    if np.any(words[order[run]] != words[order[run - 1]]):  # a hash collision
        keys = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel()
        return np.sort(np.unique(keys, return_index=True)[1]), h
    if len(h) == 0:
        return order, h
    return np.sort(np.minimum.reduceat(order, np.flatnonzero(start))), h


class _SeenSets:
    """The inlier sets met so far: their rows, and sorted hashes to find them (a large and a
    small sorted level, merged now and then, to keep insertion cheap)."""

    def __init__(self, nbytes: int):
        empty = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
        self.levels = [empty, empty]  # (sorted hashes, row of self.rows), large then small
        self.rows = np.zeros((1024, nbytes), dtype=np.uint8)
        self.size = 0
        self.clashes: set[bytes] = set()  # sets whose hash belongs to another set

    def new(self, packed: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """The rows of packed [C x nbytes] (distinct, with their [C] hashes) met for the first
        time, in order; they are remembered."""
        slot = np.full(len(hashes), -1, dtype=np.int64)
        order = np.argsort(hashes)  # sorted queries: searchsorted walks the keys in order
        for keys, rows in self.levels:
            if len(keys):
                pos = np.minimum(np.searchsorted(keys, hashes[order]), len(keys) - 1)
                found = keys[pos] == hashes[order]
                slot[order[found]] = rows[pos[found]]
        fresh = slot < 0
        hit = np.flatnonzero(~fresh)
        for i in hit[np.any(self.rows[slot[hit]] != packed[hit], axis=1)]:
            key = packed[i].tobytes()  # same hash as a stored set, another set: practically never
            fresh[i] = key not in self.clashes
            self.clashes.add(key)
        add = np.flatnonzero(slot < 0)
        add = add[np.argsort(hashes[add], kind="stable")]
        twin = np.zeros(len(add), dtype=bool)
        twin[1:] = hashes[add[1:]] == hashes[add[:-1]]
        for i in add[twin]:  # two new sets with one hash
            self.clashes.add(packed[i].tobytes())
        self._store(packed[add[~twin]], hashes[add[~twin]])
        return packed[fresh]

    def _store(self, rows: np.ndarray, hashes: np.ndarray) -> None:
        """Add rows with distinct, sorted hashes that are not stored yet."""
        if self.size + len(rows) > len(self.rows):
            grown = np.zeros((2 * (self.size + len(rows)), self.rows.shape[1]), np.uint8)
            grown[: self.size] = self.rows[: self.size]
            self.rows = grown
        self.rows[self.size : self.size + len(rows)] = rows
        slots = np.arange(self.size, self.size + len(rows))
        self.size += len(rows)
        level = 1 if len(self.levels[1][0]) + len(rows) <= _SMALL_LEVEL else 0
        if level == 0:  # merge the small level into the large one
            keys, where = self.levels[1]
            at = np.searchsorted(keys, hashes)
            hashes, slots = np.insert(keys, at, hashes), np.insert(where, at, slots)
            self.levels[1] = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
        keys, where = self.levels[level]
        at = np.searchsorted(keys, hashes)
        self.levels[level] = (np.insert(keys, at, hashes), np.insert(where, at, slots))


class _Moments:
    """Per-camera terms whose masked sums give each inlier set's count, centroids, cross terms
    and spreads in one matrix product.

    Coordinates are centred on the mean of all cameras first, to keep the moment formulas
    (sum of products minus the centroid term) free of cancellation.
    """

    def __init__(self, ev: np.ndarray, gt: np.ndarray):
        self.ev, self.gt = ev, gt
        self.mu_e, self.mu_g = ev.mean(axis=0), gt.mean(axis=0)
        e, g = ev - self.mu_e, gt - self.mu_g  # [n x 3]
        self.pts = np.vstack([e.T, np.ones(len(ev)), g.T])  # [7 x n]
        outer = (e[:, :, None] * g[:, None, :]).reshape(-1, 9)  # e_a g_b
        sq = np.stack([np.sum(e**2, axis=1), np.sum(g**2, axis=1), np.ones(len(ev))], axis=1)
        self.terms = np.hstack([e, g, outer, sq])  # [n x 18]

    def sums(self, w: np.ndarray):
        """Count [U], centroids [U x 3] x 2, cross terms [U x 3 x 3], spreads [U] x 2 of the
        sets w [U x n] (0/1), in the centred frame."""
        m = w @ self.terms
        cnt = m[:, 17]
        c0, c1 = m[:, 0:3] / cnt[:, None], m[:, 3:6] / cnt[:, None]
        cross = m[:, 6:15].reshape(-1, 3, 3) - cnt[:, None, None] * c0[:, :, None] * c1[:, None, :]
        ss0 = m[:, 15] - cnt * np.sum(c0**2, axis=1)
        ss1 = m[:, 16] - cnt * np.sum(c1**2, axis=1)
        return c0, c1, cross, ss0, ss1


def _refit_batch(packed: np.ndarray, mo: _Moments, pts: np.ndarray, thr2: np.ndarray):
    """Refit a similarity on each inlier set (packed bit rows [U x ceil(n/8)]).

    The official refit takes Kabsch's rotation (SVD, reflection removed) and the scale as the
    ratio of RMS deviations; where that rotation is unique it equals Horn's, computed here in
    closed form; where it is not, the official arithmetic is replayed (`_exact_refit`).
    Returns the arguments of `_Best.offer` for the batch's own best refits (see `_local_best`).
    """
    w = np.unpackbits(packed, axis=1, count=pts.shape[1])  # [U x n] 0/1
    c0, c1, cross, ss0, ss1 = mo.sums(w.astype(np.float64))
    rot, ok = top_rotation(cross)
    centred = _similarity(rot, ss0, ss1, c0, c1)  # maps centred ev to centred gt
    err2 = _squared_errors(centred, mo.pts)
    a = centred[:, :, :3]
    with np.errstate(invalid="ignore", over="ignore"):
        shift = mo.mu_g + centred[:, :, 3] - np.einsum("uij,j->ui", a, mo.mu_e)
    transforms = np.concatenate([a, shift[:, :, None]], axis=2)
    for i in np.flatnonzero(~ok):
        inliers = w[i].astype(bool)
        transforms[i] = _exact_refit(mo.ev[inliers], mo.gt[inliers])
        err2[i] = _squared_errors(transforms[i : i + 1], pts)[0]
    return _local_best(_count_below(err2, thr2), err2.sum(axis=1), err2, transforms)


def _local_best(counts, sums, err2, transforms):
    """Keep the candidates that `_Best.offer` could pick: per threshold the first of the
    most inliers / smallest sum (all of them when a sum is NaN, which breaks the order)."""
    if np.isnan(sums).any():
        return counts, sums, err2, transforms
    keep = set()
    for q in range(counts.shape[1]):
        top = counts[:, q] == counts[:, q].max()
        keep.add(int(np.flatnonzero(top & (sums == sums[top].min()))[0]))
    idx = sorted(keep)
    return counts[idx], sums[idx], err2[idx], transforms[idx]


def _exact_refit(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[3 x 4] similarity p [m x 3] -> q by the official arithmetic, operation by operation.

    Used where the rotation is not unique (the inliers' centres are collinear or coincide):
    there the SVD's choice depends on the last bits of the covariance, so it is computed
    with the same numpy calls, in the same order, as `affine_matrix_from_points`.
    """
    v0, v1 = p.T.copy(), q.T.copy()  # [3 x m]
    t0, t1 = -np.mean(v0, axis=1), -np.mean(v1, axis=1)
    v0 += t0.reshape(3, 1)
    v1 += t1.reshape(3, 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        try:
            u, _, vh = np.linalg.svd(np.dot(v1, v0.T))
        except np.linalg.LinAlgError:
            return np.full((3, 4), np.nan)
        rot = np.dot(u, vh)
        if np.linalg.det(rot) < 0.0:
            rot -= np.outer(u[:, 2], vh[2, :] * 2.0)
        m = np.identity(4)
        m[:3, :3] = rot * np.sqrt(np.sum(v1 * v1) / np.sum(v0 * v0))
        m0, m1 = np.identity(4), np.identity(4)
        m0[:3, 3], m1[:3, 3] = t0, t1
        m = np.dot(np.linalg.inv(m1), np.dot(m, m0))
        return (m / m[3, 3])[:3]
