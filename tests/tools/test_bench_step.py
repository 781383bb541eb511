"""`bench step`: the whole train step compiled ahead of time for 8 devices, then run."""

import contextlib
import io
import re

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from sigmma_jax.models import backbones
from sigmma_jax.tools.bench import step


@pytest.mark.parametrize("fsdp", [1, 8])
def test_the_whole_step_compiles_for_8_devices_and_runs(tiny_shards, fsdp):
    config, manifest = tiny_shards
    config = config.copy_and_resolve_references()
    config.sharding.min_fsdp_bytes = 0  # the tiny model's leaves are all small: shard every one
    r = step.measure(config, 8, True, iters=1, warmup=1, workdir=None, genes=40, fsdp=fsdp)
    assert r["devices"] == 8 and r["tiles_per_device"] == 1 and r["crops_per_device"] == 21
    assert r["fsdp"] == fsdp and (r["gathered_gib"] > 0) == (fsdp > 1)
    assert r["nodes"] == config.data.node_budget and r["genes"] == 40
    # The arguments hold at least the parameters and AdamW's two moments, in float32 (each
    # device an eighth of most of them under FSDP).
    assert r["argument_gib"] * 2**30 >= 3 * 4 * r["params"] / fsdp
    assert r["total_gib"] >= r["argument_gib"] and r["temp_gib"] > 0
    assert np.isfinite(r["loss"]) and r["tiles_per_s"] > 0 and "mfu" not in r  # no MFU on CPUs
    # The estimate from shapes: state as XLA counts the arguments, float32 gradients, remat off.
    assert abs(r["state_gib"] - r["argument_gib"] + r["batch_gib"]) < 1e-3
    assert (r["gradients_gib"] * 2**30 == 4 * r["params"]) == (fsdp == 1)
    assert r["saved_gib"] > 0 and r["recomputed_gib"] == 0 and not config.model.remat
    parts = ("state_gib", "batch_gib", "gradients_gib", "gathered_gib", "saved_gib")
    parts += ("recomputed_gib",)
    assert r["estimate_gib"] == sum(r[k] for k in parts)


def _reference_bytes(f, *args) -> int:
    """What jax.ad_checkpoint.print_saved_residuals lists, inputs left out, in bytes."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(f, *args)
    total = 0
    for line in out.getvalue().splitlines():
        m = re.match(r"[a-z]+(\d+)\[([\d,]*)\] (.*)", line)
        if not m.group(3).startswith("from the argument"):
            total += (
                int(m.group(1)) // 8 * int(np.prod([int(d) for d in m.group(2).split(",") if d]))
            )
    return total


def test_saved_bytes_are_jax_own_residuals():
    f = lambda w, x: jnp.sum(jnp.tanh(x @ w) * jnp.sin(x @ w).astype(jnp.bfloat16))
    w, x = jnp.ones((4, 4)), jnp.ones((8, 4))
    expected = _reference_bytes(f, w, x)
    assert expected == 4 * 8 * 4 * 4  # tanh, 1 - tanh^2, cos and a cast, each f32[8, 4]
    assert step.saved_bytes(lambda p: f(*p), (w, x)) == expected


def test_remat_keeps_only_the_block_inputs():
    vit = dict(img_size=32, patch_size=8, width=64, depth=3, num_heads=4, mlp_ratio=2.0)
    x = jax.ShapeDtypeStruct((5, 32, 32, 3), jnp.float32)
    saved = {}
    for remat in (False, True):
        m = backbones.build("uni", remat=remat, **vit)
        params = jax.eval_shape(lambda m=m: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
        saved[remat] = step.saved_bytes(lambda p, x, m=m: jnp.sum(m.apply(p, x)), params, x)
    tokens = 5 * (16 + 1) * 64 * 4  # 5 images x (16 patches + class token) x width, float32
    # Remat keeps each block's input (and what surrounds the blocks), not what is inside them.
    assert 3 * tokens <= saved[True] < saved[False] / 3, saved


def test_shapes_come_from_the_manifest_or_bound_it(tiny_shards, tmp_path):
    config, manifest = tiny_shards
    assert step._manifest(config, str(tmp_path), 40) == manifest  # config.data.shard_dir has it
    config = config.copy_and_resolve_references()
    config.data.shard_dir = ""
    bound = step._manifest(config, str(tmp_path), 40)["budgets"]  # no manifest there
    assert bound["nodes"] == manifest["budgets"]["nodes"]
    assert manifest["budgets"]["edges"] <= bound["edges"] == 2 * config.data.knn_k * 160


def test_the_memory_table_splits_the_state_under_fsdp(tiny_shards, monkeypatch):
    config, _ = tiny_shards
    config = config.copy_and_resolve_references()
    config.sharding.min_fsdp_bytes = 0
    monkeypatch.setattr(step, "TABLE_BACKBONES", ("vit",))  # the tiny ViT of config.model.vit
    monkeypatch.setattr(step, "TABLE_DEVICES", (8,))
    dp, fsdp = step.fit_table(config, genes=40)
    assert (dp["layout"], fsdp["layout"]) == ("data parallel", "FSDP")
    assert dp["params"] == fsdp["params"] and dp["tiles_per_device"] == 1
    # Every leaf of the tiny model divides by 8 but the scalars and a few odd shapes.
    assert dp["state_gib"] / 8 <= fsdp["state_gib"] < dp["state_gib"] / 4
    assert dp["gradients_gib"] * 2**30 == 4 * dp["params"] and fsdp["gathered_gib"] > 0
    assert dp["saved_gib"] == fsdp["saved_gib"]  # activations follow the batch, not the layout
    table = step.fit_table_markdown([dp, fsdp]).splitlines()
    assert len(table) == 4 and "| vit |" in table[2] and table[3].endswith("yes | yes | yes |")
