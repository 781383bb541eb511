import json

import jax
import numpy as np

from sigmma_jax import input_pipeline, train


def _first_batch(config, manifest):
    it = input_pipeline.train_iterator(
        config.data.shard_dir, manifest, config.train.global_batch, seed=0
    )
    return next(it)


def test_step_on_8_devices_equals_1_device(shards):
    config, manifest = shards
    assert jax.device_count() == 8
    host_batch = _first_batch(config, manifest)
    model, tx = train.SIGMMA(config.model), train.make_optimizer(config)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = train.make_mesh(config, devices)
        state, _ = train.init_state(model, tx, config, manifest, mesh)
        batch = input_pipeline.to_device(host_batch, mesh)
        assert len(batch["image"].sharding.device_set) == len(devices)
        grad_fn = jax.jit(
            jax.value_and_grad(lambda p, b, r: train.loss_fn(p, model, b, r), has_aux=True)
        )
        (loss, (per, _)), grads = grad_fn(state.params, batch, jax.random.PRNGKey(7))
        results.append((float(loss), {k: float(v) for k, v in per.items()}, jax.device_get(grads)))
    (l1, p1, g1), (l8, p8, g8) = results
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for k in p1:
        np.testing.assert_allclose(p8[k], p1[k], rtol=1e-5)
    flat1, flat8 = jax.tree.leaves(g1), jax.tree.leaves(g8)
    assert len(flat1) == len(flat8) > 20
    for a, b in zip(flat1, flat8):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)


def test_a_few_steps_lower_the_loss(shards, tmp_path):
    config, manifest = shards
    config = config.copy_and_resolve_references()
    config.train.update(steps=40, warmup_steps=4, lr=3e-3, checkpoint_every=1000, log_every=1)
    config.data.augment = False
    mesh = train.make_mesh(config)
    train.train(config, tmp_path, manifest, mesh)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses


def test_save_kill_resume_gives_the_same_next_steps(shards, tmp_path):
    config, manifest = shards
    mesh = train.make_mesh(config)
    _, straight = train.train(config, tmp_path / "straight", manifest, mesh)
    # "Killed" after 3 steps (the checkpoint of step 3 is the last thing it wrote), then restarted.
    train.train(config, tmp_path / "resumed", manifest, mesh, stop_after=3)
    _, resumed = train.train(config, tmp_path / "resumed", manifest, mesh)
    assert int(resumed.step) == int(straight.step) == config.train.steps
    read = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    a, b = read(tmp_path / "straight"), read(tmp_path / "resumed")
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        np.testing.assert_allclose(rb["loss"], ra["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)


def test_frozen_backbone_gets_no_updates_and_no_optimizer_state(shards):
    config, manifest = shards
    config = config.copy_and_resolve_references()
    config.model.backbone_mode = "frozen"
    mesh = train.make_mesh(config)
    model, tx = train.SIGMMA(config.model), train.make_optimizer(config)
    state, shardings = train.init_state(model, tx, config, manifest, mesh)
    before = jax.device_get(state.params)
    step = train.make_train_step(model, tx, config, mesh, shardings)
    batch = input_pipeline.to_device(_first_batch(config, manifest), mesh)
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
