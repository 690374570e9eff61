"""Configuration: each stage's default_conf, named presets, strict merging, config files.

A configuration is a nested dict, one section per stage. Overrides (a preset, a JSON config
file, command-line `section.key=value` pairs) are merged into the defaults; a key that the
defaults do not have is an error that lists the valid ones. `mapping.options` is the one open
section: its keys are pycolmap option names, checked by the mapping stage.

Every value of the merged configuration is then checked against `EXPECT` (the type and range
each key takes, beside DEFAULTS) before anything runs: a wrong one is an ImcError of one line,
`configuration value features.max_keypoints='abc': expected an integer >= 0`.

Without a preset, `gpu` is chosen when torch sees a CUDA device (and `runtime.device` allows
it); `runtime.preset` records the preset applied (None: the defaults).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImcError
from .log import logger

DEFAULTS: dict[str, dict[str, Any]] = {
    "images": {
        "apply_exif_orientation": False,  # reference poses refer to the stored pixels
    },
    "retrieval": {
        "model": "dinov2",  # "dinov2" or "aliked" (aggregated local descriptors, no extra weights)
        "dinov2_dir": None,  # folder of a transformers Dinov2Model; None: search the settings
        "image_size": 448,  # short side of the DINOv2 input (rounded to a multiple of 14)
        "num_neighbors": 12,  # k of the FAISS k-NN search, per image
        # cosine similarity below which two images are no pair; None: the descriptor's own
        # (imc.stages.pairs.MIN_SIMILARITY: aliked 0.5, dinov2 0.2)
        "min_similarity": None,
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
        "min_long_side": 0,  # smaller images are upscaled to this long side (0: never)
        "max_keypoints": 2048,
        "detection_threshold": 0.2,
        "min_keypoints": 512,  # below this many above the threshold, take the strongest ones
        "nms_radius": 2,
        "sift_max_keypoints": 0,  # SIFT keypoints added to ALIKED's, matched apart (0: none)
    },
    "matching": {
        "model": "lightglue-aliked",
        "filter_threshold": 0.1,
        "depth_confidence": 0.95,
        "width_confidence": 0.99,
        "half_precision": False,  # CUDA only; ALIKED stays fp32
        "cpu_bfloat16": False,  # bfloat16 LightGlue on CPUs with AMX / AVX-512 bf16
        "batch_size": 0,  # pairs per forward pass; 0: 1 on CPU, from free memory on CUDA
        "sift_ratio": 0.8,  # Lowe's ratio test of the SIFT matches (features.sift_max_keypoints)
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
        "camera_mode": "auto",  # "auto", "per_image" or "shared" (imc.stages.mapping)
        "camera_model": "SIMPLE_RADIAL",  # COLMAP's camera model of every camera
        "exif_focal": True,  # start from the EXIF focal length where the header gives it
        "reprojection_tolerance": 0.2,  # auto: keep shared cameras unless the error grows more
        "global_fallback": 0.8,  # map globally too when a pair-graph group is covered below this
        # global pipeline: drop pairs below each level x the strongest pair of the weaker of
        # their two images, map each, keep the models that agree with most verified inliers
        "global_min_relative_inliers": [0.2, 0.3, 0.4, 0.5, 0.6],
        # ... each level mapped with runtime.seed; the global_restart_levels levels whose models
        # agree with most verified inliers (0: all) with global_seeds seeds (+1, ...) in all
        "global_seeds": 5,
        "global_restart_levels": 2,
        "options": {},  # any pycolmap IncrementalPipelineOptions / mapper attribute
    },
    "runtime": {
        "device": "auto",  # "auto", "cpu" or "cuda"
        "num_threads": 0,  # torch and OpenCV threads per process, 0: the cores / workers
        "workers": 0,  # processes running datasets at once, 0: one per CUDA device, or one
        "mapping_threads": 1,  # pycolmap threads; 1 keeps mapping deterministic
        "seed": 0,
        "preset": None,  # the preset applied (set by resolve; None: the defaults)
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
    # The plain Kaggle baseline, for ablations (BENCHMARKS.md): ALIKED + LightGlue on the
    # retrieval pairs, MAGSAC, pycolmap's incremental mapper with its own defaults, one camera
    # per image; no rotation handling, no scene clustering, no keypoint floor, no global
    # fallback.
    "baseline": {
        "orientation": {"enabled": False},
        "features": {"min_keypoints": 0},
        "clustering": {"enabled": False},
        "mapping": {
            "camera_mode": "per_image",
            "global_fallback": 0.0,
            "options": {"filter_max_reproj_error": 4.0},  # pycolmap's default
        },
    },
}

# Registry names, written out so that reading the configuration imports no model code
# (tests/test_config.py checks them against imc.stages.features, imc.stages.matching and
# imc.stages.verification).
FEATURE_MODELS = ("aliked-n16",)
MATCHER_MODELS = ("lightglue-aliked",)
VERIFICATION_METHODS = ("magsac", "ransac", "lmeds")
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


@dataclass(frozen=True)
class Expect:
    """What one configuration value must be. `text` completes "expected ..."; `check` returns
    the value, normalised (an integral float of an integer key becomes an int, an int of a
    number key a float), or raises ValueError."""

    text: str
    check: Callable[[Any], Any]


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError
    return float(value)


def _within(value, low: float, high: float, open_low: bool):
    if not (low < value if open_low else low <= value) or not value <= high:  # NaN fails too
        raise ValueError
    return value


def integer(low: int = 0) -> Expect:
    """An int >= `low` (JSON 3 or 3.0; not true, not 2.5)."""
    return Expect(f"an integer >= {low}", lambda v: _within(_as_int(v), low, float("inf"), False))


def number(low: float = 0.0, high: float = float("inf"), open_low: bool = False) -> Expect:
    """A float (an int is taken) in [low, high], or (low, high] with `open_low`."""
    if high == float("inf"):
        text = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        text = f"a number in {'(' if open_low else '['}{low:g}, {high:g}]"
    return Expect(text, lambda v: _within(_as_float(v), low, high, open_low))


def when(text: str, test: Callable[[Any], bool]) -> Expect:
    """A value kept as it is when `test` holds."""

    def check(value):
        if not test(value):
            raise ValueError
        return value

    return Expect(text, check)


def optional(expect: Expect) -> Expect:
    """null, or a value that `expect` takes."""
    return Expect(f"null or {expect.text}", lambda v: None if v is None else expect.check(v))


def flag() -> Expect:
    return when("true or false", lambda v: isinstance(v, bool))


def one_of(*choices: Any, text: str = "") -> Expect:
    text = text or "one of " + ", ".join(map(repr, choices))
    return when(text, lambda v: not isinstance(v, bool) and v in choices)  # True == 1


def _ratios(value: Any) -> float | list[float]:
    """A number in [0, 1], or a non-empty list of them."""
    if isinstance(value, list):
        if not value:
            raise ValueError
        return [_within(_as_float(v), 0.0, 1.0, False) for v in value]
    return _within(_as_float(value), 0.0, 1.0, False)


RATIO = number(0.0, 1.0)
# LightGlue's early stopping and point pruning: a confidence in [0, 1], or -1 (<= 0) for off.
LIGHTGLUE_CONFIDENCE = number(-1.0, 1.0)

# For every key of DEFAULTS, what its value must be (checked by `check` after every merge).
EXPECT: dict[str, dict[str, Expect]] = {
    "images": {"apply_exif_orientation": flag()},
    "retrieval": {
        "model": one_of("dinov2", "aliked"),
        "dinov2_dir": when(
            "null or a folder path (a string)", lambda v: v is None or (isinstance(v, str) and v)
        ),
        "image_size": integer(1),
        "num_neighbors": integer(1),
        "min_similarity": optional(number(-1.0, 1.0)),
        "exhaustive_below": integer(0),
    },
    "orientation": {
        "enabled": flag(),
        "num_neighbors": integer(1),
        "resize_long_side": integer(0),
        "max_keypoints": integer(0),
        "min_ratio": number(1.0),
        "accept_inliers": integer(0),
    },
    "features": {
        "model": one_of(*FEATURE_MODELS),
        "resize_long_side": integer(0),  # 0: the stored size
        "min_long_side": integer(0),
        "max_keypoints": integer(0),
        "detection_threshold": number(0.0),
        "min_keypoints": integer(0),
        "nms_radius": integer(0),
        "sift_max_keypoints": integer(0),
    },
    "matching": {
        "model": one_of(*MATCHER_MODELS),
        "filter_threshold": RATIO,
        "depth_confidence": LIGHTGLUE_CONFIDENCE,
        "width_confidence": LIGHTGLUE_CONFIDENCE,
        "half_precision": flag(),
        "cpu_bfloat16": flag(),
        "batch_size": integer(0),
        "sift_ratio": RATIO,
    },
    "verification": {
        "method": one_of(*VERIFICATION_METHODS),
        "threshold": number(0.0, open_low=True),
        "confidence": RATIO,
        "max_iters": integer(1),
        "min_inliers": integer(0),
    },
    "clustering": {
        "enabled": flag(),
        "max_cut_ratio": number(0.0),
        "max_cross_ratio": number(0.0),
        "min_size": integer(1),
    },
    "mapping": {
        "mapper": one_of("incremental", "global"),
        "min_model_size": integer(0),
        "max_num_models": integer(1),
        "camera_mode": one_of("auto", "per_image", "shared"),
        "camera_model": one_of(*CAMERA_MODELS),
        "exif_focal": flag(),
        "reprojection_tolerance": number(0.0),
        "global_fallback": RATIO,
        "global_min_relative_inliers": Expect(
            "a number in [0, 1] or a non-empty list of them", _ratios
        ),
        "global_seeds": integer(1),
        "global_restart_levels": integer(0),
        "options": when(
            "a mapping of pycolmap option names to values", lambda v: isinstance(v, dict)
        ),
    },
    "runtime": {
        "device": when(
            "one of 'auto', 'cpu', 'cuda', 'cuda:K'",
            lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
        ),
        "num_threads": integer(0),
        "workers": integer(0),
        "mapping_threads": integer(0),
        "seed": integer(0),
        "preset": one_of(None, *PRESETS, text=f"null or one of {', '.join(map(repr, PRESETS))}"),
    },
}


def check(conf: dict) -> dict:
    """`conf` with every value checked against EXPECT and normalised; the first wrong one
    raises ImcError: `configuration value features.max_keypoints='abc': expected an integer
    >= 0`. `mapping.options` is only checked to be a mapping (its keys and values are
    pycolmap's, checked by the mapping stage)."""
    out = {}
    for section, values in conf.items():
        out[section] = {}
        for key, value in values.items():
            expect = EXPECT[section][key]
            try:
                out[section][key] = expect.check(value)
            except (ValueError, TypeError):
                shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
                raise ImcError(
                    f"configuration value {section}.{key}={shown}: expected {expect.text}"
                ) from None
    return out


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


def nested(items: Iterable[tuple[str, Any]]) -> dict:
    """(`section.key`, value) pairs -> nested dict, in order (a later pair overrides):
    `[("features.max_keypoints", 1024)]` -> `{"features": {"max_keypoints": 1024}}`."""
    out: dict = {}
    for dotted, value in items:
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def parse_overrides(items: list[str]) -> dict:
    """`["features.max_keypoints=1024", ...]` -> nested dict; values parsed as JSON if possible."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ImcError(f"override '{item}' is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        pairs.append((dotted, value))
    return nested(pairs)


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
    """Defaults <- preset <- config file <- command-line overrides, every value checked.

    The preset: `preset`, else the file's `"preset"`, else the `runtime.preset` that the file
    or an override names (a configuration written by `dump` records its preset there), else
    `gpu` when torch sees a CUDA device and `runtime.device` is not `cpu`, else none (the
    defaults). `runtime.preset` records the one applied. Raises ImcError on an unknown key or
    preset or a wrong value, before anything heavy is imported when the values are wrong.
    """
    file_data = load_config_file(file) if file else {}
    preset = preset or file_data.pop("preset", None)
    layers = [file_data.get("config", file_data)] if file_data else []
    if overrides:
        layers.append(parse_overrides(overrides))
    plain = copy.deepcopy(DEFAULTS)
    for layer in layers:
        if not isinstance(layer, dict):
            raise ImcError(f"configuration {layer!r} must be a mapping of sections")
        plain = merge(plain, layer)
    plain = check(plain)  # a wrong value fails here, before torch is imported
    if preset is None and any("preset" in layer.get("runtime", {}) for layer in layers):
        preset = plain["runtime"]["preset"]
    elif preset is None and plain["runtime"]["device"] != "cpu" and cuda_available():
        preset = "gpu"
        logger.info("preset gpu chosen: CUDA device found")
    if preset is not None and preset not in PRESETS:
        raise ImcError(f"unknown preset '{preset}' (valid: {', '.join(PRESETS)})")
    conf = merge(DEFAULTS, PRESETS[preset]) if preset else copy.deepcopy(DEFAULTS)
    for layer in layers:
        conf = merge(conf, layer)
    conf["runtime"]["preset"] = preset
    return check(conf)


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (torch imported here: only when no preset is named)."""
    import torch

    return torch.cuda.is_available()


def dump(conf: dict, path: str | Path) -> None:
    """Write a config file that `resolve(file=...)` reads back to the same configuration."""
    Path(path).write_text(json.dumps({"config": conf}, indent=2, sort_keys=True) + "\n")
