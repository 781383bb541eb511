"""SpatialData stores built the way spatialdata-io structures each platform, for the tests.

- `store_from_generic`: a generic-format slide (cells .h5ad + H&E) as a store, the cells in µm of
  a "global" system and the H&E placed there by a scale and a shift (no identity anywhere).
- `cosmx_store`: spatialdata-io's CosMx layout: one labels element per field of view
  ("{fov}_labels", FOV pixels, an affine to "global" pixels), a table annotating them by
  (fov_labels, cell_ID), obs_names "cellID_fov".
- `merscope_store`: spatialdata-io's MERSCOPE layout: cell polygons in µm with the
  micron-to-mosaic affine to "global", a table annotating "{dataset}_polygons" by
  (cells_region, EntityID).
Every store here has an H&E image element "he" with its own transformation to the system.
"""

from __future__ import annotations

import pathlib

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sigmma_jax.data import readers

SHIFT_UM = (96.0, 40.0)  # where the H&E's corner lies in the cells' system (exact in binary)


def _table(counts, genes, obs, region, region_key, instance_key):
    from spatialdata.models import TableModel

    a = anndata.AnnData(
        X=sp.csr_matrix(np.asarray(counts, np.float32)),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(list(genes), dtype=object)),
    )
    a.obs[region_key] = pd.Categorical(a.obs[region_key].astype(str))
    return TableModel.parse(a, region=region, region_key=region_key, instance_key=instance_key)


def _image(pixels_hwc, transformations, scale_factors=None):
    from spatialdata.models import Image2DModel

    return Image2DModel.parse(
        np.moveaxis(np.asarray(pixels_hwc, np.uint8), -1, 0),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=scale_factors,
        transformations=transformations,
    )


def he_pixels(wsi_path) -> np.ndarray:
    with readers.WSI(wsi_path) as w:
        return w.read(0, w.shape[0], 0, w.shape[1])


def store_from_generic(path, cells_h5ad, wsi_path, pixel_size_um: float, counts_layer=False):
    """The generic slide as a store (module docstring); -> the store's path. The cells' ids, counts
    and genes are the .h5ad's; `counts_layer` keeps the counts in layers['counts'] and a
    normalised X, as scanpy users leave them."""
    import spatialdata as sd
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    cells = anndata.read_h5ad(cells_h5ad)
    xy_um = np.asarray(cells.obsm["spatial"], float) * pixel_size_um + SHIFT_UM
    ids = np.asarray(cells.obs_names, str)
    place = Sequence(
        [Scale([pixel_size_um] * 2, axes=("x", "y")), Translation(list(SHIFT_UM), axes=("x", "y"))]
    )
    shapes = ShapesModel.parse(
        xy_um,
        geometry=0,
        radius=np.full(len(ids), 5.0),
        index=pd.Index(ids),
        transformations={"global": Identity()},
    )
    obs = pd.DataFrame({"cell_id": ids, "region": "cells"}, index=pd.Index(ids, dtype=object))
    table = _table(cells.X.toarray(), cells.var_names, obs, "cells", "region", "cell_id")
    if counts_layer:
        table.layers["counts"] = table.X.copy()
        table.X = sp.csr_matrix(np.log1p(table.X.toarray()))
    sdata = sd.SpatialData(
        images={"he": _image(he_pixels(wsi_path), {"global": place})},
        shapes={"cells": shapes},
        tables={"table": table},
    )
    sdata.write(path)
    return pathlib.Path(path)


def _square_labels(centres_px, side: int, shape):
    """A labels image with a `side` px square per centre (label i + 1), and the squares' true
    centroids (x, y) in pixel-centre coordinates + 0.5 (spatialdata's pixel corners)."""
    labels = np.zeros(shape, np.int32)
    true = []
    for i, (x, y) in enumerate(np.asarray(centres_px, int)):
        labels[y - side // 2 : y - side // 2 + side, x - side // 2 : x - side // 2 + side] = i + 1
        ys, xs = np.nonzero(labels == i + 1)
        true.append((xs.mean() + 0.5, ys.mean() + 0.5))
    return labels, np.array(true)


def cosmx_store(path, he_hwc, he_to_global, fovs, counts, genes, px_um=0.12028):
    """CosMx as spatialdata-io reads it. `fovs`: per field of view (offset (x, y) in global px,
    cell centres in FOV px); `he_to_global` the 3x3 H&E px -> global px. -> (store path, the cells'
    true centroids in H&E px, their obs_names)."""
    import spatialdata as sd
    from spatialdata.models import Labels2DModel
    from spatialdata.transformations import Affine

    labels, obs, true_he, true_global = {}, [], [], []
    to_he = np.linalg.inv(he_to_global)
    for f, (offset, centres) in enumerate(fovs, start=1):
        lab, true = _square_labels(centres, 12, (256, 256))
        fov_to_global = np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1.0]])
        labels[f"{f}_labels"] = Labels2DModel.parse(
            lab,
            dims=("y", "x"),
            transformations={"global": Affine(fov_to_global, ("x", "y"), ("x", "y"))},
        )
        g = np.c_[true, np.ones(len(true))] @ fov_to_global.T
        true_global.append(g[:, :2])
        true_he.append((g @ to_he.T)[:, :2])
        for i in range(len(centres)):
            obs.append({"fov": str(f), "fov_labels": f"{f}_labels", "cell_ID": i + 1})
    obs = pd.DataFrame(obs)
    obs.index = pd.Index([f"{r.cell_ID}_{r.fov}" for r in obs.itertuples()], dtype=object)
    table = _table(
        counts, genes, obs, sorted(labels), region_key="fov_labels", instance_key="cell_ID"
    )
    table.obsm["global"] = np.concatenate(
        true_global
    )  # CenterX/Y_global_px, as spatialdata-io keeps them
    he = _image(he_hwc, {"global": Affine(he_to_global, ("x", "y"), ("x", "y"))})
    sd.SpatialData(images={"he": he}, labels=labels, tables={"table": table}).write(path)
    return pathlib.Path(path), np.concatenate(true_he), np.asarray(obs.index, str)


def merscope_store(path, he_hwc, micron_to_mosaic, he_to_mosaic, xy_um, counts, genes):
    """MERSCOPE as spatialdata-io reads it: square cell polygons around `xy_um` (µm), the
    micron-to-mosaic affine to "global" (mosaic px), the H&E with its own affine there. -> (store,
    the cells' centres in H&E px)."""
    import geopandas as gpd
    import shapely
    import spatialdata as sd
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Affine

    dataset = "slide1_region_0"
    ids = [str(100000 + i) for i in range(len(xy_um))]
    polygons = gpd.GeoDataFrame(
        {"EntityID": ids},
        geometry=[shapely.box(x - 4, y - 4, x + 4, y + 4) for x, y in xy_um],
        index=pd.Index(ids),
    )
    shapes = ShapesModel.parse(
        polygons, transformations={"global": Affine(micron_to_mosaic, ("x", "y"), ("x", "y"))}
    )
    obs = pd.DataFrame(
        {"EntityID": ids, "cells_region": f"{dataset}_polygons", "region": "region_0"},
        index=pd.Index(ids, dtype=object),
    )
    table = _table(counts, genes, obs, f"{dataset}_polygons", "cells_region", "EntityID")
    he = _image(he_hwc, {"global": Affine(he_to_mosaic, ("x", "y"), ("x", "y"))})
    sd.SpatialData(
        images={"he": he}, shapes={f"{dataset}_polygons": shapes}, tables={"table": table}
    ).write(path)
    mosaic = np.c_[xy_um, np.ones(len(xy_um))] @ np.asarray(micron_to_mosaic).T
    return pathlib.Path(path), (mosaic @ np.linalg.inv(he_to_mosaic).T)[:, :2]
