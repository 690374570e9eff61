"""Horn's quaternion rotations for batches of point-set registrations, in closed form.

For centred point sets with cross terms S[a, b] = sum_i p_ia q_ib, the rotation that best maps
p onto q is given by the top eigenvector (a unit quaternion) of Horn's symmetric 4 x 4 matrix
(Horn, "Closed-form solution of absolute orientation using unit quaternions", 1987). LAPACK's
`eigh` costs several microseconds per 4 x 4 matrix; `top_rotation` computes the same
eigenvector with array arithmetic (characteristic polynomial, Newton, adjugate), and flags the
matrices whose two top eigenvalues are too close for that to match LAPACK's pick.
"""

from __future__ import annotations

import numpy as np

_EPS = np.finfo(float).eps * 4.0
GAP_TOL = 1e-4  # relative eigen-gap below which `top_rotation` reports not ok
_NEWTON_STEPS = 60
_NEWTON_FULL = 16  # Newton steps over all rows before iterating on the unsettled ones only


def horn_entries(cross: np.ndarray) -> list[list[np.ndarray]]:
    """Horn's symmetric 4 x 4 matrix as nested [B] arrays, from s[a, b] = sum v0_a v1_b.

    Each entry is formed with the same operations, in the same order, as the official code.
    """
    xx, yy, zz = cross[:, 0, 0], cross[:, 1, 1], cross[:, 2, 2]
    xy, yz, zx = cross[:, 0, 1], cross[:, 1, 2], cross[:, 2, 0]
    xz, yx, zy = cross[:, 0, 2], cross[:, 1, 0], cross[:, 2, 1]
    n10, n20, n21 = yz - zy, zx - xz, xy + yx
    n30, n31, n32 = xy - yx, zx + xz, yz + zy
    return [
        [xx + yy + zz, n10, n20, n30],
        [n10, xx - yy - zz, n21, n31],
        [n20, n21, yy - xx - zz, n32],
        [n30, n31, n32, zz - xx - yy],
    ]


def horn_matrix(cross: np.ndarray) -> np.ndarray:
    """Horn's symmetric [B x 4 x 4] matrix (see `horn_entries`)."""
    a = horn_entries(cross)
    return np.stack([np.stack(row, axis=1) for row in a], axis=1)


def lapack_rotation(horn: np.ndarray) -> np.ndarray:
    """Rotations [B x 3 x 3] from the LAPACK eigenvector, as the official code takes it."""
    rot = np.full((len(horn), 3, 3), np.nan)
    ok = np.all(np.isfinite(horn), axis=(1, 2))
    if ok.any():
        w, vec = np.linalg.eigh(np.tril(horn[ok]))
        quat = np.take_along_axis(vec, np.argmax(w, axis=1)[:, None, None], axis=2)[..., 0]
        rot[ok] = quaternion_to_matrix(quat)
    return rot


def top_rotation(cross: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotations [B x 3 x 3] from the top eigenvector of Horn's matrix of cross [B x 3 x 3].

    The top eigenvalue is the largest root of the characteristic polynomial (Newton from an
    upper bound, which converges to it from above), the eigenvector a column of the
    adjugate of `horn - lambda I`, refined once with the Rayleigh quotient. ok: [B] False
    where the gap to the second eigenvalue is below `GAP_TOL` of the scale (the rotation is
    then ill-determined and must come from the same computation as the official one).
    """
    a = horn_entries(cross)
    # Horn's eigenvalues are +-s1 +-s2 +-s3 (singular values of cross): |lambda| <= sqrt(3) |S|_F
    bound = np.sqrt(3.0 * np.sum(cross * cross, axis=(1, 2))) * (1.0 + 1e-9)
    minors, det = _cofactors(a)
    e1 = a[0][0] + a[1][1] + a[2][2] + a[3][3]
    e2 = sum(a[i][i] * a[j][j] - a[i][j] * a[i][j] for i in range(4) for j in range(i + 1, 4))
    e3 = sum(_adjugate_diagonal(a, minors))
    lam, converged = _newton_top_root(e1, e2, e3, det, bound)
    rows = np.arange(len(cross))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(2):
            shifted = [[a[i][j] - lam if i == j else a[i][j] for j in range(4)] for i in range(4)]
            adj = _adjugate(shifted)  # ~ -p'(lam) v v^T near the top root
            col = np.argmin(np.diagonal(adj, axis1=1, axis2=2), axis=1)
            vec = adj[rows, :, col]
            vec /= np.sqrt(np.sum(vec * vec, axis=1, keepdims=True))
            lam = sum(vec[:, i] * a[i][j] * vec[:, j] for i in range(4) for j in range(4))
        gap = -np.trace(adj, axis1=1, axis2=2)  # p'(lam) = prod (lam - lambda_j) >= gap (2B)^2
        ok = converged & (gap > GAP_TOL * 4.0 * bound**3)
    return quaternion_to_matrix(vec), ok


def _newton_top_root(e1, e2, e3, e4, start) -> tuple[np.ndarray, np.ndarray]:
    """Largest root of x^4 - e1 x^3 + e2 x^2 - e3 x + e4 (all roots real) from above.

    Returns the roots [B] and [B] bool, False where Newton has not settled.
    """

    def step(x, c1, c2, c3, c4):
        p = (((x - c1) * x + c2) * x - c3) * x + c4
        return p / (((4.0 * x - 3.0 * c1) * x + 2.0 * c2) * x - c3)

    lam = start.copy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(_NEWTON_FULL):  # all rows: cheaper than gathering while most still move
            delta = step(lam, e1, e2, e3, e4)
            lam -= delta
            done = np.abs(delta) <= 1e-12 * start
            if done.all():
                return lam, done
        act = np.flatnonzero(~done)
        for _ in range(_NEWTON_STEPS - _NEWTON_FULL):
            delta = step(lam[act], e1[act], e2[act], e3[act], e4[act])
            lam[act] -= delta
            act = act[~(np.abs(delta) <= 1e-12 * start[act])]
            if len(act) == 0:
                break
    converged = np.ones(len(lam), dtype=bool)
    converged[act] = False
    return lam, converged


def _cofactors(a):
    """2 x 2 minors of the top (s) and bottom (c) row pairs of 4 x 4 matrices, and det."""
    s = [
        a[0][0] * a[1][1] - a[1][0] * a[0][1],
        a[0][0] * a[1][2] - a[1][0] * a[0][2],
        a[0][0] * a[1][3] - a[1][0] * a[0][3],
        a[0][1] * a[1][2] - a[1][1] * a[0][2],
        a[0][1] * a[1][3] - a[1][1] * a[0][3],
        a[0][2] * a[1][3] - a[1][2] * a[0][3],
    ]
    c = [
        a[2][0] * a[3][1] - a[3][0] * a[2][1],
        a[2][0] * a[3][2] - a[3][0] * a[2][2],
        a[2][0] * a[3][3] - a[3][0] * a[2][3],
        a[2][1] * a[3][2] - a[3][1] * a[2][2],
        a[2][1] * a[3][3] - a[3][1] * a[2][3],
        a[2][2] * a[3][3] - a[3][2] * a[2][3],
    ]
    det = s[0] * c[5] - s[1] * c[4] + s[2] * c[3] + s[3] * c[2] - s[4] * c[1] + s[5] * c[0]
    return (s, c), det


def _adjugate_diagonal(a, minors) -> list[np.ndarray]:
    """The 4 diagonal entries of adj(a) (principal 3 x 3 minors)."""
    s, c = minors
    return [
        a[1][1] * c[5] - a[1][2] * c[4] + a[1][3] * c[3],
        a[0][0] * c[5] - a[0][2] * c[2] + a[0][3] * c[1],
        a[3][0] * s[4] - a[3][1] * s[2] + a[3][3] * s[0],
        a[2][0] * s[3] - a[2][1] * s[1] + a[2][2] * s[0],
    ]


def _adjugate(a) -> np.ndarray:
    """[B x 4 x 4] adjugate of symmetric 4 x 4 matrices given as nested [B] arrays."""
    (s, c), _ = _cofactors(a)
    d0, d1, d2, d3 = _adjugate_diagonal(a, (s, c))
    r01 = -a[0][1] * c[5] + a[0][2] * c[4] - a[0][3] * c[3]
    r02 = a[3][1] * s[5] - a[3][2] * s[4] + a[3][3] * s[3]
    r03 = -a[2][1] * s[5] + a[2][2] * s[4] - a[2][3] * s[3]
    r12 = -a[3][0] * s[5] + a[3][2] * s[2] - a[3][3] * s[1]
    r13 = a[2][0] * s[5] - a[2][2] * s[2] + a[2][3] * s[1]
    r23 = -a[2][0] * s[4] + a[2][1] * s[2] - a[2][3] * s[0]
    full = [d0, r01, r02, r03, r01, d1, r12, r13, r02, r12, d2, r23, r03, r13, r23, d3]
    return np.stack(full, axis=1).reshape(-1, 4, 4)


def quaternion_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Rotations [B x 3 x 3] from quaternions [B x 4] (w, x, y, z), as `quaternion_matrix`
    (which scales q by sqrt(2 / |q|^2) and returns the identity for |q|^2 < eps)."""
    w, x, y, z = quat.T
    nrm = w * w + x * x + y * y + z * z
    with np.errstate(divide="ignore", invalid="ignore"):
        k = 2.0 / nrm
    xx, yy, zz = k * x * x, k * y * y, k * z * z
    xy, xz, yz = k * x * y, k * x * z, k * y * z
    wx, wy, wz = k * w * x, k * w * y, k * w * z
    full = [1.0 - yy - zz, xy - wz, xz + wy, xy + wz, 1.0 - xx - zz, yz - wx]
    full += [xz - wy, yz + wx, 1.0 - xx - yy]
    rot = np.stack(full, axis=1).reshape(-1, 3, 3)
    rot[nrm < _EPS] = np.eye(3)
    return rot
