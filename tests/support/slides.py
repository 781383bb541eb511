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
