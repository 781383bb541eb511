"""A tiny, format-exact raw Xenium output bundle with a post-Xenium H&E and its alignment file.

Layout as 10x ships a dataset: `outs/` (experiment.xenium, cells.parquet, cell_feature_matrix.h5)
beside `he_image.ome.tif` and `he_imagealignment.csv` (or `he_keypoints.csv`).
"""

from __future__ import annotations

import json
import pathlib

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from support.slides import write_tiff

# Real Xenium panels carry these non-gene features; the reader must drop them by feature_type.
EXTRA_CONTROLS = [
    ("NegControlProbe_00042", "Negative Control Probe"),
    ("NegControlCodeword_0501", "Negative Control Codeword"),
    ("BLANK_0006", "Blank Codeword"),
    ("UnassignedCodeword_0007", "Unassigned Codeword"),
]
_TYPE_BY_PREFIX = {
    "negcontrolprobe": "Negative Control Probe",
    "negcontrolcodeword": "Negative Control Codeword",
    "blank": "Blank Codeword",
    "unassigned": "Unassigned Codeword",
    "deprecated": "Deprecated Codeword",
}


def xenium_cell_ids(n: int) -> list[str]:
    """Cell ids as XOA >= 1.3 writes them: 8 letters a-p encoding a uint32, then "-1"."""
    letters = np.array(list("abcdefghijklmnop"))
    shifts = np.arange(28, -1, -4)
    words = [(i * 2654435761 + 12345) & 0xFFFFFFFF for i in range(n)]
    return ["".join(letters[(w >> shifts) & 0xF]) + "-1" for w in words]


def rotation_affine(
    he_pixel_size_um: float,
    morph_pixel_size: float = 0.2125,
    degrees: float = 3.0,
    translation=(420.0, 180.0),
) -> np.ndarray:
    """H&E px -> morphology px: scale by the pixel-size ratio, rotate, translate."""
    s, t = he_pixel_size_um / morph_pixel_size, np.deg2rad(degrees)
    return np.array(
        [
            [s * np.cos(t), -s * np.sin(t), translation[0]],
            [s * np.sin(t), s * np.cos(t), translation[1]],
            [0.0, 0.0, 1.0],
        ]
    )


def _feature_type(name: str) -> str:
    low = name.lower()
    return next((t for p, t in _TYPE_BY_PREFIX.items() if low.startswith(p)), "Gene Expression")


def write_experiment(path, morph_pixel_size, n_cells, **overrides):
    spec = {
        "major_version": 5,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": "tiny_run",
        "region_name": "tiny_region",
        "experiment_uuid": "0" * 32,
        "panel_tissue_type": "Breast",
        "run_start_time": "2024-01-01T10:00:00+00:00",
        "preservation_method": "FFPE",
        "num_cells": n_cells,
        "transcripts_per_cell": 40,
        "transcripts_per_100um": 120.0,
        "cassette_name": "tiny",
        "slide_id": "0011111",
        "panel_design_id": "hBreast_v1",
        "panel_name": "Xenium Human Breast Gene Expression",
        "panel_organism": "Human",
        "panel_num_targets_predesigned": 280,
        "panel_num_targets_custom": 0,
        "pixel_size": morph_pixel_size,
        "instrument_sn": "0000000",
        "instrument_sw_version": "2.0.1.0",
        "analysis_sw_version": "xenium-2.0.0.10",
        "cassette_uuid": "0" * 32,
        "roi_uuid": "0" * 32,
        "z_step_size": 3.0,
        "well_uuid": "",
        "calibration_uuid": "0" * 32,
        "images": {
            "morphology_filepath": "morphology.ome.tif",
            "morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif",
        },
        "xenium_explorer_files": {
            "transcripts_zarr_filepath": "transcripts.zarr.zip",
            "cells_zarr_filepath": "cells.zarr.zip",
            "cell_features_zarr_filepath": "cell_feature_matrix.zarr.zip",
            "analysis_zarr_filepath": "analysis.zarr.zip",
            "analysis_summary_filepath": "analysis_summary.html",
        },
    }
    spec.update(overrides)
    pathlib.Path(path).write_text(json.dumps(spec, indent=4))


def write_cells_parquet(path, cell_ids, xy_um, counts_total, rng):
    n = len(cell_ids)
    area = rng.uniform(30, 120, n)
    table = pa.table(
        {
            "cell_id": pa.array([str(c) for c in cell_ids], pa.string()),
            "x_centroid": pa.array(xy_um[:, 0], pa.float64()),
            "y_centroid": pa.array(xy_um[:, 1], pa.float64()),
            "transcript_counts": pa.array(counts_total, pa.uint32()),
            "control_probe_counts": pa.array(np.zeros(n, np.uint32)),
            "genomic_control_counts": pa.array(np.zeros(n, np.uint32)),
            "control_codeword_counts": pa.array(np.zeros(n, np.uint32)),
            "unassigned_codeword_counts": pa.array(np.zeros(n, np.uint32)),
            "deprecated_codeword_counts": pa.array(np.zeros(n, np.uint32)),
            "total_counts": pa.array(counts_total, pa.uint32()),
            "cell_area": pa.array(area, pa.float64()),
            "nucleus_area": pa.array(area * 0.4, pa.float64()),
            "nucleus_count": pa.array(np.ones(n, np.uint32)),
            "segmentation_method": pa.array(
                ["Segmented by boundary stain (ATP1A1+CD45+E-Cadherin)"] * n
            ),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return area


def write_feature_matrix(path, barcodes, counts, names, feature_types):
    """10x HDF5 layout: CSC (features x cells), one column per barcode."""
    csc = sp.csc_matrix(np.asarray(counts).T)  # (features, cells)
    csc.sort_indices()

    def s(values):  # fixed-length byte strings, as 10x writes them
        return np.array([v.encode() for v in values], dtype=f"S{max(len(v) for v in values)}")

    with h5py.File(path, "w") as f:
        f.attrs.update(
            {
                "filetype": "matrix",
                "version": 2,
                "software_version": "xenium-2.0.0.10",
                "chemistry_description": "Xenium",
                "library_ids": s(["tiny"]),
                "original_gem_groups": np.array([1]),
            }
        )
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=s(barcodes))
        g.create_dataset("data", data=csc.data.astype(np.uint32), compression="gzip")
        g.create_dataset("indices", data=csc.indices.astype(np.int64), compression="gzip")
        g.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(csc.shape, np.int32))
        ft = g.create_group("features")
        ft.create_dataset("_all_tag_keys", data=s(["genome"]))
        ft.create_dataset("feature_type", data=s(feature_types))
        ft.create_dataset("genome", data=s(["Unknown"] * len(names)))
        ft.create_dataset("id", data=s([f"ENSG{i:011d}" for i in range(len(names))]))
        ft.create_dataset("name", data=s(names))


def write_keypoints(path, affine, morph_pixel_size, he_shape, rng):
    """Keypoints as Xenium Explorer exports them: fixed = Xenium µm, alignment = H&E pixels."""
    h, w = he_shape  # spread over the tissue, as a user places them: a jittered 4x3 grid
    gx, gy = np.meshgrid(np.linspace(0.1, 0.9, 4), np.linspace(0.1, 0.9, 3))
    he = (np.c_[gx.ravel(), gy.ravel()] + rng.uniform(-0.05, 0.05, (12, 2))) * [w, h]
    fixed = (np.c_[he, np.ones(len(he))] @ np.asarray(affine).T)[:, :2] * morph_pixel_size
    fixed += rng.normal(0, 0.005, fixed.shape)  # placement jitter of a careful user, in µm
    rows = ["fixedX,fixedY,alignmentX,alignmentY"]
    rows += [f"{a:.4f},{b:.4f},{c:.4f},{d:.4f}" for (a, b), (c, d) in zip(fixed, he, strict=True)]
    pathlib.Path(path).write_text("\n".join(rows) + "\n")


def write_cells_zarr(path, cell_ids, xy_um, area):
    """cells.zarr.zip as XOA >= 2.0 writes it, the parts spatialdata-io reads with the table: the
    cell ids as (prefix, dataset suffix) uint32 pairs and the cell summary."""
    import zarr

    letters = {c: i for i, c in enumerate("abcdefghijklmnop")}
    prefix = [int("".join(f"{letters[c]:x}" for c in i.split("-")[0]), 16) for i in cell_ids]
    suffix = [int(i.split("-")[1]) for i in cell_ids]
    summary = np.c_[xy_um, area, xy_um, area * 0.4, np.zeros(len(cell_ids)), np.ones(len(cell_ids))]
    with zarr.storage.ZipStore(path, mode="w") as store:
        root = zarr.group(store=store, zarr_format=2)
        root.create_array("cell_id", data=np.c_[prefix, suffix].astype(np.uint32))
        cs = root.create_array("cell_summary", data=summary.astype(np.float64))
        cs.attrs["column_names"] = [
            "cell_centroid_x",
            "cell_centroid_y",
            "cell_area",
            "nucleus_centroid_x",
            "nucleus_centroid_y",
            "nucleus_area",
            "z_level",
            "nucleus_count",
        ]


def write_xenium_bundle(
    out_dir,
    slide_xy_he_px,
    counts,
    genes,
    cell_ids,
    he_shape,
    he_pixel_size_um,
    affine,
    morph_pixel_size=0.2125,
    keypoints=False,
    controls=True,
    seed=0,
    he_image=None,
    as_xoa=False,
):
    """Writes the bundle of the cells given in H&E level-0 pixels; -> (bundle, he_image, alignment).

    `affine` maps H&E px -> morphology px (the Xenium Explorer matrix). `he_pixel_size_um=None`
    writes an H&E without pixel size metadata; `he_image` (H, W, 3) is its pixels (default: one
    pink). `as_xoa` writes what spatialdata-io's reader also needs: cells.zarr.zip, and the matrix
    columns in the order of cells.parquet (else shuffled, which the project's reader must join)."""
    rng = np.random.default_rng(seed)
    out = pathlib.Path(out_dir)
    bundle = out / "outs"
    bundle.mkdir(parents=True, exist_ok=True)
    xy_he = np.asarray(slide_xy_he_px, np.float64)
    counts = np.asarray(counts)
    names = list(genes)
    types = [_feature_type(g) for g in names]
    if controls:
        names += [n for n, _ in EXTRA_CONTROLS]
        types += [t for _, t in EXTRA_CONTROLS]
        counts = np.c_[counts, rng.poisson(0.2, (len(counts), len(EXTRA_CONTROLS)))]

    xy_um = (np.c_[xy_he, np.ones(len(xy_he))] @ np.asarray(affine).T)[:, :2] * morph_pixel_size
    write_experiment(bundle / "experiment.xenium", morph_pixel_size, len(cell_ids))
    area = write_cells_parquet(bundle / "cells.parquet", cell_ids, xy_um, counts.sum(1), rng)
    # matrix columns in another order than cells.parquet, unless as XOA writes them
    order = np.arange(len(cell_ids)) if as_xoa else rng.permutation(len(cell_ids))
    if as_xoa:
        write_cells_zarr(bundle / "cells.zarr.zip", cell_ids, xy_um, area)
    write_feature_matrix(
        bundle / "cell_feature_matrix.h5", [cell_ids[i] for i in order], counts[order], names, types
    )

    if he_image is None:
        image = np.empty((*he_shape, 3), np.uint8)
        image[:] = (220, 140, 180)
    else:
        image = np.asarray(he_image, np.uint8)
    he = write_tiff(out / "he_image.ome.tif", image, he_pixel_size_um)
    if keypoints:
        alignment = out / "he_keypoints.csv"
        write_keypoints(alignment, affine, morph_pixel_size, he_shape, rng)
    else:
        alignment = out / "he_imagealignment.csv"
        alignment.write_text(
            "\n".join(",".join(repr(float(v)) for v in row) for row in np.asarray(affine)) + "\n"
        )
    return bundle, he, alignment
