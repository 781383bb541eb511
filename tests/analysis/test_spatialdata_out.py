"""Results as a SpatialData store: written beside the input's elements or as a new store, read back
by spatialdata with each table annotating the right element, and drawn by spatialdata-plot."""

import pathlib
import shutil

import anndata
import ml_collections
import numpy as np
import pytest
from PIL import Image
from support.spatialdata_stores import store_from_generic

from sigmma_jax.analysis import clusters, embed, spatialdata_out

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
sd = pytest.importorskip("spatialdata")


def _figure_ok(path: pathlib.Path):
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # the H&E and the colours, not blank


@pytest.fixture(scope="module")
def store_embedding(tiny_run, tmp_path_factory):
    """The tiny run's slide as a store (cells in µm, the H&E placed by a scale and a shift),
    embedded through the spatialdata source and clustered: (config, OUT, store)."""
    run, config = tiny_run
    root = tmp_path_factory.mktemp("sd_out")
    slide = run / "slide"
    ps = float(anndata.read_h5ad(slide / "cells.h5ad").uns["pixel_size_um"])
    store = store_from_generic(
        root / "input.zarr", slide / "cells.h5ad", slide / "slide.ome.tif", ps
    )
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.source = "spatialdata"
    c.data.spatialdata.store = str(store)
    out = root / "out"
    embed.embed_slide(run, c, out)
    clusters.run(out, c)
    return c, out, store


def test_a_new_store_holds_the_image_the_cells_it_annotates_and_the_tiles(
    store_embedding, tmp_path
):
    c, out, store = store_embedding
    done = spatialdata_out.write_store(out, tmp_path / "results.zarr", c)
    assert not (tmp_path / "results.zarr.partial").exists()
    s = sd.read_zarr(tmp_path / "results.zarr")
    assert set(s.images) == {"he"} and {"cells", "sigmma_tiles"} <= set(s.shapes)
    cells = anndata.read_h5ad(out / "cells.h5ad")
    t = s.tables["sigmma_cell_table"]
    attrs = t.uns["spatialdata_attrs"]
    assert list(np.atleast_1d(attrs["region"])) == ["cells"] and attrs["instance_key"] == "cell_id"
    # every row names the input's own cell shape, and carries that cell's embeddings and clusters
    assert set(t.obs["cell_id"]) <= set(s["cells"].index)
    np.testing.assert_array_equal(t.obs["cell_id"].to_numpy(), cells.obs_names.to_numpy())
    np.testing.assert_array_equal(t.obsm["sigmma_micro"], cells.obsm["sigmma_micro"])
    assert (t.obs["leiden_micro"].to_numpy() == cells.obs["leiden_micro"].to_numpy()).all()
    tiles = anndata.read_h5ad(out / "tiles.h5ad")
    tt = s.tables["sigmma_tile_table"]
    assert list(np.atleast_1d(tt.uns["spatialdata_attrs"]["region"])) == ["sigmma_tiles"]
    assert len(s["sigmma_tiles"]) == tt.n_obs == tiles.n_obs
    np.testing.assert_array_equal(tt.X, tiles.X)  # the predicted expression
    # a tile's square, brought into the cells' system, holds the cells the tile lists
    from spatialdata.transformations import get_transformation_between_coordinate_systems

    m = get_transformation_between_coordinate_systems(s, s["sigmma_tiles"], s["cells"])
    m = m.to_affine_matrix(("x", "y"), ("x", "y"))
    name = tiles.obs_names[0]
    x0, y0, x1, y1 = s["sigmma_tiles"].loc[name].geometry.bounds
    lo, hi = (m @ [x0, y0, 1])[:2], (m @ [x1, y1, 1])[:2]
    inside = cells.obs_names[(cells.obs["tile"] == name).to_numpy()]
    centres = s["cells"].loc[inside].geometry
    assert ((centres.x >= lo[0] - 1e-6) & (centres.x <= hi[0] + 1e-6)).all()
    assert ((centres.y >= lo[1] - 1e-6) & (centres.y <= hi[1] + 1e-6)).all()
    assert done["figures"] and all(pathlib.Path(f).exists() for f in done["figures"])
    _figure_ok(pathlib.Path(done["figures"][0]))


def test_into_the_input_store_adds_beside_the_users_elements_and_reruns(store_embedding, tmp_path):
    c, out, store = store_embedding
    copy = tmp_path / "input.zarr"
    shutil.copytree(store, copy)
    c = ml_collections.ConfigDict(c.to_dict())
    c.data.spatialdata.store = str(copy)
    for _ in range(2):  # a rerun replaces its own elements
        spatialdata_out.write_store(out, copy, c)
    s = sd.read_zarr(copy)
    assert set(s.tables) == {"table", "sigmma_cell_table", "sigmma_tile_table"}
    assert set(s.shapes) == {"cells", "sigmma_tiles"} and set(s.images) == {"he"}
    assert s.tables["table"].n_obs == sd.read_zarr(store).tables["table"].n_obs  # untouched


def test_a_tiff_slide_becomes_a_store_with_circles(tiny_embedding, tmp_path):
    run, config, out = tiny_embedding
    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    clusters.run(out2, config)
    spatialdata_out.write_store(out2, tmp_path / "r.zarr", config)
    s = sd.read_zarr(tmp_path / "r.zarr")
    cells = anndata.read_h5ad(out2 / "cells.h5ad")
    assert set(s.images) == {"he"} and set(s.shapes) == {"sigmma_cells", "sigmma_tiles"}
    circles = s["sigmma_cells"].loc[cells.obs_names]
    np.testing.assert_allclose(
        np.c_[circles.geometry.x, circles.geometry.y], cells.obsm["spatial"], atol=1e-9
    )
    he = s.images["he"]["scale0"]["image"] if hasattr(s.images["he"], "children") else s["he"]
    assert he.shape[1:] == tuple(
        anndata.read_h5ad(out2 / "tiles.h5ad").uns["sigmma"]["image_shape"]["synthetic"]
    )
    with pytest.raises(Exception, match="exists"):
        spatialdata_out.write_store(out2, tmp_path / "r.zarr", config)
