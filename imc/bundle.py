"""The offline Kaggle bundle: everything a notebook without internet needs to run imc.

    python -m imc.bundle build --out dist/kaggle [--full] [--python-version 3.11]
        [--wheel-cache DIR] [--with PACKAGE ...]

Layout of `--out` (upload the whole folder as one Kaggle dataset):

    install_and_run.py     the notebook's steps as one script (standard library only)
    imc-submission.ipynb   the notebook: finds this bundle and the competition under
                           /kaggle/input, calls install_and_run.py, writes
                           /kaggle/working/submission.csv
    bundle.json            what is inside: versions, target Python, wheels and their sha256
    dataset/               the package source (imc/, tuning/, submission.py) and weights/
                           with manifest.json
    wheels/                wheels for `pip install --no-index --find-links wheels
                           -r wheels/requirements.txt`

Wheels. Kaggle's image has torch (CUDA), numpy, pandas, scipy, opencv, h5py, pillow, tqdm,
threadpoolctl, transformers and more, but not `KAGGLE_MISSING`: kornia, kornia-rs, pycolmap
and faiss-cpu. The default bundle holds those and whatever they need that Kaggle lacks (their
other needs, torch, numpy and packaging, are in `KAGGLE_PROVIDES`). `--full` bundles the whole
runtime closure of `RUNTIME` (torch included, the CPU wheel of the local environment), for an
install from the bundle alone anywhere (the offline test). Versions are those of the local
environment; wheels are for CPython `--python-version` (default: this interpreter's) on
manylinux x86_64 up to glibc `--glibc` (default 2.35, Kaggle's Ubuntu 22.04). Wheels are
fetched with `pip download` into `--wheel-cache` (default $IMC_WHEEL_CACHE or
~/.cache/imc/wheels) once, then linked from there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from . import settings
from .errors import ImcError
from .log import logger, setup_logging

KAGGLE_MISSING = ("kornia", "kornia-rs", "pycolmap", "faiss-cpu")
KAGGLE_PROVIDES = ("torch", "numpy", "packaging")
RUNTIME = KAGGLE_MISSING + (
    "torch",
    "numpy",
    "opencv-python-headless",
    "h5py",
    "pandas",
    "scipy",
    "tqdm",
    "pillow",
    "threadpoolctl",
)
SOURCE = ("imc", "tuning", "submission.py", "pyproject.toml", "README.md", "LICENSE")
TEMPLATES = Path(__file__).resolve().parent / "kaggle_templates"


def default_wheel_cache() -> Path:
    return Path(os.environ.get("IMC_WHEEL_CACHE", Path.home() / ".cache" / "imc" / "wheels"))


# ----------------------------------------------------------------------------- wheels


def target_tags(python_version: str, glibc: str = "2.35") -> set[Tag]:
    """Wheel tags that CPython `python_version` on manylinux x86_64 (glibc <= `glibc`) runs."""
    major, minor = (int(x) for x in python_version.split(".")[:2])
    top = int(glibc.split(".")[1])
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(top, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    interp = f"cp{major}{minor}"
    tags = set(cpython_tags((major, minor), [interp, "abi3", "none"], platforms))
    return tags | set(compatible_tags((major, minor), interp, platforms))


def marker_env(python_version: str) -> dict[str, str]:
    """The environment markers of the target (CPython on Linux x86_64), for requirements."""
    return {
        "python_version": ".".join(python_version.split(".")[:2]),
        "python_full_version": python_version if python_version.count(".") == 2 else "3.11.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


def closure(roots: Iterable[str], python_version: str, stop: Iterable[str] = ()) -> dict[str, str]:
    """Canonical name -> locally installed version, for `roots` and everything they require
    on the target (extras left out); names in `stop` are neither included nor followed."""
    env, stop = marker_env(python_version), {canonicalize_name(s) for s in stop}
    out: dict[str, str] = {}
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in out or name in stop:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ImcError(f"{name} is needed by the bundle but not installed here") from None
        out[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or Marker(str(req.marker)).evaluate(env):
                todo.append(canonicalize_name(req.name))
    return dict(sorted(out.items()))


def find_wheel(folder: Path, name: str, version: str, tags: set[Tag]) -> Path | None:
    """A wheel of `name==version` in `folder` whose tags the target supports."""
    for path in sorted(folder.glob("*.whl")):
        try:
            wname, wversion, _, wtags = parse_wheel_filename(path.name)
        except ValueError:
            continue
        if wname == name and str(wversion) == version and wtags & tags:
            return path
    return None


def fetch_wheels(
    pins: dict[str, str], cache: Path, python_version: str, glibc: str
) -> dict[str, Path]:
    """Name -> wheel in `cache`, downloading with pip (no dependencies) what is missing."""
    cache.mkdir(parents=True, exist_ok=True)
    tags = target_tags(python_version, glibc)
    missing = [n for n, v in pins.items() if find_wheel(cache, n, v, tags) is None]
    if missing:
        major_minor = "".join(python_version.split(".")[:2])
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--dest", str(cache), "--python-version", python_version]
        cmd += ["--implementation", "cp", "--abi", f"cp{major_minor}", "--abi", "abi3"]
        cmd += ["--abi", "none", "--disable-pip-version-check", "-q"]
        for tag in sorted({t.platform for t in tags if t.platform != "any"}):
            cmd += ["--platform", tag]
        cmd += [f"{n}=={pins[n]}" for n in missing]
        logger.info("bundle: downloading %d wheels: %s", len(missing), ", ".join(missing))
        if subprocess.run(cmd).returncode != 0:
            raise ImcError(f"pip could not download the wheels of {', '.join(missing)}")
    wheels = {n: find_wheel(cache, n, v, tags) for n, v in pins.items()}
    absent = [f"{n}=={pins[n]}" for n, w in wheels.items() if w is None]
    if absent:
        raise ImcError(f"no wheel for Python {python_version} manylinux x86_64: {absent}")
    return wheels


# ----------------------------------------------------------------------------- layout


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy_source(dest: Path) -> None:
    """The package source (no caches) and the checked weights with their manifest."""
    from .weights import MANIFEST, find_weights, manifest

    root = settings.REPO_ROOT
    for name in SOURCE:
        src = root / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, dest / name)
    (dest / "weights").mkdir(parents=True)
    shutil.copy2(MANIFEST, dest / "weights" / "manifest.json")
    for name in manifest():
        _link(find_weights(name), dest / "weights" / name)  # checked against the manifest


def notebook(bundle_name: str) -> dict:
    """The Kaggle notebook (nbformat 4): configuration cell, run cell, check cell."""
    config = f"""# Paths: change them here if your inputs are named otherwise.
from pathlib import Path

INPUT_ROOT = Path("/kaggle/input")
BUNDLE = None  # None: the input folder holding install_and_run.py (built as {bundle_name!r})
COMPETITION = None  # None: the input folder holding sample_submission.csv and test/
DINOV2 = None  # None: the model input whose config.json says model_type dinov2, if attached
OUTPUT = Path("/kaggle/working/submission.csv")
WORK_DIR = Path("/tmp/imc")  # cache and run folders (kept out of the notebook's output)
# No flag is needed for the GPU: with a CUDA device imc applies its gpu preset by itself.
EXTRA_ARGS = []  # e.g. ["--time-budget", "30000", "--config", "...", "--preset", "cpu"]"""
    run = """import subprocess, sys

if BUNDLE is None:
    found = sorted(INPUT_ROOT.glob("*/install_and_run.py")) + sorted(
        INPUT_ROOT.glob("*/*/install_and_run.py"))
    assert found, f"no install_and_run.py under {INPUT_ROOT}: attach the imc bundle dataset"
    BUNDLE = found[0].parent
cmd = [sys.executable, str(BUNDLE / "install_and_run.py"), "--output", str(OUTPUT),
       "--input-root", str(INPUT_ROOT), "--work-dir", str(WORK_DIR), *EXTRA_ARGS]
if COMPETITION is not None:
    cmd += ["--competition", str(COMPETITION)]
if DINOV2 is not None:
    cmd += ["--dinov2", str(DINOV2)]
print(" ".join(cmd))
status = subprocess.run(cmd).returncode
# No exception here on purpose: a notebook that raises is a failed Kaggle submission and its
# output is thrown away, while the submission written by now holds every row (datasets that
# failed, or the whole run if it crashed early: outliers / the sample submission).
if status != 0:
    print("!" * 78, f"imc exited with status {status}: see the lines above.",
          "3: some datasets failed (their images are outliers), the rest is submitted;",
          "other: the run failed, the sample submission was copied if nothing was written.",
          "!" * 78, sep="\\n")
else:
    print("exit status 0")"""
    show = """import pandas as pd

sub = pd.read_csv(OUTPUT)
print(len(sub), "rows")
sub.head()"""
    intro = (
        "# imc: offline image matching and Structure-from-Motion\n\n"
        "Attach the competition and the imc bundle dataset (the folder built by `make kaggle`), "
        "with internet off. The cell below installs the bundle's wheels offline and writes "
        "`/kaggle/working/submission.csv`.\n\n"
        "**GPU**: choose a GPU accelerator in the notebook's settings; imc sees the CUDA "
        "device through torch and applies its `gpu` preset (more keypoints at a larger size, "
        "half-precision LightGlue, more pairs per image) without any flag. "
        '`EXTRA_ARGS = ["--preset", "cpu"]` keeps the defaults.\n\n'
        "**DINOv2** (global descriptors for the pairs): *Add Input -> Models*, a DINOv2 model "
        "in the Transformers framework (e.g. `dinov2`, variation `base`: a folder with "
        "`config.json` and `model.safetensors`). It is found under `/kaggle/input` by its "
        "`config.json` (`model_type: dinov2`) and passed as `$IMC_DINOV2`; or set `DINOV2` "
        "below to its folder. Without one, the pairs come from aggregated ALIKED descriptors "
        "and the log says so.\n\n"
        "If a dataset fails, the run goes on: the submission keeps every row (that dataset's "
        "images as outliers) and the failed datasets are listed at the end."
    )

    def cell(kind: str, text: str) -> dict:
        c = {"cell_type": kind, "metadata": {}, "source": text.splitlines(keepends=True)}
        if kind == "code":
            c.update(execution_count=None, outputs=[])
        return c

    return {
        "cells": [cell("markdown", intro), cell("code", config), cell("code", run)]
        + [cell("code", show)],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def _clear(out: Path) -> None:
    """Empty `out` if it is a previous bundle (or empty); refuse any other folder."""
    if out.exists() and any(out.iterdir()) and not (out / "bundle.json").is_file():
        raise ImcError(f"{out} is not empty and holds no bundle.json: refusing to overwrite it")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)


def build(
    out: Path,
    full: bool = False,
    python_version: str | None = None,
    wheel_cache: Path | None = None,
    extra: Iterable[str] = (),
    glibc: str = "2.35",
) -> Path:
    """Build the bundle at `out` (see the module docstring); returns `out`."""
    from . import __version__

    python_version = python_version or "{}.{}".format(*sys.version_info[:2])
    roots = (RUNTIME if full else KAGGLE_MISSING) + tuple(extra)
    pins = closure(roots, python_version, stop=() if full else KAGGLE_PROVIDES)
    wheels = fetch_wheels(pins, wheel_cache or default_wheel_cache(), python_version, glibc)
    out = Path(out)
    _clear(out)
    copy_source(out / "dataset")
    for wheel in wheels.values():
        _link(wheel, out / "wheels" / wheel.name)
    lines = [f"{n}=={v}" for n, v in pins.items()]
    (out / "wheels" / "requirements.txt").write_text("\n".join(lines) + "\n")
    _link(TEMPLATES / "install_and_run.py", out / "install_and_run.py")
    nb = json.dumps(notebook(out.name), indent=1) + "\n"
    (out / "imc-submission.ipynb").write_text(nb)
    info = {
        "imc_version": __version__,
        "mode": "full" if full else "kaggle",
        "python": python_version,
        "glibc_max": glibc,
        "requirements": lines,
        "kaggle_provides": [] if full else list(KAGGLE_PROVIDES),
        "wheels": {w.name: sha256(out / "wheels" / w.name) for w in wheels.values()},
    }
    (out / "bundle.json").write_text(json.dumps(info, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    logger.info("bundle: %s (%d wheels, %.0f MiB)", out, len(wheels), size)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imc.bundle", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build the offline Kaggle bundle")
    p.add_argument("--out", type=Path, default=Path("dist/kaggle"))
    p.add_argument("--full", action="store_true", help="bundle every dependency, torch included")
    p.add_argument("--python-version", help="target CPython, e.g. 3.10 (default: this one)")
    p.add_argument("--glibc", default="2.35", help="newest glibc of the target (default 2.35)")
    p.add_argument("--wheel-cache", type=Path, help="download folder, reused across builds")
    p.add_argument("--with", dest="extra", action="append", default=[], metavar="PACKAGE")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        build(args.out, args.full, args.python_version, args.wheel_cache, args.extra, args.glibc)
    except ImcError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
