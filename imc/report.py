"""The run report: one self-contained HTML page per run folder, a section per dataset.

Everything comes from the run folder (`config.json`, `stats.json`, `run.json` when present, and
per dataset `summary.json` and `models/<k>/`) plus the cached h5 files the summary names; the
reference poses and scores need the labelled competition folder (`data_root`). Pictures are
embedded as base64 (thumbnails and match pictures JPEG, plots PNG) and the 3D view of each model
is an inline script drawing on a canvas (imc.view3d): nothing is fetched at view time.

    imc report RUN_DIR [--data-root DIR] [--output HTML]
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import diagnosis, plots, view3d
from .cache import atomic_write_text, safe_name
from .data import OUTLIERS, Competition, Dataset
from .errors import ImcError
from .log import logger
from .stages import feature_file
from .stages.verification import load_verified, pair_counts
from .submission import read_submission

THUMB = 160  # px, long side of the thumbnails
ALIGN_MAX_CAMERAS = 120  # the exact registration costs ~n^4: 100 cameras ~7 s, 200 ~2 min
CSS = """
body{font-family:system-ui,sans-serif;margin:0 24px 40px;color:#222;max-width:1400px}
h1{margin:16px 0 4px}h2{border-bottom:2px solid #1f77b4;padding-top:12px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px}.group{margin:8px 0 14px}
figure{margin:0}.thumb{width:168px;font-size:11px;border:3px solid #ccc;padding:2px}
.thumb img{max-width:160px;max-height:160px;display:block;margin:auto}
.failed{border-color:#000;background:#fdd}.unreg{border-style:dashed}
.badge{display:inline-block;padding:0 4px;border-radius:3px;color:#fff;font-size:10px}
.match{margin:4px 0;width:49%;font-size:12px}.match img{max-width:100%}
.note{color:#a33}.muted{color:#777}
img.plot{max-width:100%}pre{font-size:11px;background:#f6f6f6;padding:6px;overflow:auto}
canvas.view3d{max-width:100%;border:1px solid #ccc;cursor:grab;touch-action:none;display:block}
"""


@dataclass
class RunFolder:
    """What a run folder holds. meta: run.json (data_root, split, submission) or empty."""

    root: Path
    config: dict
    stats: dict
    meta: dict
    datasets: list[str] = field(default_factory=list)


def _cameras_text(summary: dict) -> str:
    """'; cameras: ...' from the summary's mapping record (empty for older runs)."""
    m = summary.get("mapping")
    if not isinstance(m, dict) or "cameras" not in m:
        return ""
    if m["cameras"] == "shared":
        text = f"; cameras shared in {m.get('shared_groups', 0)} group(s)"
    else:
        text = "; one camera per image"
    if m.get("mapper") == "global":
        pairs = f" on {m['global_pairs']} pairs" if m.get("global_pairs") else ""
        text += f"; global mapping{pairs} (incremental mapping left the pair graph in pieces)"
    return text + (" (mapping stopped at its time limit)" if m.get("stopped_at_time_limit") else "")


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def load_run(run_dir: Path) -> RunFolder:
    """Read a run folder; datasets: those of run.json, else of stats.json, else every
    subfolder with a summary.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ImcError(f"{run_dir}: no such run folder")
    config = _read_json(run_dir / "config.json", {}).get("config", {})
    stats = _read_json(run_dir / "stats.json", {})
    meta = _read_json(run_dir / "run.json", {})
    names = meta.get("datasets") or list(stats)
    if not names:
        names = sorted(
            _read_json(p, {}).get("dataset", p.parent.name) for p in run_dir.glob("*/summary.json")
        )
    if not names:
        raise ImcError(f"{run_dir}: no dataset results (no */summary.json, no stats.json)")
    return RunFolder(run_dir, config, stats, meta, names)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def thumbnail(path: Path, apply_exif: bool = False, size: int = THUMB) -> bytes | None:
    """JPEG bytes of the image shrunk to `size` px on its long side (None if unreadable)."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale
            if apply_exif:
                im = ImageOps.exif_transpose(im)
            im = im.convert("RGB")
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
            return buf.getvalue()
    except Exception as e:  # an unreadable image is reported, not fatal
        logger.debug("thumbnail of %s: %s", path, e)
        return None


def cluster_order(clusters: dict[str, str]) -> list[str]:
    """Cluster labels in natural order (cluster2 before cluster10), outliers excluded."""
    labels = {c for c in clusters.values() if c != OUTLIERS}
    return sorted(
        labels, key=lambda c: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", c)]
    )


def image_groups(summary: dict) -> list[tuple[str, list[str]]]:
    """(title, names) per cluster, then unregistered, then failed images."""
    names, clusters = list(summary["images"]), summary.get("clusters", {})
    failed = set(summary.get("failed", {}))
    groups = [(c, [n for n in names if clusters.get(n) == c]) for c in cluster_order(clusters)]
    groups.append(
        ("unregistered (outliers)", [n for n in names if n not in clusters and n not in failed])
    )
    groups.append(("failed (unreadable)", [n for n in names if n in failed]))
    return [(t, g) for t, g in groups if g]


def colors_of(summary: dict) -> dict[str, str]:
    order = cluster_order(summary.get("clusters", {}))
    index = {c: k for k, c in enumerate(order)}
    clusters = summary.get("clusters", {})
    return {n: plots.cluster_color(index.get(clusters.get(n))) for n in summary["images"]}


def reference_competition(data_root: Path | None, split: str, names: list[str]):
    """The labelled competition restricted to `names`, or None (no root, no labels)."""
    from . import formats

    if data_root is None:
        return None
    try:
        comp = formats.read_competition(Path(data_root), split=split, datasets=names)
    except Exception as e:
        logger.warning("report: no reference poses from %s: %s", data_root, e)
        return None
    return comp if any(d.has_labels for d in comp.datasets.values()) else None


def score_breakdown(comp: Competition, submission: Path) -> dict | None:
    """The metric's report (ScoreReport.to_dict()) of the run's submission, or None."""
    try:
        from . import scoring

        return scoring.score(comp, read_submission(submission, comp.year)).to_dict()
    except Exception as e:
        logger.warning("report: no score for %s: %s", submission, e)
        return None


def write_report(
    run_dir: Path,
    data_root: Path | None = None,
    output: Path | None = None,
    submission: Path | None = None,
    split: str | None = None,
    score: bool = True,
    scores: dict | None = None,
) -> Path:
    """Write the report of `run_dir` (default `<run_dir>/report.html`); return its path.

    data_root: labelled competition folder (default: run.json's); without it no reference
    poses or scores. submission: default run.json's, else `<run_dir>/submission.csv`.
    split: the run's split (default: run.json's, else train; only train has labels).
    score: compute scores and the reference alignment (the metric's cost) when labels exist;
    scores: an already computed ScoreReport.to_dict() to show instead of scoring again."""
    run = load_run(run_dir)
    data_root = data_root or run.meta.get("data_root")
    submission = Path(submission or run.meta.get("submission") or run.root / "submission.csv")
    split = split or run.meta.get("split") or "train"
    comp = reference_competition(data_root, split, run.datasets)
    if score and comp is not None and scores is None and submission.is_file():
        scores = score_breakdown(comp, submission)
    body = [run_header(run, data_root, submission, scores)]
    for name in run.datasets:
        ref = comp.datasets.get(name) if comp is not None else None
        body.append(dataset_section(run, name, ref, scores, align=score))
    if any("class='view3d'" in part for part in body):
        body.append(f"<script>{view3d.SCRIPT}</script>")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>imc report: {html.escape(run.root.name)}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    output = Path(output or run.root / "report.html")
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, page)
    logger.info("report: %s (%.1f MB)", output, len(page) / 1e6)
    return output


# ----------------------------------------------------------------- data behind the pictures


def read_keypoints(features: Path, name: str) -> np.ndarray:
    """[N x 2] float32 stored keypoints of image `name` in a features.h5."""
    return feature_file.load_features(Path(features), name, ("keypoints",))["keypoints"]


def pair_matches(summary: dict, a: str, b: str, kind: str) -> np.ndarray:
    """[M x 2] matches of pair (a, b) of kind 'inliers' (the summary's verified.h5) or
    'matches' (raw, its matches.h5); empty if the file has none."""
    if kind == "inliers":
        pair = load_verified(Path(summary["verified"]), pairs=[(a, b)]).get((a, b))
        return pair["inliers"].reshape(-1, 2) if pair else np.zeros((0, 2), np.int64)
    from .stages.matching import load_matches  # imc.stages.matching imports torch

    try:
        return load_matches(Path(summary["matches"]), a, b)[0].reshape(-1, 2)
    except ImcError:
        return np.zeros((0, 2), np.int64)


def rejected_pairs(summary: dict) -> list[tuple[str, str, int, int]]:
    """Retrieval pairs not verified: (a, b, raw matches, inliers), most raw matches first."""
    verified = {(a, b) for a, b, *_ in summary.get("verified_pairs", [])}
    pairs = [(a, b) for a, b in summary.get("retrieval_pairs", []) if (a, b) not in verified]
    try:
        counts = pair_counts(Path(summary["verified"]), pairs)
    except OSError as e:
        logger.warning("report: %s", e)
        return []
    out = [(a, b, *counts.get((a, b), (0, 0))) for a, b in pairs]
    return sorted(out, key=lambda r: -r[2])


# ----------------------------------------------------------------- HTML


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.3g}" if abs(v) < 0.01 and v else f"{v:.2f}"
    return str(v)


def _img(data: bytes, mime: str, alt: str, cls: str = "plot") -> str:
    return f"<img class='{cls}' alt='{html.escape(alt)}' src='{data_uri(data, mime)}'>"


def _scalars(d: dict) -> dict:
    return {
        k: v for k, v in d.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }


def run_header(run: RunFolder, data_root, submission: Path, scores: dict | None) -> str:
    """Title, inputs, overall scores, table of contents and the configuration."""
    out = [f"<h1>imc run report</h1><p class='muted'>run folder {html.escape(str(run.root))}"]
    out.append(f"<br>submission {html.escape(str(submission))}")
    out.append(f"<br>data root {html.escape(str(data_root)) if data_root else 'not given'}</p>")
    if not data_root:
        out.append(
            "<p class='note'>No data root: reference poses and scores are not shown "
            "(imc report RUN_DIR --data-root DIR).</p>"
        )
    if scores:
        top = _scalars(scores)
        out.append("<h3>Score</h3>" + _table(list(top), [list(top.values())]))
        rows = [r for r in scores.get("datasets", []) if isinstance(r, dict)]
        if rows:
            keys = list(_scalars(rows[0]))
            out.append(_table(keys, [[r.get(k, "") for k in keys] for r in rows]))
    links = " · ".join(f"<a href='#{safe_name(n)}'>{html.escape(n)}</a>" for n in run.datasets)
    out.append(f"<p>Datasets: {links}</p>")
    conf = html.escape(json.dumps(run.config, indent=1))
    out.append(f"<details><summary>configuration</summary><pre>{conf}</pre></details>")
    return "".join(out)


def dataset_section(
    run: RunFolder, name: str, ref: Dataset | None, scores: dict | None, align: bool = True
) -> str:
    """One dataset: counts, scores, thumbnails, pair graph, matches, cameras (with the aligned
    reference centres when `align`), time."""
    folder = run.root / safe_name(name)
    out = [f"<section><h2 id='{safe_name(name)}'>{html.escape(name)}</h2>"]
    summary = _read_json(folder / "summary.json", None)
    if summary is None:
        out.append(
            f"<p class='note'>No {folder}/summary.json: the dataset failed or was "
            "skipped (see the run's log).</p>"
        )
        return "".join(out + [timing_html(run.stats.get(name)), "</section>"])
    n, reg = len(summary["images"]), len(summary.get("clusters", {}))
    out.append(
        f"<p>{n} images, {reg} registered in {len(cluster_order(summary.get('clusters', {})))} "
        f"clusters, {len(summary.get('failed', {}))} unreadable; "
        f"{len(summary.get('retrieval_pairs', []))} retrieval pairs, "
        f"{len(summary.get('verified_pairs', []))} verified{_cameras_text(summary)}.</p>"
    )
    out.append(ran_html(summary))
    for note in (summary.get("budget") or {}).get("decisions", []):
        out.append(f"<p class='note'>time budget: {html.escape(note)}</p>")
    if scores and ref is not None:
        rows = [
            r
            for r in scores.get("datasets", [])
            if isinstance(r, dict) and r.get("dataset") in (ref.dataset, ref.name)
        ]
        for r in rows:  # the dataset's row is in the run's score table at the top
            figures = ", ".join(
                f"{k} {_fmt(r[k])}" for k in ("score", "mAA", "clusterness") if k in r
            )
            out.append(f"<h3>Score: {html.escape(figures)}</h3>")
            out.append(scenes_table(r.get("scenes") or []))
    out.append(diagnosis_html(summary))
    apply_exif = bool(run.config.get("images", {}).get("apply_exif_orientation", False))
    for part in (thumbnails_html, pair_graph_html, matches_html):
        out.append(_guarded(part, summary, ref, apply_exif))
    out.append(_guarded(cameras_html, summary, ref if align else None, folder))
    out.append(timing_html(run.stats.get(name)))
    return "".join(out) + "</section>"


def diagnosis_html(summary: dict) -> str:
    """The error analysis of a scored run (imc.diagnosis): how many images each likely cause
    accounts for, then every image that does not pass all the scored thresholds."""
    rows = summary.get("diagnosis")
    if not rows:
        return ""
    text = ", ".join(f"{html.escape(k)} {v}" for k, v in diagnosis.causes(rows).items())
    lost = [
        [r["image"], r["scene"], r["cluster"], "-" if r["error"] is None else f"{r['error']:.4g}",
         "-" if r["passed"] is None else f"{r['passed']} of {r['thresholds']}", r["cause"]]
        for r in rows if r["cause"] != "ok"
    ]  # fmt: skip
    head = ["image", "scene", "cluster", "error (scene units)", "thresholds passed", "likely cause"]
    table = _table(head, lost) if lost else "<p>Every image passes every scored threshold.</p>"
    return f"<h3>Error analysis</h3><p>Images per likely cause: {text}.</p>{table}"


def scenes_table(scenes: list[dict]) -> str:
    """Per reference scene: the metric's chosen cluster and the cameras within each threshold."""
    if not scenes:
        return ""
    keys = [k for k in scenes[0] if k != "registered"]
    rows = [[s.get(k, "") for k in keys] + [" / ".join(map(str, s.get("registered") or []))]
            for s in scenes]  # fmt: skip
    return _table(keys + ["cameras within each threshold"], rows)


def _guarded(part, *args) -> str:
    """A part that fails (missing cache, unreadable model) becomes a note, not a lost page."""
    try:
        return part(*args)
    except Exception as e:
        logger.warning("report: %s failed: %s", part.__name__, e)
        logger.debug("report: %s", part.__name__, exc_info=True)
        return f"<p class='note'>{part.__name__}: {html.escape(str(e))}</p>"


def thumbnails_html(summary: dict, ref: Dataset | None, apply_exif: bool) -> str:
    """Thumbnails grouped by cluster; rotation, cluster, registration, reference scene."""
    scene = {im.name: im.scene for im in ref.images} if ref is not None else {}
    failed, clusters = summary.get("failed", {}), summary.get("clusters", {})
    colors = colors_of(summary)
    out = ["<h3>Images</h3>"]
    for title, names in image_groups(summary):
        cards = []
        for n in names:
            data = thumbnail(Path(summary["images"][n]), apply_exif)
            k = int(summary.get("rotations", {}).get(n, 0)) % 4
            cls = "thumb failed" if n in failed else "thumb" if n in clusters else "thumb unreg"
            border = plots.FAILED_COLOR if n in failed else colors[n]
            lines = [html.escape(n)]
            lines.append(f"rotation {90 * k}°" + (" (turned upright)" if k else ""))
            lines.append(
                f"<span class='badge' style='background:{colors[n]}'>"
                f"{html.escape(clusters.get(n, 'unregistered'))}</span>"
            )
            if n in scene:
                lines.append(f"reference: {html.escape(str(scene[n]))}")
            if n in failed:
                lines.append(f"failed: {html.escape(str(failed[n]))[:120]}")
            img = _img(data, "image/jpeg", n, "t") if data else "<p class='note'>unreadable</p>"
            cards.append(
                f"<figure class='{cls}' style='border-color:{border}'>{img}"
                f"<figcaption>{'<br>'.join(lines)}</figcaption></figure>"
            )
        out.append(
            f"<div class='group'><b>{html.escape(title)}</b> ({len(names)})"
            f"<div class='grid'>{''.join(cards)}</div></div>"
        )
    return "".join(out)


def pair_graph_html(summary: dict, ref: Dataset | None, apply_exif: bool) -> str:
    groups = [names for _, names in image_groups(summary)]
    png = plots.pair_graph(
        groups,
        colors_of(summary),
        [tuple(p) for p in summary.get("retrieval_pairs", [])],
        [tuple(v) for v in summary.get("verified_pairs", [])],
        set(summary.get("failed", {})),
        labels=len(summary["images"]) <= 60,
    )
    return "<h3>Pair graph</h3>" + _img(png, "image/png", "pair graph")


def match_choices(summary: dict) -> list[tuple[str, str, str, str]]:
    """(kind, a, b, caption) of the pairs to draw: the two strongest and two weakest verified
    pairs kept, the strongest pair cut by clustering, the two rejected pairs with most matches."""
    verified = sorted(summary.get("verified_pairs", []), key=lambda v: -v[2])
    kept = [v for v in verified if v[3]]
    picks = kept[:2] + [v for v in kept[-2:] if v not in kept[:2]]
    out = [("inliers", a, b, f"verified: {n} inliers") for a, b, n, _ in picks]
    out += [
        ("inliers", a, b, f"verified, cut by clustering: {n} inliers")
        for a, b, n, k in verified
        if not k
    ][:1]
    out += [
        ("matches", a, b, f"rejected: {m} matches, {i} inliers")
        for a, b, m, i in rejected_pairs(summary)
        if m > 0
    ][:2]
    return out


def matches_html(summary: dict, ref: Dataset | None, apply_exif: bool) -> str:
    from .images import read_image

    out = ["<h3>Matches</h3><div class='grid'>"]
    for kind, a, b, caption in match_choices(summary):
        m = pair_matches(summary, a, b, kind)
        k0, k1 = read_keypoints(summary["features"], a), read_keypoints(summary["features"], b)
        im0 = read_image(summary["images"][a], apply_exif)
        im1 = read_image(summary["images"][b], apply_exif)
        color = (40, 200, 60) if kind == "inliers" else (230, 40, 40)
        jpg = plots.match_picture(im0, im1, k0[m[:, 0]], k1[m[:, 1]], color)
        text = f"{html.escape(a)} — {html.escape(b)}: {html.escape(caption)}"
        out.append(
            f"<figure class='match'>{_img(jpg, 'image/jpeg', caption)}"
            f"<figcaption>{text}</figcaption></figure>"
        )
    if len(out) == 1:
        out.append("<p class='muted'>No matched pair.</p>")
    return "".join(out) + "</div>"


def cameras_html(summary: dict, ref: Dataset | None, folder: Path) -> str:
    """The models' figures, then per model its 3D view, top and side views; reference centres
    and errors when labels exist."""
    out = ["<h3>Cameras and points</h3>"]
    views = plots.load_models(folder, summary)
    if not views:
        return "".join(out) + "<p class='muted'>No reconstructed model.</p>"
    out.append(models_table(views))
    for view in views:
        try:
            out.append(model_html(view, ref))
        except Exception as e:  # one model that cannot be drawn leaves the others
            logger.warning("report: model %s of %s: %s", view.index, folder, e)
            out.append(f"<p class='note'>model {view.index}: {html.escape(str(e))}</p>")
    return "".join(out)


def models_table(views: list[plots.ModelView]) -> str:
    """Per model: its cluster and imc.export.model_stats."""
    rows = []
    for v in views:
        st = v.stats
        rows.append([v.index, _cluster_label(v.cluster), st.get("registered_images", len(v.names)),
                     st.get("points3D", len(v.points)), _or_dash(st.get("mean_track_length")),
                     _or_dash(st.get("mean_reprojection_error_px"))])  # fmt: skip
    header = ["model", "cluster", "registered images", "3D points", "mean track length",
              "mean reprojection error (px)"]  # fmt: skip
    return _table(header, rows)


def _or_dash(v):
    return "–" if v is None else v


def _cluster_label(cluster: str) -> str:
    if cluster == OUTLIERS:
        return "not submitted: its images are outliers or in a larger model"
    return cluster


def model_html(view: plots.ModelView, ref: Dataset | None) -> str:
    """One model: heading, the reference alignment, 3D view, top and side views, errors."""
    out, al = [], None
    if ref is not None and len(view.names) > ALIGN_MAX_CAMERAS:
        out.append(f"<p class='muted'>Reference alignment skipped for model {view.index}: "
                   f"{len(view.names)} cameras (the metric's exhaustive registration takes "
                   f"minutes beyond {ALIGN_MAX_CAMERAS}).</p>")  # fmt: skip
    elif ref is not None:
        al = plots.align_reference(view, ref)
    reference = None if al is None else al.reference
    good = None if al is None else al.error < al.threshold
    out.insert(0, f"<h4>model {view.index} ({html.escape(_cluster_label(view.cluster))}): "
                  f"{len(view.names)} cameras, {len(view.points)} points</h4>")  # fmt: skip
    if al is not None:
        out.append(
            f"<p>Reference centres of scene {html.escape(str(al.scene))} (black circles) "
            f"after the metric's registration at threshold {al.threshold:.3g}: "
            f"{int(good.sum())} of {int(np.isfinite(al.error).sum())} cameras within it "
            "(green lines; red: outside).</p>"
        )
    out.append(view3d.canvas_html(view, reference, good))
    png = plots.camera_views(
        view.centers, view.forwards, view.downs, view.points, view.colors, reference, good
    )
    out.append(_img(png, "image/png", f"cameras of model {view.index}"))
    out.append(
        "<p class='muted'>Top and side views. Red: camera centres and viewing directions; "
        "points in their colour; 'up' is the mean up axis of the upright images.</p>"
    )
    if al is not None:
        out.append(errors_html(view, al))
    return "".join(out)


def errors_html(view: plots.ModelView, al: plots.Alignment) -> str:
    """The folded table of each camera's distance to its aligned reference centre."""
    thresholds = " / ".join(f"{t:.3g}" for t in al.thresholds)
    rows = [[n, al.error[i], f"{al.passed[i]} / {len(al.thresholds)}"]
            for i, n in enumerate(view.names)]  # fmt: skip
    return (
        "<details><summary>error per camera</summary><p class='muted'>Distance from the "
        "camera centre to its reference centre after the registration, in the units of the "
        f"reference poses (those of scene {html.escape(str(al.scene))}'s thresholds: "
        f"{thresholds}).</p>"
        + _table(["image", "error (reference units)", "thresholds passed"], rows)
        + "</details>"
    )


def timing_html(stages: dict | None) -> str:
    """Per stage: wall and CPU seconds, CPU use, the process's peak memory and what the stage
    added to it (plots.memory_added), then the chart."""
    if not stages:
        return "<h3>Time and memory</h3><p class='muted'>No stats recorded.</p>"
    added = plots.memory_added(stages)
    rows = []
    for name, v in stages.items():
        use = plots.cpu_use(v)
        start = v.get("started")
        rows.append([
            name,
            "" if start is None else time.strftime("%H:%M:%S", time.localtime(start)),
            v.get("seconds", 0.0),
            v.get("cpu_seconds", ""),
            "" if use is None else f"{100 * use:.0f} %",
            v.get("peak_rss_mib", 0.0),
            "" if added.get(name) is None else added[name],
        ])  # fmt: skip
    header = ["stage", "started", "seconds", "CPU seconds", "CPU use", "process peak MiB",
              "MiB added by the stage"]  # fmt: skip
    chart = _img(plots.stage_chart(stages), "image/png", "time per stage")
    note = (
        "<p class='muted'>CPU use: CPU seconds (all threads) per second of wall time; 100 % is "
        "one core busy. Peak memory is the process's running maximum (it never goes down); "
        "the last column is how much the stage raised it.</p>"
    )
    return "<h3>Time and memory</h3>" + _table(header, rows) + note + chart


def ran_html(summary: dict) -> str:
    """The summary's `ran` record (preset, device, retrieval, LightGlue's precision and batch
    size) in one line; a retrieval fallback stands out as a note."""
    ran = summary.get("ran")
    if not isinstance(ran, dict) or not ran:
        return ""
    parts = []
    for key, value in ran.items():
        value = "default" if value is None else str(value)
        cls = " class='note'" if "fallback" in value else ""
        parts.append(f"{html.escape(key.replace('_', ' '))} <b{cls}>{html.escape(value)}</b>")
    return f"<p>What ran: {' · '.join(parts)}.</p>"
