import numpy as np

from imc import clustering


def _verified(edges):
    return {(f"{a}", f"{b}"): {"inliers": np.zeros((w, 2), np.int32)} for a, b, w in edges}


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
    kept = clustering.main({"enabled": True, "max_cut_ratio": 0.05, "min_size": 3}, names,
                           _verified(edges))
    assert ("0", "10") not in kept and ("3", "15") not in kept
    assert len(kept) == len(edges) - 3


def test_a_ring_is_not_cut():
    n = 40
    edges = [(i, (i + d) % n, 1000 // d) for i in range(n) for d in range(1, 4)]
    edges = [(min(a, b), max(a, b), w) for a, b, w in edges]
    kept = clustering.main({"enabled": True, "max_cut_ratio": 0.05, "min_size": 3},
                           [str(i) for i in range(n)], _verified(edges))
    assert len(kept) == len(edges)


def test_disabled_and_empty_cases():
    conf = {"enabled": True, "max_cut_ratio": 0.05, "min_size": 3}
    assert clustering.main(conf, ["a"], {}) == {}
    v = _verified([(0, 1, 50)])
    assert clustering.main({**conf, "enabled": False}, ["0", "1"], v) is v
