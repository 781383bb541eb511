"""Every test runs with 8 CPU devices, so sharded paths are exercised as on a real mesh."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain reads absl flags; outside absl.app.run they must be marked parsed first.
flags.FLAGS.mark_as_parsed()


def tiny_config(shard_dir=""):
    """The demo config shrunk to seconds: tiny ViT, tiny GNN, 8-tile batches."""
    from sigmma_jax import config_base

    c = config_base.apply_demo(config_base.base_config())
    c.data.source = "synthetic"
    c.data.synthetic.size_um = 1024.0
    c.data.synthetic.n_genes = 40
    c.data.workers = 1
    c.data.chunk_rows = 2
    c.data.shard_dir = str(shard_dir)
    c.data.split.block_tiles = 2
    c.model.vit.update(dict(img_size=16, patch_size=8, width=32, depth=1, num_heads=2))
    c.model.embed_dim = 32
    c.model.st.update(dict(hidden=32, edge_hidden=8))
    c.train.update(dict(global_batch=8, steps=6, warmup_steps=2, log_every=1, checkpoint_every=3))
    c.eval.update(dict(batch=8, pca_components=8, n_genes=10))
    return c


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """A small synthetic slide preprocessed once for the session: (config, manifest)."""
    from sigmma_jax import preprocess

    root = tmp_path_factory.mktemp("run")
    config = tiny_config(root / "shards")
    manifest = preprocess.preprocess(config, root)
    return config, manifest
