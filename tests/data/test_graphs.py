import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from sigmma_jax.data import graphs


def _cells(n, seed=0, tile=256):
    return np.random.default_rng(seed).uniform(0, tile, (n, 2))


def _edge_set(s, r):
    return set(zip(s.tolist(), r.tolist()))


@pytest.mark.parametrize("n,k", [(150, 6), (40, 3), (300, 10)])
def test_knn_equals_sklearn_within_blocks(n, k):
    xy = _cells(n, seed=n)
    blocks = graphs.micro_blocks(xy, 256)
    ids = graphs.block_ids(blocks, 4)
    expected = set()
    for b in np.unique(ids):
        members = np.flatnonzero(ids == b)
        if len(members) < 2:
            continue
        kk = min(k, len(members) - 1)
        _, nbr = NearestNeighbors(n_neighbors=kk + 1).fit(xy[members]).kneighbors(xy[members])
        for i, row in enumerate(nbr):
            for j in row:
                if j != i:
                    expected |= {(members[i], members[j]), (members[j], members[i])}
    s, r = graphs.build_micro_graph(xy, blocks, "knn", k)
    assert _edge_set(s, r) == expected
    assert len(s) == len(expected)  # no duplicates


def test_radius_equals_sklearn_within_blocks():
    xy = _cells(200, seed=3)
    blocks = graphs.micro_blocks(xy, 256)
    ids = graphs.block_ids(blocks, 4)
    nn = NearestNeighbors(radius=20.0).fit(xy)
    expected = {
        (i, j)
        for i, row in enumerate(nn.radius_neighbors(xy, return_distance=False))
        for j in row
        if i != j and ids[i] == ids[j]
    }
    s, r = graphs.build_micro_graph(xy, blocks, "radius", radius=20.0)
    assert _edge_set(s, r) == expected


@pytest.mark.parametrize("method", ["knn", "radius", "delaunay"])
def test_no_edge_crosses_a_micro_block_and_graph_is_symmetric(method):
    xy = _cells(250, seed=4)
    blocks = graphs.micro_blocks(xy, 256)
    s, r = graphs.build_micro_graph(xy, blocks, method, 6, 25.0)
    assert len(s) > 250
    np.testing.assert_array_equal(blocks[s], blocks[r])
    assert (s != r).all()
    assert _edge_set(s, r) == _edge_set(r, s)


def test_blocks_per_scale():
    xy = np.array([[0.5, 0.5], [63.9, 10], [64.0, 10], [200, 250], [255.9, 129]])
    blocks = graphs.micro_blocks(xy, 256)
    np.testing.assert_array_equal(blocks, [[0, 0], [0, 0], [1, 0], [3, 3], [3, 2]])
    np.testing.assert_array_equal(graphs.block_ids(blocks, 4), [0, 0, 1, 15, 11])
    np.testing.assert_array_equal(graphs.block_ids(blocks, 2), [0, 0, 0, 3, 3])
    np.testing.assert_array_equal(graphs.block_ids(blocks, 1), [0, 0, 0, 0, 0])


def test_tiny_blocks():
    xy = np.array([[10.0, 10.0], [100.0, 100.0], [101.0, 101.0]])  # blocks of 1 and 2 cells
    s, r = graphs.build_micro_graph(xy, graphs.micro_blocks(xy, 256), "knn", 6)
    assert _edge_set(s, r) == {(1, 2), (2, 1)}
    s, r = graphs.build_micro_graph(xy, graphs.micro_blocks(xy, 256), "delaunay")
    assert _edge_set(s, r) == {(1, 2), (2, 1)}


def test_tile_scope_is_the_tile_knn_graph_cut_to_blocks():
    # The paper's E_micro ⊆ E: kNN over all the tile's cells (squidpy's generic kNN, symmetrised),
    # then only the edges inside a micro block kept.
    xy = _cells(220, seed=9)
    blocks = graphs.micro_blocks(xy, 256)
    ids = graphs.block_ids(blocks, 4)
    _, nbr = NearestNeighbors(n_neighbors=7).fit(xy).kneighbors(xy)
    expected = set()
    for i, row in enumerate(nbr):
        for j in row:
            if j != i and ids[i] == ids[j]:
                expected |= {(i, int(j)), (int(j), i)}
    s, r = graphs.build_micro_graph(xy, blocks, "knn", 6, scope="tile")
    assert _edge_set(s, r) == expected and len(s) == len(expected)
    per_block = _edge_set(*graphs.build_micro_graph(xy, blocks, "knn", 6))
    assert expected < per_block  # inside a block every cell still gets k: a strict superset
    # Radius graphs do not depend on the scope.
    assert _edge_set(*graphs.build_micro_graph(xy, blocks, "radius", radius=20.0)) == _edge_set(
        *graphs.build_micro_graph(xy, blocks, "radius", radius=20.0, scope="tile")
    )
    with pytest.raises(ValueError, match="scope"):
        graphs.build_micro_graph(xy, blocks, scope="everywhere")
