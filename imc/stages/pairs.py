"""Pair selection: k nearest neighbours of the global descriptors (FAISS inner product).

Each image is paired with its `num_neighbors` most similar images (cosine similarity of the
L2-normalised global descriptors); the relation is made symmetric. A dataset with fewer than
`exhaustive_below` images uses all its pairs instead. In both modes a pair whose similarity is
below `min_similarity` is dropped: two images that look nothing alike are not matched. Its
default (null) is the descriptor's own floor, MIN_SIMILARITY: the similarities of the two
descriptors are on different scales. ALIKED's (mean and VLAD of the local descriptors): on
imc-bench every pair of images of the same scene is at 0.57 or more (ETs; 0.60 to 0.72 on the
other five datasets), and of the pairs across scenes or with a distractor, 70 of ETs' 150 and
190 of mixed_entry_temple's 241 are below 0.5, which LightGlue then need not match
(BENCHMARKS.md; measured on the bench itself). DINOv2's floor is the k-NN one it always had.
Pairs are `(a, b)` with a before b in the dataset order, sorted by that order.

Output `pairs.txt`: hloc's format, one pair `a b` per line, with the characters that the
format cannot hold (whitespace, `%`, `#`, control and non-ASCII characters) percent-encoded as
UTF-8 (`a b.jpg` -> `a%20b.jpg`); plain names are written as they are, as hloc writes them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import faiss
import numpy as np

from ..cache import atomic_write_text
from ..errors import ImcError
from ..log import logger
from .retrieval import global_model, load_global

GPU_MIN_IMAGES = 5000  # below this the CPU search takes milliseconds; a GPU brings nothing

# Cosine similarity below which two images are no pair when retrieval.min_similarity is null,
# per global descriptor (the `model` attribute of global.h5; module docstring).
MIN_SIMILARITY = {"aliked": 0.5, "dinov2": 0.2}


def knn(desc: np.ndarray, k: int, use_gpu: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product k-NN of every row among all rows (itself included).

    desc: [N x D] float32. Returns similarities [N x k'] float32 and indices [N x k'] int64,
    best first, k' = min(k, N). A faiss GPU index is used when `use_gpu` (None: when a GPU
    is visible to faiss and N >= GPU_MIN_IMAGES).
    """
    x = np.ascontiguousarray(desc, dtype=np.float32)
    k = min(k, len(x))
    index = faiss.IndexFlatIP(x.shape[1])
    if use_gpu is None:
        use_gpu = len(x) >= GPU_MIN_IMAGES and _num_gpus() > 0
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(x)
    sims, idx = index.search(x, k)
    return sims, idx


def _num_gpus() -> int:
    try:
        return faiss.get_num_gpus()
    except AttributeError:
        return 0


def pairs_from_descriptors(
    names: list[str],
    desc: np.ndarray,
    k: int,
    min_similarity: float,
    exhaustive_below: int,
    with_scores: bool = False,
) -> list[tuple[str, str]] | list[tuple[str, str, float]]:
    """Select the image pairs to match.

    names: [N] image names, in dataset order. desc: [N x D] global descriptors (normalised
    here, so similarities are cosines).
    k: neighbours per image. min_similarity: pairs below it are dropped (both modes).
    exhaustive_below: N below it -> all N (N - 1) / 2 pairs of at least min_similarity.
    Returns: pairs (a, b), a before b in `names`, sorted by (index a, index b); with
    `with_scores`, triples (a, b, cosine similarity).
    """
    n = len(names)
    if desc.shape[0] != n:
        raise ValueError(f"{n} names but {desc.shape[0]} descriptors")
    if n < 2:
        return []
    x = desc.astype(np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if n < exhaustive_below:
        i, j = np.triu_indices(n, 1)
        similar = np.einsum("nd,nd->n", x[i], x[j]) >= min_similarity
        i, j = i[similar], j[similar]
    else:
        i, j = _knn_pairs(x, k, min_similarity)
    if not with_scores:
        return [(names[a], names[b]) for a, b in zip(i, j)]
    sims = np.einsum("nd,nd->n", x[i], x[j]) if len(i) else np.zeros(0)
    return [(names[a], names[b], float(s)) for a, b, s in zip(i, j, sims)]


def _knn_pairs(x: np.ndarray, k: int, min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) of the symmetric k-NN relation with similarity >= min_similarity."""
    n = len(x)
    if k <= 0:
        return np.zeros(0, int), np.zeros(0, int)
    sims, idx = knn(x, k + 1)
    rows, cols = [], []
    for q in range(n):
        keep = idx[q] != q  # self, wherever a tie put it
        nb, s = idx[q][keep][:k], sims[q][keep][:k]
        nb = nb[(s >= min_similarity) & (nb >= 0)]
        rows.append(np.full(len(nb), q))
        cols.append(nb)
    r, c = np.concatenate(rows), np.concatenate(cols)
    lo, hi = np.minimum(r, c), np.maximum(r, c)
    flat = np.unique(lo.astype(np.int64) * n + hi)
    return flat // n, flat % n


@dataclass(frozen=True)
class Inputs:
    """What pair selection reads besides the configuration.

    global_path: the retrieval stage's `global.h5` (imc.stages.retrieval: one [D] float32 descriptor
        per readable image).
    """

    global_path: Path


def min_similarity(rconf: dict, global_path: Path) -> float:
    """The retrieval section's `min_similarity`, or when null the floor of the descriptor that
    made `global_path` (MIN_SIMILARITY; a descriptor it does not list gets DINOv2's)."""
    if rconf["min_similarity"] is not None:
        return float(rconf["min_similarity"])
    return MIN_SIMILARITY.get(global_model(global_path)[0], MIN_SIMILARITY["dinov2"])


def main(conf: dict, inputs: Inputs, out_dir: Path) -> Path:
    """Write `<out_dir>/pairs.txt` from `global.h5`.

    conf: the whole configuration; reads its retrieval section."""
    rconf = conf["retrieval"]
    k, below = rconf["num_neighbors"], rconf["exhaustive_below"]
    names, desc = load_global(inputs.global_path)
    floor = min_similarity(rconf, inputs.global_path)
    pairs = pairs_from_descriptors(names, desc, k, floor, below)
    mode = "all pairs" if len(names) < below else f"k={k}"
    logger.info(
        "pairs: %d images, %d pairs (%s, similarity at least %.2f)", len(names), len(pairs), mode,
        floor,
    )  # fmt: skip
    out = Path(out_dir) / "pairs.txt"
    atomic_write_text(out, "".join(f"{encode_name(a)} {encode_name(b)}\n" for a, b in pairs))
    return out


# Printable ASCII but the separator (space), the escape (%) and the comment mark (#).
_SAFE = "".join(c for c in string.printable if not c.isspace() and c not in "%#")


def encode_name(name: str) -> str:
    """An image name as one token of a pairs file (percent-encoding, see the module docstring)."""
    return quote(name, safe=_SAFE)


def decode_name(token: str) -> str:
    return unquote(token, errors="strict")


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Read an hloc pairs file (`a b` per line; blank lines and `#` comments ignored; names
    percent-decoded)."""
    path = Path(path)
    if not path.is_file():
        raise ImcError(f"pairs file not found: {path}")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ImcError(f"{path}:{lineno}: expected two image names, got '{line}'")
        try:
            pairs.append((decode_name(parts[0]), decode_name(parts[1])))
        except UnicodeDecodeError as e:
            raise ImcError(f"{path}:{lineno}: bad percent-encoding ({e})") from None
    return pairs
