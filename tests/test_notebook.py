"""The Colab notebook runs top to bottom from the checkout, on CPU, shrunk through its parameters:
training, embedding (with the figures), an H&E image alone and the attention maps."""

import json

import nbformat
from nbclient import NotebookClient
from support.configs import REPO


def test_colab_notebook_runs_from_the_checkout(tmp_path, monkeypatch):
    work = tmp_path / "demo"
    monkeypatch.setenv("SIGMMA_WORKDIR", str(work))
    monkeypatch.setenv("SIGMMA_SIZE_UM", "1024")
    monkeypatch.setenv("SIGMMA_STEPS", "30")
    flags = "--config.train.global_batch=8 --config.eval.batch=8 --config.data.split.block_tiles=2"
    monkeypatch.setenv("SIGMMA_EXTRA_FLAGS", flags)
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
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 10
