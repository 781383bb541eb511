import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_input_pipeline import _tile

from sigmma_jax import input_pipeline
from sigmma_jax.models import he_encoder, st_encoder


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
    tiles = [_tile(n=n, seed=n) for n in (30, 50)]
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
    t = _tile(n=40)
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
    t = _tile(n=25)
    g = _batch([t, _tile(n=10, seed=5)], 32, 300)
    _, mask, _, adj = st_encoder.dense_tiles(g)
    a = np.asarray(adj[0])
    assert a.sum() == len(t["senders"])
    assert (a[t["receivers"], t["senders"]] == 1).all()
    assert np.asarray(mask).sum() == 35


def test_multi_crop_geometry():
    img = jnp.arange(2 * 256 * 256 * 3, dtype=jnp.float32).reshape(2, 256, 256, 3)
    crops = he_encoder.multi_crop(img, 64)
    assert crops.shape == (2, 21, 64, 64, 3)
    # Micro crop 5 is grid row 1, column 1; at native size it is the image region itself.
    np.testing.assert_allclose(crops[:, 5], img[:, 64:128, 64:128], rtol=1e-6)
    np.testing.assert_allclose(
        crops[:, 20], jax.image.resize(img, (2, 64, 64, 3), "linear"), rtol=1e-5
    )
    # Meso crop 3 (bottom right), downsampled 2x: on this linear ramp the anti-aliasing filter
    # gives the 2x2 pixel means (away from the border, where the filter is truncated).
    ref = img[:, 128:, 128:].reshape(2, 64, 2, 64, 2, 3).mean((2, 4))
    np.testing.assert_allclose(crops[:, 19, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], rtol=1e-5)
