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
def process_env(tmp_path_factory):
    """The environment of commands the tests start as processes: `tests` importable (configs such
    as tests/support/tiny.py) and one JAX compilation cache for the session, so a program compiles
    once however many processes run it."""
    from support.configs import REPO

    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]),
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
