"""A synthetic competition folder with exact reference poses, built offline in a few seconds.

Layout (IMC2025 train):

    <out>/train/demo/<image>.png   boxes_00..09, wall_00..07, outlier_00..02
    <out>/train_labels.csv         dataset,scene,image,rotation_matrix,translation_vector
    <out>/train_thresholds.csv     dataset,scene,thresholds
    <out>/demo.json                the generator's configuration, written last (rerun = no-op)

Two scenes so that clustering is exercised, each made of textured planar faces rendered
with plane-induced homographies and a per-pixel depth test (2x supersampled):

- `boxes`: two boxes on a mat, textured with photographs bundled in scikit-image, seen by
  10 cameras on a 135-degree arc (15 degrees apart) looking at the boxes from above.
- `wall`: a three-panel folding screen with a plinth in front of it, other textures,
  seen by 8 cameras on an 84-degree arc (12 degrees apart).
- `outliers`: three unrelated images (bundled faces and retina, one random drawing).

Cameras are pinholes with focal 1.2 x max(W, H) and the principal point at the image centre
(COLMAP convention: pixel centres at +0.5, so (W/2, H/2)). Some cameras are rolled by 90, 180
or 270 degrees: the image is rendered upright, stored as `np.rot90(image, k)`, and the label
is the pose of the rolled camera, so that the reference pose refers to the stored pixels.
Poses map world to camera, `x_cam = R @ X + t`. The world has z up; units are arbitrary.

Thresholds: D x (0.005, 0.01, 0.02, 0.05, 0.1, 0.2), where D is the median distance of the
scene's camera centres from their centroid (looser than the real scenes' D x 0.001..0.05:
the pipeline estimates focal length and the scene is small).

The seed changes only the photometric noise, the per-image gain and the random outlier
drawing; the geometry is fixed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .errors import ImcError
from .log import logger, setup_logging

GENERATOR_VERSION = 1
DATASET = "demo"
THRESHOLD_FACTORS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
FOCAL_FACTOR = 1.2
NOISE_SIGMA = 2.0 / 255.0  # Gaussian pixel noise on [0, 1] intensities
GAIN_RANGE = 0.06  # per-image gain drawn in [1 - 0.06, 1 + 0.06]
BACKGROUND = 0.5  # plain grey
MANIFEST = "demo.json"


@dataclass(frozen=True)
class Camera:
    """A pinhole camera. K: [3 x 3], R: [3 x 3] world-to-camera, t: [3]; pixel coordinates
    in COLMAP's convention (centre of the top-left pixel at (0.5, 0.5))."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """[3] camera centre `-R^T t`."""
        return -self.R.T @ self.t

    def project(self, X: np.ndarray) -> np.ndarray:
        """X: [N x 3] world points -> [N x 2] pixel coordinates (COLMAP convention)."""
        x = (self.K @ (self.R @ np.asarray(X, float).T + self.t[:, None])).T
        return x[:, :2] / x[:, 2:]

    def rotated(self, k: int) -> Camera:
        """The camera whose image is `np.rot90(image, k)` (k quarter turns anticlockwise).

        One quarter turn maps pixel (x, y) of a W x H image to (y, W - x) of the H x W image,
        i.e. camera axes (X, Y, Z) -> (Y, -X, Z) and principal point (cx, cy) -> (cy, W - cx).
        """
        cam = self
        roll = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        for _ in range(k % 4):
            K = cam.K
            K2 = np.array([[K[1, 1], 0.0, K[1, 2]], [0.0, K[0, 0], cam.width - K[0, 2]], [0, 0, 1]])
            cam = Camera(K2, roll @ cam.R, roll @ cam.t, cam.height, cam.width)
        return cam


@dataclass(frozen=True)
class Face:
    """A textured parallelogram: texture pixel (u, v) in a w x h texture (COLMAP convention,
    u in [0, w]) sits at `origin + u / w * u_edge + v / h * v_edge`. Seen from outside, u_edge
    points right and v_edge down; the outward normal is `v_edge x u_edge`."""

    origin: np.ndarray
    u_edge: np.ndarray
    v_edge: np.ndarray
    texture: str

    def point(self, uv: np.ndarray) -> np.ndarray:
        """uv: [N x 2] normalised texture coordinates in [0, 1] -> [N x 3] world points."""
        uv = np.asarray(uv, float)
        return self.origin + uv[:, :1] * self.u_edge + uv[:, 1:2] * self.v_edge


@dataclass(frozen=True)
class View:
    """One image of a scene: its upright camera and the quarter turns of the stored image."""

    name: str
    camera: Camera
    rot90: int = 0


@dataclass(frozen=True)
class Scene:
    name: str
    faces: tuple[Face, ...]
    views: tuple[View, ...]


def intrinsics(width: int, height: int) -> np.ndarray:
    """[3 x 3] K: focal FOCAL_FACTOR x max(W, H), principal point at the centre (W/2, H/2)."""
    f = FOCAL_FACTOR * max(width, height)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def look_at(center: Sequence[float], target: Sequence[float], width: int, height: int) -> Camera:
    """An upright camera (world z up, image y down) at `center` looking at `target`."""
    c, g = np.asarray(center, float), np.asarray(target, float)
    z = (g - c) / np.linalg.norm(g - c)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return Camera(intrinsics(width, height), R, -R @ c, width, height)


def box_faces(center_xy: Sequence[float], size: Sequence[float], textures: Sequence[str]):
    """Faces of a box standing on z = 0: sides facing -y, +x, +y, -x, then the top.

    size: (sx, sy, sz); textures: five names in that order. Returns a list of Face.
    """
    cx, cy = center_xy
    sx, sy, sz = size
    up = np.array([0.0, 0.0, 1.0])
    faces = []
    for normal, tex in zip([(0, -1, 0), (1, 0, 0), (0, 1, 0), (-1, 0, 0)], textures[:4]):
        n = np.array(normal, float)
        right = np.cross(-n, up) * (sx if n[0] == 0 else sy)
        mid = np.array([cx, cy, sz / 2]) + n * np.array([sx, sy, 0.0]) / 2
        faces.append(Face(mid - right / 2 + up * sz / 2, right, -up * sz, tex))
    top_origin = np.array([cx - sx / 2, cy + sy / 2, sz])
    faces.append(Face(top_origin, np.array([sx, 0.0, 0.0]), np.array([0.0, -sy, 0.0]), textures[4]))
    return faces


def _arc_views(prefix: str, size, step_deg: float, radius: float, target, heights, rolls):
    """Cameras at `heights` on a horizontal arc around `target`, centred on the -y direction,
    `step_deg` apart; rolls: camera index -> quarter turns of its stored image."""
    views, n = [], len(heights)
    for i, h in enumerate(heights):
        a = np.deg2rad(-90.0 + (i - (n - 1) / 2) * step_deg)
        c = np.array([target[0] + radius * np.cos(a), target[1] + radius * np.sin(a), h])
        views.append(View(f"{prefix}_{i:02d}.png", look_at(c, target, *size), rolls.get(i, 0)))
    return tuple(views)


BOXES_TEXTURES = (
    ("astronaut", "coffee", "chelsea", "rocket", "hubble_0"),
    ("motorcycle_0", "motorcycle_1", "hubble_1", "hubble_2", "hubble_3"),
)
WALL_TEXTURES = (("camera", "moon"), ("page", "gravel"), ("brick", "grass"))
PLINTH_TEXTURES = ("coins", "text", "coins", "clock", "cell")


def build_scenes(image_size: tuple[int, int] = (640, 480)) -> list[Scene]:
    """The two demo scenes (fixed geometry). image_size: (W, H) of an upright image."""
    mat = Face(np.array([-1.8, 1.5, 0.0]), np.array([3.6, 0, 0]), np.array([0, -3.0, 0]), "ihc")
    boxes = [mat]
    boxes += box_faces((-0.6, -0.15), (1.0, 0.9, 1.2), BOXES_TEXTURES[0])
    boxes += box_faces((0.65, 0.4), (0.9, 0.7, 0.8), BOXES_TEXTURES[1])
    heights = 2.3 + 0.25 * np.sin(1.7 * np.arange(10))
    boxes_views = _arc_views("boxes", image_size, 15.0, 4.3, (0, 0.1, 0.5), heights, {3: 1, 6: 2})
    # a folding screen of three 1.4 x 1.8 panels, the side ones turned 35 degrees towards
    # the cameras, each panel made of an upper and a lower face; a plinth in front of it
    fold = np.deg2rad(35.0)
    side = 1.4 * np.array([np.cos(fold), np.sin(fold), 0.0])
    starts = [np.array([-0.7, 0, 0]) - side, np.array([-0.7, 0, 0]), np.array([0.7, 0, 0])]
    edges = [side, np.array([1.4, 0, 0]), side * [1, -1, 1]]
    down = np.array([0, 0, -0.9])
    wall = []
    for p, e, (upper, lower) in zip(starts, edges, WALL_TEXTURES):
        wall += [Face(p - 2 * down, e, down, upper), Face(p - down, e, down, lower)]
    wall += box_faces((0.0, -0.8), (0.8, 0.5, 0.6), PLINTH_TEXTURES)
    heights = 1.1 + 0.15 * np.cos(1.3 * np.arange(8))
    wall_views = _arc_views("wall", image_size, 12.0, 4.3, (0, -0.3, 0.8), heights, {2: 3, 5: 1})
    return [Scene("boxes", tuple(boxes), boxes_views), Scene("wall", tuple(wall), wall_views)]


def _bundled(name: str) -> np.ndarray:
    """One of the images that scikit-image ships in its wheel, read from its data folder
    (the same pixels as `skimage.data`, without importing skimage.io or any downloader)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ImcError("scikit-image is not installed: the demo's textures come from it")
    path = Path(spec.submodule_search_locations[0]) / "data" / name
    try:
        if path.suffix == ".npy":
            return np.load(path)
        with Image.open(path) as im:
            return np.asarray(im.convert("L" if im.mode in ("L", "I;16") else "RGB"))
    except (OSError, ValueError) as e:
        raise ImcError(f"{path}: cannot read scikit-image's bundled image ({e})") from None


def load_textures() -> dict[str, np.ndarray]:
    """Textures: name -> [h x w x 3] float32 RGB in [0, 1], from images bundled with
    scikit-image (no download). Grayscale images are tinted so that neighbouring faces differ."""

    def rgb(src: str | np.ndarray, tint=(1.0, 1.0, 1.0), crop=np.s_[:, :]) -> np.ndarray:
        a = np.asarray((_bundled(src) if isinstance(src, str) else src)[crop], np.float32) / 255
        if a.ndim == 2:
            a = a[..., None] * np.asarray(tint, np.float32)
        return np.ascontiguousarray(a)

    warm, cool, green = (1.0, 0.85, 0.7), (0.7, 0.85, 1.0), (0.8, 1.0, 0.75)
    lfw = np.rint(_bundled("lfw_subset.npy")[:96] * 255).reshape(8, 12, 25, 25)  # 25 x 25 faces
    tex = {
        "astronaut": rgb("astronaut.png"),
        "coffee": rgb("coffee.png"),
        "chelsea": rgb("chelsea.png"),
        "rocket": rgb("rocket.jpg"),
        "ihc": rgb("ihc.png"),
        "motorcycle_0": rgb("motorcycle_left.png", crop=np.s_[:, :370]),
        "motorcycle_1": rgb("motorcycle_left.png", crop=np.s_[:, 370:]),
        "camera": rgb("camera.png", warm),
        "moon": rgb("moon.png", cool),
        "page": rgb("page.png", green),
        "gravel": rgb("gravel.png", cool),
        "brick": rgb("brick.png", warm),
        "grass": rgb("grass.png", green),
        "coins": rgb("coins.png", cool),
        "text": rgb("text.png", warm),
        "clock": rgb("clock_motion.png", green),
        "cell": rgb("cell.png", warm),
        "retina": rgb("retina.jpg", crop=np.s_[200:1100, 100:1300]),
    }
    tex["faces"] = rgb(lfw.transpose(0, 2, 1, 3).reshape(200, 300))  # a 12 x 8 mosaic
    for i in range(4):
        r, c = divmod(i, 2)
        crop = np.s_[r * 436 : (r + 1) * 436, c * 500 : (c + 1) * 500]
        tex[f"hubble_{i}"] = rgb("hubble_deep_field.jpg", crop=crop)
    return tex


def render(
    faces: Sequence[Face],
    textures: Sequence[np.ndarray],
    camera: Camera,
    background: float | Sequence[float] = BACKGROUND,
    supersample: int = 2,
) -> np.ndarray:
    """Render textured faces with a per-pixel depth test.

    textures: one [h x w x C] float32 array per face (any C <= 4, same C for all).
    Returns: [H x W x C] float32, the box average of a `supersample`-times finer rendering.
    """
    s = supersample
    W, H = camera.width * s, camera.height * s
    canvas = np.empty((H, W, textures[0].shape[2]), np.float32)
    canvas[:] = background
    inv_depth = np.zeros((H, W), np.float32)
    S = np.diag([s, s, 1.0])
    for face, tex in zip(faces, textures, strict=True):
        if np.cross(face.v_edge, face.u_edge) @ (camera.center - face.origin) <= 0:
            continue  # seen from behind
        th, tw = tex.shape[:2]
        cols = [camera.R @ face.u_edge / tw, camera.R @ face.v_edge / th]
        Hm = S @ camera.K @ np.column_stack(cols + [camera.R @ face.origin + camera.t])
        box = _pixel_box(Hm, tw, th, W, H)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        # the same map between cv2 coordinates (pixel centres at integers) of the texture and
        # of the box: shift by +0.5 into COLMAP's, apply Hm, shift back by -0.5 - (x0, y0)
        Hc = _shift(-0.5 - x0, -0.5 - y0) @ Hm @ _shift(0.5, 0.5)
        size = (x1 - x0, y1 - y0)
        cover = cv2.warpPerspective(np.ones((th, tw), np.uint8), Hc, size, flags=cv2.INTER_NEAREST)
        inv_z = np.linalg.inv(Hm)[2]  # third row of H^-1 at (x, y, 1) is 1 / depth
        xs, ys = np.arange(x0, x1) + 0.5, (np.arange(y0, y1) + 0.5)[:, None]
        q = (inv_z[0] * xs + inv_z[1] * ys + inv_z[2]).astype(np.float32)
        sub = inv_depth[y0:y1, x0:x1]
        mask = (cover > 0) & (q > sub)
        if not mask.any():
            continue
        sample = cv2.warpPerspective(
            tex, Hc, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        np.copyto(canvas[y0:y1, x0:x1], sample.reshape(mask.shape + (-1,)), where=mask[..., None])
        np.copyto(sub, q, where=mask)
    if s == 1:
        return canvas
    out = cv2.resize(canvas, (camera.width, camera.height), interpolation=cv2.INTER_AREA)
    return out.reshape(camera.height, camera.width, -1)


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def _pixel_box(Hm: np.ndarray, tw: int, th: int, W: int, H: int):
    """Integer pixel bounds (x0, y0, x1, y1) of the face's image, the whole image when a corner
    is behind the camera, None when off-image."""
    corners = Hm @ np.array([[0, tw, tw, 0], [0, 0, th, th], [1, 1, 1, 1]], float)
    if np.any(corners[2] <= 0):
        return 0, 0, W, H
    xy = corners[:2] / corners[2]
    x0, y0 = np.maximum(np.floor(xy.min(1)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(xy.max(1)).astype(int) + 1, [W, H])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def render_view(
    scene: Scene,
    view: View,
    textures: dict[str, np.ndarray] | Sequence[np.ndarray],
    background: float | Sequence[float] = BACKGROUND,
) -> tuple[np.ndarray, Camera]:
    """The stored image of a view and its camera: upright rendering, then `np.rot90`.

    textures: name -> array, or one array per face. Returns ([H' x W' x C] float32, Camera).
    """
    if isinstance(textures, dict):
        textures = [textures[f.texture] for f in scene.faces]
    image = render(scene.faces, textures, view.camera, background)
    return np.ascontiguousarray(np.rot90(image, view.rot90)), view.camera.rotated(view.rot90)


def scene_thresholds(centers: np.ndarray) -> np.ndarray:
    """centers: [N x 3] camera centres -> [6] thresholds D x THRESHOLD_FACTORS, where D is the
    median distance of the centres from their centroid."""
    d = np.median(np.linalg.norm(centers - centers.mean(0), axis=1))
    return d * np.asarray(THRESHOLD_FACTORS)


def _outlier_images(textures: dict[str, np.ndarray], size: tuple[int, int], rng) -> list:
    """Three unrelated [H x W x 3] float32 images: faces, a retina and a random drawing."""
    W, H = size
    out = []
    for name in ("faces", "retina"):
        t = textures[name]
        crop = t[: int(t.shape[1] * H / W)]
        out.append(cv2.resize(crop, (W, H), interpolation=cv2.INTER_LINEAR))
    drawing = np.empty((H, W, 3), np.float32)
    drawing[:] = rng.uniform(0.2, 0.8, 3)
    for _ in range(40):
        centre = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        axes = (int(rng.integers(8, W // 6)), int(rng.integers(8, H // 6)))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(drawing, centre, axes, angle, 0, 360, rng.uniform(0, 1, 3).tolist(), -1)
    out.append(drawing)
    return out


def _finish(image: np.ndarray, rng) -> np.ndarray:
    """Gain and Gaussian noise, then [H x W x 3] uint8 RGB."""
    gain = 1.0 + rng.uniform(-GAIN_RANGE, GAIN_RANGE)
    noisy = image * gain + rng.normal(0.0, NOISE_SIGMA, image.shape)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)


def _fmt(values: np.ndarray) -> str:
    return ";".join("nan" if not np.isfinite(v) else repr(float(v) + 0.0) for v in values.ravel())


def _write(path: Path, data: str | np.ndarray) -> None:
    """Write text, or an [H x W x 3] uint8 RGB image as PNG, through a renamed temporary file."""
    if isinstance(data, np.ndarray):
        ok, png = cv2.imencode(".png", np.ascontiguousarray(data[..., ::-1]))
        if not ok:
            raise ImcError(f"{path}: cannot encode the demo image")
        data = png.tobytes()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _up_to_date(out_root: Path, config: dict) -> bool:
    """True when the manifest records `config` and every file it lists is there. Refuses a
    folder whose train_labels.csv names another dataset: it is not a demo folder."""
    labels = out_root / "train_labels.csv"
    if labels.is_file():
        rows = labels.read_text().splitlines()[1:]
        if any(not row.startswith(f"{DATASET},") for row in rows):
            raise ImcError(f"{labels}: not written by the demo generator; choose another folder")
    try:
        old = json.loads((out_root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(old, dict) or old.get("config") != config or not old.get("files"):
        return False
    return all((out_root / f).is_file() for f in old["files"])


def make_demo(out_root: Path, seed: int = 0, image_size: tuple[int, int] = (640, 480)) -> Path:
    """Write the demo competition folder under `out_root` (see the module docstring).

    Skips the work when `demo.json` records the same configuration and every file is there.
    image_size: (W, H) of an upright image. Returns out_root.
    """
    out_root = Path(out_root)
    if len(image_size) != 2 or min(image_size) < 32 or seed < 0:
        raise ImcError(
            f"demo: need (W, H) of at least 32 pixels and seed >= 0, got {image_size}, {seed}"
        )
    config = {"version": GENERATOR_VERSION, "seed": int(seed), "image_size": list(image_size)}
    if _up_to_date(out_root, config):
        logger.info("demo folder %s is up to date", out_root)
        return out_root
    image_dir = out_root / "train" / DATASET
    (out_root / MANIFEST).unlink(missing_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    for stale in image_dir.glob("*.png"):
        stale.unlink()
    logger.info("building the demo folder in %s (seed %d, %dx%d)", out_root, seed, *image_size)
    textures = load_textures()
    labels = ["dataset,scene,image,rotation_matrix,translation_vector"]
    thresholds = ["dataset,scene,thresholds"]
    index = 0
    for scene in build_scenes(image_size):
        centers = []
        for view in scene.views:
            image, cam = render_view(scene, view, textures)
            _write(image_dir / view.name, _finish(image, np.random.default_rng([seed, index])))
            labels.append(f"{DATASET},{scene.name},{view.name},{_fmt(cam.R)},{_fmt(cam.t)}")
            centers.append(cam.center)
            index += 1
        th = scene_thresholds(np.array(centers))
        thresholds.append(f"{DATASET},{scene.name}," + ";".join(f"{x:.6g}" for x in th))
    outliers = _outlier_images(textures, image_size, np.random.default_rng([seed, 1000]))
    nan = np.full(3, np.nan)
    for i, image in enumerate(outliers):
        name = f"outlier_{i:02d}.png"
        _write(image_dir / name, _finish(image, np.random.default_rng([seed, index])))
        labels.append(f"{DATASET},outliers,{name},{_fmt(np.full(9, np.nan))},{_fmt(nan)}")
        index += 1
    _write(out_root / "train_labels.csv", "\n".join(labels) + "\n")
    _write(out_root / "train_thresholds.csv", "\n".join(thresholds) + "\n")
    files = sorted(str(p.relative_to(out_root)) for p in image_dir.glob("*.png"))
    files += ["train_labels.csv", "train_thresholds.csv"]
    _write(out_root / MANIFEST, json.dumps({"config": config, "files": files}, indent=1) + "\n")
    logger.info("demo folder: %d images", index)
    return out_root


def contact_sheet(image_dir: Path, out_path: Path, cell: int = 220, columns: int = 6) -> Path:
    """Tile every PNG of `image_dir` (aspect kept, name written below) into one PNG."""
    paths = sorted(Path(image_dir).glob("*.png"))
    if not paths:
        raise ImcError(f"{image_dir}: no PNG images to tile")
    rows = -(-len(paths) // columns)
    sheet = np.full((rows * (cell + 20), columns * cell, 3), 255, np.uint8)
    for i, p in enumerate(paths):
        im = cv2.imread(str(p))
        scale = (cell - 8) / max(im.shape[:2])
        im = cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        r, c = divmod(i, columns)
        y, x = r * (cell + 20) + 4, c * cell + 4
        sheet[y : y + im.shape[0], x : x + im.shape[1]] = im
        cv2.putText(sheet, p.name, (x, y + cell + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0))
    cv2.imwrite(str(out_path), sheet)
    return Path(out_path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the synthetic demo competition folder.")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--sheet", type=Path, help="also write a contact sheet PNG here")
    args = parser.parse_args(argv)
    setup_logging()
    root = make_demo(args.out, seed=args.seed, image_size=tuple(args.size))
    if args.sheet:
        contact_sheet(root / "train" / DATASET, args.sheet)
        logger.info("contact sheet: %s", args.sheet)


if __name__ == "__main__":
    main()
