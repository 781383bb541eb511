"""Visium readers: each returns exactly the spots written (HEST-1k, Space Ranger SR >= 2.0 and 1.x,
an AnnData of spots), labels join by barcode, and every bad input is one line naming its file."""

import json
import logging
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image
from support.hest import sample as xenium_sample
from support.slides import write_tiff
from support.visium import (
    HIRES_SCALEF,
    layer_rows,
    visium_spots,
    write_hest_visium,
    write_layer_table,
    write_pyramid,
    write_spaceranger,
)
from support.xenium import write_feature_matrix

from sigmma_jax.data import hest, readers, tenx, visium, xenium

GENES_READ = ["MOBP", "PCP4", "SNAP25", "FABP7", "CCK", "PVALB", "IGKC", "HBB", "NPY", "TBCE"]
GENES_READ += ["TBCE-1"]  # the second TBCE of the 10x reference, named as scanpy names it


@pytest.fixture(scope="module")
def spots():
    return visium_spots()


def _files(root):
    return sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))


def _one_line_error(call, *args, **kw) -> str:
    with pytest.raises(readers.InputError) as e:
        call(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------- 10x HDF5


def test_write_matrix_writes_cell_rangers_layout(tmp_path):
    rng = np.random.default_rng(0)
    counts = sp.random(40, 7, density=0.3, random_state=1, format="csr") * 9
    counts.data = np.ceil(counts.data)
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(40)]
    genes = [f"G{i}" for i in range(6)] + ["CD3_TotalSeqB"]
    types = ["Gene Expression"] * 6 + ["Antibody Capture"]
    path = tenx.write_matrix(tmp_path / "m.h5", counts, barcodes, genes, feature_types=types)
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]  # no temp file left beside it
    with h5py.File(path) as f:
        m = f["matrix"]
        assert m["shape"][:].tolist() == [7, 40]  # (features, barcodes): one column per barcode
        assert m["data"].dtype == np.int32 and m["indptr"].dtype == np.int64
        assert m["barcodes"].dtype.kind == "S" and m["features/name"].dtype.kind == "S"
        csc = sp.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(7, 40))
        np.testing.assert_array_equal(csc.toarray(), counts.toarray().T)
        assert [b.decode() for b in m["barcodes"][:]] == barcodes
        assert m["features/feature_type"][-1] == b"Antibody Capture"
        assert m["features/id"][0] == b"G0"  # ids default to the names
        ours = {k: m[k][:] for k in ("data", "indices", "indptr", "shape", "barcodes")}
    # The same counts through the tests' independent writer of the format: the same datasets.
    write_feature_matrix(tmp_path / "ref.h5", barcodes, counts.toarray(), genes, types)
    with h5py.File(tmp_path / "ref.h5") as f:
        for k, v in ours.items():
            np.testing.assert_array_equal(f["matrix"][k][:], v)
    got_bc, got, got_genes, other = tenx.read_matrix(path)
    assert list(got_bc) == barcodes and list(got_genes) == genes[:6] and other == 1
    np.testing.assert_array_equal(got.toarray(), counts.toarray()[:, :6])
    assert xenium.read_matrix is tenx.read_matrix
    import scanpy as sc  # what users read the file with

    a = sc.read_10x_h5(path)
    assert list(a.obs_names) == barcodes and list(a.var_names) == genes[:6]
    np.testing.assert_array_equal(a.X.toarray(), counts.toarray()[:, :6])


def test_write_matrix_refuses_non_counts_and_writes_nothing(tmp_path):
    with pytest.raises(readers.InputError, match=r"m\.h5: a feature-barcode matrix holds raw"):
        tenx.write_matrix(tmp_path / "m.h5", sp.csr_matrix([[0.5, 1.0]]), ["A-1"], ["G0", "G1"])
    with pytest.raises(readers.InputError, match=r"counts are 1 x 2 but there are 2 barcodes"):
        tenx.write_matrix(tmp_path / "m.h5", sp.csr_matrix([[1, 1]]), ["A-1", "B-1"], ["G0", "G1"])
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- HEST-1k


@pytest.mark.parametrize("in_tissue_as", [np.int64, bool])
def test_hest_visium_reads_exactly_the_in_tissue_spots(tmp_path, spots, in_tissue_as):
    write_hest_visium(tmp_path / "hest", "MISC12", spots, in_tissue_as=in_tissue_as)
    s = hest.read_hest(tmp_path / "hest", "MISC12")  # data.source="hest" reads it by what it is
    t = spots.in_tissue
    assert s.name == "MISC12" and s.spot_diameter_um == 55.0 and s.pixel_size_um == 0.725
    assert list(s.cell_ids) == list(spots.barcode[t]) and list(s.genes) == GENES_READ
    np.testing.assert_array_equal(s.xy, spots.xy[t])
    np.testing.assert_array_equal(s.counts.toarray(), spots.counts[t])
    assert s.image_shape == spots.image.shape[:2] and s.labels is None
    assert s.group == "spatialLIBD / Br5292"
    assert s.report["spots_not_in_tissue"] == int((~t).sum()) and s.report["subseries"] == "151507"
    d = visium.read_hest_visium(tmp_path / "hest", "MISC12")
    np.testing.assert_array_equal(d.counts.toarray(), s.counts.toarray())


def test_spots_over_glass_off_the_image_are_dropped_before_any_check(tmp_path, spots):
    """HEST crops its WSIs to the tissue: an off-tissue spot may lie off the image. It is dropped
    with the others over glass, not refused."""
    import dataclasses

    xy = spots.xy.copy()
    off = np.flatnonzero(~spots.in_tissue)[:3]
    xy[off] = [-500.0, -500.0]  # off the H&E
    write_hest_visium(tmp_path / "hest", "MISC12", dataclasses.replace(spots, xy=xy))
    s = hest.read_hest(tmp_path / "hest", "MISC12")
    np.testing.assert_array_equal(s.xy, spots.xy[spots.in_tissue])
    assert s.report["spots_not_in_tissue"] == int((~spots.in_tissue).sum())


def test_hest_dispatches_on_the_samples_technology(tmp_path, spots):
    _, _, xy, counts, _ = xenium_sample(tmp_path, "TENX999")
    write_hest_visium(tmp_path / "hest", "MISC12", spots)
    assert visium.technology(tmp_path / "hest", "TENX999") == "xenium"
    assert visium.technology(tmp_path / "hest", "MISC12") == "visium"
    x = hest.read_hest(tmp_path / "hest", "TENX999")
    v = hest.read_hest(tmp_path / "hest", "MISC12")
    assert x.spot_diameter_um == 0.0 and len(x.cell_ids) == len(xy)  # cells, from transcripts
    assert x.report["low_qv"] == len(xy)
    assert v.spot_diameter_um == 55.0 and len(v.cell_ids) == spots.in_tissue.sum()
    meta = tmp_path / "hest" / "metadata" / "MISC12.json"
    for tech, says in (("Visium HD", "Visium HD's square bins"), ("Spatial Transcriptomics", "ST")):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "st_technology": tech}))
        msg = _one_line_error(hest.read_hest, tmp_path / "hest", "MISC12")
        assert msg.startswith(f"{meta}: st_technology {tech!r}: ") and says in msg
        assert msg.endswith("leave the sample out of data.sample_ids")


@pytest.mark.parametrize("case", ["no_st", "no_pixel_size", "in_tissue_2", "none_in_tissue"])
def test_bad_hest_visium_input_names_the_file(tmp_path, spots, case):
    write_hest_visium(tmp_path / "hest", "MISC12", spots)
    p = visium.hest_visium_paths(tmp_path / "hest", "MISC12")
    if case == "no_st":
        p["st"].unlink()
        named, says = p["st"], "missing (st of HEST Visium sample MISC12)"
    elif case == "no_pixel_size":
        meta = json.loads(p["metadata"].read_text())
        del meta["pixel_size_um_estimated"], meta["pixel_size_um_embedded"]
        p["metadata"].write_text(json.dumps(meta))
        named, says = p["metadata"], "no pixel_size_um_estimated"
    else:
        import anndata

        a = anndata.read_h5ad(p["st"])
        a.obs["in_tissue"] = 2 if case == "in_tissue_2" else 0
        a.write_h5ad(p["st"])
        named = p["st"]
        says = "in_tissue holds 2" if case == "in_tissue_2" else "no spot has in_tissue == 1"
    msg = _one_line_error(hest.read_hest, tmp_path / "hest", "MISC12")
    assert msg.startswith(f"{named}: {says}")


# --------------------------------------------------------------------------- Space Ranger


@pytest.mark.filterwarnings("ignore:Use `squidpy.read.visium`", "ignore:Variable names are not")
@pytest.mark.parametrize("version", ["2.0", "1.x"])
def test_spaceranger_reads_exactly_the_spots_written(tmp_path, spots, version, caplog):
    # The TIFF says 1 µm/px and spot_diameter_fullres is a 70 µm spot: neither may set the scale.
    sr = write_spaceranger(
        tmp_path / "151507", spots, version, tiff_resolution_um=1.0, drop_from_matrix=1
    )
    with caplog.at_level(logging.WARNING):
        s = visium.read_spaceranger(sr.outs, sr.image)
    rows = sr.matrix_rows
    assert s.name == "151507" and s.spot_diameter_um == 55.0 and s.image_shape == (1523, 1882)
    assert list(s.cell_ids) == list(spots.barcode[rows]) and list(s.genes) == GENES_READ
    np.testing.assert_array_equal(s.xy, sr.xy[rows])
    np.testing.assert_array_equal(s.counts.toarray(), spots.counts[rows])
    assert s.dropped_controls == 1  # the antibody feature
    assert s.pixel_size_um == pytest.approx(0.725, rel=2e-3)
    assert s.report["array_pitch_px"] == pytest.approx(100 / 0.725, rel=2e-3)
    assert s.report["spot_diameter_fullres_um"] == pytest.approx(70.0, rel=3e-3)
    assert s.report["tiff_pixel_size_um"] == pytest.approx(1.0)
    assert s.report["positions"] == ("SR >= 2.0" if version == "2.0" else "SR 1.x")
    assert s.report["spots_in_tissue"] == spots.in_tissue.sum() == len(s.cell_ids) + 1
    assert s.report["spots_dropped"] == {"matrix_not_in_tissue": 0, "in_tissue_not_in_matrix": 1}
    assert "the pitch is used" in caplog.text
    # The first spot of the file (the one `header=1` loses) is there, where the file puts it.
    first = sr.positions.read_text().splitlines()[1 if version == "2.0" else 0].split(",")
    assert first[0] == spots.barcode[0] == s.cell_ids[0] and first[1] == "1"
    np.testing.assert_array_equal(s.xy[0], [float(first[5]), float(first[4])])
    import scanpy as sc  # the layout as the field reads it: the same spots at the same place

    a = sc.read_visium(sr.outs)
    np.testing.assert_allclose(a[list(s.cell_ids)].obsm["spatial"], s.xy)


def test_spot_diameter_fullres_would_have_given_the_wrong_scale(spots, tmp_path):
    # The pitfall the pitch avoids: 55 µm / spot_diameter_fullres is off by 70/55.
    sr = write_spaceranger(tmp_path / "s", spots)
    sf = visium.read_scalefactors(sr.outs / "spatial" / "scalefactors_json.json")
    s = visium.read_spaceranger(sr.outs, sr.image)
    assert 55.0 / sf["spot_diameter_fullres"] == pytest.approx(s.pixel_size_um * 55 / 70, rel=3e-3)


def test_find_outs_and_image_for(tmp_path, spots):
    small = visium_spots(rows=(10, 14), cols=(20, 30), seed=1)
    a = write_spaceranger(tmp_path / "runs" / "A", small)
    b = write_spaceranger(tmp_path / "runs" / "B", small)
    (tmp_path / "runs" / "notes").mkdir()
    runs = tmp_path / "runs"
    assert visium.find_outs(runs) == [a.outs, b.outs]
    assert visium.find_outs(runs / "A") == [a.outs] == visium.find_outs(a.outs)
    assert visium.sample_name(a.outs) == "A"
    assert visium.image_for(a.outs, "") == a.image == runs / "A" / "A_fullres.tif"
    images = tmp_path / "images"
    images.mkdir()
    for n in ("A", "B"):
        (images / f"{n}.btf").write_bytes(b"")
    assert visium.image_for(b.outs, str(images / "{sample}.btf")) == images / "B.btf"
    assert visium.image_for(b.outs, str(a.image)) == a.image
    slides = visium.read_spaceranger_samples(runs)
    assert [s.name for s in slides] == ["A", "B"] and [s.wsi_path for s in slides] == [
        a.image,
        b.image,
    ]
    msg = _one_line_error(visium.read_spaceranger_samples, runs, str(a.image))
    assert msg.startswith(f"{runs}: 2 samples (A, B) but data.wsi names one image") and (
        "{sample}" in msg
    )
    msg = _one_line_error(visium.image_for, a.outs, str(images / "{sample}.tif"))
    assert msg.startswith(f"{images / 'A.tif'}: not found (data.wsi=")
    (runs / "A" / "A_fullres.ome.tif").write_bytes(b"")
    msg = _one_line_error(visium.image_for, a.outs, "")
    assert msg.startswith(
        f"{runs / 'A'}: 2 candidate H&E images (A_fullres.ome.tif, A_fullres.tif)"
    )
    a.image.unlink()
    (runs / "A" / "A_fullres.ome.tif").unlink()
    msg = _one_line_error(visium.image_for, a.outs, "")
    assert msg.startswith(f"{runs / 'A'}: no full-resolution H&E (.tif, .tiff, .btf, .ome.tif)")
    msg = _one_line_error(visium.find_outs, runs / "notes")
    assert msg.startswith(f"{runs / 'notes'}: no Space Ranger outs/ folder")
    msg = _one_line_error(visium.find_outs, tmp_path / "nope")
    assert msg.startswith(f"{tmp_path / 'nope'}: not a folder")


def test_spots_h5ad_builds_on_the_generic_reader(tmp_path, spots):
    write_hest_visium(tmp_path / "h", "S1", spots)
    wsi = write_tiff(tmp_path / "he.ome.tif", spots.image, 0.725)
    s = visium.read_spots_h5ad(tmp_path / "h" / "st" / "S1.h5ad", wsi, diameter_um=65.0)
    t = spots.in_tissue
    assert s.name == "S1" and s.spot_diameter_um == 65.0 and s.pixel_size_um == 0.725
    assert list(s.cell_ids) == list(spots.barcode[t]) and list(s.genes) == GENES_READ
    np.testing.assert_array_equal(s.xy, spots.xy[t])
    np.testing.assert_array_equal(s.counts.toarray(), spots.counts[t])
    assert visium.read_spots_h5ad(s.cells_file, wsi, 0.5, name="x").pixel_size_um == 0.5


# ---------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("table", ["map.tsv", "map_header.csv"])
def test_labels_from_a_spatiallibd_table(tmp_path, spots, table):
    sr = write_spaceranger(tmp_path / "151507", spots)
    s = visium.read_spaceranger(sr.outs, sr.image)
    other = visium_spots(seed=3)
    rows = layer_rows(spots, "151507") + layer_rows(other, "151508")  # another slice: ignored
    path = write_layer_table(tmp_path / table, rows, header="header" in table)
    visium.attach_labels([s], str(path))
    want = spots.labels[sr.matrix_rows]
    assert (want == "").sum() > 0 and len(set(want)) == 8  # 7 layers and unannotated spots
    assert list(s.labels) == list(want)


def test_labels_of_hest_dlpfc_join_by_slice_number(tmp_path, spots, caplog):
    write_hest_visium(tmp_path / "hest", "MISC12", spots)
    write_hest_visium(tmp_path / "hest", "MISC11", spots, meta={"subseries": None})
    path = write_layer_table(tmp_path / "barcode_level_layer_map.tsv", layer_rows(spots, "151507"))
    t = spots.in_tissue
    s = hest.read_hest(tmp_path / "hest", "MISC12")
    visium.attach_labels([s], str(path))  # by the metadata's subseries
    assert list(s.labels) == list(spots.labels[t])
    s11 = hest.read_hest(tmp_path / "hest", "MISC11")  # no subseries: only by the mapping
    msg = _one_line_error(visium.attach_labels, [s11], str(path))
    assert msg.startswith(f"{path}: no row's sample names one of the slides ['MISC11']")
    assert "visium.HEST_DLPFC" in msg
    visium.attach_labels([s11], str(path), samples={"MISC11": "151507"})
    assert list(s11.labels) == list(spots.labels[t])
    with caplog.at_level(logging.WARNING):  # a slide the table does not cover: unannotated
        visium.attach_labels([s, s11], str(path), samples={"MISC12": "151507"})
    assert list(s.labels) == list(spots.labels[t]) and set(s11.labels) == {""}
    assert "no row for slide MISC11" in caplog.text


def test_labels_from_an_obs_column(tmp_path, spots):
    write_hest_visium(tmp_path / "hest", "MISC12", spots)
    st = tmp_path / "hest" / "st" / "MISC12.h5ad"
    import anndata

    a = anndata.read_h5ad(st)
    a.obs["layer"] = pd.Categorical(np.where(spots.labels == "", None, spots.labels))
    a.write_h5ad(st)
    s = hest.read_hest(tmp_path / "hest", "MISC12")
    visium.attach_labels([s], "layer")  # HEST's obs table is empty: the .h5ad's own
    assert list(s.labels) == list(spots.labels[spots.in_tissue])
    obs = a.obs.assign(layer=a.obs["layer"].astype(str).str.lower())
    visium.attach_labels([s], "layer", obs_tables=[obs])
    assert set(s.labels) == {"", "l1", "l2", "l3", "l4", "l5", "l6", "wm"}
    msg = _one_line_error(visium.attach_labels, [s], "domain")
    assert msg.startswith(f"{st}: no obs column 'domain'")


def test_label_barcodes_that_match_no_spot_are_an_error(tmp_path, spots):
    sr = write_spaceranger(tmp_path / "151507", spots)
    s = visium.read_spaceranger(sr.outs, sr.image)
    out = np.flatnonzero(~spots.in_tissue)[:2]
    rows = layer_rows(spots, "151507") + [(spots.barcode[i], "151507", "WM") for i in out]
    rows.append(("ACGTACGTACGTACGT", "151507", "L3"))  # no "-1": another tool's barcode
    path = write_layer_table(tmp_path / "map.tsv", rows)
    before = _files(tmp_path)
    msg = _one_line_error(visium.attach_labels, [s], str(path))
    assert msg.startswith(
        f"{path}: 3 of {len(rows)} barcodes of sample '151507' match no in-tissue spot of slide "
        f"151507, e.g. ['{spots.barcode[out[0]]}', '{spots.barcode[out[1]]}', 'ACGTACGTACGTACGT']"
    )
    assert "samples={slide name: table sample}" in msg and s.labels is None
    assert _files(tmp_path) == before


# ------------------------------------------------------------------------------- bad input


def _rewrite(path, edit):
    path.write_text(edit(path.read_text()))


def _scale_positions(text, s):
    head, *rows = text.splitlines()
    out = [head]
    for r in rows:
        f = r.split(",")
        out.append(",".join(f[:4] + [f"{float(f[4]) * s:.4f}", f"{float(f[5]) * s:.4f}"]))
    return "\n".join(out) + "\n"


def _shift_first(text, dx):
    head, first, *rows = text.splitlines()
    f = first.split(",")
    return "\n".join([head, ",".join(f[:5] + [f"{float(f[5]) + dx:.4f}"]), *rows]) + "\n"


BAD = {
    "hires_positions": (
        "2.0",
        lambda sr: _rewrite(sr.positions, lambda t: _scale_positions(t, HIRES_SCALEF)),
        lambda sr: sr.positions,
        r"all 110 spots lie in the top-left 0\.15 of the 1882x1523 px image 151507_fullres\.tif "
        r".*the positions are in hires image pixels \(tissue_hires_scalef=0\.15\)",
    ),
    "hires_png": (
        "2.0",
        None,
        lambda sr: sr.outs / "spatial" / "tissue_hires_image.png",
        r"a 282x228 px PNG, not the full-resolution H&E: \d+ of 71 in-tissue spots of "
        r"tissue_positions\.csv fall outside it, because Space Ranger's positions are "
        r"full-resolution pixels",
    ),
    "hires_as_tiff": (
        "2.0",
        lambda sr: write_pyramid(
            sr.outs.parent / "hires.tif",
            np.asarray(Image.open(sr.outs / "spatial" / "tissue_hires_image.png")),
        ),
        lambda sr: sr.positions,
        r"\d+ of 71 in-tissue spots lie outside the 282x228 px image .*hires\.tif\. Scaled by "
        r"tissue_hires_scalef .*the positions are full-resolution pixels",
    ),
    "no_scalefactors": (
        "2.0",
        lambda sr: (sr.outs / "spatial" / "scalefactors_json.json").unlink(),
        lambda sr: sr.outs / "spatial" / "scalefactors_json.json",
        r"file not found; Space Ranger writes it in outs/spatial/",
    ),
    "scalefactors_not_json": (
        "2.0",
        lambda sr: (sr.outs / "spatial" / "scalefactors_json.json").write_text('{"spot_'),
        lambda sr: sr.outs / "spatial" / "scalefactors_json.json",
        r"cannot read as JSON",
    ),
    "scalefactors_key": (
        "2.0",
        lambda sr: (sr.outs / "spatial" / "scalefactors_json.json").write_text(
            json.dumps({"spot_diameter_fullres": 96.5, "tissue_lowres_scalef": 0.045})
        ),
        lambda sr: sr.outs / "spatial" / "scalefactors_json.json",
        r"tissue_hires_scalef, fiducial_diameter_fullres missing or not a positive number",
    ),
    "sr2_without_header": (
        "2.0",
        lambda sr: _rewrite(sr.positions, lambda t: t.split("\n", 1)[1]),
        lambda sr: sr.positions,
        r"no header line; Space Ranger >= 2\.0 starts this file with 'barcode,in_tissue,"
        r"array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres'",
    ),
    "sr1_with_header": (
        "1.x",
        lambda sr: _rewrite(
            sr.positions,
            lambda t: (
                "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\n" + t
            ),
        ),
        lambda sr: sr.positions,
        r"starts with a header line .*none .*name the file tissue_positions\.csv",
    ),
    "spot_outside": (
        "2.0",
        lambda sr: _rewrite(sr.positions, lambda t: _shift_first(t, 5000.0)),
        lambda sr: sr.positions,
        r"1 of 71 in-tissue spots lie outside the 1882x1523 px image .*151507_fullres\.tif\. "
        r"Is 151507_fullres\.tif the full-resolution image",
    ),
    "matrix_barcode_without_position": (
        "2.0",
        lambda sr: _rewrite(
            sr.positions, lambda t: "\n".join(t.split("\n")[:1] + t.split("\n")[2:])
        ),
        lambda sr: sr.outs / "filtered_feature_bc_matrix.h5",
        r"1 of 71 barcodes have no row in .*spatial/tissue_positions\.csv, e\.g\. \['",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_file_and_the_fix(tmp_path, spots, case):
    version, edit, named, pattern = BAD[case]
    sr = write_spaceranger(tmp_path / "151507", spots, version)
    image = {"hires_png": named(sr), "hires_as_tiff": sr.outs.parent / "hires.tif"}.get(
        case, sr.image
    )
    if edit:
        edit(sr)
    before = _files(tmp_path)
    msg = _one_line_error(visium.read_spaceranger, sr.outs, image)
    assert msg.startswith(f"{named(sr)}: ")
    assert re.search(pattern, msg), msg
    assert _files(tmp_path) == before  # nothing written
