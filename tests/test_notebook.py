"""The Colab notebook runs top to bottom from the checkout, on CPU, shrunk through its parameters:
training, embedding (with the figures), an H&E image alone and the attention maps; then ST-Align's
Visium demo, a held-out slice embedded, its domains and the nine genes drawn."""

import json

import nbformat
from nbclient import NotebookClient
from support.configs import REPO

# configs/st_align.py:demo shrunk as tests/support/configs.tiny_st_align_config shrinks it
ST_ALIGN_TINY = [
    f"--config.{k}={v}"
    for k, v in dict(
        **{"data.synthetic_visium.n_slices": 4, "data.synthetic_visium.size_um": 1300},
        **{
            "data.synthetic_visium.n_genes": 40,
            "data.spots.crop_px": 16,
            "data.spots.niche_px": 16,
        },
        **{"model.vit.img_size": 16, "model.vit.patch_size": 8, "model.vit.width": 32},
        **{"model.vit.depth": 1, "model.vit.num_heads": 2, "model.spot_image.width": 8},
        **{"model.scgpt.d_model": 16, "model.scgpt.nhead": 2, "model.scgpt.d_hid": 32},
        **{"model.scgpt.nlayers": 1, "model.niche_gene.tokens": 2, "model.niche_gene.width": 16},
        **{
            "model.niche_gene.depth": 1,
            "model.niche_gene.heads": 2,
            "model.niche_gene.mlp_dim": 32,
        },
        **{"model.abfn.tokens": 2, "model.abfn.width": 16, "model.abfn.heads": 2},
        **{"model.abfn.ffn_hidden": 8, "model.abfn.hidden": 32, "model.embed_dim": 16},
        **{"model.fused_dim": 16, "train.global_batch": 8, "train.warmup_steps": 2},
        **{"train.log_every": 2, "eval.batch": 8, "eval.domain_seeds": 2, "eval.gene_seeds": 1},
        **{"eval.gene_mlp_max_iter": 15},
    ).items()
]


def test_colab_notebook_runs_from_the_checkout(tmp_path, monkeypatch):
    work = tmp_path / "demo"
    monkeypatch.setenv("SIGMMA_WORKDIR", str(work))
    monkeypatch.setenv("SIGMMA_SIZE_UM", "1024")
    monkeypatch.setenv("SIGMMA_STEPS", "30")
    flags = "--config.train.global_batch=8 --config.eval.batch=8 --config.data.split.block_tiles=2"
    monkeypatch.setenv("SIGMMA_EXTRA_FLAGS", flags)
    st_work = tmp_path / "st_align"
    monkeypatch.setenv("SIGMMA_ST_WORKDIR", str(st_work))
    monkeypatch.setenv("SIGMMA_ST_STEPS", "6")
    monkeypatch.setenv("SIGMMA_ST_EXTRA_FLAGS", " ".join(ST_ALIGN_TINY))
    monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device, as on a laptop
    nb = nbformat.read(REPO / "colab" / "sigmma_tpu.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "colab")}},
    )
    client.execute()
    assert json.loads((work / "results.json").read_text())["steps"] == 30
    emb = work / "embedding"
    for f in ("tiles.h5ad", "cells.h5ad", "clusters.json", "figures/clusters_synthetic.png"):
        assert (emb / f).stat().st_size > 0
    assert (work / "he_only" / "tiles.h5ad").exists()
    assert len(list((work / "attention").glob("*_attention.png"))) == 2
    # What the notebook shows: the figures, inline.
    assert json.loads((st_work / "results.json").read_text())["steps"] == 6
    for f in ("spots.h5ad", "figures/domains_SYN01.png", "figures/nine_genes.png"):
        assert (st_work / "embedding" / f).stat().st_size > 0
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 13
