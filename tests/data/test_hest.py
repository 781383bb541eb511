import json

import numpy as np
import pytest
from support.configs import preprocessing_only, tiny_config
from support.hest import sample
from support.xenium import rotation_affine, write_xenium_bundle

from sigmma_jax.data import hest, input_pipeline, readers, records, shards


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
