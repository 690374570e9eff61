"""Images: read as stored, normalise to 8-bit RGB, resize, rotate by 90-degree steps.

Pixel convention everywhere in imc (hloc's): keypoint (x, y) has the centre of the top-left
pixel at (0, 0). COLMAP puts it at (0.5, 0.5); the database writer adds 0.5 (mapping.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImcError

Image.MAX_IMAGE_PIXELS = 200_000_000  # large photographs are legitimate input


class ImageReadError(ImcError):
    """An input image that cannot be decoded."""


def read_image(path: str | Path, apply_exif: bool = False) -> np.ndarray:
    """Read an image as stored (EXIF orientation ignored unless `apply_exif`).

    Returns: [H x W x 3] uint8 RGB. Grayscale is replicated, alpha dropped, 16-bit scaled to 8.
    Raises ImageReadError naming the file when it is empty, truncated or not an image.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(f"{path}: empty file")
        with Image.open(path) as im:
            if apply_exif:
                im = ImageOps.exif_transpose(im)
            im.load()
            arr = _to_rgb8(im)
    except ImageReadError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot be read as an image ({e})") from None
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageReadError(f"{path}: image too small ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def read_ahead(
    paths: list[Path], apply_exif: bool = False, ahead: int = 2
) -> Iterator[np.ndarray | ImageReadError]:
    """The images of `paths` in order (read_image), decoded `ahead` images in advance on a
    background thread so that decoding overlaps the caller's work; an unreadable file gives
    its ImageReadError in its place."""

    def load(path: Path) -> np.ndarray | ImageReadError:
        try:
            return read_image(path, apply_exif)
        except ImageReadError as e:
            return e

    with ThreadPoolExecutor(1, thread_name_prefix="image-reader") as pool:
        pending = [pool.submit(load, p) for p in paths[:ahead]]
        for k in range(len(paths)):
            if k + ahead < len(paths):
                pending.append(pool.submit(load, paths[k + ahead]))
            yield pending[k].result()
            pending[k] = None  # free the decoded image


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> [H x W x 3] uint8."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = np.nanmin(a), np.nanmax(a)
        a = (a - lo) / max(hi - lo, 1e-12) * 255.0
        return np.repeat(np.nan_to_num(a).astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")
    elif im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def image_size(path: str | Path, apply_exif: bool = False) -> tuple[int, int]:
    """(width, height) as stored, from the header when possible."""
    try:
        with Image.open(path) as im:
            if apply_exif:
                im = ImageOps.exif_transpose(im)
            return im.size
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot be read as an image ({e})") from None


def exif_camera(path: str | Path) -> tuple[str, str, float] | None:
    """(make, model, focal length in mm) from the EXIF header; None when any is missing or the
    file cannot be read (the image's own reader reports that)."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            focal = exif.get_ifd(0x8769).get(37386)  # Exif IFD: FocalLength
            make, model = exif.get(271), exif.get(272)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    try:
        focal = float(focal)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not make or not model or not math.isfinite(focal) or focal <= 0:
        return None
    return str(make).strip(), str(model).strip(), round(focal, 3)


def resize_long_side(
    image: np.ndarray, long_side: int | None, min_long_side: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Resize so that max(H, W) == long_side when it is larger (INTER_AREA), or up to
    `min_long_side` (at most `long_side`) when it is smaller (INTER_CUBIC); otherwise, and for
    None or 0, keep the size.

    Returns: the resized image and scale [2] = (W_new / W, H_new / H).
    """
    h, w = image.shape[:2]
    up_to = min(min_long_side, long_side) if long_side else min_long_side
    if long_side and max(h, w) > long_side:
        target, interpolation = long_side, cv2.INTER_AREA
    elif max(h, w) < up_to:
        target, interpolation = up_to, cv2.INTER_CUBIC
    else:
        return image, np.ones(2)
    s = target / max(h, w)
    new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
    out = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return out, np.array([new_w / w, new_h / h])


def rotate(image: np.ndarray, k: int) -> np.ndarray:
    """Rotate by k x 90 degrees counter-clockwise (as np.rot90 on the first two axes)."""
    return np.ascontiguousarray(np.rot90(image, k % 4, axes=(0, 1)))


def unrotate_points(points: np.ndarray, k: int, stored_wh: tuple[int, int]) -> np.ndarray:
    """Map points from `rotate(image, k)` back to the stored image.

    points: [N x 2] (x, y) in the rotated image, pixel centre at 0.
    stored_wh: (W, H) of the stored (unrotated) image.
    Returns: [N x 2] (x, y) in the stored image.
    """
    w, h = stored_wh
    x, y = points[:, 0], points[:, 1]
    k %= 4
    if k == 0:
        out = (x, y)
    elif k == 1:  # rotated image is W wide... rows = W: stored (xs, ys) -> rotated (ys, W-1-xs)
        out = (w - 1 - y, x)
    elif k == 2:
        out = (w - 1 - x, h - 1 - y)
    else:  # stored (xs, ys) -> rotated (H-1-ys, xs)
        out = (y, h - 1 - x)
    return np.stack(out, axis=1).astype(points.dtype, copy=False)


def rescale_points(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Points of a resized image back to the original: (k + 0.5) / s - 0.5 (pixel centre at 0)."""
    return ((points + 0.5) / scale - 0.5).astype(points.dtype, copy=False)
