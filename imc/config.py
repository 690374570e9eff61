"""Configuration: each stage's default_conf, named presets, strict merging, config files.

A configuration is a nested dict, one section per stage. Overrides (a preset, a JSON config
file, command-line `section.key=value` pairs) are merged into the defaults; a key that the
defaults do not have is an error that lists the valid ones. `mapping.options` is the one open
section: its keys are pycolmap option names, checked by the mapping stage.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import ImcError

DEFAULTS: dict[str, dict[str, Any]] = {
    "images": {
        "apply_exif_orientation": False,  # reference poses refer to the stored pixels
    },
    "retrieval": {
        "model": "dinov2",  # "dinov2" or "aliked" (aggregated local descriptors, no extra weights)
        "dinov2_dir": None,  # folder of a transformers Dinov2Model; None: search the settings
        "image_size": 448,  # short side of the DINOv2 input (rounded to a multiple of 14)
        "num_neighbors": 12,  # k of the FAISS k-NN search, per image
        "min_similarity": 0.2,  # cosine similarity below which a neighbour is no pair
        "exhaustive_below": 40,  # datasets with fewer images use all pairs
    },
    "orientation": {
        "enabled": True,
        "num_neighbors": 3,  # neighbours each image is tested against at 0/90/180/270 degrees
        "resize_long_side": 320,
        "max_keypoints": 256,
        "min_ratio": 1.5,  # the best rotation must beat the second by this factor in inliers
        "accept_inliers": 80,  # upright accepted without trying other rotations above this
    },
    "features": {
        "model": "aliked-n16",
        "resize_long_side": 1024,
        "max_keypoints": 2048,
        "detection_threshold": 0.2,
        "min_keypoints": 512,  # below this many above the threshold, take the strongest ones
        "nms_radius": 2,
    },
    "matching": {
        "model": "lightglue-aliked",
        "filter_threshold": 0.1,
        "depth_confidence": 0.95,
        "width_confidence": 0.99,
        "half_precision": False,  # CUDA only; ALIKED stays fp32
        "cpu_bfloat16": False,  # bfloat16 LightGlue on CPUs with AMX / AVX-512 bf16
        "min_matches": 15,  # pairs with fewer raw matches are dropped before verification
    },
    "verification": {
        "method": "magsac",
        "threshold": 1.0,  # MAGSAC threshold, pixels at the feature-extraction resolution
        "confidence": 0.9999,
        "max_iters": 10000,
        "min_inliers": 15,
    },
    "clustering": {
        "enabled": True,
        "max_cut_ratio": 0.05,  # split a group where the cut's conductance is below this
        "max_cross_ratio": 0.5,  # ... and its strongest pair is below this x the median inside
        "min_size": 3,  # never split off fewer images
    },
    "mapping": {
        "mapper": "incremental",  # "incremental" or "global"
        "min_model_size": 3,
        "max_num_models": 50,
        "camera_mode": "auto",  # "auto", "per_image" or "shared" (imc.mapping)
        "reprojection_tolerance": 0.2,  # auto: keep shared cameras unless the error grows more
        "global_fallback": 0.8,  # map globally too when a pair-graph group is covered below this
        # global pipeline: drop pairs below each level x the strongest pair of the weaker of
        # their two images, map each, keep the models that agree with most verified inliers
        "global_min_relative_inliers": [0.2, 0.3, 0.4, 0.5, 0.6],
        "options": {},  # any pycolmap IncrementalPipelineOptions / mapper attribute
    },
    "runtime": {
        "device": "auto",  # "auto", "cpu" or "cuda"
        "num_threads": 0,  # torch threads, 0: all cores
        "mapping_threads": 1,  # pycolmap threads; 1 keeps mapping deterministic
        "seed": 0,
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "gpu": {
        "features": {"resize_long_side": 1280, "max_keypoints": 4096},
        "matching": {"half_precision": True},
        "retrieval": {"num_neighbors": 25, "exhaustive_below": 60},
    },
    # Small and quick: the CI integration tests.
    "fast": {
        "features": {"resize_long_side": 640, "max_keypoints": 1024},
    },
}


def merge(base: dict, override: dict, path: str = "") -> dict:
    """Return `base` updated by `override`; an unknown key raises ImcError naming the valid ones."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in out:
            valid = ", ".join(sorted(out))
            raise ImcError(f"unknown configuration key '{where}' (valid: {valid})")
        if isinstance(out[key], dict) and key != "options":
            if not isinstance(value, dict):
                raise ImcError(f"configuration key '{where}' must be a section (a mapping)")
            out[key] = merge(out[key], value, f"{where}.")
        elif key == "options":
            if not isinstance(value, dict):
                raise ImcError(f"configuration key '{where}' must be a mapping")
            out[key] = {**out[key], **value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(items: list[str]) -> dict:
    """`["features.max_keypoints=1024", ...]` -> nested dict; values parsed as JSON if possible."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ImcError(f"override '{item}' is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config_file(path: str | Path) -> dict:
    """Read a JSON config file: either a plain override or `{"preset": ..., "config": {...}}`."""
    path = Path(path)
    if not path.is_file():
        raise ImcError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ImcError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ImcError(f"config file {path} must hold a JSON object")
    return data


def resolve(
    preset: str | None = None, file: str | Path | None = None, overrides: list[str] | None = None
) -> dict:
    """Defaults <- preset <- config file <- command-line overrides."""
    conf = copy.deepcopy(DEFAULTS)
    layers: list[dict] = []
    file_data = load_config_file(file) if file else {}
    preset = preset or file_data.pop("preset", None)
    if preset:
        if preset not in PRESETS:
            raise ImcError(f"unknown preset '{preset}' (valid: {', '.join(PRESETS)})")
        layers.append(PRESETS[preset])
    if file_data:
        layers.append(file_data.get("config", file_data))
    if overrides:
        layers.append(parse_overrides(overrides))
    for layer in layers:
        conf = merge(conf, layer)
    return conf


def dump(conf: dict, path: str | Path) -> None:
    """Write a config file that `resolve(file=...)` reads back to the same configuration."""
    Path(path).write_text(json.dumps({"config": conf}, indent=2, sort_keys=True) + "\n")
