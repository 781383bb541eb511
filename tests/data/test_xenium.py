"""Xenium bundle reader: equals the generic reader on the same slide; names every bad input."""

import json
import logging

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.configs import preprocessing_only, tiny_config
from support.slides import pink_slide, write_cells
from support.xenium import rotation_affine, write_xenium_bundle, xenium_cell_ids

from sigmma_jax.data import check, readers, xenium

HE_PX = 0.2737
SIDE = 1200


def _slide_data(n_cells=300, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(5, SIDE - 5, (n_cells, 2))
    counts = rng.poisson(3.0, (n_cells, 14))
    genes = [f"G{i}" for i in range(12)] + ["BLANK_0001", "NegControlProbe_7"]
    return xy, counts, genes, xenium_cell_ids(n_cells)


def _bundle(tmp_path, keypoints=False, he_pixel_size_um=HE_PX, affine=None, **kw):
    xy, counts, genes, ids = _slide_data()
    affine = rotation_affine(HE_PX) if affine is None else affine
    return write_xenium_bundle(
        tmp_path / "xenium",
        xy,
        counts,
        genes,
        ids,
        (SIDE, SIDE),
        he_pixel_size_um,
        affine,
        keypoints=keypoints,
        **kw,
    )


def _by_id(slide):
    order = np.argsort(slide.cell_ids)
    return slide.cell_ids[order], slide.xy[order], slide.counts.toarray()[order]


def test_same_slide_as_generic_reader(tmp_path):
    xy, counts, genes, ids = _slide_data()
    wsi, *_ = pink_slide(tmp_path, side_px=SIDE, pixel_size_um=HE_PX)
    generic = readers.read_generic(
        write_cells(tmp_path / "cells.h5ad", xy, counts, genes, ids), wsi
    )
    affine = rotation_affine(HE_PX, degrees=-4.0, translation=(950.0, -60.0))
    assert abs(np.linalg.det(affine[:2, :2]) - 1) > 0.5 and affine[0, 1] != 0  # not a near-identity
    bundle, he, align = write_xenium_bundle(
        tmp_path / "x", xy, counts, genes, ids, (SIDE, SIDE), HE_PX, affine
    )
    s = xenium.read_xenium(bundle, he, align)

    assert s.name == "x" and s.image_shape == generic.image_shape
    assert s.pixel_size_um == pytest.approx(generic.pixel_size_um, rel=1e-9)
    np.testing.assert_array_equal(s.genes, generic.genes)
    gi, gxy, gc = _by_id(generic)
    xi, xxy, xc = _by_id(s)
    np.testing.assert_array_equal(xi, gi)
    np.testing.assert_allclose(xxy, gxy, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(xc, gc)
    # the two name-matched controls, plus the four non-gene features the bundle adds
    assert generic.dropped_controls == 2 and s.dropped_controls == 6
    assert s.report["alignment"] == "matrix" and s.report["matrix_columns_without_cell"] == 0


def test_keypoints_match_the_matrix(tmp_path):
    by_matrix = xenium.read_xenium(*_bundle(tmp_path / "m"))
    by_points = xenium.read_xenium(*_bundle(tmp_path / "k", keypoints=True))
    np.testing.assert_array_equal(by_points.cell_ids, by_matrix.cell_ids)
    assert np.abs(by_points.xy - by_matrix.xy).max() < 0.05
    assert 0 < by_points.report["keypoint_rms_um"] < 0.1 and by_points.report["keypoints"] == 12


def test_pixel_size_from_affine_and_override(tmp_path, caplog):
    bundle, he, align = _bundle(tmp_path, he_pixel_size_um=None)
    assert xenium.read_xenium(bundle, he, align).pixel_size_um == pytest.approx(HE_PX)
    with caplog.at_level(logging.WARNING):
        s = xenium.read_xenium(bundle, he, align, he_pixel_size_um=0.5)
    assert s.pixel_size_um == 0.5 and "disagrees" in caplog.text


def test_matrix_columns_without_cells_are_dropped_and_counted(tmp_path):
    bundle, he, align = _bundle(tmp_path)
    table = pq.read_table(bundle / "cells.parquet")
    pq.write_table(table.slice(0, table.num_rows - 7), bundle / "cells.parquet")
    s = xenium.read_xenium(bundle, he, align)
    assert len(s.xy) == table.num_rows - 7 and s.report["matrix_columns_without_cell"] == 7


def test_check_data_shows_where_the_cells_land(tmp_path, capsys):
    paths = [str(p) for p in _bundle(tmp_path)]
    assert check.check(paths, preprocessing_only(tiny_config()))
    out = capsys.readouterr().out
    assert "cells inside the H&E: 100.0%" in out and ": 300 cells x 12 genes" in out
    assert '"matrix_columns_without_cell": 0' in out  # the reader's own report
    assert check.check(paths) is False  # configs/default.py's batch of 64: too few tiles
    assert "NOT usable: the split leaves 0 training tiles" in capsys.readouterr().out


def _rewrite_h5(path, edit):
    with h5py.File(path, "a") as f:
        edit(f["matrix"])


def _replace(group, key, data):
    del group[key]
    group.create_dataset(key, data=data)


def _write_rows(path, text):
    path.write_text(text)


BAD = {
    "no_spec": (
        lambda b, he, al: (b / "experiment.xenium").unlink(),
        r"experiment\.xenium: file not found",
    ),
    "no_cells": (
        lambda b, he, al: (b / "cells.parquet").unlink(),
        r"cells\.parquet: file not found",
    ),
    "no_h5": (
        lambda b, he, al: (b / "cell_feature_matrix.h5").unlink(),
        r"cell_feature_matrix\.h5: file not found",
    ),
    "no_he": (lambda b, he, al: he.unlink(), r"he_image\.ome\.tif: file not found"),
    "no_alignment": (lambda b, he, al: al.unlink(), r"he_imagealignment\.csv: file not found"),
    "no_pixel_size": (
        lambda b, he, al: (b / "experiment.xenium").write_text(
            json.dumps(
                {
                    k: v
                    for k, v in json.loads((b / "experiment.xenium").read_text()).items()
                    if k != "pixel_size"
                }
            )
        ),
        r"experiment\.xenium: no positive 'pixel_size'",
    ),
    "bad_json": (
        lambda b, he, al: (b / "experiment.xenium").write_text("{pixel_size: "),
        r"experiment\.xenium: cannot read as JSON",
    ),
    "cells_column": (
        lambda b, he, al: pq.write_table(
            pq.read_table(b / "cells.parquet").drop(["y_centroid"]), b / "cells.parquet"
        ),
        r"cells\.parquet: missing columns \['y_centroid'\]",
    ),
    "duplicate_ids": (
        lambda b, he, al: pq.write_table(
            pq.read_table(b / "cells.parquet").set_column(
                0, "cell_id", pa.array(["dup"] * 2 + [f"c{i}" for i in range(298)])
            ),
            b / "cells.parquet",
        ),
        r"cells\.parquet: duplicated cell ids, e\.g\. \['dup'\]",
    ),
    "cell_without_column": (
        lambda b, he, al: _rewrite_h5(
            b / "cell_feature_matrix.h5", lambda g: g["barcodes"].__setitem__(0, b"zzzzzzzz-1")
        ),
        r"cells\.parquet: 1 of 300 cells have no column in cell_feature_matrix\.h5",
    ),
    "h5_key": (
        lambda b, he, al: _rewrite_h5(
            b / "cell_feature_matrix.h5", lambda g: g.__delitem__("indptr")
        ),
        r"cell_feature_matrix\.h5: not a 10x .*missing \['matrix/indptr'\]",
    ),
    "h5_shape": (
        lambda b, he, al: _rewrite_h5(
            b / "cell_feature_matrix.h5", lambda g: _replace(g, "shape", np.array([14, 299]))
        ),
        r"cell_feature_matrix\.h5: inconsistent matrix: shape says 299 cells",
    ),
    "not_3x3": (
        lambda b, he, al: _write_rows(al, "1,0,0\n0,1,0\n"),
        r"he_imagealignment\.csv: expected a 3x3 affine matrix.*got 2x3",
    ),
    "bad_header": (
        lambda b, he, al: _write_rows(al, "fixedX,fixedY,movingX,movingY\n1,2,3,4\n"),
        r"he_imagealignment\.csv: expected .*keypoints.*got header",
    ),
    "not_affine": (
        lambda b, he, al: _write_rows(al, "1.3,0,10\n0,1.3,5\n0.01,0,1\n"),
        r"he_imagealignment\.csv: not an affine matrix, last row",
    ),
    "singular": (
        lambda b, he, al: _write_rows(al, "1.3,2.6,10\n0.65,1.3,5\n0,0,1\n"),
        r"he_imagealignment\.csv: singular alignment matrix",
    ),
    "off_slide": (
        lambda b, he, al: _write_rows(al, "1.288,0,-3000\n0,1.288,0\n0,0,1\n"),
        r"he_imagealignment\.csv: 300 of 300 cells of .*cells\.parquet map outside the "
        r"1200x1200 px H&E image he_image\.ome\.tif; most cells miss",
    ),
    "inverted": (
        lambda b, he, al: _write_rows(
            al,
            "\n".join(
                ",".join(repr(float(v)) for v in r) for r in np.linalg.inv(rotation_affine(HE_PX))
            ),
        ),
        r"he_imagealignment\.csv: .*map outside.*inverted",
    ),
    "two_keypoints": (
        lambda b, he, al: _write_rows(
            al, "fixedX,fixedY,alignmentX,alignmentY\n10,10,20,20\n50,10,90,20\n"
        ),
        r"he_imagealignment\.csv: 2 keypoints; an affine needs at least 3",
    ),
    "collinear": (
        lambda b, he, al: _write_rows(
            al, "fixedX,fixedY,alignmentX,alignmentY\n10,10,20,20\n50,50,90,90\n80,80,150,150\n"
        ),
        r"he_imagealignment\.csv: the 3 keypoints are collinear",
    ),
    "keypoint_rms": (
        lambda b, he, al: _write_rows(
            al,
            "fixedX,fixedY,alignmentX,alignmentY\n0,0,0,0\n100,0,400,0\n0,100,0,400\n"
            "100,100,400,400\n900,900,400,400\n",
        ),
        r"he_imagealignment\.csv: keypoints do not fit one affine .*RMS residual",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_file_and_the_problem(tmp_path, case):
    bundle, he, align = _bundle(tmp_path, controls=False)
    edit, pattern = BAD[case]
    edit(bundle, he, align)
    with pytest.raises(readers.InputError, match=pattern):
        xenium.read_xenium(bundle, he, align)
