"""`bench step`: the whole train step compiled ahead of time for 8 devices, then run."""

import numpy as np

from sigmma_jax.tools.bench import step


def test_the_whole_step_compiles_for_8_devices_and_runs(tiny_shards):
    config, manifest = tiny_shards
    r = step.measure(config, devices=8, run=True, iters=1, warmup=1, workdir=None, genes=40)
    assert r["devices"] == 8 and r["tiles_per_device"] == 1 and r["crops_per_device"] == 21
    assert r["nodes"] == config.data.node_budget and r["genes"] == 40
    # The arguments hold at least the parameters and AdamW's two moments, in float32.
    assert r["argument_gib"] * 2**30 >= 3 * 4 * r["params"]
    assert r["total_gib"] >= r["argument_gib"] and r["temp_gib"] > 0
    assert np.isfinite(r["loss"]) and r["tiles_per_s"] > 0 and "mfu" not in r  # no MFU on CPUs


def test_shapes_come_from_the_manifest_or_bound_it(tiny_shards, tmp_path):
    config, manifest = tiny_shards
    assert step._manifest(config, str(tmp_path), 40) == manifest  # config.data.shard_dir has it
    config = config.copy_and_resolve_references()
    config.data.shard_dir = ""
    bound = step._manifest(config, str(tmp_path), 40)["budgets"]  # no manifest there
    assert bound["nodes"] == manifest["budgets"]["nodes"]
    assert manifest["budgets"]["edges"] <= bound["edges"] == 2 * config.data.knn_k * 160
