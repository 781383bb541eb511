"""A trained run applied to a slide: tiles.h5ad and cells.h5ad, checked against the input and against
the model run tile by tile."""

import json

import anndata
import grain
import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from sigmma_jax import sharding
from sigmma_jax.analysis import embed
from sigmma_jax.data import input_pipeline, readers, records, shards
from sigmma_jax.evaluation import expression, inference
from sigmma_jax.families.sigmma import FAMILY as SIGMMA
from sigmma_jax.scales import SCALES
from sigmma_jax.train import run_info


def _read(out):
    return anndata.read_h5ad(out / "tiles.h5ad"), anndata.read_h5ad(out / "cells.h5ad")


def test_every_cell_of_every_kept_tile_is_there_under_its_input_id(tiny_embedding):
    run, _, out = tiny_embedding
    tiles, cells = _read(out)
    _, manifest = run_info.read(run)
    inp = anndata.read_h5ad(out / "slide" / "cells.h5ad")
    panel = manifest["genes"]
    assert list(tiles.var_names) == list(cells.var_names) == panel
    counts = inp[:, panel].X.toarray()
    rc = np.floor(np.asarray(inp.obsm["spatial"])[:, ::-1] * inp.uns["pixel_size_um"] / 128.0)
    kept = set(zip(tiles.obs["row"], tiles.obs["col"]))
    in_kept = np.array([(int(r), int(c)) in kept for r, c in rc])
    # Every cell with transcripts in a kept tile, under its id (cells without any are never tiled).
    expected = inp.obs_names[in_kept & (counts.sum(1) > 0)]
    assert cells.obs_names.is_unique and sorted(cells.obs_names) == sorted(expected)
    same = inp[cells.obs_names]
    np.testing.assert_array_equal(cells.obsm["spatial"], same.obsm["spatial"])  # level-0 px
    np.testing.assert_array_equal(cells.X.toarray(), same[:, panel].X.toarray())
    for col in ("cell_type", "domain"):  # the input's columns, carried over
        assert (cells.obs[col].astype(str) == same.obs[col].astype(str)).all()
    # Tiles over the run's node budget lost cells in training, none here.
    assert manifest["report"]["tiles_overflow_subsampled"] > 0
    big = tiles.obs[tiles.obs["n_cells"] > manifest["settings"]["node_budget"]]
    assert len(big) > 0
    per_tile = cells.obs["tile"].value_counts()
    assert all(per_tile[name] == n for name, n in big["n_cells"].items())
    assert tiles.obs["n_cells"].sum() == cells.n_obs
    # Tile bounds in level-0 px of the slide: 128 µm squares on the grid.
    side = 128.0 / inp.uns["pixel_size_um"]
    np.testing.assert_allclose(tiles.obs["x0"], tiles.obs["col"] * side)
    np.testing.assert_allclose(tiles.obs["y1"] - tiles.obs["y0"], side)
    np.testing.assert_allclose(
        tiles.layers["observed"],
        np.log1p(
            np.stack(
                [
                    counts[in_kept & (rc == [r, c]).all(1)].sum(0)
                    for r, c in zip(tiles.obs["row"], tiles.obs["col"])
                ]
            )
        ),
        rtol=1e-5,
    )


def test_embeddings_are_the_models_on_each_tile(tiny_embedding):
    """Tile embeddings equal evaluation's on the run's held-out tiles (every tile within the
    budget); each cell's states equal the model's on its tile alone, padded to its own size."""
    run_dir, config, out = tiny_embedding
    tiles, cells = _read(out)
    mesh = sharding.make_mesh(config)
    run = embed.load_run(run_dir, mesh)
    ev = inference.embed_split(
        SIGMMA,
        inference.make_embed_fn(SIGMMA, run.model, mesh),
        run.params,
        shards.shard_dir(run.config, run_dir),
        run.manifest,
        "test",
        run.config,
        mesh,
    )
    test = [run.manifest["tiles"][i] for i in run.manifest["splits"]["test"]]
    rows = tiles.obs_names.get_indexer([f"{t['slide']}_{t['row']}_{t['col']}" for t in test])
    assert (rows >= 0).all()
    small = np.array([t["n_cells"] <= config.data.node_budget for t in test])
    assert small.sum() > 3
    for s in SCALES:
        np.testing.assert_allclose(tiles.obsm[f"he_{s}"][rows], ev["he"][s], atol=2e-5)
        np.testing.assert_allclose(
            tiles.obsm[f"backbone_{s}"][rows], ev["he_backbone"][s], atol=2e-5
        )
        np.testing.assert_allclose(
            tiles.obsm[f"st_{s}"][rows[small]], ev["st"][s][small], atol=2e-5
        )

    manifest = shards.read_manifest(out / "shards")
    i = int(np.argmax([t["n_kept"] for t in manifest["tiles"]]))
    source = grain.sources.ArrayRecordDataSource(
        [str(out / "shards" / s) for s in manifest["shards"]]
    )
    rec = records.decode(source[i])
    n, e = len(rec["xy"]), len(rec["senders"])
    assert n > config.data.node_budget
    tile = input_pipeline.pad_tile(rec, n, e)  # a slot of exactly its size; empty tiles beside
    batch = input_pipeline.collate(
        [tile] + [input_pipeline.empty_tile(tile)] * (len(mesh.devices) - 1)
    )
    apply = inference.make_embed_fn(SIGMMA, run.model, mesh, "cells")
    got = jax.device_get(apply(run.params, sharding.to_device(batch, mesh)))
    name = tiles.obs_names[i]
    mine = cells[(cells.obs["tile"] == name).to_numpy()]
    assert mine.obs_names.tolist() == rec["cell_ids"].tolist()
    for s in SCALES:
        np.testing.assert_allclose(mine.obsm[f"sigmma_{s}"], got["nodes"][s][0], atol=2e-5)
        np.testing.assert_allclose(tiles.obsm[f"st_{s}"][i], got["st"][s][0], atol=2e-5)


def test_h_and_e_alone_predicts_held_out_tiles_as_the_run_evaluated(tiny_embedding, tmp_path):
    """The slide's H&E without cells: every tissue tile embedded by the HE tower, expression from
    the saved predictors. On the run's held-out tiles the per-gene PCC of the evaluation's genes is
    the one results.json reports, for the probe and for the kNN predictor."""
    run_dir, config, out = tiny_embedding
    c = config.copy_and_resolve_references()
    c.data.update(source="generic", cells="", wsi=str(out / "slide" / "slide.ome.tif"))
    he = tmp_path / "he"
    done = embed.embed_slide(run_dir, c, he)
    assert done["mode"] == "he" and done["files"] == ["tiles.h5ad"]
    assert not (he / "cells.h5ad").exists()
    tiles = anndata.read_h5ad(he / "tiles.h5ad")
    assert not any(k.startswith("st_") for k in tiles.obsm) and "observed" not in tiles.layers
    with_cells, _ = _read(out)
    assert tiles.n_obs >= with_cells.n_obs  # tissue tiles, with or without cells
    _, manifest = run_info.read(run_dir)
    test = [manifest["tiles"][i] for i in manifest["splits"]["test"]]
    by_rc = {(r, c): k for k, (r, c) in enumerate(zip(tiles.obs["row"], tiles.obs["col"]))}
    rows = [by_rc[t["row"], t["col"]] for t in test]
    obs_rows = with_cells.obs_names.get_indexer(
        [f"{t['slide']}_{t['row']}_{t['col']}" for t in test]
    )
    truth = with_cells.layers["observed"][obs_rows]
    genes = [list(tiles.var_names).index(g) for g in tiles.uns["sigmma"]["eval_genes"]]
    results = json.loads((run_dir / "results.json").read_text())["trained"]
    for layer, key in ((tiles.X, "probe"), (tiles.layers["knn"], "knn_expression")):
        got = expression.scores(layer[rows][:, genes], truth[:, genes])["pcc_gene_mean"]
        np.testing.assert_allclose(got, results[key]["pcc_gene_mean"], atol=1e-4)


def test_a_rerun_reuses_the_embedding(tiny_embedding):
    run, config, out = tiny_embedding
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    done = embed.embed_slide(run, config, out)
    assert done == json.loads((out / "embed.json").read_text())
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert after == before


def test_a_slide_lacking_genes_of_the_run_is_refused_by_name(tiny_embedding, tmp_path):
    run, config, out = tiny_embedding
    inp = anndata.read_h5ad(out / "slide" / "cells.h5ad")
    keep = [g for g in inp.var_names if g not in ("EPCAM", "CD3E")]
    inp[:, keep].write_h5ad(tmp_path / "cells.h5ad")
    c = config.copy_and_resolve_references()
    c.data.update(
        source="generic",
        cells=str(tmp_path / "cells.h5ad"),
        wsi=str(out / "slide" / "slide.ome.tif"),
    )
    with pytest.raises(
        readers.InputError,
        match=r"slide cells: 2 genes of the run's panel are missing: CD3E, EPCAM",
    ):
        embed.embed_slide(run, c, tmp_path / "out")


def test_node_budget_doubles_until_the_tile_fits():
    assert [embed.node_budget(n, 64) for n in (0, 64, 65, 128, 129, 600)] == [
        64,
        64,
        128,
        128,
        256,
        1024,
    ]


def test_obs_tables_are_written_with_object_strings(tmp_path):
    import pandas as pd

    df = pd.DataFrame(
        {"a": pd.array(["x", "y"], dtype="string"), "b": pd.Categorical(["u", "v"]), "c": [1, 2]},
        index=pd.Index(["c1", "c2"], dtype="string"),
    )
    safe = embed.h5ad_safe(df)
    assert safe["a"].dtype == object and safe.index.dtype == object
    anndata.AnnData(X=sp.csr_matrix((2, 1)), obs=safe).write_h5ad(tmp_path / "x.h5ad")
    back = anndata.read_h5ad(tmp_path / "x.h5ad").obs
    assert back["a"].astype(str).tolist() == ["x", "y"] and back["c"].tolist() == [1, 2]


def test_a_xenium_bundle_is_embedded_with_its_cells_parquet_columns(tiny_embedding, tmp_path):
    from support.xenium import rotation_affine, write_xenium_bundle, xenium_cell_ids

    run, config, out = tiny_embedding
    inp = anndata.read_h5ad(out / "slide" / "cells.h5ad")[:700]
    with readers.WSI(out / "slide" / "slide.ome.tif") as w:
        shape = w.shape
    ids = xenium_cell_ids(inp.n_obs)
    px = float(inp.uns["pixel_size_um"])
    bundle, he, alignment = write_xenium_bundle(
        tmp_path / "x",
        np.asarray(inp.obsm["spatial"]),
        inp.X.toarray(),
        list(inp.var_names),
        ids,
        shape,
        px,
        rotation_affine(px),
    )
    c = config.copy_and_resolve_references()
    c.data.update(source="xenium", xenium_dir=str(bundle), wsi=str(he), alignment=str(alignment))
    embed.embed_slide(run, c, tmp_path / "out")
    cells = anndata.read_h5ad(tmp_path / "out" / "cells.h5ad")
    table = pq.read_table(bundle / "cells.parquet").to_pandas().set_index("cell_id")
    assert cells.n_obs > 100 and set(cells.obs_names) <= set(ids)
    for col in ("cell_area", "transcript_counts", "segmentation_method"):
        np.testing.assert_array_equal(cells.obs[col], table.loc[cells.obs_names, col])
    row = {c: i for i, c in enumerate(ids)}
    want = np.asarray(inp.obsm["spatial"])[[row[c] for c in cells.obs_names]]
    np.testing.assert_allclose(cells.obsm["spatial"], want, atol=1e-6)


def test_a_mosaic_lays_its_slides_out_in_rows(tmp_path):
    """bench embed --mosaic: copy (r, c) is the synthetic slide of seed seed + r * n + c, its
    cells under suffixed ids at offset centroids and its pixels at the offset in the TIFF (whose
    strips straddle two rows of copies: 731 px a copy, 256 px a strip)."""
    from sigmma_jax.data import synthetic
    from sigmma_jax.tools.bench import embed as bench

    mosaic = bench.write_mosaic(tmp_path / "m", 2, size_um=200.0, seed=3)
    assert not (tmp_path / "m" / "copies").exists()
    cells, n = anndata.read_h5ad(mosaic.cells), 0
    with readers.WSI(mosaic.wsi) as w:
        side = w.shape[0] // 2
        assert w.shape == (2 * side, 2 * side) and w.pixel_size_um() == 0.2737
        for k in range(4):
            r, c = divmod(k, 2)
            copy = synthetic.write_synthetic_slide(tmp_path / f"c{k}", seed=3 + k, size_um=200.0)
            inp = anndata.read_h5ad(copy.cells)
            n += inp.n_obs
            mine = cells[[f"{i}_r{r}c{c}" for i in inp.obs_names]]
            np.testing.assert_array_equal(mine.X.toarray(), inp.X.toarray())
            np.testing.assert_array_equal(
                mine.obsm["spatial"], inp.obsm["spatial"] + [c * side, r * side]
            )
            assert (mine.obs["cell_type"].to_numpy() == inp.obs["cell_type"].to_numpy()).all()
            with readers.WSI(copy.wsi) as one:
                assert one.shape == (side, side)
                np.testing.assert_array_equal(
                    w.read(r * side, (r + 1) * side, c * side, (c + 1) * side),
                    one.read(0, side, 0, side),
                )
    assert cells.n_obs == n and cells.obs_names.is_unique
    assert bench.write_mosaic(tmp_path / "m", 2, size_um=200.0, seed=3) == mosaic  # reused
    with pytest.raises(ValueError, match="holds the mosaic"):
        bench.write_mosaic(tmp_path / "m", 2, size_um=200.0, seed=4)
