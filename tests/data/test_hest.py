import json

import numpy as np
import pytest
from support.configs import load_config, preprocessing_only, shrink, tiny_config
from support.hest import sample
from support.xenium import rotation_affine, write_xenium_bundle

from sigmma_jax.data import hest, input_pipeline, readers, records, shards, tiling


def test_hest_sample_reads_as_the_same_slide_as_the_generic_format(tmp_path):
    wsi, cells, xy, counts, genes = sample(tmp_path)
    h = hest.read_hest(tmp_path / "hest", "TENX999")
    g = readers.read_generic(cells, wsi)
    assert h.pixel_size_um == pytest.approx(g.pixel_size_um) and h.image_shape == g.image_shape
    order = np.argsort(h.cell_ids)
    assert list(h.cell_ids[order]) == sorted(g.cell_ids)
    gorder = np.argsort(g.cell_ids)
    col = [list(h.genes).index(x) for x in g.genes]
    np.testing.assert_array_equal(h.counts.toarray()[order][:, col], g.counts.toarray()[gorder])
    np.testing.assert_allclose(h.xy[order], g.xy[gorder], atol=1e-6)
    assert h.dropped_controls == 2
    assert h.report["low_qv"] == len(xy) and h.report["unassigned"] == 50
    assert h.report["centroid_from_transcripts"] == 5


def test_the_same_slide_in_all_three_formats_gives_the_same_tiles(tmp_path):
    wsi, cells, xy, counts, genes = sample(tmp_path, side_px=1900, n_cells=900)
    affine = rotation_affine(0.2737, degrees=-4.0, translation=(950.0, -60.0))
    bundle, he, align = write_xenium_bundle(
        tmp_path / "x",
        xy,
        counts,
        genes,
        [f"cell{i}" for i in range(len(xy))],
        (1900, 1900),
        0.2737,
        affine,
    )
    out = {}
    for src in ("generic", "hest", "xenium"):
        c = tiny_config(tmp_path / f"shards_{src}")
        c.data.update(
            source=src,
            cells=str(cells),
            wsi=str(he if src == "xenium" else wsi),
            hest_dir=str(tmp_path / "hest"),
            sample_ids=("TENX999",),
            xenium_dir=str(bundle),
            alignment=str(align),
        )
        m = shards.preprocess(c, tmp_path)
        split = input_pipeline.ShardSource(c.data.shard_dir, m, "train")
        out[src] = (
            m,
            {
                (r["meta"]["row"], r["meta"]["col"]): r
                for r in (records.decode(split[i]) for i in range(len(split)))
            },
        )
    mg, rg = out["generic"]
    assert len(rg) > 3
    for src in ("hest", "xenium"):
        m, r = out[src]
        assert m["genes"] == mg["genes"]
        assert [(t["row"], t["col"], t["n_cells"]) for t in m["tiles"]] == [
            (t["row"], t["col"], t["n_cells"]) for t in mg["tiles"]
        ]
        assert r.keys() == rg.keys()
        for k in rg:
            np.testing.assert_array_equal(r[k]["image"], rg[k]["image"])
            a, b = np.lexsort(rg[k]["xy"].T), np.lexsort(r[k]["xy"].T)
            np.testing.assert_allclose(r[k]["xy"][b], rg[k]["xy"][a], atol=1e-3)
            np.testing.assert_array_equal(r[k]["counts"][b], rg[k]["counts"][a])
            np.testing.assert_array_equal(r[k]["tile_counts"], rg[k]["tile_counts"])
            np.testing.assert_array_equal(r[k]["senders"].size, rg[k]["senders"].size)


def test_several_samples_share_a_panel_and_split_bysample(tmp_path):
    sample(tmp_path, "TENX1", seed=1, n_genes=12)
    sample(tmp_path, "TENX2", seed=2, n_genes=10)  # a smaller panel: G10, G11 are not shared
    for fold, held_out in ((0, "TENX1"), (1, "TENX2")):
        c = preprocessing_only(tiny_config(tmp_path / f"shards{fold}"))
        c.data.update(source="hest", hest_dir=str(tmp_path / "hest"), sample_ids=("TENX1", "TENX2"))
        c.data.split.fold = fold
        m = shards.preprocess(c, tmp_path)
        assert m["genes"] == [f"G{i}" for i in range(10)]
        assert m["report"]["slides"]["TENX1"]["genes_not_shared"] == 2
        test = {m["tiles"][i]["slide"] for i in m["splits"]["test"]}
        train = {m["tiles"][i]["slide"] for i in m["splits"]["train"]}
        assert test == {held_out} and train == {"TENX1", "TENX2"} - {held_out}


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("no_wsi", r"wsis/TENX999\.tif: missing \(wsi of HEST sample TENX999\)"),
        ("no_transcripts", r"TENX999_transcripts\.parquet: missing"),
        ("no_pixel_size", r"metadata/TENX999\.json: no pixel_size_um_estimated"),
        ("bad_columns", r"TENX999_transcripts\.parquet: missing columns \['he_x', 'he_y'\]"),
        ("corrupt_parquet", r"TENX999_transcripts\.parquet: cannot read as parquet"),
    ],
)
def test_bad_hest_input_names_the_file(tmp_path, case, pattern):
    sample(tmp_path)
    p = hest.sample_paths(tmp_path / "hest", "TENX999")
    if case == "no_wsi":
        p["wsi"].unlink()
    elif case == "no_transcripts":
        p["transcripts"].unlink()
    elif case == "no_pixel_size":
        p["metadata"].write_text(json.dumps({"st_technology": "Xenium"}))
    elif case == "bad_columns":
        import pyarrow.parquet as pq

        t = pq.read_table(p["transcripts"]).drop_columns(["he_x", "he_y"])
        pq.write_table(t, p["transcripts"])
    elif case == "corrupt_parquet":
        p["transcripts"].write_bytes(p["transcripts"].read_bytes()[:1000])
    with pytest.raises(readers.InputError, match=pattern):
        hest.read_hest(tmp_path / "hest", "TENX999")


@pytest.mark.parametrize("kind", ["bytes", "int"])
def test_cell_ids_as_bytes_or_integers_read_as_strings(tmp_path, kind):
    # NCBI783's transcripts hold cell ids as bytes (b'aagigajm-1'), other samples as integers; the
    # segmentation keeps them as its GeoDataFrame index (on disk __index_level_0__), as strings for
    # the bytes case.
    n = 400
    if kind == "bytes":
        ids = [f"aagig{i:03d}-1".encode() for i in range(n)]
        seg = [i.decode() for i in ids]
    else:
        ids = seg = list(range(1, n + 1))
    wsi, cells, xy, counts, genes = sample(tmp_path, ids=ids, seg_ids=seg)
    h = hest.read_hest(tmp_path / "hest", "TENX999")
    g = readers.read_generic(cells, wsi)
    want = [i.decode() for i in ids] if kind == "bytes" else [str(i) for i in ids]
    assert sorted(h.cell_ids) == sorted(want)
    assert h.report["unassigned"] == 50 and h.report["centroid_from_transcripts"] == 5
    order = np.argsort(h.cell_ids)
    by_id = {c: i for i, c in enumerate(want)}
    rows = [by_id[c] for c in h.cell_ids[order]]
    col = [list(h.genes).index(x) for x in g.genes]
    np.testing.assert_array_equal(h.counts.toarray()[order][:, col], g.counts.toarray()[rows])
    np.testing.assert_allclose(h.xy[order], g.xy[rows], atol=1e-6)


def test_estimated_pixel_size_wins_over_a_wrong_embedded_one(tmp_path):
    # TENX95 and TENX99 embed 1.0 µm/px; their estimated size is 0.2125.
    sample(tmp_path, meta={"pixel_size_um_estimated": 0.2125, "pixel_size_um_embedded": 1.0})
    h = hest.read_hest(tmp_path / "hest", "TENX999")
    assert h.pixel_size_um == 0.2125
    grid = tiling.tile_grid(h, 0.5, 256)
    assert grid.box(0, 1)[0] == pytest.approx(256 * 0.5 / 0.2125)  # a tile is 128 µm wide


def test_folds_group_samples_by_dataset_and_patient(tmp_path):
    # HEST-Benchmark holds out a patient's samples together: IDC-like metadata with two samples of
    # one patient gives 3 folds of 4 samples.
    metas = {
        "TENX95": dict(dataset_title="Xenium breast", patient="Patient 2"),
        "TENX99": dict(dataset_title="Xenium breast", patient="Patient 1"),
        "NCBI783": dict(dataset_title="Janesick", patient="Patient 2"),  # other dataset: own group
        "NCBI785": dict(dataset_title="Janesick", patient="Patient 2"),
    }
    for seed, (sid, meta) in enumerate(metas.items()):
        sample(tmp_path, sid, seed=seed, meta=meta)
    c = tiny_config(tmp_path / "shards")
    c.data.update(source="hest", hest_dir=str(tmp_path / "hest"), sample_ids=tuple(metas))
    m = shards.preprocess(c, tmp_path)
    assert m["folds"] == [["TENX95"], ["TENX99"], ["NCBI783", "NCBI785"]]
    assert m["groups"]["NCBI785"] == "Janesick / Patient 2"
    for fold, held_out in enumerate(m["folds"]):
        c.data.split.fold = fold
        split = shards.with_split(m, c.data.split)
        test = {split["tiles"][i]["slide"] for i in split["splits"]["test"]}
        train = {split["tiles"][i]["slide"] for i in split["splits"]["train"]}
        assert test == set(held_out) and train == set(metas) - set(held_out)
    c.data.split.fold = 3
    with pytest.raises(readers.InputError, match="split fold 3 does not exist: 3 folds"):
        shards.with_split(m, c.data.split)
    assert hest.patient_group({"dataset_title": "x"}, "TENX1") == "TENX1"  # no patient: alone
    assert hest.patient_group({"patient": float("nan")}, "TENX1") == "TENX1"


def test_luad_config_computes_hests_folds_from_metadata(tmp_path):
    for seed, sid in enumerate(("TENX118", "TENX141")):
        sample(tmp_path, sid, seed=seed, meta=dict(dataset_title="LUAD", patient=f"P{seed}"))
    c = preprocessing_only(shrink(load_config("luad", "demo")))
    c.data.update(hest_dir=str(tmp_path / "hest"), shard_dir=str(tmp_path / "shards"))
    m = shards.preprocess(c, tmp_path)
    assert m["folds"] == [["TENX118"], ["TENX141"]]
    assert {m["tiles"][i]["slide"] for i in m["splits"]["test"]} == {"TENX118"}
