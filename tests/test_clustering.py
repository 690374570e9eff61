import numpy as np

from imc import config
from imc.stages import clustering


def _verified(edges):
    return {(f"{a}", f"{b}"): {"inliers": np.zeros((w, 2), np.int32)} for a, b, w in edges}


def _whole(conf: dict) -> dict:
    """The whole configuration with `conf` as its clustering section."""
    return {**config.DEFAULTS, "clustering": conf}


def test_two_dense_groups_with_weak_links_are_cut():
    rng = np.random.default_rng(0)
    edges = []
    for grp in (range(0, 9), range(9, 19)):
        for i in grp:
            for j in grp:
                if i < j and rng.random() < 0.7:
                    edges.append((i, j, int(rng.integers(80, 400))))
    edges += [(0, 10, 43), (3, 15, 40), (5, 12, 30)]  # look-alike false pairs
    names = [str(i) for i in range(19)]
    kept = clustering.main(
        _whole({"enabled": True, "max_cut_ratio": 0.05, "max_cross_ratio": 0.5, "min_size": 3}),
        clustering.Inputs(names, _verified(edges)),
        None,
    )
    assert ("0", "10") not in kept and ("3", "15") not in kept
    assert len(kept) == len(edges) - 3


def test_a_ring_is_not_cut():
    n = 40
    edges = [(i, (i + d) % n, 1000 // d) for i in range(n) for d in range(1, 4)]
    edges = [(min(a, b), max(a, b), w) for a, b, w in edges]
    kept = clustering.main(
        _whole({"enabled": True, "max_cut_ratio": 0.05, "max_cross_ratio": 0.5, "min_size": 3}),
        clustering.Inputs([str(i) for i in range(n)], _verified(edges)),
        None,
    )
    assert len(kept) == len(edges)


def test_disabled_and_empty_cases():
    conf = {"enabled": True, "max_cut_ratio": 0.05, "max_cross_ratio": 0.5, "min_size": 3}
    assert clustering.main(_whole(conf), clustering.Inputs(["a"], {})) == {}
    v = _verified([(0, 1, 50)])
    off = _whole({**conf, "enabled": False})
    assert clustering.main(off, clustering.Inputs(["0", "1"], v)) is v


def test_a_sparse_weak_ring_is_not_cut_by_conductance_alone():
    # as measured on dinoSparseRing: two halves of a weakly textured ring, local pairs of
    # 20-45 inliers, joined by three ordinary pairs of 17-19; the cut has a low conductance
    n = 16
    rng = np.random.default_rng(2)
    edges = [(i, j, int(rng.integers(20, 46))) for i in range(n) for j in range(i + 1, i + 4)
             if j < n and (i < 8) == (j < 8)]  # fmt: skip
    edges += [(7, 8, 19), (6, 8, 17), (7, 9, 18)]
    names = [str(i) for i in range(n)]
    w = clustering.weight_matrix(names, _verified(edges))
    side, phi = clustering.best_sweep_cut(w)
    assert phi < 0.05  # conductance alone would cut it
    assert clustering.cross_ratio(w, side) > 0.5
    conf = {"enabled": True, "max_cut_ratio": 0.05, "max_cross_ratio": 0.5, "min_size": 3}
    kept = clustering.main(_whole(conf), clustering.Inputs(names, _verified(edges)), None)
    assert len(kept) == len(edges)
