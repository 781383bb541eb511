import json

import jax
import numpy as np
from support.steps import initial_state, loss_and_grads

from sigmma_jax import families, sharding
from sigmma_jax.data import input_pipeline
from sigmma_jax.models import backbones
from sigmma_jax.train import loop
from sigmma_jax.train import step as step_lib


def _first_batch(config, manifest):
    it = input_pipeline.train_iterator(
        config.data.shard_dir, manifest, config.train.global_batch, seed=0
    )
    return next(it)


def test_step_on_8_devices_equals_1_device(tiny_shards):
    config, manifest = tiny_shards
    assert jax.device_count() == 8
    host_batch = _first_batch(config, manifest)
    (l1, p1, g1), (l8, p8, g8) = [
        loss_and_grads(config, manifest, host_batch, devices, jax.random.PRNGKey(7), "image")
        for devices in (jax.devices()[:1], jax.devices())
    ]
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for k in p1:
        np.testing.assert_allclose(p8[k], p1[k], rtol=1e-5)
    flat1, flat8 = jax.tree.leaves(g1), jax.tree.leaves(g8)
    assert len(flat1) == len(flat8) > 20
    for a, b in zip(flat1, flat8):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)


def test_a_few_steps_lower_the_loss(tiny_shards, tmp_path):
    config, manifest = tiny_shards
    config = config.copy_and_resolve_references()
    config.train.update(steps=40, warmup_steps=4, lr=3e-3, checkpoint_every=1000, log_every=1)
    config.data.augment = False
    config.evals = ()
    mesh = sharding.make_mesh(config)
    loop.train(config, tmp_path, manifest, mesh)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses


def _read(d):
    return [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]


def test_kill_resume_continues_exactly_and_reads_no_weights(tiny_shards, tmp_path, monkeypatch):
    """Killed after the checkpoint of step 3 and restarted, a run with converted weights continues
    exactly as the uninterrupted run. It restores the checkpoint (big_vision's order) and never
    touches the converted backbone, whose directory may be gone."""
    config, manifest = tiny_shards
    config = config.copy_and_resolve_references()
    weights = tmp_path / "weights"
    cfg = dict(kind="vit", **config.model.vit.to_dict())
    backbones.save(weights, "uni", cfg, backbones.init_params(backbones.build(cfg), seed=5), {})
    config.model.backbone_weights = str(weights)
    mesh = sharding.make_mesh(config)
    start = initial_state(config, manifest, mesh)[
        3
    ]  # initialised, then the converted weights loaded
    np.testing.assert_array_equal(
        start.params["backbone"]["pos_embed"], backbones.load(weights)[1]["pos_embed"]
    )
    straight = loop.train(config, tmp_path / "straight", manifest, mesh)
    first = loop.train(config, tmp_path / "resumed", manifest, mesh, stop_after=3)
    for p in sorted(weights.rglob("*"), reverse=True):  # the weights are gone...
        p.unlink() if p.is_file() else p.rmdir()
    calls = []
    monkeypatch.setattr(backbones, "load", lambda *a, **k: calls.append(a))
    resumed = loop.train(config, tmp_path / "resumed", manifest, mesh)  # ...and not needed
    assert calls == []
    assert first.initial == straight.initial and resumed.initial is None
    assert int(resumed.state.step) == int(straight.state.step) == config.train.steps
    a, b = _read(tmp_path / "straight"), _read(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, config.train.steps + 1))
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(rb["loss"], ra["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)


def test_frozen_backbone_gets_no_updates_and_no_optimizer_state(tiny_shards):
    config, manifest = tiny_shards
    config = config.copy_and_resolve_references()
    config.model.backbone_mode = "frozen"
    mesh = sharding.make_mesh(config)
    model, tx, shardings, state = initial_state(config, manifest, mesh)
    before = jax.device_get(state.params)
    step = step_lib.make_train_step(model, tx, config, mesh, shardings, families.get(config))
    batch = sharding.to_device(_first_batch(config, manifest), mesh)
    for _ in range(2):  # the warmup's first learning rate is 0
        state, _ = step(state, batch)
    after = jax.device_get(state.params)
    for x, y in zip(jax.tree.leaves(before["backbone"]), jax.tree.leaves(after["backbone"])):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(before["st_head"]["proj"]["kernel"], after["st_head"]["proj"]["kernel"])
    n_backbone = sum(x.size for x in jax.tree.leaves(before["backbone"]))
    n_all = sum(x.size for x in jax.tree.leaves(before))
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
    assert n_opt < 2 * (n_all - n_backbone) + 100  # Adam moments for the non-backbone part only
