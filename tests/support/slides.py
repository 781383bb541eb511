"""Writers of small, format-exact slides for tests (generic format: OME-TIFF + cells .h5ad)."""

import pathlib

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tifffile


def write_tiff(path, image, pixel_size_um=None, resolution_cm=None):
    path = pathlib.Path(path)
    kw = dict(tile=(256, 256), compression="zlib", photometric="rgb")
    if pixel_size_um:
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as t:
            t.write(
                image,
                metadata={
                    "axes": "YXS",
                    "PhysicalSizeX": pixel_size_um,
                    "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": pixel_size_um,
                    "PhysicalSizeYUnit": "µm",
                },
                **kw,
            )
    else:
        with tifffile.TiffWriter(path) as t:
            extra = (
                dict(resolution=(resolution_cm, resolution_cm), resolutionunit="CENTIMETER")
                if resolution_cm
                else {}
            )
            t.write(image, **kw, **extra)
    return path


def write_cells(path, xy, counts, genes, cell_ids=None):
    n = len(xy)
    a = anndata.AnnData(
        X=sp.csr_matrix(np.asarray(counts, np.float32)),
        obs=pd.DataFrame(
            index=cell_ids if cell_ids is not None else [f"cell{i}" for i in range(n)]
        ),
        var=pd.DataFrame(index=list(genes)),
    )
    a.obsm["spatial"] = np.asarray(xy, np.float64)
    a.write_h5ad(path)
    return pathlib.Path(path)


def pink_slide(tmp, side_px=1200, pixel_size_um=0.2737, n_cells=400, n_genes=12, seed=0):
    """A tissue-coloured slide with random cells: (wsi, cells, xy, counts, genes)."""
    rng = np.random.default_rng(seed)
    image = np.empty((side_px, side_px, 3), np.uint8)
    image[:] = (220, 140, 180)
    xy = rng.uniform(0, side_px, (n_cells, 2))
    counts = rng.poisson(3.0, (n_cells, n_genes + 2))
    genes = [f"G{i}" for i in range(n_genes)] + ["BLANK_0001", "NegControlProbe_7"]
    wsi = write_tiff(pathlib.Path(tmp) / "he.ome.tif", image, pixel_size_um)
    cells = write_cells(pathlib.Path(tmp) / "cells.h5ad", xy, counts, genes)
    return wsi, cells, xy, counts, genes


def tissue_slide(
    tmp,
    side_px=2000,
    pixel_size_um=0.2737,
    n_cells=1400,
    tissue=(0, 0, 2000, 2000),
    n_genes=12,
    seed=0,
):
    """Glass with a pink tissue rectangle `tissue` = (x0, y0, x1, y1) px and cells inside it:
    (wsi, cells, xy, counts, genes). The issue's probe slide by default: 2000 px at 0.2737 µm/px,
    1,400 cells, 4x4 tiles of 128 µm."""
    rng = np.random.default_rng(seed)
    image = np.full((side_px, side_px, 3), 243, np.uint8)
    x0, y0, x1, y1 = tissue
    image[y0:y1, x0:x1] = (220, 140, 180)
    xy = rng.uniform((x0, y0), (x1, y1), (n_cells, 2))
    counts = rng.poisson(3.0, (n_cells, n_genes))
    genes = [f"G{i}" for i in range(n_genes)]
    wsi = write_tiff(pathlib.Path(tmp) / "he.ome.tif", image, pixel_size_um)
    cells = write_cells(pathlib.Path(tmp) / "cells.h5ad", xy, counts, genes)
    return wsi, cells, xy, counts, genes
