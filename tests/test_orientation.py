import numpy as np

from imc.stages.orientation import neighbour_pairs, pooled_descriptor, solve_rotations


def test_solve_rotations_from_consistent_relative_rotations():
    truth = np.array([0, 0, 2, 2, 0, 1, 0, 3])
    rng = np.random.default_rng(0)
    edges = []
    for i in range(8):
        for j in range(i + 1, 8):
            if rng.random() < 0.6 or j == i + 1:
                edges.append((i, j, int((truth[i] - truth[j]) % 4), float(rng.integers(20, 900))))
    assert np.array_equal(solve_rotations(8, edges), truth)


def test_max_spanning_tree_ignores_a_weak_wrong_edge():
    truth = np.array([0, 0, 0, 2, 2])
    edges = [
        (0, 1, 0, 500.0),
        (1, 2, 0, 400.0),
        (2, 3, 2, 300.0),
        (3, 4, 0, 600.0),
        (0, 3, 1, 20.0),
    ]  # wrong and weak
    assert np.array_equal(solve_rotations(5, edges), truth)


def test_groups_offset_to_the_commonest_rotation_and_singletons_stay():
    edges = [(0, 1, 2, 100.0), (1, 2, 0, 100.0)]  # k0 = k1 + 2, k1 = k2
    k = solve_rotations(4, edges)
    assert list(k) == [2, 0, 0, 0]


def test_neighbours_use_the_best_relative_rotation():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(3, 4, 16))
    pooled = base / np.linalg.norm(base, axis=2, keepdims=True)
    pooled[1, 2] = pooled[0, 0]  # image 1 rotated by 180 looks like image 0 upright
    pairs = neighbour_pairs(pooled.astype(np.float32), 1)
    assert (0, 1) in pairs
    assert pooled_descriptor(np.zeros((0, 128), np.float32)).shape == (128,)
