"""The features stage's file, `features.h5`: its layout and the one reader every stage uses.

One group per image (`imc.cache.h5_key(name)`):

    keypoints           [N (+ K) x 2] float32, stored image pixels (pixel centre at 0): the
                        N ALIKED keypoints, then the K SIFT ones when the features have them
    keypoints_upright   [N x 2] float32, pixels of the rotated and resized image (matching)
    descriptors         [N x 128] float32, L2-normalised
    scores              [N] float32, detection scores
    sift_descriptors    [K x 128] float32, RootSIFT (only with features.sift_max_keypoints)
    attrs: rotation (k), image_size (W, H) stored, upright_size (W, H) rotated and resized,
           done; an unreadable image has attrs failed (the message) and done instead.

Matches (imc.stages.matching) index `keypoints`: LightGlue's its first N rows, SIFT's the
last K. Written by imc.stages.features; read here only (no torch, so that readers need not load it).
Keypoints change convention for COLMAP in one place: imc.stages.reconstruction.colmap_keypoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from ..cache import h5_key, h5_name
from ..errors import ImcError

ARRAYS = ("keypoints", "keypoints_upright", "descriptors", "scores")
SIFT = "sift_descriptors"


def read_group(g: h5py.Group, name: str, arrays: Iterable[str] = ARRAYS) -> dict:
    """One image's group of an open features.h5 -> dict of `arrays` and those of the attributes
    image_size, upright_size (W, H) and rotation that it has (the features stage writes all
    three); `sift_descriptors` only when the image has them. Raises ImcError for a failed
    image."""
    if "failed" in g.attrs:
        raise ImcError(f"features of image '{name}' failed: {g.attrs['failed']}")
    out = {k: g[k][()] for k in arrays if k != SIFT or SIFT in g}
    for size in ("image_size", "upright_size"):
        if size in g.attrs:
            out[size] = tuple(int(v) for v in g.attrs[size])
    if "rotation" in g.attrs:
        out["rotation"] = int(g.attrs["rotation"])
    return out


def group(f: h5py.File, name: str) -> h5py.Group:
    """Image `name`'s group of an open features.h5; ImcError naming the file when absent."""
    key = h5_key(name)
    if key not in f:
        raise ImcError(f"{f.filename}: no features for image '{name}'")
    return f[key]


def load_features(path: Path, name: str, arrays: Iterable[str] = ARRAYS) -> dict:
    """The arrays and attributes of image `name` in a features.h5 (see `read_group`).

    Raises ImcError when the image is absent or its extraction failed.
    """
    with h5py.File(path, "r") as f:
        return read_group(group(f, name), name, arrays)


def read_array(path: Path, names: Iterable[str], array: str) -> dict[str, np.ndarray]:
    """name -> one array (`keypoints`, `descriptors`, ...) of each image of `names`."""
    with h5py.File(path, "r") as f:
        return {n: read_group(group(f, n), n, (array,))[array] for n in names}


def image_sizes(path: Path, names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Each image's stored size: name -> (width, height) in pixels."""
    out = {}
    with h5py.File(path, "r") as f:
        for n in names:
            found = read_group(group(f, n), n, ())
            if "image_size" not in found:
                raise ImcError(f"{path}: image '{n}' has no image_size attribute")
            out[n] = found["image_size"]
    return out


def keypoint_counts(path: Path, array: str = "keypoints") -> dict[str, int]:
    """name -> number of keypoints (all of them; `descriptors`: LightGlue's), for every image
    whose extraction did not fail."""
    with h5py.File(path, "r") as f:
        return {h5_name(k): len(g[array]) for k, g in f.items() if array in g}


def failed_images(path: Path) -> dict[str, str]:
    """Image name -> error message for the images that could not be read."""
    with h5py.File(path, "r") as f:
        return {h5_name(k): str(g.attrs["failed"]) for k, g in f.items() if "failed" in g.attrs}
