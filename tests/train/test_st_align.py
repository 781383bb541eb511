"""ST-Align through the shared machinery: the sharded step on 8 devices (data parallel or FSDP)
equals 1 device, a killed run resumes to the uninterrupted run's numbers, converted scGPT weights
are loaded and stay frozen, and the one-negative-per-other-cluster contrast trains."""

import json

import jax
import numpy as np
from support.steps import initial_state, loss_and_grads

from sigmma_jax import families, losses, sharding
from sigmma_jax.data import scgpt_tokens
from sigmma_jax.models import scgpt
from sigmma_jax.train import loop
from sigmma_jax.train import step as step_lib


def _run(config, manifest, tmp_path):
    return families.get(config).prepare(config, manifest, config.data.shard_dir, tmp_path)


def test_step_on_8_devices_equals_1_device(tiny_spots, tmp_path):
    config, manifest = tiny_spots
    run = _run(config, manifest, tmp_path)
    family = families.get(config)
    host = next(family.train_iterator(config, config.data.shard_dir, run, None))
    fsdp = config.copy_and_resolve_references()  # the state split over 8 devices, not copied
    fsdp.mesh.update(data=1, fsdp=8)
    fsdp.sharding.min_fsdp_bytes = 0
    (l1, p1, g1), *eights = [
        loss_and_grads(c, run, host, devices, jax.random.PRNGKey(3), "spot_image")
        for c, devices in (
            (config, jax.devices()[:1]),
            (config, jax.devices()),
            (fsdp, jax.devices()),
        )
    ]
    assert set(p1) == {"spot", "niche", "ns"}
    for l8, p8, g8 in eights:
        np.testing.assert_allclose(l8, l1, rtol=1e-5)
        for k in p1:
            np.testing.assert_allclose(p8[k], p1[k], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
            # the global batch's sums run in another order across 8 devices: float32 noise, at
            # the scale of each gradient leaf
            np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-4 * float(np.abs(a).max()) + 1e-7)


def _history(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


def test_kill_resume_continues_exactly(tiny_spots, tmp_path):
    config, manifest = tiny_spots
    config = config.copy_and_resolve_references()
    config.evals = ()
    run = _run(config, manifest, tmp_path)
    mesh = sharding.make_mesh(config)
    straight = loop.train(config, tmp_path / "straight", run, mesh)
    first = loop.train(config, tmp_path / "resumed", run, mesh, stop_after=3)
    assert int(first.state.step) == 3
    resumed = loop.train(config, tmp_path / "resumed", run, mesh)
    assert int(resumed.state.step) == int(straight.state.step) == config.train.steps
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    keys = [k for k in _history(tmp_path / "straight")[0] if k.startswith(("loss", "grad_norm"))]
    s, r = _history(tmp_path / "straight"), _history(tmp_path / "resumed")
    assert [h["step"] for h in r] == [h["step"] for h in s] == list(range(1, 7))
    assert all(x[k] == y[k] for x, y in zip(s, r) for k in keys)


def test_converted_scgpt_is_loaded_and_stays_frozen(tiny_spots, tmp_path):
    config, manifest = tiny_spots
    config = config.copy_and_resolve_references()
    # a "released" scGPT: the demo's architecture, its own vocabulary with an extra gene
    vocab = scgpt_tokens.panel_vocab(["NOT_IN_PANEL", *manifest["genes"]])
    cfg = dict(ntoken=len(vocab), d_model=16, nhead=2, d_hid=32, nlayers=1, dropout=0.0)
    module = scgpt.build(cfg)
    params = scgpt.init_params(module, seed=11)
    weights = tmp_path / "scgpt"
    scgpt.save(weights, cfg, params, vocab, dict(pad_value=-2.0, n_bins=51))
    config.model.scgpt.update(weights=str(weights), mode="frozen")
    run = _run(config, manifest, tmp_path)
    assert run["features"]["vocab_size"] == len(vocab)
    assert run["features"]["tokens"][0] == vocab[manifest["genes"][0]]
    mesh = sharding.make_mesh(config)
    model, tx, shardings, state = initial_state(config, run, mesh)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params["spot_gene"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    step = step_lib.make_train_step(model, tx, config, mesh, shardings, families.get(config))
    it = families.get(config).train_iterator(config, config.data.shard_dir, run, mesh)
    before = jax.device_get(state.params)
    for _ in range(2):  # the warmup's first learning rate is 0
        state, _ = step(state, sharding.to_device(next(it), mesh))
    after = jax.device_get(state.params)
    for a, b in zip(jax.tree.leaves(before["spot_gene"]), jax.tree.leaves(after["spot_gene"])):
        np.testing.assert_array_equal(a, b)
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before["niche_gene"]), jax.tree.leaves(after["niche_gene"]))
    ]
    assert any(moved)
    # frozen: no Adam moments for scGPT (optax.set_to_zero keeps no state)
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    ]
    assert not any("['spot_gene']" in p for p in paths)
    assert any("['niche_gene']" in p for p in paths)


def test_one_negative_per_other_cluster_trains(tiny_spots, tmp_path):
    config, manifest = tiny_spots
    config = config.copy_and_resolve_references()
    config.train.negatives = "other_clusters"
    config.evals = ()
    run = _run(config, manifest, tmp_path)
    mesh = sharding.make_mesh(config)
    trained = loop.train(config, tmp_path / "w", run, mesh)
    assert int(trained.state.step) == 6
    assert all(np.isfinite(h["loss"]) for h in _history(tmp_path / "w"))
    # Each anchor's candidates are a subset of the batch, so every term is at most in-batch's.
    family = families.get(config)
    batch = sharding.to_device(
        next(family.train_iterator(config, config.data.shard_dir, run, mesh)), mesh
    )
    rngs = {"dropout": jax.random.PRNGKey(0), "negatives": jax.random.PRNGKey(1)}
    out = trained.model.apply({"params": trained.state.params}, batch, train=True, rngs=rngs)
    assert out["negatives"]["pick"].shape == (2, 8, 8)
    _, every = losses.st_align({k: v for k, v in out.items() if k != "negatives"}, (0.3, 0.3))
    _, some = losses.st_align(out, (0.3, 0.3))
    for k in ("spot", "niche", "ns"):
        assert float(some[k]) <= float(every[k]) + 1e-6
    # two clusters in the batch: one negative each, so strictly fewer candidates than the batch
    two = dict(out["negatives"], cluster=jax.numpy.arange(8) // 4)
    _, fewer = losses.st_align(dict(out, negatives=two), (0.3, 0.3))
    assert all(float(fewer[k]) < float(every[k]) for k in ("spot", "niche", "ns"))
