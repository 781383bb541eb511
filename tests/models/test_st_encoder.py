import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.tiles import tile

from sigmma_jax.data import input_pipeline
from sigmma_jax.models import st_encoder


def _encoder(**kw):
    return st_encoder.STEncoder(hidden=16, edge_hidden=8, **kw)


def _batch(tiles, nodes, edges, junk=False):
    padded = []
    rng = np.random.default_rng(0)
    for t in tiles:
        p = input_pipeline.pad_tile(t, nodes, edges)
        if junk:  # garbage in padded slots must not leak into any output
            n, e = len(t["xy"]), len(t["senders"])
            p["counts"][n:] = rng.poisson(5.0, p["counts"][n:].shape)
            p["blocks"][n:] = rng.integers(0, 4, p["blocks"][n:].shape)
            p["senders"][e:] = rng.integers(0, nodes, edges - e)
            p["receivers"][e:] = rng.integers(0, nodes, edges - e)
        padded.append(p)
    return input_pipeline.collate(padded)["graph"]


@pytest.mark.parametrize("sampling", ["gumbel", "full"])
def test_padding_changes_no_output(sampling):
    tiles = [tile(n=n, seed=n) for n in (30, 50)]
    model = _encoder(edge_sampling=sampling)
    small = _batch(tiles, 50, 400)
    params = model.init(jax.random.PRNGKey(0), small)
    ref = model.apply(params, small)
    big = _batch(tiles, 96, 1000, junk=True)
    got = model.apply(params, big)
    for s in ref:
        np.testing.assert_allclose(got[s], ref[s], atol=1e-5)
        assert np.isfinite(np.asarray(got[s])).all()


def test_training_mode_samples_symmetric_edges_inside_blocks():
    t = tile(n=40)
    g = _batch([t], 48, 400)
    sampler = st_encoder.EdgeSampler(8, 0.5, True, "gumbel", "expectation")
    counts, mask, blocks, adj = st_encoder.dense_tiles(g)
    h = jax.random.normal(jax.random.PRNGKey(1), (1, 48, 16))
    ids = blocks[..., 1] // 2 * 2 + blocks[..., 0] // 2
    cand = (
        mask[:, :, None]
        & mask[:, None, :]
        & (ids[:, :, None] == ids[:, None, :])
        & ~jnp.eye(48, dtype=bool)
        & ~(adj > 0)
    )
    params = sampler.init({"params": jax.random.PRNGKey(0)}, h, cand, False)
    y = sampler.apply(params, h, cand, True, rngs={"gumbel": jax.random.PRNGKey(3)})
    y = np.asarray(y)
    assert set(np.unique(y)) <= {0.0, 1.0}  # straight-through: hard in the forward pass
    assert y.sum() > 0
    np.testing.assert_array_equal(y, y.transpose(0, 2, 1))
    assert (y[~np.asarray(cand)] == 0).all()
    # Gradients reach the scorer through the relaxed sample.
    grad = jax.grad(
        lambda p: (
            sampler.apply(p, h, cand, True, rngs={"gumbel": jax.random.PRNGKey(3)})
            * jnp.arange(48.0)
        ).sum()
    )(params)
    assert float(jnp.abs(grad["params"]["out"]["kernel"]).sum()) > 0


def test_dense_adjacency_matches_edges():
    t = tile(n=25)
    g = _batch([t, tile(n=10, seed=5)], 32, 300)
    _, mask, _, adj = st_encoder.dense_tiles(g)
    a = np.asarray(adj[0])
    assert a.sum() == len(t["senders"])
    assert (a[t["receivers"], t["senders"]] == 1).all()
    assert np.asarray(mask).sum() == 35
