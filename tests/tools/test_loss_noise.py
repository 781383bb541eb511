"""`bench loss_noise` separates the random streams: without dropout, the dropout keys move nothing."""

from sigmma_jax import sharding
from sigmma_jax.tools.bench import loss_noise
from sigmma_jax.train import loop


def test_each_stream_moves_only_its_own_part(tiny_shards, tmp_path):
    config, manifest = tiny_shards
    config = config.copy_and_resolve_references()
    config.model.head_dropout = 0.0
    config.train.update(steps=2, checkpoint_every=2)
    config.evals = ()
    loop.train(config, tmp_path, manifest, sharding.make_mesh(config))
    r = loss_noise.measure(config, tmp_path, n_batches=3, n_keys=3)
    sd = r["sd"]
    assert r["step"] == 2 and r["batch"] == 8
    assert sd["dropout keys (same batch)"]["total"] == 0.0  # no dropout: nothing to draw
    assert sd["Gumbel keys (same batch)"]["total"] > 0  # the edge sampler's noise
    assert sd["Gumbel keys (same batch)"]["micro"] == 0.0  # micro edges are not sampled
    assert sd["between batches (same keys)"]["total"] > 0
    assert sd["evaluation pass, between batches"]["total"] > 0
    assert -1 <= r["corr_loss_vs_batch_similarity"] <= 1
