"""Cache folders keyed by the configuration that produced them, and atomic, resumable h5 files.

hloc trusts its cache by file name, so a changed `max_keypoints` silently reuses stale
features, and a crash mid-write leaves a corrupt h5. Here each stage writes under
`<cache>/<stage>-<hash of its configuration and inputs>/` with that configuration stored as
`conf.json`, and h5 files are built as `<name>.partial` and renamed when complete; a partial
file is resumed (its finished keys are kept), or discarded if it cannot be read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from .log import logger


def config_hash(*parts: Any) -> str:
    """Short stable hash of JSON-serialisable parts (configurations, upstream keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def stage_dir(cache_root: Path, stage: str, *parts: Any) -> Path:
    """`<cache_root>/<stage>-<hash>/`, created, with the parts written to conf.json."""
    key = config_hash(*parts)
    path = Path(cache_root) / f"{stage}-{key}"
    path.mkdir(parents=True, exist_ok=True)
    conf_file = path / "conf.json"
    if not conf_file.exists():
        atomic_write_text(conf_file, json.dumps(parts, indent=2, sort_keys=True, default=str))
    return path


def file_mode() -> int:
    """The mode a new file gets from open() in this process: 0o666 less the umask."""
    try:  # Linux >= 4.7: read it without changing it (os.umask sets it for every thread)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path` and rename it into place. The file gets
    the mode of any other output (`file_mode()`, 0644 under the usual umask), not mkstemp's
    private 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def safe_name(name: str) -> str:
    """A dataset's folder name, in the cache and in the run folder: `name` with every run of
    characters other than letters, digits, '.', '_' and '-' made one '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def h5_key(name: str) -> str:
    """h5 group names cannot hold '/' as data: image names with folders are escaped."""
    return name.replace("/", "-SL-")


def h5_name(key: str) -> str:
    return key.replace("-SL-", "/")


def pair_key(a: str, b: str) -> str:
    """The hloc-style `a/b` key of a pair (each name escaped)."""
    return f"{h5_key(a)}/{h5_key(b)}"


@contextlib.contextmanager
def resumable_h5(path: Path) -> Iterator[h5py.File]:
    """Open `<path>.partial` for appending (resuming it if readable) and rename it to `path`
    when the block finishes without an exception. A finished `path` is reopened as partial so
    that new keys can be added to it (a new pair list over the same features)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    if path.exists() and not partial.exists():
        os.replace(path, partial)
    if partial.exists():
        try:
            with h5py.File(partial, "r"):
                pass
        except OSError:
            logger.warning("discarding unreadable partial cache file %s", partial)
            partial.unlink()
    f = h5py.File(partial, "a")
    try:
        yield f
    except BaseException:
        f.close()
        raise
    f.close()
    os.replace(partial, path)


def done_keys(f: h5py.File) -> set[str]:
    """Top-level keys whose group is complete (marked with the attribute `done`)."""
    out = set()
    for k, v in f.items():
        if isinstance(v, h5py.Group) and v.attrs.get("done", False):
            out.add(k)
        elif isinstance(v, h5py.Group):
            for k2, v2 in v.items():
                if isinstance(v2, h5py.Group) and v2.attrs.get("done", False):
                    out.add(f"{k}/{k2}")
    return out
