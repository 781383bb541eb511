import json
import pathlib

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from sigmma_jax.data import readers
from sigmma_jax.evaluation import genes


def _hest_get_k_genes(adatas, k):
    """HEST-Benchmark's get_k_genes(criteria="var") as its source writes it, on AnnData per slide."""
    common = None
    for adata in adatas:
        a = adata.copy()
        sc.pp.filter_genes(a, min_cells=np.ceil(0.10 * len(a.obs)))
        cur = np.array(a.to_df().columns)
        common = cur if common is None else np.intersect1d(common, cur)
    common = [g for g in common if "BLANK" not in g and "Control" not in g]
    stacked = pd.concat([a.to_df()[common] for a in adatas])
    stacked = anndata.AnnData(stacked.astype(np.float32))
    sc.pp.filter_genes(stacked, min_cells=0)
    sc.pp.log1p(stacked)
    sc.pp.highly_variable_genes(stacked, n_top_genes=k)
    return stacked.var_names[stacked.var["highly_variable"]][:k].tolist()


def _tiles(rng, n, panel, rare=()):
    # Negative-binomial-like counts with gene-specific dispersion, so HVGs are well separated.
    mean = rng.gamma(1.0, 8.0, len(panel))
    counts = rng.poisson(
        rng.gamma(shape=rng.uniform(0.3, 5.0, len(panel)), scale=mean / 2, size=(n, len(panel)))
    )
    for g in rare:  # detected in under 10 % of this slide's tiles
        counts[:, panel.index(g)] = 0
        counts[: max(1, n // 20), panel.index(g)] = 3
    return counts.astype(np.float32)


def test_hest_gene_list_matches_hest_bench_with_scanpy():
    rng = np.random.default_rng(0)
    panel = sorted([f"G{i:03d}" for i in range(90)] + ["BLANK_0007", "NegControlProbe_1", "AB-1"])
    slides, parts = [], []
    for name, n, rare in (("S1", 120, ("G004", "G050")), ("S2", 80, ("G060",)), ("S3", 60, ())):
        parts.append(_tiles(rng, n, panel, rare))
        slides += [name] * n
    counts = np.concatenate(parts)
    adatas = []
    for name, part in zip(("S1", "S2", "S3"), parts):
        a = anndata.AnnData(part)
        a.var_names = panel
        a.obs_names = [f"{name}_{i}" for i in range(len(part))]
        adatas.append(a)
    want = _hest_get_k_genes(adatas, 20)
    got = genes.hest_hvgs(counts, slides, panel, 20)
    assert [panel[i] for i in got] == want
    assert len(want) == 20
    chosen = {panel[i] for i in got}
    assert not chosen & {"G004", "G050", "G060", "BLANK_0007", "NegControlProbe_1"}
    # Fewer candidates than asked: every gene that survives the filters, in panel order, as HEST.
    few = genes.hest_hvgs(counts[:, :10], slides, panel[:10], 50)
    want = _hest_get_k_genes([a[:, :10] for a in adatas], 50)
    assert [panel[i] for i in few] == want and "BLANK_0007" not in want and len(want) > 5


def test_gene_list_file(tmp_path):
    panel = ["A", "B", "C", "D"]
    path = tmp_path / "var_50genes.json"
    path.write_text(json.dumps({"genes": ["C", "A"]}))
    np.testing.assert_array_equal(genes.from_file(path, panel), [2, 0])
    path.write_text(json.dumps({"genes": ["C", "E", "F"]}))
    with pytest.raises(readers.InputError, match=r"var_50genes.json: 2 of 3 genes are not in"):
        genes.from_file(path, panel)
    path.write_text("[1, 2]")
    with pytest.raises(readers.InputError, match=r'var_50genes.json: expected \{"genes"'):
        genes.from_file(path, panel)
    with pytest.raises(readers.InputError, match="gene list not found"):
        genes.from_file(tmp_path / "nope.json", panel)


def test_the_gene_list_is_made_once_per_shard_set(tiny_shards, monkeypatch):
    """The first run of a shard set keeps HEST's list beside the shards (HEST's file format);
    later runs read it instead of every tile again."""
    config, manifest = tiny_shards
    c = config.copy_and_resolve_references()
    c.eval.n_genes = 7
    first = genes.select(c, manifest, c.data.shard_dir)
    kept = list((pathlib.Path(c.data.shard_dir) / "task1").glob("genes_*_7.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["genes"] == [
        manifest["genes"][i] for i in first
    ]
    monkeypatch.setattr(genes, "hest_hvgs", lambda *a: pytest.fail("computed again"))
    np.testing.assert_array_equal(genes.select(c, manifest, c.data.shard_dir), first)
