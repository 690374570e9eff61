"""Every path the package looks in, from one place: environment variables, then defaults.

IMC_WEIGHTS     a folder with the weight files (first place searched)
IMC_DINOV2      a folder holding a transformers Dinov2Model (config.json + weights)
IMC_CACHE       the cache root (default: ./outputs/cache)
IMC_KAGGLE_INPUT  Kaggle's input root (default: /kaggle/input), searched last for weights
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def kaggle_input() -> Path:
    return Path(os.environ.get("IMC_KAGGLE_INPUT", "/kaggle/input"))


def weights_dirs() -> list[Path]:
    """Folders searched for weight files, in order: $IMC_WEIGHTS, ./weights, the repository's
    weights/, then Kaggle input folders (`<input>/*/` and `<input>/*/weights/`, and one level
    deeper for Kaggle model inputs)."""
    dirs: list[Path] = []
    if os.environ.get("IMC_WEIGHTS"):
        dirs.append(Path(os.environ["IMC_WEIGHTS"]))
    dirs += [Path.cwd() / "weights", REPO_ROOT / "weights"]
    root = kaggle_input()
    if root.is_dir():
        for pattern in ("*", "*/weights", "*/*", "*/*/*", "*/*/*/*"):
            dirs += sorted(p for p in root.glob(pattern) if p.is_dir())
    seen: dict[Path, None] = {}
    for d in dirs:
        seen.setdefault(d.resolve() if d.exists() else d, None)
    return list(seen)


def dinov2_dirs() -> list[Path]:
    """Candidate folders of a DINOv2 model (each must contain config.json)."""
    dirs: list[Path] = []
    if os.environ.get("IMC_DINOV2"):
        dirs.append(Path(os.environ["IMC_DINOV2"]))
    for base in weights_dirs():
        dirs += [base / "dinov2", base / "dinov2-base", base / "dinov2-small"]
        if "dinov2" in base.name.lower():
            dirs.append(base)
    return [d for d in dirs if (d / "config.json").is_file()]


def cache_root() -> Path:
    return Path(os.environ.get("IMC_CACHE", Path.cwd() / "outputs" / "cache"))
