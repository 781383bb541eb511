"""Spot records (ST-Align): niches are the spot and its 3 nearest spots, niche expression the mean of
their counts (Eq. 2), images of the physical size asked, labels carried, the panel's nine genes
kept, the shard set reused by a rerun and refused for cells or too few spots."""

import pathlib

import grain
import numpy as np
import pytest
import scipy.sparse as sp
from support.configs import tiny_st_align_config

from sigmma_jax import dlpfc, families
from sigmma_jax.data import readers, records, shards, spot_shards
from sigmma_jax.errors import InputError


def _records(config, manifest) -> list[dict]:
    src = grain.sources.ArrayRecordDataSource(
        [str(shards.shard_dir(config, "") / s) for s in manifest["shards"]]
    )
    return [records.decode_spot(src[i]) for i in range(len(src))]


def test_niches_are_the_spot_and_its_nearest_spots():
    rng = np.random.default_rng(0)
    r, c = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = (c % 2) == (r % 2)  # Visium's hexagonal grid: 100 µm between neighbours
    xy = np.stack([c[keep] * 50.0, r[keep] * 50.0 * np.sqrt(3)], 1) + rng.normal(
        0, 1, (keep.sum(), 2)
    )
    nb = spot_shards.niches(xy, 3)
    assert nb.shape == (len(xy), 4) and (nb[:, 0] == np.arange(len(xy))).all()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    for i in range(len(xy)):
        third = np.sort(d[i])[3]  # self at 0, then the three nearest
        assert (d[i, nb[i, 1:]] <= third + 1e-9).all() and len(set(nb[i])) == 4
    np.testing.assert_allclose(np.median(d[np.arange(len(xy)), nb[:, 1]]), 100.0, atol=3)


def test_records_hold_the_spot_its_niche_and_its_label(tiny_spots):
    config, manifest = tiny_spots
    recs = _records(config, manifest)
    items = shards.items(manifest)
    assert manifest["unit"] == "spots" and len(recs) == len(items) > 500
    by_key = {(r["meta"]["slide"], r["barcode"]): r for r in recs}
    s = config.data.spots
    table = pathlib.Path(config.data.synthetic_visium.dir) / "barcode_level_layer_map.tsv"
    truth = {}
    for line in table.read_text().splitlines():
        barcode, sample, layer = line.split("\t")
        truth[sample, barcode] = layer
    assert all(truth[t["slide"], t["barcode"]] == t["label"] for t in items)
    for rec, item in list(zip(recs, items))[:40]:
        assert rec["spot_image"].shape == (s.crop_px, s.crop_px, 3)
        assert rec["niche_image"].shape == (s.niche_px, s.niche_px, 3)
        assert rec["barcode"] == item["barcode"] and rec["meta"]["label"] == item["label"]
        members = [by_key[(rec["meta"]["slide"], b)] for b in rec["meta"]["niche"]]
        assert len(members) == s.niche_k + 1 and members[0] is rec
        np.testing.assert_allclose(
            rec["niche_counts"], np.mean([m["counts"] for m in members], 0), rtol=1e-6
        )
    assert set(manifest["labels"]) <= set(dlpfc.LAYERS)
    assert all(t["label"] for t in items)  # every spot of the demo is annotated


def test_the_panel_keeps_the_nine_genes_and_the_split_holds_out_a_donor(tiny_spots):
    config, manifest = tiny_spots
    assert set(dlpfc.NINE) <= set(manifest["genes"])
    test = {shards.items(manifest)[i]["slide"] for i in manifest["splits"]["test"]}
    train = {shards.items(manifest)[i]["slide"] for i in manifest["splits"]["train"]}
    assert test and train and not test & train
    assert len({manifest["groups"][s] for s in test}) == 1  # one donor, both of its slides


def test_a_rerun_reuses_the_shards(tiny_spots, tmp_path):
    config, manifest = tiny_spots
    again = families.get(config).preprocess(config, tmp_path)
    assert again["shard_hash"] == manifest["shard_hash"] and again["spots"] == manifest["spots"]


def test_sample_groups_regroup_the_folds_without_preprocessing_again(tiny_spots, tmp_path):
    """data.sample_groups names the donors the metadata lacks (HEST's DLPFC): the folds follow, the
    shards are kept; a sample not among the slides, or an entry without '=', is one line."""
    import shutil

    config, manifest = tiny_spots
    c = config.copy_and_resolve_references()
    c.data.shard_dir = str(tmp_path / "shards")
    shutil.copytree(config.data.shard_dir, c.data.shard_dir)
    c.data.sample_groups = ("SYN01=x", "SYN02=y", "SYN03=x", "SYN04=y")
    again = families.get(c).preprocess(c, tmp_path)
    assert again["shard_hash"] == manifest["shard_hash"] and again["shards"] == manifest["shards"]
    assert again["folds"] == [["SYN01", "SYN03"], ["SYN02", "SYN04"]]
    test = {shards.items(again)[i]["slide"] for i in again["splits"]["test"]}
    assert test == {"SYN01", "SYN03"}
    assert shards.read_manifest(c.data.shard_dir)["folds"] == again["folds"]  # recorded
    for bad, says in (
        ("SYN09=x", "'SYN09', which is not one of the slides"),
        ("SYN01", "SAMPLE=GROUP"),
    ):
        c.data.sample_groups = (bad,)
        with pytest.raises(InputError, match=says):
            families.get(c).preprocess(c, tmp_path)


def test_hvg_panel_is_scanpys_selection_across_slides_plus_the_kept_genes():
    import anndata
    import scanpy as sc

    rng = np.random.default_rng(0)
    genes = [f"G{i:02d}" for i in range(40)]
    slides, xs = [], []
    for k in range(2):
        lam = rng.gamma(2.0, 3.0, (1, 40)) * rng.gamma(3.0, 1 / 3.0, (150, 40))
        x = rng.poisson(lam).astype(np.float32)
        xs.append(x)
        slides.append(
            readers.Slide(
                f"s{k}",
                None,
                0.5,
                (9, 9),
                np.zeros((150, 2)),
                sp.csr_matrix(x),
                np.asarray(genes),
                np.arange(150),
            )
        )
    a = anndata.AnnData(np.concatenate(xs))
    a.var_names = genes
    a.obs["slide"] = ["s0"] * 150 + ["s1"] * 150
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=8, flavor="seurat", batch_key="slide")
    want = set(a.var_names[a.var["highly_variable"]]) | {"G39"}
    panel = spot_shards.hvg_panel(slides, genes, 8, ("G39",))
    assert panel == sorted(want) and 8 <= len(panel) <= 12
    assert spot_shards.hvg_panel(slides, genes, 0, ()) == genes  # 0: every shared gene


def test_cells_and_too_few_spots_are_refused(tmp_path):
    c = tiny_st_align_config(tmp_path / "shards")
    slide = readers.Slide(
        "cells",
        None,
        0.5,
        (10, 10),
        np.zeros((4, 2)),
        sp.csr_matrix(np.ones((4, 3))),
        np.array(["A", "B", "C"]),
        np.arange(4),
    )
    kind = spot_shards.SPOTS
    with pytest.raises(InputError, match="ST-Align reads spots"):
        kind.panel([slide], None, c)
    slide.spot_diameter_um = 55.0
    with pytest.raises(InputError, match="3 spots with counts over the panel; a niche needs 4"):
        slide.counts = sp.csr_matrix(np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0.0]]))
        kind.plan([slide], ["A", "B", "C"], {"cells": 0}, c, "h", tmp_path)


def test_a_split_with_fewer_training_spots_than_a_batch_names_spots(tiny_spots, tmp_path):
    config, _ = tiny_spots
    c = config.copy_and_resolve_references()
    c.train.global_batch = 4096
    c.data.shard_dir = str(tmp_path / "shards")
    with pytest.raises(InputError, match="training spots .* fewer than train.global_batch = 4096"):
        families.get(c).preprocess(c, tmp_path)
    assert not (tmp_path / "shards" / shards.MANIFEST).exists()
