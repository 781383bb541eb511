"""Configs for tests: the demo shrunk to seconds, and the repository's config files."""

import importlib.util
import pathlib

from sigmma_jax import config_base

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(shard_dir=""):
    """The demo config shrunk to seconds: tiny ViT, tiny GNN, 8-tile batches."""
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
    c.model.gene_sentence.update(dict(width=16, depth=1, num_heads=2, mlp_ratio=2.0))
    c.data.sentence_length = 12
    c.train.update(dict(global_batch=8, steps=6, warmup_steps=2, log_every=1, checkpoint_every=3))
    c.eval.update(dict(batch=8, pca_components=8, n_genes=10))
    c.suite.steps = 0  # train.steps
    return c


def preprocessing_only(c):
    """A config that only preprocesses: nothing trains or evaluates, so any split will do."""
    c.train.steps, c.evals = 0, ()
    return c


def load_config(name, arg=None):
    """configs/NAME.py's get_config(arg), as `--config=configs/NAME.py:arg` gives it."""
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def shrink(c):
    """The test suite's tiny model and schedule on any config."""
    tiny = tiny_config()
    c.model, c.train, c.eval = tiny.model, tiny.train, tiny.eval
    c.suite.steps = tiny.suite.steps
    c.data.update(workers=1, chunk_rows=2)
    return c


def tiny_st_align_config(shard_dir="", slides_dir=""):
    """configs/st_align.py:demo shrunk to seconds: four small synthetic DLPFC-like slices of two
    donors, every encoder a few thousand parameters, 8-spot batches."""
    c = load_config("st_align", "demo")
    c.data.synthetic_visium.update(n_slices=4, size_um=1300.0, n_genes=40, dir=str(slides_dir))
    c.data.spots.update(crop_px=16, niche_px=16)
    c.data.update(workers=1, chunk_rows=4, shard_dir=str(shard_dir))
    c.model.vit.update(dict(img_size=16, patch_size=8, width=32, depth=1, num_heads=2))
    c.model.spot_image.update(layers=(1, 1, 1, 1), width=8)
    c.model.scgpt.update(d_model=16, nhead=2, d_hid=32, nlayers=1)
    c.model.niche_gene.update(tokens=2, width=16, depth=1, heads=2, mlp_dim=32)
    c.model.abfn.update(tokens=2, width=16, heads=2, ffn_hidden=8, hidden=32)
    c.model.embed_dim, c.model.fused_dim = 16, 16
    c.train.update(dict(global_batch=8, steps=6, warmup_steps=2, log_every=1, checkpoint_every=3))
    c.eval.update(dict(batch=8, domain_seeds=2, domain_pca=8, gene_seeds=1, gene_mlp_max_iter=15))
    return c
