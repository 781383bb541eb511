import json
import logging
import pathlib
import shutil

import anndata
import numpy as np
import pytest
from support.configs import preprocessing_only, tiny_config
from support.slides import pink_slide, write_cells, write_tiff

from sigmma_jax.data import graphs, input_pipeline, readers, records, shards


def _records(config, manifest, split):
    src = input_pipeline.ShardSource(config.data.shard_dir, manifest, split)
    return [records.decode(src[i]) for i in range(len(src))]


def test_records_hold_exactly_the_cells_of_their_tile(tiny_shards):
    config, manifest = tiny_shards
    root = pathlib.Path(config.data.shard_dir).parent
    adata = anndata.read_h5ad(root / "slide" / "cells.h5ad")
    ps = float(adata.uns["pixel_size_um"])
    xy_um = np.asarray(adata.obsm["spatial"]) * ps
    genes = list(adata.var_names)
    panel = [genes.index(g) for g in manifest["genes"]]
    assert not any(g.startswith(("BLANK", "NegControl")) for g in manifest["genes"])
    X = adata.X.toarray()[:, panel]
    recs = _records(config, manifest, "train") + _records(config, manifest, "test")
    assert len(recs) == len(manifest["tiles"]) > 20
    for rec in recs:
        m = rec["meta"]
        x0, y0 = m["col"] * 128.0, m["row"] * 128.0
        inside = (
            (xy_um[:, 0] >= x0)
            & (xy_um[:, 0] < x0 + 128)
            & (xy_um[:, 1] >= y0)
            & (xy_um[:, 1] < y0 + 128)
        )
        inside &= X.sum(1) > 0  # cells without transcripts are skipped (and counted)
        assert m["n_cells"] == inside.sum() == len(rec["xy"])  # nothing over the budget here
        np.testing.assert_allclose(rec["tile_counts"], X[inside].sum(0), rtol=1e-6)
        # Same cells, same places: match by position in tile pixels at 0.5 µm/px.
        local = (xy_um[inside] - [x0, y0]) / 0.5
        order_a = np.lexsort(local.T)
        order_b = np.lexsort(rec["xy"].T)
        np.testing.assert_allclose(rec["xy"][order_b], local[order_a], atol=1e-3)
        np.testing.assert_array_equal(rec["counts"][order_b], X[inside][order_a])
        # Each kept cell carries its input id, in the record's row order.
        row_of = {c: i for i, c in enumerate(adata.obs_names)}
        rows = [row_of[c] for c in rec["cell_ids"]]
        assert sorted(rows) == np.flatnonzero(inside).tolist()
        np.testing.assert_array_equal(rec["counts"], X[rows])
        np.testing.assert_array_equal(rec["blocks"], graphs.micro_blocks(rec["xy"], 256))
        np.testing.assert_array_equal(
            rec["blocks"][rec["senders"]], rec["blocks"][rec["receivers"]]
        )
        assert rec["image"].shape == (256, 256, 3)


def test_splits_are_whole_spatial_blocks(tiny_shards):
    config, manifest = tiny_shards
    split_of_block = {}
    for t in manifest["tiles"]:
        key = (t["row"] // config.data.split.block_tiles, t["col"] // config.data.split.block_tiles)
        assert split_of_block.setdefault(key, t["split"]) == t["split"]
    n = len(manifest["tiles"])
    assert sorted(manifest["splits"]["train"] + manifest["splits"]["test"]) == list(range(n))
    assert 0.1 * n <= len(manifest["splits"]["test"]) <= 0.45 * n
    rep = manifest["report"]
    assert rep["tiles_kept"] == n and rep["cells_kept"] == sum(
        t["n_kept"] for t in manifest["tiles"]
    )


def _generic_config(tmp_path, wsi, cells, **data):
    c = preprocessing_only(tiny_config(tmp_path / "shards"))
    c.data.source = "generic"
    c.data.cells, c.data.wsi = str(cells), str(wsi)
    c.data.update(data)
    return c


def test_rerun_skips_finished_work_and_resumes_a_crash(tmp_path):
    wsi, cells, *_ = pink_slide(tmp_path, side_px=1900, n_cells=900)
    c = _generic_config(tmp_path, wsi, cells, chunk_rows=1)
    m1 = shards.preprocess(c, tmp_path)
    shard_dir = tmp_path / "shards"
    mtimes = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("[!.]*")}
    assert shards.preprocess(c, tmp_path) == m1
    assert {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("[!.]*")} == mtimes
    # A crash after chunk 0 of 4: its sidecar (the proof of completion) and the manifest are missing.
    names = sorted(p.stem for p in shard_dir.glob("*.json") if p.name != "manifest.json")
    assert len(names) == 4
    (shard_dir / f"{names[1]}.json").unlink()
    (shard_dir / "manifest.json").unlink()
    m2 = shards.preprocess(c, tmp_path)
    assert m2 == dict(m1, report=dict(m1["report"], seconds=m2["report"]["seconds"]))
    after = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("[!.]*")}
    for n in (names[0], names[2], names[3]):
        assert after[f"{n}.json"] == mtimes[f"{n}.json"]  # untouched
    assert after[f"{names[1]}.json"] != mtimes[f"{names[1]}.json"]
    assert not list(shard_dir.glob(".*tmp*"))


def test_changed_settings_are_refused_not_mixed(tmp_path):
    wsi, cells, *_ = pink_slide(tmp_path)
    shards.preprocess(_generic_config(tmp_path, wsi, cells), tmp_path)
    with pytest.raises(readers.InputError, match="other preprocessing settings"):
        shards.preprocess(_generic_config(tmp_path, wsi, cells, knn_k=4), tmp_path)
    # A new split needs no new shards: only the manifest changes.
    c = _generic_config(tmp_path, wsi, cells)
    c.data.split.seed = 5
    assert shards.preprocess(c, tmp_path)["split_config"]["seed"] == 5


def test_shards_of_an_older_record_version_are_refused(tmp_path):
    wsi, cells, *_ = pink_slide(tmp_path)
    c = _generic_config(tmp_path, wsi, cells)
    shards.preprocess(c, tmp_path)
    path = tmp_path / "shards" / shards.MANIFEST
    old = json.loads(path.read_text())
    path.write_text(json.dumps(dict(old, version=1)))  # records without cell ids
    with pytest.raises(readers.InputError, match="record version 1, written by an older"):
        shards.preprocess(c, tmp_path)
    # No manifest: chunks whose hash (which includes the record version) differs are an unfinished
    # preprocessing of other settings; they are made again, never read.
    path.unlink()
    for side in (tmp_path / "shards").glob("*-0000.json"):
        side.write_text(json.dumps(dict(json.loads(side.read_text()), hash="0" * 16)))
    m = shards.preprocess(c, tmp_path)
    assert m["version"] == records.VERSION
    for side in (tmp_path / "shards").glob("*-0000.json"):
        assert json.loads(side.read_text())["hash"] == m["shard_hash"]


def test_a_given_panel_is_used_and_a_slide_lacking_genes_is_refused_by_name(tmp_path):
    wsi, cells, xy, counts, genes = pink_slide(tmp_path)
    c = _generic_config(tmp_path, wsi, cells)
    m = shards.preprocess(c, tmp_path, panel=["G3", "G1"])
    assert m["genes"] == ["G3", "G1"]
    recs = _records(c, m, "train") + _records(c, m, "test")
    total = sum(r["tile_counts"] for r in recs)
    inside = ((xy * 0.2737) < 256).all(1) & (counts[:, [3, 1]].sum(1) > 0)
    np.testing.assert_allclose(total, counts[inside][:, [3, 1]].sum(0))
    c.data.shard_dir = str(tmp_path / "other")
    with pytest.raises(readers.InputError, match=r"slide cells: 2 genes .* missing: CD3E, EPCAM"):
        shards.preprocess(c, tmp_path, panel=["G1", "EPCAM", "CD3E"])


def test_without_min_cells_every_tissue_tile_is_kept_with_or_without_cells(tmp_path):
    wsi, cells, xy, counts, genes = pink_slide(tmp_path)
    write_cells(cells, xy[:0], counts[:0], genes)  # no cell at all: an H&E image alone
    c = _generic_config(tmp_path, wsi, cells, min_cells=0)
    m = shards.preprocess(c, tmp_path)
    assert [(t["row"], t["col"], t["n_cells"]) for t in m["tiles"]] == [
        (0, 0, 0),
        (0, 1, 0),
        (1, 0, 0),
        (1, 1, 0),
    ]
    rec = (_records(c, m, "train") + _records(c, m, "test"))[0]
    assert rec["xy"].shape == (0, 2) and rec["image"].shape == (256, 256, 3)
    assert len(rec["cell_ids"]) == 0 and not rec["tile_counts"].any()


@pytest.mark.parametrize("policy", ["subsample", "drop", "keep"])
def test_overflowing_tiles_follow_the_policy_and_are_counted(tmp_path, policy):
    wsi, cells, *_ = pink_slide(tmp_path)
    # 100 cells in tile (0, 0) = µm [0, 128)^2, 20 in each of the three others.
    rng = np.random.default_rng(0)
    px = 128 / 0.2737
    xy = np.concatenate(
        [rng.uniform(0, px, (100, 2))]
        + [rng.uniform(0, px, (20, 2)) + off for off in ([px, 0], [0, px], [px, px])]
    )
    write_cells(cells, xy, rng.poisson(3.0, (len(xy), 5)) + 1, [f"G{i}" for i in range(5)])
    c = _generic_config(tmp_path, wsi, cells, node_budget=48, overflow=policy)
    m = shards.preprocess(c, tmp_path)
    rep = m["report"]
    over = [t for t in m["tiles"] if t["n_cells"] > 48]
    if policy == "subsample":
        assert rep["tiles_overflow_subsampled"] == len(over) == 1
        assert all(t["n_kept"] == 48 for t in over)
        assert rep["cells_subsampled_away"] == sum(t["n_cells"] - 48 for t in over)
        for rec in _records(c, m, "train") + _records(c, m, "test"):
            if (
                rec["meta"]["n_cells"] > 48
            ):  # the targets keep every cell, the graph only the budget
                assert rec["tile_counts"].sum() > rec["counts"].sum() and len(rec["xy"]) == 48
    elif policy == "drop":
        assert (
            not over and rep["tiles_overflow_dropped"] == 1 and rep["cells_in_dropped_tiles"] == 100
        )
        assert len(m["tiles"]) == 3
    else:  # every cell kept; the manifest's node budget grows to the largest tile
        assert rep["tiles_overflow_kept"] == len(over) == 1 and over[0]["n_kept"] == 100
        assert m["budgets"]["nodes"] == 100 and rep["cells_kept"] == 160
        return
    assert all(t["n_kept"] <= 48 for t in m["tiles"]) and m["budgets"]["nodes"] == 48


def test_no_tissue_and_few_cells_are_dropped_and_counted(tmp_path):
    wsi, cells, *_ = pink_slide(tmp_path)
    write_tiff(wsi, np.full((1200, 1200, 3), 245, np.uint8), 0.2737)  # glass only
    c = _generic_config(tmp_path, wsi, cells)
    with pytest.raises(readers.InputError) as e:
        shards.preprocess(c, tmp_path)
    assert str(e.value).startswith(
        "no tile passed the filters (min_cells=8, min_tissue=0.25, node_budget=160 with "
        "overflow='subsample') among cells: 2x2 tiles of 128 µm at 0.2737 µm/px, at most "
    )
    assert "'tiles_no_tissue': 4," in str(e.value)
    assert not (tmp_path / "shards" / "manifest.json").exists()


@pytest.mark.parametrize("name", ["luad", "paad", "skcm", "idc"])
def test_hest_configs_stop_at_once_on_a_folder_without_the_samples(tmp_path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("demo")
    assert c.model.vit.width == 96 and c.train.steps == 400  # ":demo" swapped the model in
    c.data.hest_dir = str(tmp_path)  # an empty folder: the first sample's metadata is missing
    with pytest.raises(
        readers.InputError, match=rf"metadata/{c.data.sample_ids[0]}\.json: missing"
    ):
        shards.preprocess(c, tmp_path)


def test_cells_without_transcripts_are_skipped_and_counted(tmp_path):
    wsi, cells, xy, counts, genes = pink_slide(tmp_path)
    counts[:37, :-2] = 0  # 37 cells with nothing but control probes
    write_cells(cells, xy, counts, genes)
    m = shards.preprocess(_generic_config(tmp_path, wsi, cells), tmp_path)
    rep = m["report"]["slides"]["cells"]
    inside = int(((xy[:37] * 0.2737) < 256).all(1).sum())  # in the 2x2 tiles of 128 µm
    assert rep["cells_zero_counts"] == inside > 0
    assert m["report"]["cells_kept"] == sum(t["n_cells"] for t in m["tiles"])
    assert m["report"]["cells_kept"] == int(((xy * 0.2737) < 256).all(1).sum()) - inside


def test_a_moved_workdir_resumes_and_corrected_cells_are_new_data(tmp_path):
    """The shard hash holds what identifies the data (file size and checksums, shape, pixel size,
    cells), not where it lies."""
    a = tmp_path / "a"
    a.mkdir()
    wsi, cells, xy, counts, genes = pink_slide(a)
    m1 = shards.preprocess(_generic_config(a, wsi, cells), a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(a)
    before = {p.name: p.stat().st_mtime_ns for p in (b / "shards").glob("[!.]*")}
    m2 = shards.preprocess(_generic_config(b, b / wsi.name, b / cells.name), b)
    assert m2 == m1  # reused as it is: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in (b / "shards").glob("[!.]*")} == before
    write_cells(b / cells.name, xy[:, ::-1], counts, genes)  # corrected: same cells, same count
    with pytest.raises(readers.InputError, match="other preprocessing settings or slides"):
        shards.preprocess(_generic_config(b, b / wsi.name, b / cells.name), b)


def test_an_unfinished_preprocessing_does_not_block_a_corrected_rerun(tmp_path, caplog):
    """Chunks of a run that never wrote its manifest, made with other settings, are removed (with
    a log line) and redone; before, the rerun failed with 'chunk made with other settings'."""
    wsi, cells, *_ = pink_slide(tmp_path, side_px=1900, n_cells=900)
    shards.preprocess(_generic_config(tmp_path, wsi, cells, chunk_rows=1, knn_k=4), tmp_path)
    shard_dir = tmp_path / "shards"
    (shard_dir / "manifest.json").unlink()  # as if it had stopped before the end
    old = {p.name for p in shard_dir.glob("[!.]*")}
    with caplog.at_level(logging.WARNING):
        m = shards.preprocess(_generic_config(tmp_path, wsi, cells, chunk_rows=1), tmp_path)
    assert (
        "removing 4 chunks of an unfinished preprocessing made with other settings" in caplog.text
    )
    assert m["settings"]["knn_k"] == 6
    for side in shard_dir.glob("*-*.json"):
        assert json.loads(side.read_text())["hash"] == m["shard_hash"]
    assert {p.name for p in shard_dir.glob("[!.]*")} == old | {"manifest.json"}  # all remade
