"""Every test runs with 8 CPU devices, so sharded paths are exercised as on a real mesh."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain reads absl flags; outside absl.app.run they must be marked parsed first.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A small synthetic slide preprocessed once for the session: (config, manifest)."""
    from support.configs import tiny_config

    from sigmma_jax.data import shards as shard_set

    root = tmp_path_factory.mktemp("run")
    config = tiny_config(root / "shards")
    manifest = shard_set.preprocess(config, root)
    return config, manifest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """configs/demo.py shrunk to seconds, trained and evaluated once for the session, with a node
    budget (96) below the cell count of some tiles: (run directory, config)."""
    from support.configs import load_config, shrink

    from sigmma_jax.train import loop

    c = shrink(load_config("demo"))
    c.data.synthetic.update(size_um=1024.0, n_genes=40)
    c.data.split.block_tiles = 2
    c.data.node_budget = 96
    root = tmp_path_factory.mktemp("tiny_run")
    loop.train_and_evaluate(c, root)
    return root, c


@pytest.fixture(scope="session")
def tiny_embedding(tiny_run, tmp_path_factory):
    """The tiny run's slide embedded by the run (`embed_slide`): (run dir, config, OUT)."""
    from sigmma_jax.analysis import embed

    run, config = tiny_run
    out = tmp_path_factory.mktemp("embedding")
    embed.embed_slide(run, config, out)
    return run, config, out
