"""Every test runs with 8 CPU devices, so sharded paths are exercised as on a real mesh.

The suite is mostly XLA compiling the same small programs again (each run builds its model and
step anew, in this process or in a child): one persistent compilation cache for the session, shared
by the xdist workers and the processes tests start, compiles each once.
"""

import logging
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
if "SIGMMA_TEST_JIT_CACHE" not in os.environ:  # the controller (or a run without xdist)
    os.environ["SIGMMA_TEST_JIT_CACHE"] = tempfile.mkdtemp(prefix="sigmma_jax_jit_cache_")
    _OWN_CACHE = True
else:  # an xdist worker: the controller's cache
    _OWN_CACHE = False
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["SIGMMA_TEST_JIT_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# Grain reads absl flags; outside absl.app.run they must be marked parsed first.
flags.FLAGS.mark_as_parsed()


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["SIGMMA_TEST_JIT_CACHE"], ignore_errors=True)


class _Lines(logging.Handler):
    """The messages logged at INFO and above while it is attached to the root logger."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


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
def demo_tile(tmp_path_factory):
    """A 224 x 224 H&E tile of the demo's slide (the synthetic slide at 0.5 µm/px, the 20x the
    pathology encoders expect), float RGB in [0, 1]: what the parity tests feed besides noise."""
    import numpy as np

    from sigmma_jax.data import readers, synthetic

    root = tmp_path_factory.mktemp("demo_tile")
    slide = synthetic.write_synthetic_slide(root, size_um=200.0, pixel_size_um=0.5, n_genes=12)
    region = readers.WSI(slide.wsi).read(88, 312, 88, 312)  # the centre: tissue, not the border
    return region[..., :3].astype(np.float32) / 255.0


@pytest.fixture(scope="session")
def tiny_spots(tmp_path_factory):
    """Four small synthetic Visium slices (two donors) preprocessed once for the session with the
    tiny ST-Align config: (config, manifest); fold 0 holds out the first donor's two slices."""
    from support.configs import tiny_st_align_config

    from sigmma_jax import families

    root = tmp_path_factory.mktemp("spots")
    config = tiny_st_align_config(root / "shards", root / "slides")
    manifest = families.get(config).preprocess(config, root)
    return config, manifest


@pytest.fixture(scope="session")
def tiny_spot_run(tiny_spots, tmp_path_factory):
    """A tiny ST-Align run trained and evaluated on `tiny_spots`' shards: (run dir, config,
    results)."""
    from sigmma_jax.train import loop

    config, _ = tiny_spots
    run = tmp_path_factory.mktemp("spot_run") / "run"
    return run, config, loop.train_and_evaluate(config, run)


@pytest.fixture(scope="session")
def process_env():
    """The environment of commands the tests start as processes: `tests` importable (configs such
    as tests/support/tiny.py) and the session's compilation cache (module docstring)."""
    from support.configs import REPO

    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))


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
    lines, logger = _Lines(), logging.getLogger()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        loop.train_and_evaluate(c, root)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    (root.parent / "tiny_run.log").write_text("\n".join(lines.messages))  # tests/test_main.py
    return root, c


@pytest.fixture(scope="session")
def tiny_embedding(tiny_run, tmp_path_factory):
    """The tiny run's slide embedded by the run (`embed_slide`): (run dir, config, OUT)."""
    from sigmma_jax.analysis import embed

    run, config = tiny_run
    out = tmp_path_factory.mktemp("embedding")
    embed.embed_slide(run, config, out)
    return run, config, out
