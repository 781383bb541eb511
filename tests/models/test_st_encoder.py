import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def test_cell_states_after_each_stage_do_not_depend_on_padding():
    """The sown node states (inference's cell embeddings): one row per slot, real rows the same
    whatever the budget, and the pooled embedding of each scale is their attention pool."""
    tiles = [tile(n=n, seed=n) for n in (30, 50)]
    model = _encoder()
    small = _batch(tiles, 50, 400)
    params = model.init(jax.random.PRNGKey(0), small)
    ref, s1 = model.apply(params, small, mutable=["intermediates"])
    got, s2 = model.apply(params, _batch(tiles, 96, 1000, junk=True), mutable=["intermediates"])
    for scale in ("micro", "meso", "macro"):
        (a,), (b,) = s1["intermediates"][f"nodes_{scale}"], s2["intermediates"][f"nodes_{scale}"]
        assert a.shape == (2, 50, 16) and b.shape == (2, 96, 16)
        for i, t in enumerate(tiles):
            n = len(t["xy"])
            np.testing.assert_allclose(b[i, :n], a[i, :n], atol=1e-5)
        pool = params["params"][f"pool_{scale}"]
        _, mask, _, _ = st_encoder.dense_tiles(small)
        pooled = st_encoder.AttentionPool(16).apply({"params": pool}, a, mask)
        np.testing.assert_allclose(pooled, ref[scale], atol=1e-5)
    assert not np.allclose(
        s1["intermediates"]["nodes_micro"][0], s1["intermediates"]["nodes_macro"][0]
    )


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


class _OldSAGE(st_encoder.SAGE):
    """The aggregation before the fix: divided by max(deg, 1e-6)."""

    @nn.compact
    def __call__(self, h, adj):
        deg = adj.sum(-1, keepdims=True)
        agg = jnp.einsum("bvu,bud->bvd", adj, h) / jnp.maximum(deg, 1e-6)
        out = st_encoder.gelu(nn.Dense(self.dim)(jnp.concatenate([h, agg], -1)))
        return nn.LayerNorm()(h + out)


def _grad_norms(graph, keys, **kw):
    model = _encoder(**kw)
    params = model.init(jax.random.PRNGKey(0), graph)

    def loss(p, key):
        out = model.apply(p, graph, True, rngs={"gumbel": key})
        return sum(jnp.sum(v) for v in out.values())

    grad = jax.jit(jax.grad(loss))
    return np.array([float(optax.global_norm(grad(params, k))) for k in keys])


def test_isolated_nodes_and_rejected_candidates_get_bounded_gradients(monkeypatch):
    """A cell with no micro edge, whose sampled candidates are all 0 in the forward pass, still gets
    the relaxed samples' gradients; they must not be divided by a vanishing degree."""
    isolated = dict(tile(n=40, seed=3), senders=np.zeros(0, np.int32))
    isolated["receivers"] = isolated["senders"]
    graph = _batch([isolated, tile(n=30, seed=4)], 48, 400)
    normal = _batch([tile(n=40, seed=3), tile(n=30, seed=4)], 48, 400)
    keys = jax.random.split(jax.random.PRNGKey(5), 6)
    # prior 1e-3: nearly every candidate is rejected in the forward pass; 0.5: about half sampled.
    # The bound: no larger than the gradient of the same tiles with their micro edges.
    for prior in (1e-3, 0.5):
        norms = _grad_norms(graph, keys, edge_prior=prior)
        assert norms.max() < 1.5 * _grad_norms(normal, keys, edge_prior=prior).min(), norms
    monkeypatch.setattr(st_encoder, "SAGE", _OldSAGE)
    old = _grad_norms(graph, keys, edge_prior=1e-3)
    assert old.min() > 100 * norms.max(), old  # what the bound catches: the bug before the fix


def test_edge_prior_sets_the_sampled_fraction_at_initialisation():
    graph = _batch([tile(n=n, seed=n) for n in (60, 70)], 80, 800)
    for prior in (0.05, 0.5):
        model = _encoder(edge_prior=prior)
        params = {"params": model.init(jax.random.PRNGKey(0), graph)["params"]}
        _, state = model.apply(
            params, graph, True, rngs={"gumbel": jax.random.PRNGKey(1)}, mutable=["stats"]
        )
        for scale in ("meso", "macro"):
            (frac,) = state["stats"][f"graph_{scale}_sampled"]
            assert abs(float(frac) - prior) < 0.1 * prior + 0.03, (scale, prior, float(frac))
        (deg_meso,), (deg_macro,) = (
            state["stats"]["graph_meso_degree"],
            state["stats"]["graph_macro_degree"],
        )
        assert 0 < float(deg_meso) < float(deg_macro)


def test_expectation_weights_are_probabilities_across_scales():
    """At evaluation a pair considered at meso and again at macro weighs 1-(1-p_meso)(1-p_macro).
    (Only whole-block candidates consider a pair twice: adjacent sub-blocks at meso lie in one
    meso block, and macro's join two.)"""
    t = tile(n=50, seed=2)
    graph = _batch([t], 56, 600)
    model = _encoder(edge_prior=0.7, candidates="block")
    params = {"params": model.init(jax.random.PRNGKey(0), graph)["params"]}
    _, state = model.apply(params, graph, False, mutable=["intermediates"])
    inter = state["intermediates"]
    (p_meso,), (p_macro,), (adj,) = (
        inter["weights_meso"],
        inter["weights_macro"],
        inter["adjacency"],
    )
    micro = np.asarray(st_encoder.dense_tiles(graph)[3])
    want = micro + (1 - micro) * (1 - (1 - np.asarray(p_meso)) * (1 - np.asarray(p_macro)))
    np.testing.assert_allclose(adj, want, atol=1e-6)
    assert float(adj.max()) <= 1.0 + 1e-6
    both = (np.asarray(p_meso) > 0) & (np.asarray(p_macro) > 0)
    assert both.sum() > 0 and (np.asarray(p_meso)[both] > 0.5).any()  # such pairs exist


def test_neighbour_patch_candidates_on_a_hand_built_tile():
    """One cell per micro block of a 4x4 tile, plus a second cell in block (0, 0). At meso a cell
    may join only cells of its meso block in a micro block sharing a side with its own; at macro
    only cells in a meso block sharing a side with its own. "block" keeps every pair of the block."""
    cells = [(bx, by) for by in range(4) for bx in range(4)] + [(0, 0)]
    blocks = jnp.asarray(np.array(cells, np.int8)[None])
    meso = np.asarray(st_encoder.candidate_mask(blocks, "meso"))[0]
    macro = np.asarray(st_encoder.candidate_mask(blocks, "macro"))[0]
    whole = np.asarray(st_encoder.candidate_mask(blocks, "meso", "block"))[0]
    c = np.array(cells)
    same_micro = (c[:, None] == c[None]).all(-1)
    same_meso = (c[:, None] // 2 == c[None] // 2).all(-1)
    assert not (meso & same_micro).any() and not (macro & same_meso).any()
    assert (whole & same_micro & ~np.eye(len(c), dtype=bool)).any()  # the old rule re-links them
    i = {cell: k for k, cell in enumerate(cells)}  # the first cell of each block
    assert meso[i[0, 0], i[1, 0]] and meso[i[0, 0], i[0, 1]] and meso[16, i[1, 0]]
    assert not meso[i[0, 0], i[1, 1]]  # diagonal: no side in common
    assert not meso[i[1, 0], i[2, 0]]  # adjacent, but in another meso block
    assert macro[i[1, 0], i[2, 0]] and macro[i[0, 1], i[0, 2]] and macro[16, i[3, 0]]
    assert not macro[i[1, 1], i[2, 2]]  # diagonal meso blocks
    assert (meso == meso.T).all() and (macro == macro.T).all()
    # each of the four micro blocks of a meso block has two side neighbours in it
    assert meso[:16, :16].sum() == 16 * 2
    # and every meso block two side neighbours: 4 blocks x 2 x 4 x 4 cell pairs
    assert macro[:16, :16].sum() == 4 * 2 * 16


def test_fully_connected_blocks_are_denser_than_the_sampled_graph():
    """The fully connected ablation's graph (every pair of a block) against SIGMMA's at
    initialisation (neighbour-patch candidates drawn with probability edge_prior): the logged
    degree per scale is larger at meso and macro, and only the sampled one draws a fraction."""
    t = tile(n=60, seed=5)
    graph = _batch([t], 64, 700)
    stats = {}
    for name, kw in {
        "full": dict(edge_sampling="full", candidates="block"),
        "sigmma": dict(edge_sampling="gumbel"),
    }.items():
        model = _encoder(**kw)
        variables = model.init(
            {"params": jax.random.PRNGKey(0), "gumbel": jax.random.PRNGKey(1)}, graph, True
        )
        _, state = model.apply(
            {"params": variables["params"]},
            graph,
            True,
            rngs={"gumbel": jax.random.PRNGKey(2)},
            mutable=["stats"],
        )
        stats[name] = {k: float(v[0]) for k, v in state["stats"].items()}
    full, ours = stats["full"], stats["sigmma"]
    assert full["graph_micro_degree"] == ours["graph_micro_degree"] > 0
    for scale in ("meso", "macro"):
        assert full[f"graph_{scale}_degree"] > 1.5 * ours[f"graph_{scale}_degree"]
    assert full["graph_meso_sampled"] == 1.0 and 0.3 < ours["graph_meso_sampled"] < 0.7
