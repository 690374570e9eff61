"""Error analysis of a scored run: per image, its error after the metric's alignment, the
thresholds it passes and a likely cause; and the comparison of two runs image by image.

For IMC2025-layout labels (a dataset of reference scenes and `outliers`). Each reference scene
is aligned to the cluster the metric matched to it (imc.metrics), threshold by threshold, with
the metric's own registration (`register_by_horn`); an image's error is the smallest distance
of its camera centre to the reference over those alignments, in the scene's units.

Likely causes, the first that applies:

    outlier in a cluster    a distractor (reference `outliers`) submitted in a cluster
    no verified pair        not registered, and no pair of it survived verification
    few inliers             not registered (or off), its strongest verified pair < FEW_INLIERS
    not registered          not registered although it has verified pairs
    wrong cluster           registered in another cluster than the one matched to its scene
    ok                      passes every threshold
    focal off               registered, but its focal length is more than FOCAL_OFF away
                            from the median of its model's cameras of the same size
    distortion off          its radial distortion |k| > DISTORTION_OFF
    weak pair chain         at most one verified pair links it to its cluster
    pose off                none of the above: the pose itself is off

`diagnose_run` writes `diagnosis` into each dataset's summary.json; `compare` prints the images
whose outcome differs between two runs (`imc compare RUN_A RUN_B`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .cache import atomic_write_text, safe_name
from .data import OUTLIERS, Dataset
from .metric_common import parse_poses
from .metrics import centres
from .registration import register_by_horn

SKIP = 2  # the tightest thresholds, which the IMC2025 mAA leaves out (imc.metrics)
FEW_INLIERS = 50
FOCAL_OFF = 0.1
DISTORTION_OFF = 0.1


def scene_errors(dataset: Dataset, rows: pd.DataFrame, clusters: dict[str, str | None]):
    """image -> (error, scored thresholds passed, scored thresholds) for the images of each
    scene that sit in the cluster matched to their scene (the metric scores the thresholds
    after the SKIP tightest); rows: the dataset's submission rows."""
    sub = {r.image: r for r in rows.itertuples()}
    centre = dict(zip(rows["image"], centres(*parse_poses(rows, "submission", "image"))))
    out: dict[str, tuple[float, int, int]] = {}
    for scene in dataset.reference_scenes():
        cluster, ths = clusters.get(scene), dataset.thresholds[scene]
        images = [im for im in dataset.images if im.scene == scene]
        mine = [im for im in images if cluster is not None and sub[im.name].scene == cluster]
        ev = np.array([centre[im.name] for im in mine]).reshape(-1, 3)
        gt = np.array([im.center for im in mine]).reshape(-1, 3)
        reg = register_by_horn(ev, gt, ths)
        for k, im in enumerate(np.array(mine, dtype=object)[reg.valid]):
            err = reg.err[k]
            scored = err[SKIP:] < ths[SKIP:]
            out[im.name] = (float(err.min()), int(np.sum(scored)), len(scored))
    return out


def pair_evidence(summary: dict | None) -> dict[str, list[tuple[str, int]]]:
    """image -> [(other image, inliers)] of its verified pairs kept for mapping."""
    out: dict[str, list[tuple[str, int]]] = {}
    for a, b, inliers, kept in (summary or {}).get("verified_pairs", []):
        if kept:
            out.setdefault(a, []).append((b, inliers))
            out.setdefault(b, []).append((a, inliers))
    return out


def cameras(run_dataset_dir: Path, dataset: Dataset) -> dict[str, dict]:
    """image -> {focal, size, k, median_focal} from the exported models (k: the first
    distortion parameter, 0 for a pinhole camera; median_focal: of the model's cameras of the
    same size)."""
    import pycolmap

    from .stages.reconstruction import database_names  # pycolmap's names of the images

    name_of = {db: name for name, db in database_names(dataset)[1].items()}
    out: dict[str, dict] = {}
    for model_dir in sorted((run_dataset_dir / "models").glob("*")):
        if not (model_dir / "images.bin").exists():
            continue
        rec = pycolmap.Reconstruction(str(model_dir))
        found = {}
        for im in rec.images.values():
            name = name_of.get(im.name)
            if name is None or not im.has_pose:
                continue
            cam = rec.cameras[im.camera_id]
            extra = cam.extra_params_idxs()  # the first is k (k1) in every radial model
            k = float(cam.params[extra[0]]) if len(extra) else 0.0
            found[name] = {
                "focal": float(cam.mean_focal_length()),
                "size": (cam.width, cam.height),
                "k": k,
            }
        for name, c in found.items():
            same = [v["focal"] for v in found.values() if v["size"] == c["size"]]
            c["median_focal"] = float(np.median(same))
            out.setdefault(name, c)
    return out


def likely_cause(
    reference: str, cluster: str, matched: str | None, outcome: tuple | None, evidence, camera
) -> str:
    """The first cause of the module docstring's table that applies to one image."""
    registered = cluster != OUTLIERS
    best = max((n for _, n in evidence), default=0)
    if reference == OUTLIERS:
        return "outlier in a cluster" if registered else "ok"
    if not registered:
        if not evidence:
            return "no verified pair"
        return f"few inliers (best pair {best})" if best < FEW_INLIERS else "not registered"
    if cluster != matched:
        return f"wrong cluster ({cluster}; the scene's is {matched})"
    if outcome is not None and outcome[1] == outcome[2]:
        return "ok"
    if camera and abs(camera["focal"] / camera["median_focal"] - 1) > FOCAL_OFF:
        return f"focal off ({camera['focal']:.0f} px, model median {camera['median_focal']:.0f})"
    if camera and abs(camera["k"]) > DISTORTION_OFF:
        return f"distortion off (k = {camera['k']:.2f})"
    if best < FEW_INLIERS:
        return f"few inliers (best pair {best})"
    if len(evidence) <= 1:
        return f"weak pair chain ({len(evidence)} verified pair)"
    return "pose off"


def diagnose_dataset(
    dataset: Dataset, rows: pd.DataFrame, clusters: dict[str, str | None], run_ds: Path | None
) -> list[dict]:
    """One row per image: image, scene, cluster, error (scene units; None: not aligned),
    passed (scored thresholds passed), thresholds (scored thresholds), cause."""
    summary = None
    if run_ds is not None and (run_ds / "summary.json").is_file():
        summary = json.loads((run_ds / "summary.json").read_text())
    errors = scene_errors(dataset, rows, clusters)
    evidence = pair_evidence(summary)
    cams = cameras(run_ds, dataset) if run_ds is not None else {}
    sub = {r.image: r.scene for r in rows.itertuples()}
    out = []
    for im in dataset.images:
        outcome = errors.get(im.name)
        matched = clusters.get(im.scene) if im.scene != OUTLIERS else None
        cause = likely_cause(
            im.scene, sub[im.name], matched, outcome, evidence.get(im.name, []), cams.get(im.name)
        )
        out.append({
            "image": im.name, "scene": im.scene, "cluster": sub[im.name],
            "error": None if outcome is None else round(outcome[0], 6),
            "passed": None if outcome is None else outcome[1],
            "thresholds": max(0, len(dataset.thresholds.get(im.scene, [])) - SKIP),
            "cause": cause,
        })  # fmt: skip
    return out


def diagnose_run(comp, submission: pd.DataFrame, report, run_dir: Path | None) -> dict:
    """dataset -> diagnose_dataset rows for every labelled dataset of an IMC2025 run; written
    into `<run_dir>/<dataset>/summary.json` as `diagnosis` when that file exists."""
    result = {}
    by_dataset = {d.dataset: d for d in report.datasets}
    for ds in comp.datasets.values():
        if not ds.has_labels or ds.name not in by_dataset:
            continue
        clusters = {s.scene: s.cluster for s in by_dataset[ds.name].scenes}
        rows = submission[submission["dataset"] == ds.dataset]
        run_ds = run_dir / safe_name(ds.name) if run_dir is not None else None
        result[ds.name] = diagnose_dataset(ds, rows, clusters, run_ds)
        path = None if run_ds is None else run_ds / "summary.json"
        if path is not None and path.is_file():
            summary = json.loads(path.read_text())
            summary["diagnosis"] = result[ds.name]
            atomic_write_text(path, json.dumps(summary, indent=1))
    return result


def causes(rows: list[dict]) -> dict[str, int]:
    """How many images each cause (its first words) accounts for."""
    out: dict[str, int] = {}
    for r in rows:
        key = r["cause"].split(" (")[0]
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def compare(run_a: Path, run_b: Path) -> list[dict]:
    """The images whose outcome (thresholds passed, cluster or cause) differs between two
    diagnosed runs: dataset, image, and each run's passed / error / cause."""
    out = []
    for summary_a in sorted(Path(run_a).glob("*/summary.json")):
        summary_b = Path(run_b) / summary_a.parent.name / "summary.json"
        if not summary_b.is_file():
            continue
        a = {r["image"]: r for r in json.loads(summary_a.read_text()).get("diagnosis", [])}
        b = {r["image"]: r for r in json.loads(summary_b.read_text()).get("diagnosis", [])}
        for name in a.keys() & b.keys():
            ra, rb = a[name], b[name]
            if (ra["passed"], ra["cluster"], ra["cause"]) != (
                rb["passed"],
                rb["cluster"],
                rb["cause"],
            ):
                out.append({
                    "dataset": summary_a.parent.name, "image": name,
                    "passed": (ra["passed"], rb["passed"]), "error": (ra["error"], rb["error"]),
                    "cause": (ra["cause"], rb["cause"]), "thresholds": ra["thresholds"],
                })  # fmt: skip
    return sorted(out, key=lambda r: (r["dataset"], r["image"]))


def compare_text(rows: list[dict]) -> str:
    """compare's rows as a table; 'passed' counts thresholds passed (of `thresholds`)."""
    if not rows:
        return "no image differs"
    lines = [f"{'dataset':<20} {'image':<28} {'passed A':>8} {'passed B':>8}  cause A -> cause B"]
    for r in rows:
        pa, pb = (("-" if v is None else str(v)) for v in r["passed"])
        cause = f"{r['cause'][0]} -> {r['cause'][1]}"
        lines.append(f"{r['dataset']:<20} {r['image']:<28} {pa:>8} {pb:>8}  {cause}")
    return "\n".join(lines)
