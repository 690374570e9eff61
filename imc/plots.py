"""The pictures of the run report: pair graph, camera views, stage times (matplotlib PNG) and
match pictures (two images side by side with lines, JPEG), and the model data the camera views
draw (registered cameras, sparse points, reference centres after the metric's alignment).

Picture functions return encoded bytes, ready to embed in the page; nothing is shown or kept.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .data import OUTLIERS, Dataset, ImageInfo

CLUSTER_COLORS = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #bcbd22 #17becf".split()
OUTLIER_COLOR = "#9a9a9a"
FAILED_COLOR = "#000000"


def cluster_color(index: int | None) -> str:
    """Colour of the cluster with this index (None: unregistered)."""
    return OUTLIER_COLOR if index is None else CLUSTER_COLORS[index % len(CLUSTER_COLORS)]


def _figure(width_in: float, height_in: float, ncols: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def circle_layout(groups: list[list[str]]) -> dict[str, np.ndarray]:
    """Names on the unit circle, group after group, one empty slot between groups.

    Returns: name -> [2] position."""
    slots = sum(len(g) for g in groups) + len([g for g in groups if g])
    pos, i = {}, 0
    for group in groups:
        if not group:
            continue
        for name in group:
            a = 2 * math.pi * i / max(slots, 1) + math.pi / 2
            pos[name] = np.array([math.cos(a), math.sin(a)])
            i += 1
        i += 1
    return pos


def edge_width(num_inliers: int) -> float:
    """Line width of a verified pair: grows with log10(inliers) (15 -> 1.3, 1000 -> 2.8)."""
    return 0.4 + 0.8 * math.log10(max(num_inliers, 1))


def graph_edges(
    pos: dict[str, np.ndarray],
    color_of: dict[str, str],
    retrieval_pairs: list[tuple[str, str]],
    verified_pairs: list[tuple[str, str, int, bool]],
) -> list[tuple[np.ndarray, str, float, str]]:
    """(segment [2 x 2], colour, width, style) per drawn pair, verified pairs last (on top):
    grey thin = retrieval pair not verified; verified kept = the cluster's colour, or dark red
    across clusters; dashed = verified but cut by clustering; width = edge_width(inliers)."""
    verified = {frozenset((a, b)) for a, b, _, _ in verified_pairs}
    out = [
        (np.stack([pos[a], pos[b]]), "#cccccc", 0.4, "solid")
        for a, b in retrieval_pairs
        if frozenset((a, b)) not in verified and a in pos and b in pos
    ]
    for a, b, n, kept in sorted(verified_pairs, key=lambda v: v[2]):
        if a in pos and b in pos:
            same = color_of[a] == color_of[b] != OUTLIER_COLOR
            color = (color_of[a] if same else "#7b2d26") if kept else "#444444"
            style = "solid" if kept else "dashed"
            out.append((np.stack([pos[a], pos[b]]), color, edge_width(n), style))
    return out


def pair_graph(
    groups: list[list[str]],
    color_of: dict[str, str],
    retrieval_pairs: list[tuple[str, str]],
    verified_pairs: list[tuple[str, str, int, bool]],
    failed: set[str],
    labels: bool = True,
) -> bytes:
    """Images on a circle grouped by cluster (see graph_edges for the pairs); names shown
    when `labels`; failed images as black crosses."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    pos = circle_layout(groups)
    fig, ax = _figure(8.0, 8.0)
    edges = graph_edges(pos, color_of, retrieval_pairs, verified_pairs)
    if edges:
        seg, colors, widths, styles = zip(*edges, strict=True)
        thin = min(1.0, 40.0 / max(len(pos), 1)) ** 0.5  # many images: thinner lines
        ax.add_collection(
            LineCollection(
                seg,
                colors=colors,
                linewidths=np.array(widths) * thin,
                linestyles=styles,
                alpha=0.85,
            )
        )
    names = list(pos)
    xy = np.array([pos[n] for n in names]).reshape(-1, 2)
    ok = np.array([n not in failed for n in names], bool)
    ax.scatter(*xy[ok].T, s=36, c=[color_of[n] for n, o in zip(names, ok) if o], zorder=3)
    ax.scatter(*xy[~ok].T, s=36, marker="x", c=FAILED_COLOR, zorder=3)
    for name, p in pos.items() if labels else ():
        ang = math.degrees(math.atan2(p[1], p[0]))
        flip = 90 < ang % 360 < 270
        ax.text(*(p * 1.06), name, fontsize=6, rotation=ang + 180 if flip else ang,
                ha="right" if flip else "left", va="center", rotation_mode="anchor")  # fmt: skip
    handles = [
        Line2D([], [], color="#cccccc", lw=1, label="retrieval pair, not verified"),
        Line2D([], [], color=CLUSTER_COLORS[0], lw=2, label="verified (width ~ log inliers)"),
        Line2D([], [], color="#444444", lw=1.5, ls="--", label="verified, cut by clustering"),
        Line2D([], [], color="#7b2d26", lw=1.5, label="verified, kept, across clusters"),
    ]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.08), ncol=2, fontsize=8)
    lim = 1.45 if labels else 1.1
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    ax.axis("off")
    return _png(fig)


def view_frame(centers: np.ndarray, downs: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[3 x 3] rows (a, b, up) of a display frame for a model.

    up: minus the mean of the cameras' image-down axes (most photos are taken upright);
    a: the main horizontal direction of the cameras and points, b = up x a.
    centers, downs: [N x 3]; points: [P x 3]."""
    up = -downs.mean(0)
    if np.linalg.norm(up) < 1e-9:
        up = np.array([0.0, 0.0, 1.0])
    up /= np.linalg.norm(up)
    cloud = np.concatenate([centers, points]) if len(points) else centers
    flat = cloud - cloud.mean(0)
    flat -= np.outer(flat @ up, up)
    a = np.linalg.svd(flat, full_matrices=False)[2][0] if len(flat) > 1 else np.zeros(3)
    if np.linalg.norm(a) < 1e-9 or abs(a @ up) > 0.99:
        a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    return np.stack([a, np.cross(up, a), up])


def camera_views(
    centers: np.ndarray,
    forwards: np.ndarray,
    downs: np.ndarray,
    points: np.ndarray,
    colors: np.ndarray,
    reference: np.ndarray | None = None,
    good: np.ndarray | None = None,
    max_points: int = 6000,
) -> bytes:
    """Top and side views of one model.

    centers, forwards, downs: [N x 3] camera centres and viewing / image-down axes in the world.
    points, colors: [P x 3] sparse points and their uint8 RGB. reference: [N x 3] reference
    centres after the metric's alignment (NaN rows: none); good: [N] bool, within threshold.
    """
    frame = view_frame(centers, downs, points)
    rng = np.random.default_rng(0)
    if len(points) > max_points:
        keep = rng.choice(len(points), max_points, replace=False)
        points, colors = points[keep], colors[keep]
    c, f, p = centers @ frame.T, forwards @ frame.T, points @ frame.T
    r = None if reference is None else reference @ frame.T
    lo, hi = view_box(c, p, r)
    scale = max(float((hi - lo)[:2].max()), 1e-6)
    fig, axes = _figure(12.0, 5.6, ncols=2)
    for ax, (i, j), title in zip(axes, [(0, 1), (0, 2)], ["top view", "side view"], strict=True):
        if len(p):
            ax.scatter(p[:, i], p[:, j], s=1.5, c=colors / 255.0, linewidths=0, zorder=1)
        if r is not None:
            from matplotlib.collections import LineCollection

            ok = np.isfinite(r).all(1)
            good_ = np.zeros(len(c), bool) if good is None else good
            seg = np.stack([c[ok][:, [i, j]], r[ok][:, [i, j]]], axis=1)
            colors_ = np.where(good_[ok], "#2ca02c", "#d62728")
            ax.add_collection(LineCollection(seg, colors=colors_, linewidths=1.0, zorder=3))
            ax.scatter(r[ok, i], r[ok, j], s=28, facecolors="none", edgecolors="k", zorder=4)
        arrows = {"angles": "xy", "scale_units": "xy", "scale": 1.0 / (0.06 * scale)}
        ax.quiver(c[:, i], c[:, j], f[:, i], f[:, j], color="#d62728", width=0.003, zorder=5,
                  **arrows)  # fmt: skip
        ax.scatter(c[:, i], c[:, j], s=14, color="#d62728", zorder=6)
        pad = 0.08 * scale
        ax.set_xlim(lo[i] - pad, hi[i] + pad)
        ax.set_ylim(lo[j] - pad, hi[j] + pad)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=7)
    axes[1].set_ylabel("up", fontsize=8)
    return _png(fig)


def view_box(
    cameras: np.ndarray, points: np.ndarray, reference: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """[3] corners of the box shown: every camera and reference centre, and the 2nd to 98th
    percentiles of the points near the cameras (within the larger of 2.5 x the cameras' spread
    and the median point distance from their centroid): a far background would shrink the rest.
    """
    parts = [cameras]
    if reference is not None:
        parts.append(reference[np.isfinite(reference).all(1)])
    if len(points):
        centre = cameras.mean(0)
        d = np.linalg.norm(points - centre, axis=1)
        spread = np.linalg.norm(cameras - centre, axis=1).max()
        near = points[d <= max(2.5 * spread, float(np.median(d)))]
        parts.append(np.percentile(near, [2, 98], axis=0) if len(near) >= 50 else near)
    xyz = np.concatenate(parts)
    return xyz.min(0), xyz.max(0)


def cpu_use(stage: dict[str, float]) -> float | None:
    """CPU seconds per wall second of a stage (1.0: one core busy), None when not recorded."""
    if "cpu_seconds" not in stage or not stage.get("seconds"):
        return None
    return stage["cpu_seconds"] / stage["seconds"]


def memory_added(stages: dict[str, dict[str, float]]) -> dict[str, float | None]:
    """MiB by which each stage raised the process's peak resident memory: its recorded peak
    (a running maximum over the process) less the previous stage's; None for the first stage,
    whose peak at its start was not recorded. The `total` entry is left out."""
    out, before = {}, None
    for name, v in stages.items():
        if name == "total" or "peak_rss_mib" not in v:
            continue
        peak = v["peak_rss_mib"]
        out[name] = None if before is None else max(0.0, peak - before)
        before = peak if before is None else max(before, peak)
    return out


def stage_chart(stages: dict[str, dict[str, float]]) -> bytes:
    """PNG of stage_figure."""
    return _png(stage_figure(stages))


def stage_figure(stages: dict[str, dict[str, float]]):
    """Seconds (with CPU use) and the process's peak memory per stage, the part of it that the
    stage added in dark (the `total` entry left out). Stage names on the shared y axis."""
    from matplotlib.figure import Figure

    names = [s for s in stages if s != "total"]
    added = memory_added(stages)
    secs = [stages[s].get("seconds", 0.0) for s in names]
    peak = [stages[s].get("peak_rss_mib", 0.0) for s in names]
    grown = [added.get(s) or 0.0 for s in names]
    fig = Figure(figsize=(10.0, 0.32 * len(names) + 1.3), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(names))
    axes[0].barh(y, secs, color="#1f77b4")
    axes[1].barh(y, peak, color="#aec7e8")
    axes[1].barh(y, grown, left=np.subtract(peak, grown), color="#1f77b4")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    for k, s in enumerate(names):
        use = cpu_use(stages[s])
        cpu = "" if use is None else f", CPU {100 * use:.0f} %"
        axes[0].text(secs[k], k, f" {secs[k]:.1f} s{cpu}", va="center", fontsize=7)
        more = "" if added.get(s) is None else f" (+{grown[k]:.0f})"
        axes[1].text(peak[k], k, f" {peak[k]:.0f} MiB{more}", va="center", fontsize=7)
    axes[0].set_title("time per stage\n(CPU: CPU seconds / seconds; 100 % = one core)", fontsize=10)
    axes[1].set_title(
        "process peak memory after each stage\n(running maximum; dark: what the stage added)",
        fontsize=10,
    )
    for ax, values, unit in ((axes[0], secs, "seconds"), (axes[1], peak, "MiB")):
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlim(0, max(values + [1e-6]) * 1.45)
        ax.set_xlabel(unit, fontsize=8)
    return fig


def match_picture(
    image0: np.ndarray,
    image1: np.ndarray,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    color: tuple[int, int, int],
    height: int = 360,
    max_lines: int = 200,
) -> bytes:
    """Two images side by side, lines between matched keypoints; JPEG bytes.

    image0, image1: [H x W x 3] uint8 RGB as the keypoints refer to (stored pixels).
    kpts0, kpts1: [M x 2] matched points (pixel centre at 0). color: RGB of the lines.
    At most `max_lines` lines (an even subsample) keep the picture readable."""
    s0, s1 = height / image0.shape[0], height / image1.shape[0]
    a = cv2.resize(
        image0, (max(1, round(image0.shape[1] * s0)), height), interpolation=cv2.INTER_AREA
    )
    b = cv2.resize(
        image1, (max(1, round(image1.shape[1] * s1)), height), interpolation=cv2.INTER_AREA
    )
    gap = 8
    canvas = np.full((height, a.shape[1] + gap + b.shape[1], 3), 255, np.uint8)
    canvas[:, : a.shape[1]] = a
    canvas[:, a.shape[1] + gap :] = b
    if len(kpts0) > max_lines:
        idx = np.linspace(0, len(kpts0) - 1, max_lines).round().astype(int)
        kpts0, kpts1 = kpts0[idx], kpts1[idx]
    p0 = (kpts0 + 0.5) * s0 - 0.5
    p1 = (kpts1 + 0.5) * s1 - 0.5 + [a.shape[1] + gap, 0]
    bgr = canvas[..., ::-1].copy()
    line = tuple(int(v) for v in color[::-1])
    for q0, q1 in zip(np.round(p0).astype(int), np.round(p1).astype(int), strict=True):
        cv2.line(bgr, tuple(q0.tolist()), tuple(q1.tolist()), line, 1, cv2.LINE_AA)
        cv2.circle(bgr, tuple(q0.tolist()), 2, line, -1, cv2.LINE_AA)
        cv2.circle(bgr, tuple(q1.tolist()), 2, line, -1, cv2.LINE_AA)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes()


# ----------------------------------------------------------------- model data


@dataclass
class ModelView:
    """One reconstructed model as the report shows it (arrays in the model's frame)."""

    index: int
    names: list[str]  # dataset image names of the registered images
    centers: np.ndarray  # [N x 3]
    forwards: np.ndarray  # [N x 3] viewing directions
    downs: np.ndarray  # [N x 3] image-down axes of the upright images
    points: np.ndarray  # [P x 3]
    colors: np.ndarray  # [P x 3] uint8
    cluster: str = ""  # the submitted cluster of most of its images
    own: list[bool] = field(default_factory=list)  # per image: submitted in `cluster`
    rays: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 3)))  # [N x 4 x 3]
    stats: dict = field(default_factory=dict)  # imc.export.model_stats


# Image-down axis of the upright image (rotate(stored, k)) in the stored camera's axes.
DOWN_OF_ROTATION = {0: (0, 1, 0), 1: (-1, 0, 0), 2: (0, -1, 0), 3: (1, 0, 0)}
# Outward normals of the stored image's edges (top, right, bottom, left), in pixel axes.
EDGE_NORMALS = ((0, -1), (1, 0), (0, 1), (-1, 0))


def corner_rays(camera, cam_from_world: np.ndarray, k: int) -> np.ndarray:
    """[4 x 3] world directions to the image's corners at unit depth (pinhole, no distortion),
    in order around the image starting with the top edge of the upright image (rotate(stored,
    k)): corners 0 and 1 span the edge that is up in the picture as the report shows it."""
    w, h = float(camera.width), float(camera.height)
    px = np.array([[0.0, 0.0, 1.0], [w, 0.0, 1.0], [w, h, 1.0], [0.0, h, 1.0]])
    cam = px @ np.linalg.inv(camera.calibration_matrix()).T  # z = 1
    up = tuple(-v for v in DOWN_OF_ROTATION[k % 4][:2])
    cam = np.roll(cam, -EDGE_NORMALS.index(up), axis=0)
    return cam @ cam_from_world[:, :3]  # R^T applied to each row


def load_models(dataset_dir: Path, summary: dict) -> list[ModelView]:
    """Every `models/<k>/` of a dataset folder, largest first as the mapper ordered them."""
    import pycolmap

    from .export import model_stats
    from .stages.mapping import database_names

    ds = Dataset("", "", [ImageInfo(n, Path(p)) for n, p in summary["images"].items()])
    name_of = {v: k for k, v in database_names(ds)[1].items()}
    rotations, clusters = summary.get("rotations", {}), summary.get("clusters", {})
    dirs = sorted(
        (d for d in (dataset_dir / "models").glob("*") if d.is_dir()),
        key=lambda d: int(d.name) if d.name.isdigit() else 1 << 30,
    )
    views = []
    for d in dirs:
        rec = pycolmap.Reconstruction(str(d))
        names, centers, fwd, down, rays = [], [], [], [], []
        for image in sorted(rec.images.values(), key=lambda im: im.name):
            if not image.has_pose:
                continue
            m = image.cam_from_world().matrix()
            name = name_of.get(image.name, image.name)
            k = rotations.get(name, 0) % 4
            names.append(name)
            centers.append(-m[:, :3].T @ m[:, 3])
            fwd.append(m[2, :3])
            down.append(m[:, :3].T @ np.array(DOWN_OF_ROTATION[k]))
            rays.append(corner_rays(rec.cameras[image.camera_id], m, k))
        pts = list(rec.points3D.values())
        label = Counter(clusters.get(n, OUTLIERS) for n in names).most_common(1)
        views.append(
            ModelView(
                index=int(d.name) if d.name.isdigit() else len(views),
                names=names,
                centers=np.array(centers).reshape(-1, 3),
                forwards=np.array(fwd).reshape(-1, 3),
                downs=np.array(down).reshape(-1, 3),
                points=np.array([p.xyz for p in pts]).reshape(-1, 3),
                colors=np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3),
                cluster=label[0][0] if label else "",
                own=[clusters.get(n) == (label[0][0] if label else None) for n in names],
                rays=np.array(rays).reshape(-1, 4, 3),
                stats=model_stats(rec),
            )
        )
    return views


@dataclass
class Alignment:
    """Reference centres mapped into a model's frame by the metric's registration."""

    scene: str
    threshold: float
    reference: np.ndarray  # [N x 3] in the model frame, NaN rows: no reference pose
    error: np.ndarray  # [N] distance in reference units after the alignment (NaN: none)
    passed: np.ndarray  # [N] int, thresholds at which the camera is within threshold
    thresholds: np.ndarray  # [K]


def align_reference(view: ModelView, ref: Dataset) -> Alignment | None:
    """Register the model's centres onto the reference ones with the metric's own search
    (imc.registration.register_by_horn), as the metric does for the model's cluster and its
    majority reference scene: over the cameras of both (images given to another cluster are
    left out). The similarity shown is the one of the largest threshold. None when not
    applicable (fewer than 3 cameras, no thresholds, IMC2023's relative-pose metric)."""
    from .registration import register_by_horn

    info = {im.name: im for im in ref.images}
    mine = [n in info and info[n].has_pose and o for n, o in zip(view.names, view.own, strict=True)]
    scenes = Counter(info[n].scene for n, m in zip(view.names, mine, strict=True) if m)
    if not scenes:
        return None
    scene = scenes.most_common(1)[0][0]
    thr = np.asarray(ref.thresholds.get(scene, []), dtype=np.float64)
    if thr.ndim != 1 or thr.size == 0:  # IMC2023 compares relative poses: no registration
        return None
    sel = [i for i, n in enumerate(view.names) if mine[i] and info[n].scene == scene]
    if len(sel) < 3:
        return None
    gt = np.array([info[view.names[i]].center for i in sel])
    reg = register_by_horn(view.centers[sel], gt, thr)
    finite = [k for k in range(len(thr)) if np.isfinite(reg.transforms[k]).all()]
    if not finite:
        return None
    k = finite[-1]
    A, b = reg.transforms[k][:, :3], reg.transforms[k][:, 3]
    n = len(view.names)
    reference, error, passed = np.full((n, 3), np.nan), np.full(n, np.nan), np.zeros(n, int)
    reference[sel] = np.linalg.solve(A, (gt - b).T).T
    error[sel] = reg.err[:, k]
    passed[sel] = (reg.err < thr[None, :]).sum(1)
    return Alignment(scene, float(thr[k]), reference, error, passed, thr)
