"""`bench gpu`: refuses without a GPU; its step check is `bench step` on one device at the given
tiles per device."""

import types

import numpy as np
import pytest

from sigmma_jax.tools.bench import gpu


def test_it_refuses_to_measure_a_cpu_as_a_gpu():
    with pytest.raises(SystemExit, match="no GPU here"):
        gpu.run(types.SimpleNamespace(gpu_allow_cpu=False))


def test_the_step_check_runs_the_step_at_the_tiles_per_device(tiny_shards):
    config, _ = tiny_shards
    r = gpu.step_check(config, tiles=4, iters=1)
    assert r["devices"] == 1 and r["tiles_per_device"] == 4 and r["crops_per_device"] == 84
    assert r["step_s"] > 0 and np.isclose(r["tiles_per_s"], 4 / r["step_s"])
    assert r["estimate_gib"] > 0 and r["total_gib"] > 0 and np.isfinite(r["loss"])
    assert config.train.global_batch == 8  # the caller's config is left as it was
