"""imc.parallel: items run at once in order, torch on one thread each, a model per thread."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from imc import parallel


def test_ordered_map_keeps_order_restores_threads_and_raises():
    threads = torch.get_num_threads()
    seen_threads = []

    def slow_first(k):
        seen_threads.append(torch.get_num_threads())
        time.sleep(0.05 if k == 0 else 0.0)  # the first finishes last
        return k * k

    out = list(parallel.ordered_map(slow_first, iter(range(7)), 2))
    assert out == [(k, k * k) for k in range(7)]
    assert set(seen_threads) == {1} and torch.get_num_threads() == threads

    def fails(k):
        if k == 3:
            raise ValueError("item 3")
        return k

    with pytest.raises(ValueError, match="item 3"):
        list(parallel.ordered_map(fails, range(6), 2))
    assert torch.get_num_threads() == threads
    assert list(parallel.ordered_map(fails, range(3), 1)) == [(0, 0), (1, 1), (2, 2)]


def test_cpu_workers_follow_torch_threads_and_one_on_cuda():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert parallel.cpu_workers("cpu") == 3 and parallel.cpu_workers("cuda:0") == 1
        with parallel.one_thread():
            assert torch.get_num_threads() == 1 and parallel.cpu_workers("cpu") == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def test_per_thread_loads_once_and_copies_per_thread():
    loads = []

    def load():
        loads.append(1)
        conv = torch.nn.Conv2d(3, 4, 3)
        return conv.to(memory_format=torch.channels_last)

    single = parallel.PerThread(load, 1)
    assert single() is single() and len(loads) == 1

    shared = parallel.PerThread(load, 2)
    barrier = threading.Barrier(2)
    got: dict[str, torch.nn.Module] = {}

    def worker(name):
        barrier.wait()  # both threads ask at the same time
        got[name] = shared()
        assert shared() is got[name]  # the same copy on every call of a thread

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 2  # one load for `single`, one for `shared`
    a, b = got["a"], got["b"]
    assert a is not b and a.weight is not b.weight
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert a.weight.is_contiguous(memory_format=torch.channels_last)
