"""The mesh and the state's layout: FSDP against data parallelism on 8 CPU devices (the same losses
for 20 steps, 1/8 of the bytes per device, checkpoints that move between the layouts), and the rules
that decide each leaf's layout."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from support.configs import tiny_config

from sigmma_jax import sharding
from sigmma_jax.errors import ConfigError
from sigmma_jax.train import loop

STEPS = 20


def _layout(config, fsdp: int):
    c = config.copy_and_resolve_references()
    c.mesh.update(data=8 // fsdp, fsdp=fsdp)
    c.sharding.min_fsdp_bytes = 0  # the tiny model's leaves are all small: shard every one
    c.train.update(steps=STEPS, checkpoint_every=10, log_every=1)
    c.evals, c.eval.initial = (), False
    return c


def _losses(workdir):
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


@pytest.fixture(scope="module")
def straight(tiny_shards, tmp_path_factory):
    """20 uninterrupted steps under each layout: {fsdp: (config, workdir, Trained)}."""
    config, manifest = tiny_shards
    out = {}
    for fsdp in (1, 8):
        c = _layout(config, fsdp)
        d = tmp_path_factory.mktemp(f"fsdp{fsdp}")
        out[fsdp] = c, d, loop.train(c, d, manifest, sharding.make_mesh(c))
    return out


def test_fsdp_and_data_parallel_give_the_same_losses(straight):
    dp, fsdp = _losses(straight[1][1]), _losses(straight[8][1])
    assert sorted(dp) == sorted(fsdp) == list(range(1, STEPS + 1))
    for step in dp:
        for k in ("loss", "grad_norm"):
            np.testing.assert_allclose(fsdp[step][k], dp[step][k], rtol=1e-5, err_msg=(step, k))
    assert dp[STEPS]["loss"] < dp[1]["loss"]  # it trained


def test_fsdp_holds_an_eighth_of_each_sharded_leaf_per_device(straight):
    dp, fsdp = straight[1][2].state, straight[8][2].state
    per_device = lambda x: x.addressable_shards[0].data.nbytes
    sharded = 0
    for path, a in jax.tree_util.tree_leaves_with_path(fsdp):
        b = dict(jax.tree_util.tree_leaves_with_path(dp))[path]
        assert per_device(b) == b.nbytes  # data parallel: a whole copy everywhere
        if a.sharding.spec != P():
            assert per_device(a) * 8 == per_device(b), sharding.leaf_path(path)
            sharded += 1
        else:  # only leaves with no dimension divisible by 8 stay whole
            assert a.ndim == 0 or all(d % 8 for d in a.shape), sharding.leaf_path(path)
    params = jax.tree.leaves(fsdp.params)
    assert sharded > len(params)  # parameters and both Adam moments
    total = lambda t: sum(per_device(x) for x in jax.tree.leaves(t))
    assert total(fsdp.params) < total(dp.params) / 5


@pytest.mark.parametrize("first,then", [(8, 1), (1, 8)])
def test_a_checkpoint_resumes_under_the_other_layout(straight, tiny_shards, tmp_path, first, then):
    _, manifest = tiny_shards
    c_first, c_then = straight[first][0], straight[then][0]
    loop.train(c_first, tmp_path, manifest, sharding.make_mesh(c_first), stop_after=10)
    resumed = loop.train(c_then, tmp_path, manifest, sharding.make_mesh(c_then))
    assert resumed.initial is None and int(resumed.state.step) == STEPS
    leaf = jax.tree.leaves(resumed.state.opt_state)[-1]
    assert leaf.sharding.mesh.shape["fsdp"] == then  # restored onto the new layout
    ref, got = _losses(straight[first][1]), _losses(tmp_path)
    for step in range(11, STEPS + 1):
        np.testing.assert_allclose(got[step]["loss"], ref[step]["loss"], rtol=1e-5, err_msg=step)


def test_rules_pick_a_layout_per_leaf():
    rules = [
        ("step|rng", "replicate"),
        (".*/bias", "replicate"),
        (".*pos", (None, "fsdp")),
        (".*", "fsdp"),
    ]
    spec = lambda path, shape, nbytes=1 << 30, fsdp=8, floor=0: sharding.leaf_spec(
        path, shape, nbytes, rules, fsdp, floor
    )
    assert spec("params/a/kernel", (64, 256)) == P(None, "fsdp")  # the largest dimension
    assert spec("params/a/kernel", (256, 12)) == P("fsdp", None)
    assert spec("params/a/kernel", (12, 256, 9)) == P(None, "fsdp", None)
    assert spec("params/a/kernel", (3, 5)) == P()  # nothing divides by 8
    assert spec("params/a/kernel", (64, 256), nbytes=100, floor=1000) == P()  # too small
    assert spec("params/a/kernel", (64, 256), fsdp=1) == P()  # no fsdp axis: a replica
    assert spec("params/a/bias", (256,)) == P()  # an earlier rule wins
    assert spec("params/pos", (4, 16)) == P(None, "fsdp")  # explicit
    assert spec("step", ()) == P()
    assert sharding.leaf_spec("x", (8,), 64, [], 8, 0) == P()  # no rule: replicated


def test_state_paths_and_bytes_per_device():
    tree = dict(params=dict(w=jnp.zeros((16, 4))), opt=[(jnp.zeros(3),)])
    paths = [sharding.leaf_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    assert paths == ["opt/0/0", "params/w"]
    c = tiny_config()
    c.sharding.min_fsdp_bytes = 0
    specs = sharding.state_specs(tree, c, fsdp=8)
    assert specs["params"]["w"] == P("fsdp", None) and specs["opt"][0][0] == P()
    sizes = dict(data=2, fsdp=8)
    assert sharding.shard_bytes((16, 4), np.float32, P("fsdp", None), sizes) == 2 * 4 * 4
    assert sharding.shard_bytes((16, 4), np.float32, P(("data", "fsdp")), sizes) == 4 * 4
    assert sharding.shard_bytes((16, 4), np.float32, P(), sizes) == 16 * 4 * 4
    del c["sharding"]  # a run saved before the key existed was data-parallel
    assert sharding.state_specs(tree, c, fsdp=8)["params"]["w"] == P()


def test_the_mesh_takes_its_shape_from_the_config():
    c = tiny_config()
    c.mesh.update(data=-1, fsdp=4)
    mesh = sharding.make_mesh(c)
    assert dict(mesh.shape) == dict(data=2, fsdp=4)
    # fsdp is the inner axis: consecutive devices share one parameter shard group
    assert [d.id for d in mesh.devices[0]] == [0, 1, 2, 3]
    assert sharding.mesh_shape(c, 8) == (2, 4)
    c.mesh.update(data=2, fsdp=-1)
    assert sharding.mesh_shape(c, 8) == (2, 4)
    c.mesh.update(data=4, fsdp=4)
    with pytest.raises(ConfigError, match="needs more than the 8 devices"):
        sharding.make_mesh(c)
    c.mesh.update(data=1, fsdp=8)
    c.train.global_batch = 12
    with pytest.raises(ConfigError, match="divide by the mesh's 8 devices"):
        sharding.make_mesh(c)
