"""Local features: ALIKED keypoints and descriptors for every image of a dataset.

Each image is read as stored, rotated by its canonical k x 90 degrees (orientation stage),
resized to `resize_long_side` (or up to `min_long_side`: small images are upscaled, 0 by
default) and described. With `sift_max_keypoints` (0, off), OpenCV's SIFT keypoints of the same
image, resized alike but not rotated (SIFT is rotation-invariant), are added after ALIKED's,
with RootSIFT descriptors; imc.stages.matching matches them by mutual nearest neighbours and
merges them with LightGlue's matches. Output `features.h5`, one group per image; its
layout and its reader: imc.stages.feature_file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..cache import h5_key, resumable_h5
from ..data import Dataset
from ..errors import ImcError
from ..images import (
    ImageReadError,
    read_ahead,
    rescale_points,
    resize_long_side,
    rotate,
    unrotate_points,
)
from ..log import logger
from ..parallel import PerThread, cpu_workers, ordered_map
from ..weights import load_state_dict, load_strict
from .feature_file import ARRAYS, SIFT


@dataclass(frozen=True)
class ModelSpec:
    """A local-feature model: how to build it from the features conf, and its weights."""

    build: Callable[[dict], torch.nn.Module]
    weights: str
    descriptor_dim: int
    allowed_missing: tuple[str, ...] = ()


def _aliked(variant: str) -> Callable[[dict], torch.nn.Module]:
    def build(conf: dict) -> torch.nn.Module:
        from kornia.feature.aliked.aliked import ALIKED

        return ALIKED(
            model_name=variant,
            max_num_keypoints=conf["max_keypoints"],
            detection_threshold=conf["detection_threshold"],
            nms_radius=conf["nms_radius"],
        )

    return build


MODELS: dict[str, ModelSpec] = {
    # dkd.hw_grid is a buffer computed at construction, absent from the official file.
    "aliked-n16": ModelSpec(_aliked("aliked-n16"), "aliked-n16.pth", 128, ("dkd.hw_grid",)),
}


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ImcError(f"unknown feature model '{name}' (valid: {', '.join(MODELS)})")
    return MODELS[name]


def build_model(conf: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The feature model of `conf["model"]` with checked, strictly loaded weights, in eval
    mode, float32 on `device`; on the CPU its weights are stored channels-last, the layout
    oneDNN's convolutions run fastest in (ALIKED at 3072 x 2048 -> 1024 px: 1.25 s against
    1.79 s on 2 cores; the same keypoints and descriptors within 1e-3 px and 1e-5)."""
    spec = model_spec(conf["model"])
    model = spec.build(conf)
    load_strict(model, load_state_dict(spec.weights), spec.allowed_missing, name=spec.weights)
    model = model.eval().float().to(device)
    if torch.device(device).type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def _set_detection(model: torch.nn.Module, conf: dict) -> None:
    """Apply conf's keypoint budget and threshold to an ALIKED model (as its constructor does),
    so that one model serves several confs (the orientation stage's smaller budget)."""
    dkd = getattr(model, "dkd", None)
    if dkd is None:
        return
    if dkd.radius != conf["nms_radius"]:
        raise ImcError(f"model built with nms_radius {dkd.radius}, conf asks {conf['nms_radius']}")
    threshold, budget = conf["detection_threshold"], conf["max_keypoints"]
    dkd.scores_th = threshold
    dkd.top_k = -1 if threshold > 0 else budget
    dkd.n_limit = budget if budget > 0 else model.n_limit_max


def extract_image(
    model: torch.nn.Module,
    image: np.ndarray,
    conf: dict,
    rotation_k: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Detect and describe one image.

    image: [H x W x 3] uint8, the stored pixels. rotation_k: the image is rotated by k x 90
    degrees counter-clockwise (imc.images.rotate) before detection.
    Returns: keypoints [N x 2] float32 (stored frame, pixel centre at 0), keypoints_upright
    [N x 2] float32 (rotated-resized frame), descriptors [N x D] float32, scores [N] float32,
    image_size (W, H) stored, upright_size (W, H) rotated and resized.
    The keypoint budget and threshold come from `conf` (max_keypoints, detection_threshold); an
    image with fewer than `conf["min_keypoints"]` above the threshold gets that many strongest
    local maxima instead (a superset: every maximum above the threshold is among them).
    """
    h, w = image.shape[:2]
    upright, scale = resize_long_side(
        rotate(image, rotation_k), conf["resize_long_side"], conf.get("min_long_side", 0)
    )
    x = torch.tensor(upright, device=device).permute(2, 0, 1)[None].float() / 255.0
    _set_detection(model, conf)
    with torch.inference_mode():
        feats = model(x)[0]
        floor = min(conf.get("min_keypoints", 0), conf["max_keypoints"])
        if len(feats.keypoints) < floor and conf["detection_threshold"] > 0:
            # A dark or weakly textured image: its `floor` strongest maxima, whatever their score.
            _set_detection(model, {**conf, "detection_threshold": 0, "max_keypoints": floor})
            feats = model(x)[0]
    kpts_up = feats.keypoints.float().cpu().numpy().reshape(-1, 2).astype(np.float32)
    descriptors = feats.descriptors.float().cpu().numpy().astype(np.float32)  # [N x D], N >= 0
    kpts = unrotate_points(rescale_points(kpts_up, scale), rotation_k, (w, h))
    return {
        "keypoints": kpts.astype(np.float32),
        "keypoints_upright": kpts_up,
        "descriptors": descriptors.reshape(len(kpts_up), descriptors.shape[-1]),
        "scores": feats.keypoint_scores.float().cpu().numpy().reshape(-1).astype(np.float32),
        "image_size": (w, h),
        "upright_size": (upright.shape[1], upright.shape[0]),
    }


def extract_sift(image: np.ndarray, conf: dict) -> tuple[np.ndarray, np.ndarray]:
    """SIFT (OpenCV) on one image: at most `conf["sift_max_keypoints"]` keypoints, detected on
    the stored image resized as the ALIKED features are (`resize_long_side`, `min_long_side`)
    but not rotated.

    image: [H x W x 3] uint8, the stored pixels (RGB).
    Returns: keypoints [K x 2] float32 in stored pixels (pixel centre at 0) and RootSIFT
    descriptors [K x 128] float32 (L1-normalised, square-rooted: unit L2 norm), strongest first.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    resized, scale = resize_long_side(gray, conf["resize_long_side"], conf.get("min_long_side", 0))
    sift = cv2.SIFT_create(nfeatures=int(conf["sift_max_keypoints"]))
    found, desc = sift.detectAndCompute(resized, None)
    if not found:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    # OpenCV may return a few more than nfeatures (ties at the cut), in an order that can
    # follow its threads: sorted by response, then position, size and angle; the strongest kept.
    pts = np.array([k.pt for k in found], np.float64).reshape(-1, 2)
    keys = [[k.angle for k in found], [k.size for k in found], pts[:, 1], pts[:, 0]]
    order = np.lexsort([*keys, [-k.response for k in found]])[: conf["sift_max_keypoints"]]
    kpts = pts[order].astype(np.float32)
    desc = desc[order].astype(np.float32)
    desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-8)
    return rescale_points(kpts, scale), np.sqrt(desc).astype(np.float32)


def add_sift(feats: dict, image: np.ndarray, conf: dict) -> dict:
    """`feats` (extract_image's) with SIFT's keypoints appended to `keypoints` and their
    descriptors as `sift_descriptors` (feature_file's layout); unchanged when
    `conf["sift_max_keypoints"]` is 0."""
    if not conf.get("sift_max_keypoints", 0):
        return feats
    kpts, desc = extract_sift(image, conf)
    return {
        **feats,
        "keypoints": np.concatenate([feats["keypoints"], kpts]).astype(np.float32),
        "sift_descriptors": desc,
    }


def _write(f: h5py.File, key: str, feats: dict, rotation_k: int) -> None:
    if key in f:
        del f[key]
    g = f.create_group(key)
    for name in ARRAYS + (SIFT,) * (SIFT in feats):
        g.create_dataset(name, data=feats[name])
    g.attrs["rotation"] = int(rotation_k)
    g.attrs["image_size"] = np.asarray(feats["image_size"], dtype=np.int64)
    g.attrs["upright_size"] = np.asarray(feats["upright_size"], dtype=np.int64)
    g.attrs["done"] = True


def _write_failed(f: h5py.File, key: str, message: str, rotation_k: int) -> None:
    if key in f:
        del f[key]
    g = f.create_group(key)
    g.attrs["failed"] = message
    g.attrs["rotation"] = int(rotation_k)
    g.attrs["done"] = True


def _is_done(f: h5py.File, key: str, rotation_k: int) -> bool:
    if key not in f:
        return False
    attrs = f[key].attrs
    return bool(attrs.get("done", False)) and int(attrs.get("rotation", -1)) == rotation_k


@dataclass(frozen=True)
class Inputs:
    """What the features stage reads besides the configuration.

    dataset: the images (names and files).
    rotations: image name -> k (x 90 degrees counter-clockwise) that makes it upright, the
        orientation stage's result; 0 for an image it lacks (None: 0 for all).
    device: where the model runs.
    load_model: returns the run's feature model (imc.pipeline.Models), called when an image
        needs extracting; None: built from the features section.
    """

    dataset: Dataset
    rotations: dict[str, int] | None = None
    device: str | torch.device = "cpu"
    load_model: Callable[[], torch.nn.Module] | None = None


def main(conf: dict, inputs: Inputs, out_dir: Path) -> Path:
    """Extract features of every image of the dataset into `<out_dir>/features.h5`.

    conf: the whole configuration; reads its features section and
    images.apply_exif_orientation.
    Resumable: images already done with the same rotation are skipped. An unreadable image is
    logged and recorded as failed (see `feature_file.failed_images`); the others go on. On the
    CPU, images are described several at once, one torch thread each (imc.parallel), and
    written in dataset order.
    """
    fconf, dataset, device = conf["features"], inputs.dataset, inputs.device
    out = Path(out_dir) / "features.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    rotations = inputs.rotations or {}
    k_of = {im.name: rotations.get(im.name, 0) % 4 for im in dataset.images}
    logger.info("features: %s, %d images, %s", dataset.name, len(dataset.images), fconf)
    workers = cpu_workers(device)
    # Built when an image needs extracting; a copy per worker thread.
    model = PerThread(inputs.load_model or (lambda: build_model(fconf, device)), workers)

    def describe(item: tuple) -> dict | ImageReadError:
        im, image = item
        if isinstance(image, ImageReadError):
            return image
        return add_sift(extract_image(model(), image, fconf, k_of[im.name], device), image, fconf)

    with resumable_h5(out) as f:
        todo = [im for im in dataset.images if not _is_done(f, h5_key(im.name), k_of[im.name])]
        if len(todo) < len(dataset.images):
            logger.info("features: %d images already done", len(dataset.images) - len(todo))
        images = read_ahead([im.path for im in todo], conf["images"]["apply_exif_orientation"])
        bar = tqdm(total=len(todo), desc="features", unit="image", mininterval=2, disable=not todo)
        with bar:
            for (im, _), feats in ordered_map(describe, zip(todo, images), workers):
                if isinstance(feats, ImageReadError):
                    logger.warning("features: skipping unreadable image %s: %s", im.path, feats)
                    _write_failed(f, h5_key(im.name), str(feats), k_of[im.name])
                else:
                    _write(f, h5_key(im.name), feats, k_of[im.name])
                f.flush()  # a killed run keeps every image written so far
                bar.update()
    return out
