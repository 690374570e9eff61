"""Independent items run at once on the CPU's cores, one torch thread each.

On a few cores, one image (ALIKED) or one pair of a few thousand keypoints (LightGlue) keeps
two torch threads less busy than two items on a thread each: small convolutions and matrices
leave a second thread idle between operators. The stages therefore run `cpu_workers` items at
once, torch held to one thread meanwhile. Each item then runs on one thread whatever the core
count, so a result does not depend on the machine's number of cores.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch


def cpu_workers(device: str | torch.device) -> int:
    """Items to run at once, one torch thread each: on the CPU as many as torch has threads
    (the machine's cores unless set otherwise); on CUDA 1 (batches fill the device instead)."""
    if torch.device(device).type == "cuda":
        return 1
    return max(1, torch.get_num_threads())


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside the block; its thread count restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator[tuple]:
    """(item, fn(item)) for each of `items`, in order. With `workers` > 1, that many items run
    at once on threads, torch held to one thread each meanwhile (restored after); items are
    drawn from `items` on the calling thread, a few ahead of the results. A worker's error is
    raised when its item's turn comes."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    with one_thread(), ThreadPoolExecutor(workers, thread_name_prefix="imc-worker") as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) > workers:
                item0, future = pending.popleft()
                yield item0, future.result()
        while pending:
            item0, future = pending.popleft()
            yield item0, future.result()


class PerThread:
    """A model for each thread that calls it, for models whose calls change their own state
    (ALIKED's keypoint budget is set per call) and so cannot serve two threads at once.

    load: builds the model, called once, on first use. workers: with 1, every caller gets
    that model; with more, each calling thread gets its own deep copy of it (the same weights,
    memory format kept)."""

    def __init__(self, load: Callable[[], torch.nn.Module], workers: int):
        self._load, self._workers = load, workers
        self._model: torch.nn.Module | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def __call__(self) -> torch.nn.Module:
        model = getattr(self._local, "model", None)
        if model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
                model = self._model if self._workers <= 1 else copy.deepcopy(self._model)
            self._local.model = model
        return model
