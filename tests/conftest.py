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
