"""Global descriptors for pair selection: DINOv2, or aggregated ALIKED descriptors.

`dinov2`: a transformers `Dinov2Model` read from a local folder only (config.json and
model.safetensors or pytorch_model.bin, the layout of a Kaggle model input). Each image keeps
its aspect ratio: the short side is resized to `image_size` and the long side in proportion,
both rounded to multiples of the patch size (so nothing is cropped away and the stretch is
below half a patch). The descriptor is the L2-normalised CLS token concatenated with the
L2-normalised mean of the patch tokens, L2-normalised again: [2 x hidden_size] float32.

Where the DINOv2 folder comes from: `retrieval.dinov2_dir`, else `settings.dinov2_dirs()`
($IMC_DINOV2, then dinov2* folders of the weights folders, Kaggle's inputs included); on
Kaggle, attach a transformers DINOv2 model as a model input (the notebook's
install_and_run.py finds it under /kaggle/input and sets $IMC_DINOV2). Without one, retrieval
falls back to `aliked` with a warning that says how to provide one.

`aliked` (also the fallback when no DINOv2 folder is found): the image's ALIKED descriptors
summarised twice, with equal weight: their L2-normalised mean, and a VLAD against a codebook of
`VLAD_CLUSTERS` centroids that seeded spherical k-means builds from the dataset's own
descriptors (residuals summed per centroid, signed square root, L2 norm):
[128 + VLAD_CLUSTERS x 128] float32, unit norm. On imc-bench the mean alone keeps the two ET
scenes apart best and the VLAD alone finds the nearest views on the rings best; together they
do both (precision@5 1.0 on ETs for every codebook seed).

Output `global.h5`: one dataset per image (key `h5_key(name)`, [D] float32, attrs `index`:
position in the dataset) and file attrs `model` and `source` (the DINOv2 folder, or `aliked`);
a file made from another source is recomputed (a DINOv2 folder that appeared since).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import faiss
import h5py
import numpy as np
import torch
from tqdm import tqdm

from ..cache import h5_key, h5_name, resumable_h5
from ..data import Dataset
from ..errors import ImcError, WeightsError
from ..images import ImageReadError, read_image
from ..log import logger
from ..settings import dinov2_dirs, kaggle_input, weights_dirs
from . import feature_file

MODELS = ("dinov2", "aliked")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
VLAD_CLUSTERS = 32  # codebook size of the ALIKED aggregation
VLAD_SAMPLES_PER_IMAGE = 256  # descriptors per image that train the codebook
VLAD_ITERATIONS = 20
VLAD_SEED = 0


# ----------------------------------------------------------------------------- DINOv2


def find_dinov2(conf: dict) -> Path | None:
    """The configured folder (`conf['dinov2_dir']`), else the first of `settings.dinov2_dirs()`."""
    if conf.get("dinov2_dir"):
        return Path(conf["dinov2_dir"])
    dirs = dinov2_dirs()
    return dirs[0] if dirs else None


def load_dinov2(folder: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Load a transformers `Dinov2Model` from `folder`, never from the network.

    Raises ImcError naming the folder when config.json or the weights are missing or the
    config is not a DINOv2 one, and WeightsError when weights do not fit the model.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImcError(f"DINOv2 folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ImcError(f"DINOv2 folder {folder} has no config.json")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ImcError(
            f"DINOv2 folder {folder} has no weights ({' or '.join(WEIGHT_FILES[:2])}); "
            f"it holds: {present}"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ImcError(f"{config_file}: not a valid JSON config ({e})") from None
    if model_type != "dinov2":
        raise ImcError(f"{config_file}: model_type is '{model_type}', expected 'dinov2'")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformers import Dinov2Model  # deferred: slow import, needed only here

    try:
        model, info = Dinov2Model.from_pretrained(
            folder, local_files_only=True, output_loading_info=True
        )
    except Exception as e:  # safetensors, torch and transformers each raise their own types
        raise WeightsError(f"DINOv2 folder {folder}: cannot load the model ({e})") from None
    bad = {k: sorted(map(str, info.get(k) or [])) for k in ("missing_keys", "unexpected_keys")}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise WeightsError(f"DINOv2 folder {folder}: weights do not fit the config: {bad}")
    logger.info("DINOv2 loaded from %s (hidden size %d)", folder, model.config.hidden_size)
    return model.float().eval().to(device)


def preprocess(image: np.ndarray, image_size: int, patch_size: int) -> torch.Tensor:
    """[H x W x 3] uint8 RGB -> [1 x 3 x H' x W'] float32, ImageNet-normalised.

    The short side becomes `image_size` rounded to a multiple of `patch_size`; the long side
    keeps the aspect ratio, rounded to a multiple of `patch_size`. No crop.
    """
    h, w = image.shape[:2]
    short = max(patch_size, round(image_size / patch_size) * patch_size)
    scale = short / min(h, w)
    new_h = max(patch_size, round(h * scale / patch_size) * patch_size)
    new_w = max(patch_size, round(w * scale / patch_size) * patch_size)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interp)
    x = (resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


@torch.inference_mode()
def dinov2_descriptor(model: torch.nn.Module, image: np.ndarray, image_size: int) -> np.ndarray:
    """Global descriptor of one image: [2 x hidden_size] float32, unit norm.

    CLS token and mean patch token of the last layer (after the final layer norm), each
    L2-normalised, concatenated and normalised again.
    """
    device = next(model.parameters()).device
    x = preprocess(image, image_size, model.config.patch_size).to(device)
    tokens = model(pixel_values=x).last_hidden_state[0].float()  # [1 + P x C]
    cls = torch.nn.functional.normalize(tokens[0], dim=0)
    patches = torch.nn.functional.normalize(tokens[1:].mean(0), dim=0)
    desc = torch.nn.functional.normalize(torch.cat([cls, patches]), dim=0)
    return desc.cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------- ALIKED aggregate


def build_codebook(
    descriptor_sets: Iterable[np.ndarray],
    num_clusters: int = VLAD_CLUSTERS,
    samples_per_image: int = VLAD_SAMPLES_PER_IMAGE,
    seed: int = VLAD_SEED,
) -> np.ndarray | None:
    """Seeded k-means over a deterministic sample of each image's descriptors.

    descriptor_sets: per image [N_i x C] float32.
    Returns: [K x C] float32 unit-norm centroids, K = min(num_clusters, samples), or None when
    there is no descriptor at all.
    """
    rng = np.random.default_rng(seed)
    sample = []
    for desc in descriptor_sets:
        desc = np.asarray(desc, np.float32)
        if len(desc) > samples_per_image:
            desc = desc[np.sort(rng.choice(len(desc), samples_per_image, replace=False))]
        sample.append(desc)
    sample = [d for d in sample if len(d)]
    if not sample:
        return None
    x = np.ascontiguousarray(np.concatenate(sample), dtype=np.float32)
    k = min(num_clusters, len(x))
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=VLAD_ITERATIONS, seed=seed, spherical=True, min_points_per_centroid=1
    )
    kmeans.train(x)
    return _l2(kmeans.centroids.astype(np.float32))


def aggregate_local_descriptors(descriptors: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Mean descriptor and power-normalised VLAD, concatenated with equal weight.

    descriptors: [N x C] float32 local descriptors (each L2-normalised here first).
    codebook: [K x C] float32 centroids.
    Returns: [C + K * C] float32, unit norm: the L2-normalised mean of the descriptors, then
    the VLAD (residuals to the nearest centroid summed per centroid, signed square root,
    L2-normalised), each half scaled by 1/sqrt(2). All zeros when N == 0.
    """
    k, c = codebook.shape
    if len(descriptors) == 0:
        return np.zeros(c + k * c, np.float32)
    desc = _l2(np.asarray(descriptors, np.float64))
    cb = codebook.astype(np.float64)
    assign = np.argmin((desc**2).sum(1)[:, None] - 2 * desc @ cb.T + (cb**2).sum(1)[None], axis=1)
    vlad = np.zeros((k, c))
    np.add.at(vlad, assign, desc - cb[assign])
    vlad = np.sign(vlad) * np.sqrt(np.abs(vlad))
    mean = _l2(desc.mean(0))
    return (np.concatenate([mean, _l2(vlad.reshape(-1))]) / np.sqrt(2)).astype(np.float32)


def global_from_local(
    local: dict[str, np.ndarray], num_clusters: int = VLAD_CLUSTERS
) -> dict[str, np.ndarray]:
    """Aggregate a whole dataset: name -> [N_i x C] descriptors -> name -> [C + K * C]."""
    codebook = build_codebook(local.values(), num_clusters)
    if codebook is None:
        return {}
    return {n: aggregate_local_descriptors(d, codebook) for n, d in local.items()}


def local_descriptors_from_h5(features_path: str | Path) -> Callable[[str], np.ndarray]:
    """Reader of `features.h5`: image name -> its `descriptors` [N x C] float32."""
    features_path = Path(features_path)

    def read(name: str) -> np.ndarray:
        try:
            arrays = feature_file.load_features(features_path, name, ("descriptors",))
        except ImcError:  # absent, or unreadable (reported by the features stage)
            raise ImcError(f"{features_path}: no descriptors for image '{name}'") from None
        return arrays["descriptors"].astype(np.float32)

    return read


def _l2(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; zero rows stay zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


# ----------------------------------------------------------------------------- stage


def resolve_model(conf: dict) -> tuple[str, Path | None]:
    """("dinov2", folder) when a DINOv2 folder is configured or found, else ("aliked", None)."""
    model = conf["model"]
    if model not in MODELS:
        raise ImcError(f"unknown retrieval model '{model}' (valid: {', '.join(MODELS)})")
    if model == "aliked":
        return "aliked", None
    folder = find_dinov2(conf)
    if folder is None:
        logger.warning(
            "no DINOv2 model found (searched for config.json in %s); retrieval falls back to "
            "aggregated ALIKED descriptors. To use DINOv2: set $IMC_DINOV2 (or "
            "retrieval.dinov2_dir) to a folder holding a transformers Dinov2Model (config.json "
            "and model.safetensors or pytorch_model.bin), or put that folder, named dinov2, "
            "dinov2-base or dinov2-small, in a weights folder; on Kaggle, attach the DINOv2 "
            "model as a model input: %s",
            _searched_dinov2_dirs(),
            _kaggle_dinov2_hint(),
        )
        return "aliked", None
    return "dinov2", folder


def _searched_dinov2_dirs(shown: int = 6) -> str:
    """What `settings.dinov2_dirs()` looks at, in words, for the warning when it finds nothing."""
    env = os.environ.get("IMC_DINOV2")
    bases = [str(b) for b in weights_dirs()]
    more = f" and {len(bases) - shown} more" if len(bases) > shown else ""
    return (
        (f"$IMC_DINOV2={env}, " if env else "$IMC_DINOV2 (unset), ")
        + f"dinov2, dinov2-base, dinov2-small and *dinov2* folders of {', '.join(bases[:shown])}"
        + more
    )


def _kaggle_dinov2_hint() -> str:
    """Where `settings.weights_dirs()` looks under Kaggle's input root, in words."""
    root = kaggle_input()
    where = ", ".join(f"{root}/{p}" for p in ("*", "*/weights", "*/*", "*/*/*", "*/*/*/*"))
    return (
        f"the same names are searched for in {where} ($IMC_KAGGLE_INPUT, default "
        "/kaggle/input), and the imc notebook's install_and_run.py sets $IMC_DINOV2 to the "
        "folder under it whose config.json says model_type dinov2"
    )


@dataclass(frozen=True)
class Inputs:
    """What the retrieval stage reads besides the configuration.

    dataset: the images (names and files; DINOv2 reads the files).
    device: where DINOv2 runs.
    local_descriptors: image name -> its [N x C] float32 ALIKED descriptors (the features
        stage's; `local_descriptors_from_h5`), raising ImcError for an image without any;
        required by the `aliked` model and by the fallback when no DINOv2 folder is found.
    """

    dataset: Dataset
    device: str | torch.device = "cpu"
    local_descriptors: Callable[[str], np.ndarray] | None = None


def main(conf: dict, inputs: Inputs, out_dir: Path) -> Path:
    """Write `<out_dir>/global.h5`: one global descriptor per readable image (resumable).

    conf: the whole configuration; reads its retrieval section.
    """
    rconf, dataset, local_descriptors = conf["retrieval"], inputs.dataset, inputs.local_descriptors
    out = Path(out_dir) / "global.h5"
    model_name, folder = resolve_model(rconf)
    n = len(dataset.images)
    logger.info("retrieval (%s) on %s: %d images, %s", model_name, dataset.name, n, rconf)
    if model_name == "aliked" and local_descriptors is None:
        raise ImcError("the 'aliked' retrieval needs the local descriptors of the features stage")
    source = str(folder.resolve()) if folder else "aliked"
    with resumable_h5(out) as f:
        if f.attrs.get("source", source) != source:
            logger.warning("retrieval: recomputing %s (made by %s)", out, f.attrs["source"])
            for key in list(f.keys()):
                del f[key]
        f.attrs["model"], f.attrs["source"] = model_name, source
        todo = [(i, im) for i, im in enumerate(dataset.images) if h5_key(im.name) not in f]
        if model_name == "dinov2" and todo:
            _write_dinov2(f, todo, load_dinov2(folder, inputs.device), rconf["image_size"])
        elif model_name == "aliked" and todo:
            _write_aliked(f, dataset, todo, local_descriptors)
    return out


def _write_dinov2(f: h5py.File, todo: list, model: torch.nn.Module, image_size: int) -> None:
    """DINOv2 descriptors of the images in `todo` ([(index, ImageInfo)]); unreadable ones
    are logged and skipped."""
    for i, im in tqdm(todo, desc="retrieval", unit="image", mininterval=2):
        try:
            image = read_image(im.path)
        except ImageReadError as e:
            logger.warning("retrieval: skipping unreadable image: %s", e)
            continue
        _write(f, im.name, i, dinov2_descriptor(model, image, image_size))


def _write_aliked(
    f: h5py.File, dataset: Dataset, todo: list, local_descriptors: Callable[[str], np.ndarray]
) -> None:
    """Aggregated ALIKED descriptors of the images in `todo` ([(index, ImageInfo)]). The
    codebook is trained on every image of the dataset, so that a resumed run uses the same
    one; descriptors are read twice rather than held in memory."""

    def read(name: str) -> np.ndarray | None:
        try:
            return local_descriptors(name)
        except ImcError as e:
            logger.warning("retrieval: no local descriptors, image skipped: %s", e)
            return None

    sets = (read(im.name) for im in dataset.images)
    codebook = build_codebook(d for d in sets if d is not None)
    if codebook is None:
        logger.warning("retrieval: no local descriptor in dataset %s", dataset.name)
        return
    for i, im in tqdm(todo, desc="retrieval", unit="image", mininterval=2):
        desc = read(im.name)
        if desc is not None:
            _write(f, im.name, i, aggregate_local_descriptors(desc, codebook))


def _write(f: h5py.File, name: str, index: int, desc: np.ndarray) -> None:
    ds = f.create_dataset(h5_key(name), data=desc.astype(np.float32))
    ds.attrs["index"] = index


def global_model(path: str | Path) -> tuple[str, str]:
    """Which model made a `global.h5`: (model name, where its weights came from); "?" each
    when the file does not say."""
    with h5py.File(path, "r") as f:
        return str(f.attrs.get("model", "?")), str(f.attrs.get("source", "?"))


def load_global(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read `global.h5`: names in dataset order and descriptors [N x D] float32."""
    path = Path(path)
    if not path.is_file():
        raise ImcError(f"global descriptor file not found: {path}")
    with h5py.File(path, "r") as f:
        items = sorted((int(f[k].attrs["index"]), k) for k in f.keys())
        names = [h5_name(k) for _, k in items]
        if not items:
            return names, np.zeros((0, 0), np.float32)
        desc = np.stack([f[k][()] for _, k in items]).astype(np.float32)
    return names, desc
