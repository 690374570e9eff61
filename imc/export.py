"""Exports of a reconstructed model for other tools.

Per model folder (`<run>/<dataset>/models/<k>/`):
- the COLMAP model in binary (`cameras.bin`, `images.bin`, `points3D.bin`, ...) and in text
  (`text/cameras.txt`, ...), for COLMAP's GUI and any COLMAP reader;
- `points.ply`: the sparse points with colours averaged over the images that see them;
- `transforms.json` in the instant-ngp / nerfstudio convention, for NeRF and Gaussian-splatting
  tools: per frame the camera-to-world matrix in OpenGL camera axes (x right, y up, z backward),
  the intrinsics of its camera and the image path `images/<COLMAP image name>`;
- `images/`: one symbolic link per registered image to the image's absolute path (a copy where
  the file system has no links).

Why `images/` beside the json: that is the layout instant-ngp's colmap2nerf.py and nerfstudio's
`ns-process-data` write and their loaders read (`file_path` relative to the json's folder; an
absolute path is not what they write, and not every reader accepts one). A relative path that
climbs to the data folder (`../../../../train/ETs/x.png`) breaks as soon as the run folder
moves; the links hold absolute targets, so the run folder can move anywhere on the machine
where the images stay put. To take a model to another machine, copy it with its links followed
(`cp -rL`, `rsync -L`).

The world frame is the model's own (nerfstudio's `keep_original_world_coordinate`): no axis swap,
so `transforms.json`, `points.ply` and the COLMAP files agree with each other.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pycolmap

from .cache import atomic_write_text
from .errors import ImcError
from .log import logger

# OpenCV camera axes (x right, y down, z forward) -> OpenGL ones (x right, y up, z backward).
GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])

# COLMAP camera model -> (nerfstudio camera_model, names of its parameters in COLMAP's order).
CAMERA_MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "SIMPLE_PINHOLE": ("OPENCV", ("f", "cx", "cy")),
    "PINHOLE": ("OPENCV", ("fl_x", "fl_y", "cx", "cy")),
    "SIMPLE_RADIAL": ("OPENCV", ("f", "cx", "cy", "k1")),
    "RADIAL": ("OPENCV", ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": ("OPENCV", ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2")),
    "SIMPLE_RADIAL_FISHEYE": ("OPENCV_FISHEYE", ("f", "cx", "cy", "k1")),
    "RADIAL_FISHEYE": ("OPENCV_FISHEYE", ("f", "cx", "cy", "k1", "k2")),
    "OPENCV_FISHEYE": ("OPENCV_FISHEYE", ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "k3", "k4")),
}


def camera_intrinsics(camera: pycolmap.Camera) -> dict:
    """nerfstudio intrinsics of a COLMAP camera: camera_model, fl_x, fl_y, cx, cy, w, h and the
    distortion terms of that model (k1, k2, p1, p2 for OPENCV; k1..k4 for OPENCV_FISHEYE; the
    terms COLMAP's model lacks are 0). Raises ImcError for a model with no equivalent."""
    model = camera.model.name
    if model not in CAMERA_MODELS:
        raise ImcError(
            f"camera {camera.camera_id}: COLMAP model {model} has no transforms.json equivalent "
            f"(supported: {', '.join(CAMERA_MODELS)})"
        )
    ns_model, names = CAMERA_MODELS[model]
    values = dict(zip(names, (float(p) for p in camera.params), strict=True))
    if "f" in values:
        values["fl_x"] = values["fl_y"] = values.pop("f")
    terms = ("k1", "k2", "p1", "p2") if ns_model == "OPENCV" else ("k1", "k2", "k3", "k4")
    out = {
        "camera_model": ns_model,
        "fl_x": values["fl_x"],
        "fl_y": values["fl_y"],
        "cx": values["cx"],
        "cy": values["cy"],
        "w": int(camera.width),
        "h": int(camera.height),
    }
    out.update({k: values.get(k, 0.0) for k in terms})
    return out


def transform_from_pose(cam_from_world: np.ndarray) -> np.ndarray:
    """[3 x 4] world-to-camera (OpenCV axes) -> [4 x 4] camera-to-world in OpenGL axes."""
    w2c = np.eye(4)
    w2c[:3] = cam_from_world
    return np.linalg.inv(w2c) @ GL_FROM_CV


def pose_from_transform(transform_matrix: np.ndarray) -> np.ndarray:
    """Inverse of `transform_from_pose`: [4 x 4] OpenGL camera-to-world -> [3 x 4] pose."""
    c2w = np.asarray(transform_matrix, dtype=np.float64) @ GL_FROM_CV
    return np.linalg.inv(c2w)[:3]


def model_stats(model: pycolmap.Reconstruction) -> dict:
    """The figures of one model: registered_images, points3D (counts), mean_track_length (images
    per point) and mean_reprojection_error_px (pixels); both means None without points."""
    points = int(model.num_points3D())
    track = round(float(model.compute_mean_track_length()), 3) if points else None
    error = round(float(model.compute_mean_reprojection_error()), 4) if points else None
    return {
        "registered_images": int(model.num_reg_images()),
        "points3D": points,
        "mean_track_length": track,
        "mean_reprojection_error_px": error,
    }


IMAGES = "images"  # the folder of image links beside transforms.json


def link_images(names: list[str], image_dir: Path, out_dir: Path) -> list[str]:
    """`<out_dir>/images/<name>` for each COLMAP image name: a symbolic link to the image's
    absolute path (a copy where links fail). The folder is made afresh. Returns the paths
    relative to `out_dir`, as transforms.json's `file_path` holds them."""
    root = Path(out_dir) / IMAGES
    shutil.rmtree(root, ignore_errors=True)  # removes old links, never their targets
    out = []
    for name in names:
        src, dest = (Path(image_dir) / name).absolute(), root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(src, dest)
        except OSError:  # no symbolic links here (some Windows setups, some mounts)
            shutil.copyfile(src, dest)
        out.append(dest.relative_to(out_dir).as_posix())
    return out


def transforms(model: pycolmap.Reconstruction, file_paths: dict[str, str]) -> dict:
    """The transforms.json content of `model`. file_paths: COLMAP image name -> the image's path
    relative to the json's folder (link_images). Frames are sorted by name."""
    frames = []
    images = sorted((im for im in model.images.values() if im.has_pose), key=lambda im: im.name)
    for image in images:
        frame = {
            "file_path": file_paths[image.name],
            "transform_matrix": transform_from_pose(image.cam_from_world().matrix()).tolist(),
            "colmap_im_id": int(image.image_id),
        }
        frame.update(camera_intrinsics(model.cameras[image.camera_id]))
        frames.append(frame)
    # nerfstudio reads camera_model at the top level; every frame carries its own intrinsics.
    ns_models = {f["camera_model"] for f in frames}
    out: dict = {"camera_model": ns_models.pop() if len(ns_models) == 1 else "OPENCV"}
    out["frames"] = frames
    out["ply_file_path"] = "points.ply"
    return out


def export_model(model: pycolmap.Reconstruction, out_dir: Path, image_dir: Path) -> Path:
    """Binary + text COLMAP model, coloured points.ply, transforms.json and its image links in
    `out_dir`. image_dir: the folder that COLMAP's image names are relative to."""
    out_dir = Path(out_dir)
    (out_dir / "text").mkdir(parents=True, exist_ok=True)
    try:
        model.extract_colors_for_all_images(str(image_dir))
    except Exception as e:  # colours are a nicety: keep the mapper's colours
        logger.warning("colours of %s not extracted from %s: %s", out_dir, image_dir, e)
    model.write_binary(str(out_dir))
    model.write_text(str(out_dir / "text"))
    model.export_PLY(str(out_dir / "points.ply"))
    names = sorted(im.name for im in model.images.values() if im.has_pose)
    paths = dict(zip(names, link_images(names, image_dir, out_dir), strict=True))
    content = transforms(model, paths)
    atomic_write_text(out_dir / "transforms.json", json.dumps(content, indent=1))
    return out_dir
