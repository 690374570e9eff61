"""Matching: LightGlue on the upright (rotation-canonicalized) keypoints of every pair.

LightGlue sees `keypoints_upright` with the `upright_size` of each image, so two images that
the orientation stage turned upright are matched as upright views; the matches index the
stored keypoints (same order). Output `matches.h5`, one group per pair
`h5_key(a)/h5_key(b)` (imc.cache.pair_key):

    matches   [M x 2] int32, column 0 indexes the keypoints of a, column 1 those of b
    scores    [M] float32, LightGlue's matching scores
    attrs: done

Batches (`batch_size`; 0 chooses from the device: one pair at a time on the CPU, as many as
half the free memory holds on CUDA): several pairs run in one forward pass, padded to the
batch's longest keypoint lists, the padding masked out of every attention and the assignment
computed on each pair's own points. Each pair stops at the layer where it would stop on its own
(`depth_confidence`), so a batched pair gives the matches it gives alone when point pruning is
off; point pruning (`width_confidence`) does not run in a batch, as in kornia's own batched and
compiled paths. Features are read from features.h5 and moved to the device by a background
thread, one batch ahead of the model.

When both images of a pair have SIFT keypoints (features.sift_max_keypoints), their RootSIFT
descriptors are matched too, by mutual nearest neighbours passing Lowe's ratio test
(`sift_ratio`), and those matches follow LightGlue's in the pair's group, indexing the SIFT
rows of `keypoints` (after the ALIKED ones; imc.stages.feature_file); their scores are
1 - the ratio.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..cache import done_keys, h5_name, pair_key, resumable_h5
from ..errors import ImcError
from ..log import logger
from ..parallel import cpu_workers, ordered_map
from ..weights import load_state_dict, load_strict
from . import feature_file

CACHE_IMAGES = 256  # images whose features stay in memory (and on the device) while matching
MAX_BATCH = 64
# GPU memory of one pair at 4096 keypoints per image in float16, measured on an H200 with kornia
# 0.9.0 (1.0 / 2.0 / 3.8 / 6.6 GiB at 4 / 8 / 16 / 28 pairs); it grows with the square of the
# keypoints (the attention matrices).
PAIR_BYTES_4096_FP16 = 0.24 * 2**30


@dataclass(frozen=True)
class MatcherSpec:
    """A LightGlue variant: its weight file and the descriptor size it takes."""

    weights: str
    input_dim: int
    allowed_missing: tuple[str, ...] = ()


MODELS: dict[str, MatcherSpec] = {
    # confidence_thresholds is a buffer computed at construction, absent from the file.
    "lightglue-aliked": MatcherSpec("aliked_lightglue.pth", 128, ("confidence_thresholds",)),
}


def build_model(conf: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """LightGlue for `conf["model"]`, weights checked and strictly loaded, in eval mode.

    Built with `features=None` so that kornia downloads nothing; `input_dim` comes from the
    registry (128 for ALIKED: with kornia's default 256 the input projection would be left
    untrained). float16 with `half_precision` on CUDA, bfloat16 with `cpu_bfloat16` on CPU,
    else float32. Off CUDA, cross-attention runs as `cross_attention` does.
    """
    from kornia.feature import LightGlue

    if conf["model"] not in MODELS:
        raise ImcError(f"unknown matcher '{conf['model']}' (valid: {', '.join(MODELS)})")
    spec = MODELS[conf["model"]]
    model = LightGlue(
        features=None,
        weights=None,
        input_dim=spec.input_dim,
        filter_threshold=conf["filter_threshold"],
        depth_confidence=conf["depth_confidence"],
        width_confidence=conf["width_confidence"],
    )
    load_strict(model, load_state_dict(spec.weights), spec.allowed_missing, name=spec.weights)
    device = torch.device(device)
    if device.type != "cuda":
        for layer in model.transformers:
            layer.cross_attn.forward = types.MethodType(cross_attention, layer.cross_attn)
    return model.eval().to(device=device, dtype=precision(conf, device))


def cross_attention(
    block: torch.nn.Module, x0: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """kornia's CrossBlock.forward with each direction's attention as one fused
    `scaled_dot_product_attention` call. kornia takes that path only on CUDA; elsewhere it
    builds the [heads x M x N] similarity and two softmaxes of it, which on a CPU take 2.4x as
    long at 2048 keypoints (the same outputs within 1e-6). The shared query-key projection
    scaled by 1/sqrt(head size) is what SDPA's default scale applies."""
    qk0, qk1 = block.to_qk(x0), block.to_qk(x1)
    v0, v1 = block.to_v(x0), block.to_v(x1)
    heads = (qk0, qk1, v0, v1)
    qk0, qk1, v0, v1 = (t.unflatten(-1, (block.heads, -1)).transpose(1, 2) for t in heads)
    mask10 = None if mask is None else mask.transpose(-1, -2)
    m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=mask)
    m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=mask10)
    if mask is not None:  # padded rows attend to nothing
        m0, m1 = m0.nan_to_num(), m1.nan_to_num()
    m0, m1 = (block.to_out(m.transpose(1, 2).flatten(start_dim=-2)) for m in (m0, m1))
    x0 = x0 + block.ffn(torch.cat([x0, m0], -1))
    x1 = x1 + block.ffn(torch.cat([x1, m1], -1))
    return x0, x1


def precision(conf: dict, device: str | torch.device) -> torch.dtype:
    """LightGlue's dtype: float16 with `half_precision` on CUDA, bfloat16 with `cpu_bfloat16`
    on the CPU, else float32."""
    device = torch.device(device)
    if device.type == "cuda" and conf.get("half_precision", False):
        return torch.float16
    if device.type == "cpu" and conf.get("cpu_bfloat16", False):
        return torch.bfloat16
    return torch.float32


def inputs(feats: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """One image's LightGlue inputs: keypoints [1 x N x 2] float32 (upright pixels),
    descriptors [1 x N x D] in the model's dtype, image_size [1 x 2] (W, H) of the upright
    image, from which LightGlue normalises the keypoints; and `sift` [K x 128] float32 when
    the image has SIFT descriptors."""
    kpts = np.asarray(feats["keypoints_upright"], np.float32).reshape(-1, 2)
    desc = np.asarray(feats["descriptors"], np.float32)
    out = {
        "keypoints": torch.from_numpy(kpts)[None].to(device),
        "descriptors": torch.from_numpy(desc)[None].to(device=device, dtype=dtype),
        "image_size": torch.tensor([feats["upright_size"]], dtype=torch.float32, device=device),
    }
    if feature_file.SIFT in feats:  # not LightGlue's: matched by match_sift (with_sift)
        sift = np.asarray(feats[feature_file.SIFT], np.float32).reshape(-1, 128)
        out["sift"] = torch.from_numpy(sift).to(device)
    return out


def match_inputs(model: torch.nn.Module, data0: dict, data1: dict) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
    if data0["keypoints"].shape[1] < 2 or data1["keypoints"].shape[1] < 2:
        return empty
    for data in (data0, data1):
        dim = data["descriptors"].shape[-1]
        if dim != model.conf.input_dim:
            raise ImcError(f"descriptors of size {dim}; this matcher takes {model.conf.input_dim}")
    with torch.inference_mode():
        out = model({"image0": data0, "image1": data1})
    matches = out["matches"][0].cpu().numpy().astype(np.int32).reshape(-1, 2)
    scores = out["scores"][0].float().cpu().numpy().astype(np.float32).reshape(-1)
    return matches, scores


def match_sift(
    desc0: torch.Tensor, desc1: torch.Tensor, ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of two sets of unit descriptors ([N0 x D], [N1 x D]) whose
    distance is below `ratio` x the distance to the second nearest, on both sides.

    Returns: matches [M x 2] int32 (rows of desc0, desc1), in the order of desc0, and scores
    [M] float32, 1 - the larger of the two ratios. Empty when either side has fewer than two.
    """
    if len(desc0) < 2 or len(desc1) < 2:
        return np.zeros((0, 2), np.int32), np.zeros(0, np.float32)
    dist = (2.0 - 2.0 * (desc0.float() @ desc1.float().T)).clamp_min(0.0).sqrt()
    d0, i0 = dist.topk(2, dim=1, largest=False)  # for each of desc0, its two nearest in desc1
    d1, i1 = dist.topk(2, dim=0, largest=False)  # for each of desc1, its two nearest in desc0
    r0 = d0[:, 0] / d0[:, 1].clamp_min(1e-8)
    r1 = d1[0] / d1[1].clamp_min(1e-8)
    rows = torch.arange(len(desc0), device=desc0.device)
    nn = i0[:, 0]
    keep = (i1[0, nn] == rows) & (r0 < ratio) & (r1[nn] < ratio)
    pairs = torch.stack([rows[keep], nn[keep]], -1)
    scores = 1.0 - torch.maximum(r0[keep], r1[nn[keep]])
    return pairs.cpu().numpy().astype(np.int32).reshape(-1, 2), scores.cpu().numpy().astype(
        np.float32
    )


def with_sift(
    data0: dict, data1: dict, found: tuple[np.ndarray, np.ndarray], ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """LightGlue's (matches, scores) of a pair followed by its SIFT matches (match_sift),
    their indices moved past each image's ALIKED keypoints; `found` unchanged when either
    image has no SIFT descriptors."""
    if "sift" not in data0 or "sift" not in data1:
        return found
    matches, scores = match_sift(data0["sift"], data1["sift"], ratio)
    matches = matches + np.array([[_count(data0), _count(data1)]], np.int32)
    return np.concatenate([found[0], matches]), np.concatenate([found[1], scores])


def match_pair(
    model: torch.nn.Module, feats0: dict, feats1: dict, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Match two images' features (dicts as returned by imc.stages.features.extract_image or
    load_features: keypoints_upright [N x 2], descriptors [N x D], upright_size (W, H)).

    Returns: matches [M x 2] int32 (indices into the keypoints of image 0 and image 1, the
    stored and upright keypoints having the same order) and scores [M] float32. Empty when
    either image has fewer than two keypoints.
    """
    device = torch.device(device)
    dtype = next(model.parameters()).dtype
    return match_inputs(model, inputs(feats0, device, dtype), inputs(feats1, device, dtype))


def batch_size(
    conf: dict, device: torch.device, keypoints: Callable[[], int], dtype: torch.dtype
) -> int:
    """Pairs per forward pass: `conf["batch_size"]`, or for 0 one on the CPU (where point
    pruning saves more than batching gives) and on CUDA as many pairs of `keypoints()` points
    (asked only there) as half the free device memory holds (at most MAX_BATCH)."""
    if conf.get("batch_size", 0) > 0:
        return int(conf["batch_size"])
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_pair = PAIR_BYTES_4096_FP16 * max(keypoints() / 4096, 0.25) ** 2
    per_pair *= 2 if dtype == torch.float32 else 1
    return int(max(1, min(MAX_BATCH, 0.5 * free // per_pair)))


def _pad(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Stack one side of a batch: keypoints [B x L x 2] (normalised as LightGlue does),
    descriptors [B x L x D], mask [B x 1 x L x 1] (True for real points), and the lengths."""
    from kornia.feature.lightglue import normalize_keypoints

    lengths = [d["keypoints"].shape[1] for d in items]
    b, size, ref = len(items), max(lengths), items[0]["descriptors"]
    kpts = ref.new_zeros((b, size, 2), dtype=torch.float32)
    desc = ref.new_zeros((b, size, ref.shape[-1]))
    mask = torch.zeros((b, 1, size, 1), dtype=torch.bool, device=ref.device)
    for k, (d, n) in enumerate(zip(items, lengths)):
        kpts[k, :n] = normalize_keypoints(d["keypoints"], d["image_size"])[0]
        desc[k, :n] = d["descriptors"][0]
        mask[k, 0, :n] = True
    return kpts, desc, mask, lengths


def match_batch(
    model: torch.nn.Module, batch: list[tuple[dict, dict]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Match several pairs in one forward pass (see the module docstring); each item as
    `_inputs` gives them. Returns (matches [M x 2] int32, scores [M] float32) per pair."""
    from kornia.feature.lightglue import filter_matches

    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    live = []
    for k, (d0, d1) in enumerate(batch):
        if min(_count(d0), _count(d1)) < 2:
            results[k] = match_inputs(model, d0, d1)  # empty
        else:
            live.append(k)
    if live:
        with torch.inference_mode():
            finals = _run_layers(model, [batch[k] for k in live])
            for k, (layer, desc0, desc1) in zip(live, finals):
                scores, _ = model.log_assignment[layer](desc0[None], desc1[None])
                m0, _, ms0, _ = filter_matches(scores, model.conf.filter_threshold)
                valid = m0[0] > -1
                pairs = torch.stack([torch.where(valid)[0], m0[0][valid]], -1)
                results[k] = (
                    pairs.cpu().numpy().astype(np.int32).reshape(-1, 2),
                    ms0[0][valid].float().cpu().numpy().astype(np.float32),
                )
    return [results[k] for k in range(len(batch))]


def _count(data: dict) -> int:
    return int(data["keypoints"].shape[1])


def _run_layers(model, batch: list[tuple[dict, dict]]) -> list[tuple[int, torch.Tensor, ...]]:
    """The transformer layers over a padded batch; per pair, the layer it stops at and its
    descriptors there ([N0 x C], [N1 x C], padding removed)."""
    kpts0, desc0, mask0, len0 = _pad([d0 for d0, _ in batch])
    kpts1, desc1, mask1, len1 = _pad([d1 for _, d1 in batch])
    desc0, desc1 = model.input_proj(desc0), model.input_proj(desc1)
    pe_dtype = model.posenc.Wr.weight.dtype
    enc0, enc1 = model.posenc(kpts0.to(pe_dtype)), model.posenc(kpts1.to(pe_dtype))
    active, finals = list(range(len(batch))), [None] * len(batch)
    last = model.conf.n_layers - 1
    for i in range(model.conf.n_layers):
        desc0, desc1 = model.transformers[i](desc0, desc1, enc0, enc1, mask0=mask0, mask1=mask1)
        if i == last:
            break
        if model.conf.depth_confidence <= 0:
            continue
        token0, token1 = model.token_confidence[i](desc0, desc1)
        keep = []
        for j, k in enumerate(active):
            conf = torch.cat([token0[j, : len0[k]], token1[j, : len1[k]]])
            unconfident = (conf < model.confidence_thresholds[i]).float().sum()
            if 1.0 - unconfident / (len0[k] + len1[k]) > model.conf.depth_confidence:
                finals[k] = (i, desc0[j, : len0[k]], desc1[j, : len1[k]])
            else:
                keep.append(j)
        if not keep:
            return finals
        if len(keep) < len(active):  # finished pairs leave the batch
            index = torch.tensor(keep, device=desc0.device)
            desc0, desc1 = desc0[index], desc1[index]
            enc0, enc1 = enc0[:, index], enc1[:, index]
            mask0, mask1 = mask0[index], mask1[index]
            active = [active[j] for j in keep]
    for j, k in enumerate(active):
        finals[k] = (i, desc0[j, : len0[k]], desc1[j, : len1[k]])
    return finals


class _FeatureCache:
    """LightGlue inputs of recently used images, read from an open features.h5."""

    def __init__(self, f: h5py.File, device: torch.device, dtype: torch.dtype):
        self.f, self.device, self.dtype = f, device, dtype
        self.items: OrderedDict[str, dict] = OrderedDict()

    def __getitem__(self, name: str) -> dict:
        if name in self.items:
            self.items.move_to_end(name)
            return self.items[name]
        arrays = ("keypoints_upright", "descriptors", feature_file.SIFT)
        feats = feature_file.read_group(feature_file.group(self.f, name), name, arrays)
        self.items[name] = inputs(feats, self.device, self.dtype)
        if len(self.items) > CACHE_IMAGES:
            self.items.popitem(last=False)
        return self.items[name]


@dataclass(frozen=True)
class Inputs:
    """What the matching stage reads besides the configuration.

    pairs: the image pairs (a, b) to match, in order (the retrieval stage's, or the part of
        them the time budget allows).
    features_path: the features stage's `features.h5` (imc.stages.features).
    device: where LightGlue runs.
    deadline: a `time.monotonic()` value after which matching stops, the pairs left unwritten
        (None: no limit).
    load_model: returns the run's LightGlue (imc.pipeline.Models), called when a pair needs
        matching; None: built from the matching section.
    on_matched: called with each batch of pairs and their (matches, scores) once they are
        written (imc.stages.verification.Background.submit); None: nothing.
    """

    pairs: list[tuple[str, str]]
    features_path: Path
    device: str | torch.device = "cpu"
    deadline: float | None = None
    load_model: Callable[[], torch.nn.Module] | None = None
    on_matched: Callable[[list, list], None] | None = None


def main(conf: dict, inputs: Inputs, out_dir: Path) -> Path:
    """Match every pair into `<out_dir>/matches.h5` (resumable: pairs already done are
    skipped). Pairs involving an image whose features failed are left out.

    conf: the whole configuration; reads its matching section."""
    mconf, pairs, features_path = conf["matching"], inputs.pairs, inputs.features_path
    out = Path(out_dir) / "matches.h5"
    out.parent.mkdir(parents=True, exist_ok=True)
    logger.info("matching: %d pairs, %s", len(pairs), mconf)
    failed = feature_file.failed_images(features_path)
    device = torch.device(inputs.device)
    with resumable_h5(out) as f:
        todo = [(a, b) for a, b in pairs if not _is_done(f, pair_key(a, b))]
        if len(todo) < len(pairs):
            logger.info("matching: %d pairs already done", len(pairs) - len(todo))
        skipped = [p for p in todo if p[0] in failed or p[1] in failed]
        todo = [p for p in todo if p[0] not in failed and p[1] not in failed]
        if todo:
            model = inputs.load_model() if inputs.load_model else build_model(mconf, device)
            _match_all(model, mconf, todo, inputs, f, device)
    if skipped:
        msg = "matching: %d pairs skipped (unreadable images: %s)"
        logger.warning(msg, len(skipped), failed)
    return out


def _match_all(model, conf, todo, inputs: Inputs, f: h5py.File, device) -> None:
    """Match `todo` in batches into the open matches.h5 `f`, the next batch's features read
    on a background thread, pairs one at a time matched `cpu_workers` at once; stop at
    `inputs.deadline`; each batch written (in order) is handed to `inputs.on_matched`."""
    features_path, deadline = inputs.features_path, inputs.deadline
    dtype = next(model.parameters()).dtype
    size = batch_size(conf, device, lambda: _max_keypoints(features_path), dtype)
    if size > 1:
        logger.info("matching: %d pairs per forward pass", size)
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]

    def until_deadline(stream):
        for k, item in enumerate(stream):
            if deadline is not None and time.monotonic() > deadline:
                left = sum(len(b) for b in batches[k:])
                logger.warning("matching: deadline reached, %d of %d pairs left", left, len(todo))
                return
            yield item

    bar = tqdm(total=len(todo), desc="matching", unit="pair", mininterval=2)
    stream = _prefetch(batches, features_path, device, dtype)
    with bar, contextlib.closing(stream):
        found_all = match_chunks(model, until_deadline(stream), size, device, lambda it: it[1])
        for (batch, data), found in found_all:
            if any("sift" in d for pair in data for d in pair):
                found = [with_sift(*d, m, conf["sift_ratio"]) for d, m in zip(data, found)]
            for (a, b), (matches, scores) in zip(batch, found):
                _write(f, pair_key(a, b), matches, scores)
            f.flush()  # a killed run keeps every pair written so far (about 3 ms)
            if inputs.on_matched is not None:
                inputs.on_matched(batch, found)
            bar.update(len(batch))


def match_chunks(
    model: torch.nn.Module,
    items: Iterable,
    size: int,
    device: str | torch.device,
    data_of: Callable = lambda item: item,
) -> Iterator[tuple]:
    """(item, [(matches, scores) per pair]) for each of `items`, in order; `data_of(item)` is
    its list of LightGlue input pairs (`inputs`). With `size` > 1 each item's pairs run in one
    padded forward pass (`match_batch`); with 1 each item is one pair (`match_inputs`), and
    `parallel.cpu_workers` items run at once, one thread each (at a few hundred to 2048
    keypoints per image LightGlue's matrices keep two threads of one pair less busy than two
    pairs on a thread each: 1.12x the pairs per second on ETs, 1.23x on castle, 2 cores)."""

    def run(item):
        data = data_of(item)
        return match_batch(model, data) if size > 1 else [match_inputs(model, *data[0])]

    return ordered_map(run, items, cpu_workers(device) if size == 1 else 1)


def _max_keypoints(features_path: Path) -> int:
    """The most keypoints LightGlue sees of one image in a features.h5."""
    return max(feature_file.keypoint_counts(features_path, "descriptors").values(), default=0)


def _prefetch(
    batches: list[list[tuple[str, str]]], features_path: Path, device, dtype
) -> Iterator[tuple[list[tuple[str, str]], list[tuple[dict, dict]]]]:
    """Yield (batch, LightGlue inputs of its pairs), read from features.h5 and moved to the
    device by a background thread one batch ahead."""
    ready: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def read() -> None:
        try:
            with h5py.File(features_path, "r") as ff:
                cache = _FeatureCache(ff, device, dtype)
                for batch in batches:
                    if stop.is_set():
                        return
                    ready.put((batch, [(cache[a], cache[b]) for a, b in batch]))
        except BaseException as e:  # handed to the consumer, raised there
            ready.put(e)
            return
        ready.put(None)

    reader = threading.Thread(target=read, name="matching-reader", daemon=True)
    reader.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        reader.join()


def _is_done(f: h5py.File, key: str) -> bool:
    return key in f and bool(f[key].attrs.get("done", False))


def _write(f: h5py.File, key: str, matches: np.ndarray, scores: np.ndarray) -> None:
    if key in f:
        del f[key]
    g = f.create_group(key)  # creates the parent group h5_key(a) when needed
    g.create_dataset("matches", data=matches.astype(np.int32).reshape(-1, 2))
    g.create_dataset("scores", data=scores.astype(np.float32).reshape(-1))
    g.attrs["done"] = True


def count_done(path: Path, pairs: list[tuple[str, str]] | None = None) -> int:
    """Pairs matched in the matches.h5 at `path` (those of `pairs` when given; 0 if no file)."""
    if not Path(path).is_file():
        return 0
    with h5py.File(path, "r") as f:
        done = done_keys(f)
    if pairs is None:
        return len(done)
    return sum(pair_key(a, b) in done for a, b in pairs)


def load_all_matches(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """(a, b) -> matches [M x 2] int32 of every pair done in a matches.h5, in key order."""
    with h5py.File(path, "r") as f:
        return {
            (h5_name(ka), h5_name(kb)): g["matches"][()]
            for ka, ga in f.items()
            for kb, g in ga.items()
            if g.attrs.get("done", False)
        }


def load_matches(path: Path, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
    """matches [M x 2] int32 and scores [M] float32 of pair (a, b) from a matches.h5.

    Raises ImcError when the pair is absent (never matched, or an image failed)."""
    key = pair_key(a, b)
    with h5py.File(path, "r") as f:
        if key not in f or not f[key].attrs.get("done", False):
            raise ImcError(f"{path}: no matches for pair ({a}, {b})")
        return f[key]["matches"][()], f[key]["scores"][()]
