"""A synthetic multi-view scene with exact geometry, for unit tests of the geometric stages."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np

from imc import config
from imc.cache import h5_key
from imc.data import Dataset, ImageInfo
from imc.stages import mapping


def look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera rotation of a camera at `center` looking at `target` (y down)."""
    z = target - center
    z /= np.linalg.norm(z)
    x = np.cross([0.0, -1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def make_scene(
    n_cams=6, n_points=600, seed=0, w=640, h=480, noise=0.3, outlier_frac=0.1, focals=None
):
    """Cameras on an arc around a point cloud; keypoints = noisy projections + outliers.

    focals: one focal length per camera (default: 1.2 x the long side for all).
    Returns dict: K [3x3] (of the first camera), Ks (one per camera), poses list of (R, t),
    keypoints list of [N x 2] (pixel centre 0), matches {(i, j): [M x 2]} between every camera
    pair (true correspondences + random ones).
    """
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, (n_points, 3)) * [1.5, 1.0, 0.6]
    focals = focals if focals is not None else [1.2 * max(w, h)] * n_cams
    Ks = [np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]) for f in focals]
    poses, kpts, vis = [], [], []
    for i, K in enumerate(Ks):
        a = np.deg2rad(-40 + 80 * i / max(n_cams - 1, 1))
        c = np.array([5 * np.sin(a), -0.5, -5 * np.cos(a)])
        R = look_at(c, np.zeros(3))
        t = -R @ c
        poses.append((R, t))
        x = (K @ (pts @ R.T + t).T).T
        uv = x[:, :2] / x[:, 2:] - 0.5  # COLMAP centre +0.5 -> imc convention
        uv += rng.normal(0, noise, uv.shape)
        vis.append((uv[:, 0] > 0) & (uv[:, 0] < w - 1) & (uv[:, 1] > 0) & (uv[:, 1] < h - 1))
        kpts.append(uv.astype(np.float32))
    matches = {}
    for i in range(n_cams):
        for j in range(i + 1, n_cams):
            idx = np.flatnonzero(vis[i] & vis[j])
            m = np.stack([idx, idx], 1)
            n_out = int(outlier_frac * len(m))
            wrong = np.stack(
                [rng.integers(0, n_points, n_out), rng.integers(0, n_points, n_out)], 1
            )
            matches[(i, j)] = np.concatenate([m, wrong]).astype(np.int32)
    return {
        "K": Ks[0], "Ks": Ks, "poses": poses, "keypoints": kpts, "matches": matches, "size": (w, h)
    }  # fmt: skip


def write_features(scene: dict, names: list[str], path: Path) -> Path:
    """The features.h5 layout (imc.stages.feature_file) with the arrays the geometric stages
    read: keypoints, and the attributes (upright, not rotated)."""
    with h5py.File(path, "w") as f:
        for name, k in zip(names, scene["keypoints"]):
            g = f.create_group(h5_key(name))
            g.create_dataset("keypoints", data=k)
            g.attrs["image_size"] = scene["size"]
            g.attrs["upright_size"] = scene["size"]
            g.attrs["rotation"] = 0
            g.attrs["done"] = True
    return path


def write_images(scene: dict, names: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    w, h = scene["size"]
    out = []
    for name in names:
        cv2.imwrite(str(folder / name), np.full((h, w, 3), 128, np.uint8))
        out.append(folder / name)
    return out


def toy_dataset(scene: dict, names: list[str], root: Path, paths: list[Path] | None = None):
    """(Dataset "toy", features.h5) of `scene`: images as `paths` (default: grey images
    written under `root/images`), keypoints in `root/features.h5`."""
    paths = paths if paths is not None else write_images(scene, names, root / "images")
    ds = Dataset("toy", "toy", [ImageInfo(n, p) for n, p in zip(names, paths, strict=True)])
    return ds, write_features(scene, names, root / "features.h5")


def verified_pairs(scene: dict, names: list[str]) -> dict:
    """The scene's true matches as verification's output: (a, b) -> inliers [M x 2], F (8-point
    on the true matches), num_matches (true and wrong)."""
    out = {}
    for (i, j), m in scene["matches"].items():
        true = m[m[:, 0] == m[:, 1]]
        p0, p1 = scene["keypoints"][i][true[:, 0]], scene["keypoints"][j][true[:, 1]]
        F, _ = cv2.findFundamentalMat(p0.astype(float), p1.astype(float), cv2.FM_8POINT)
        out[(names[i], names[j])] = {"inliers": true, "F": F, "num_matches": len(m)}
    return out


def map_scene(
    scene: dict,
    names: list[str],
    ds: Dataset,
    feats: Path,
    out: Path,
    conf: dict | None = None,
    max_seconds: float | None = None,
) -> mapping.MappingResult:
    """imc.stages.mapping.main on the scene's true matches; `conf`: the whole configuration
    (default: config.DEFAULTS)."""
    conf = conf or config.DEFAULTS
    pairs = verified_pairs(scene, names)
    return mapping.main(conf, mapping.Inputs(ds, names, feats, pairs, max_seconds), out)
