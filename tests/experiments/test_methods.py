"""Methods as config changes: what each trains and how a single-scale model is evaluated."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from sigmma_jax import evaluation, sharding
from sigmma_jax.data import input_pipeline
from sigmma_jax.evaluation import expression, inference, probe
from sigmma_jax.experiments import methods
from sigmma_jax.families.sigmma import FAMILY as SIGMMA
from sigmma_jax.models import he_encoder, sigmma
from sigmma_jax.models.gene_sentence import GeneSentence
from sigmma_jax.train import loop, optimizer
from sigmma_jax.train import state as state_lib


def _embed(config, manifest):
    mesh = sharding.make_mesh(config)
    model, _ = loop.build_model(config)
    tx = optimizer.make_optimizer(config)
    _, shardings = state_lib.abstract_state(model, tx, config, manifest, mesh)
    params = state_lib.initialise(model, tx, config, manifest, mesh, shardings).params
    apply = inference.make_embed_fn(SIGMMA, model, mesh)
    return model, params, apply, mesh


@pytest.mark.parametrize("method", ["single_scale_clip", "sigmma_macro_weights"])
def test_a_single_scale_model_is_trained_and_evaluated_on_macro_alone(tiny_shards, method):
    config, manifest = tiny_shards
    if method == "sigmma_macro_weights":  # the full model with the macro loss alone
        c = methods.configure(config, "sigmma")
        c.train.scale_weights = (0.0, 0.0, 1.0)
    else:
        c = methods.configure(config, method)
    assert sigmma.model_scales(c) == ("macro",)
    model, params, apply, mesh = _embed(c, manifest)
    shard_dir = c.data.shard_dir
    emb = {
        s: inference.embed_split(SIGMMA, apply, params, shard_dir, manifest, s, c, mesh)
        for s in ("train", "test")
    }
    assert set(emb["test"]["he"]) == set(emb["test"]["st"]) == {"macro"}
    genes = np.arange(8)
    res = evaluation.evaluate(emb, c, {"genes": genes})
    r = res["retrieval"]["he_to_st"]
    assert set(r) == {"macro", "combined"} and r["combined"] == r["macro"]
    # The probe reads the macro embedding (embed_dim wide), not a concatenation of scales: the
    # headline with intercept in min-max units, HEST's without intercept in log1p units.
    args = [emb[s][k] for s in ("train", "test") for k in ("he", "targets")]
    args[0], args[2] = args[0]["macro"], args[2]["macro"]
    n = c.eval.pca_components
    want = probe.linear_probe(
        *args, genes=genes, n_components=n, fit_intercept=True, target_scale="minmax"
    )
    hest = probe.linear_probe(*args, genes=genes, n_components=n)
    assert expression.features(emb["test"], "he", "mean").shape[1] == c.model.embed_dim
    assert res["probe"]["input"] == "projected/mean"
    for k in ("pcc_tile_mean", "mse_tile_mean", "pcc_gene_mean"):
        assert res["probe"][k] == pytest.approx(want[k], rel=1e-6)
        assert res["probe"]["hest"][k] == pytest.approx(hest[k], rel=1e-6)


def test_frozen_backbone_probes_the_backbone_on_the_whole_tile(tiny_shards):
    config, manifest = tiny_shards
    c = methods.configure(config, "frozen_backbone")
    assert c.train.steps == 0 and tuple(c.evals) == ("probe",)
    model, params, apply, mesh = _embed(c, manifest)
    batch = next(input_pipeline.eval_batches(c.data.shard_dir, manifest, "test", c.eval.batch))
    out = apply(params, sharding.to_device(batch, mesh))
    size = c.model.vit.img_size
    tiles = he_encoder.multi_crop(
        jnp.asarray(batch["image"], jnp.float32) / 255.0, size, ("macro",)
    )
    want = model.backbone.apply({"params": params["backbone"]}, tiles[:, 0])
    np.testing.assert_allclose(out["he_backbone"]["macro"], want, rtol=1e-5, atol=1e-6)


def test_gene_sentence_tower_ignores_padding_and_reads_every_gene():
    tokens = jnp.array([[3, 1, 0, 0], [2, 4, 5, 1]], jnp.int32)
    g = jraph.GraphsTuple(
        nodes=None,
        edges=None,
        senders=None,
        receivers=None,
        n_node=None,
        n_edge=None,
        globals=dict(gene_sentence=tokens, tile_counts=jnp.zeros((2, 6))),
    )
    tower = GeneSentence(width=16, depth=2, num_heads=2, mlp_ratio=2.0)
    params = tower.init(jax.random.PRNGKey(0), g)["params"]
    out = tower.apply({"params": params}, g)["macro"]
    assert out.shape == (2, 16)
    # The padding token's embedding cannot matter...
    table = params["token_embed"]["embedding"]
    moved = jax.tree.map(lambda x: x, params)
    moved["token_embed"]["embedding"] = table.at[0].set(100.0)
    np.testing.assert_allclose(tower.apply({"params": moved}, g)["macro"], out, atol=1e-5)
    # ...while a gene's does, and so does its rank.
    moved["token_embed"]["embedding"] = table.at[1].add(
        jax.random.normal(jax.random.PRNGKey(1), (16,))
    )
    assert not np.allclose(tower.apply({"params": moved}, g)["macro"], out, atol=1e-3)
    swapped = g._replace(globals=dict(g.globals, gene_sentence=tokens[:, [1, 0, 2, 3]]))
    assert not np.allclose(tower.apply({"params": params}, swapped)["macro"][0], out[0], atol=1e-3)
    with pytest.raises(ValueError, match="add it to data.tile_features"):
        tower.apply({"params": params}, g._replace(globals=dict(tile_counts=jnp.zeros((2, 6)))))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['clip'\]"):
        methods.check(["sigmma", "clip"])
