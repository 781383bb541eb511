"""Results as a SpatialData store, to lay over the slide in napari-spatialdata or spatialdata-plot:
`python -m sigmma_jax.embed ... --spatialdata=STORE.zarr`.

Written from OUT's finished AnnData files (after the clusters), so it adds nothing to compute:
- the tile grid as square shapes (level-0 px of the H&E) and a table annotating them: the
  predicted expression in X, the embeddings in obsm, as in tiles.h5ad;
- the cells (or Visium spots) as a table with their per-scale embeddings and domain clusters
  (cells.h5ad / spots.h5ad), annotating the input's own cell shapes (or labels) when it was a
  SpatialData store, else circles at the centroids (cells: 5 µm radius; spots: their diameter).

STORE may be the input store itself (the elements are added beside the user's, under names starting
with "sigmma_"; a rerun replaces them) or a new path (the H&E and the annotated elements are copied
in; written to a temporary folder and moved into place, so a partial store never looks complete).
Every new element carries the H&E image's own transformations, so it lands where the image does.
A spatialdata-plot rendering of the clusters over the H&E goes to OUT/figures/spatialdata_*.png.
"""

from __future__ import annotations

import logging
import pathlib
import shutil

import ml_collections
import numpy as np
import pandas as pd

from sigmma_jax.data import readers, sources, spatialdata_source

PREFIX = spatialdata_source.OURS
CELL_RADIUS_UM = 5.0  # cells drawn as circles when the input has no shapes of its own
CLUSTER_KEYS = ("leiden_micro", "domain")  # what the figure colours by, the first found
# Table names (a store's element names are unique across kinds: the shapes are sigmma_tiles...)
TABLES = {"tiles": f"{PREFIX}tile_table", "cells": f"{PREFIX}cell_table"}


def _slides(out: pathlib.Path, config: ml_collections.ConfigDict, tiles) -> list[readers.Slide]:
    from sigmma_jax.analysis import embed

    if embed.he_only(config):
        d = config.data
        return [readers.read_wsi_only(d.wsi, list(tiles.var_names), d.pixel_size_um)]
    return sources.load_slides(config, out)


def _tile_shapes(tiles, transformations):
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    o = tiles.obs
    boxes = shapely.box(
        o["x0"].to_numpy(), o["y0"].to_numpy(), o["x1"].to_numpy(), o["y1"].to_numpy()
    )
    frame = gpd.GeoDataFrame(geometry=boxes, index=pd.Index(tiles.obs_names.astype(str)))
    return ShapesModel.parse(frame, transformations=transformations)


def _circles(xy: np.ndarray, radius: float, index, transformations):
    from spatialdata.models import ShapesModel

    return ShapesModel.parse(
        np.asarray(xy, float),
        geometry=0,
        radius=np.full(len(xy), radius),
        index=pd.Index(np.asarray(index, str)),
        transformations=transformations,
    )


def _per_slide(adata, slide: str):
    return adata[(adata.obs["slide"].astype(str) == slide).to_numpy()]


def _cells_file(out: pathlib.Path) -> pathlib.Path | None:
    for name in ("cells.h5ad", "spots.h5ad"):
        if (out / name).exists():
            return out / name
    return None


def results(out: pathlib.Path, config: ml_collections.ConfigDict) -> tuple[dict, dict, dict]:
    """(elements to add, elements of the input to copy into a new store, what to draw): the tile
    grid and the cells or spots of OUT's AnnData files as SpatialData elements and tables."""
    import anndata
    from spatialdata.transformations import Identity, get_transformation

    tiles_path = out / "tiles.h5ad"
    tiles = anndata.read_h5ad(tiles_path) if tiles_path.exists() else None
    cells_path = _cells_file(out)
    cells = anndata.read_h5ad(cells_path) if cells_path else None
    if tiles is None and cells is None:
        raise readers.InputError(f"{out}: no tiles.h5ad, cells.h5ad or spots.h5ad: embed first")
    slides = _slides(out, config, tiles if tiles is not None else cells)
    add, copy, draw = {}, {}, {}
    tables = {"tiles": [], "cells": []}
    from_store = config.data.source == "spatialdata"
    sdata = spatialdata_source.open_store(config.data.spatialdata.store) if from_store else None
    one = len(slides) == 1
    for slide in slides:
        if from_store:
            image = slide.wsi_path.name
            transformations = get_transformation(sdata[image], get_all=True)
            copy[image] = sdata[image]
            system = next(iter(transformations))
        else:
            image = "he" if one else f"{slide.name}_he"
            system = slide.name
            transformations = {system: Identity()}
            add[image] = spatialdata_source.image_element(slide.wsi_path, transformations)
        suffix = "" if one else f"_{slide.name}"
        tile_el = f"{PREFIX}tiles{suffix}"
        if tiles is not None:
            t = _per_slide(tiles, slide.name)
            add[tile_el] = _tile_shapes(t, transformations)
            t = t.copy()
            t.obs["region"], t.obs["tile"] = tile_el, t.obs_names.astype(str)
            tables["tiles"].append((t, tile_el, "tile"))
        if cells is not None:
            c = _per_slide(cells, slide.name).copy()
            # the input's ids: obs_names, or with several slides the column beside "slide/id"
            id_column = next((k for k in ("cell_id", "barcode") if k in c.obs), None)
            ids = np.asarray(c.obs_names if one or id_column is None else c.obs[id_column], str)
            if from_store:
                annotated, instance_key = _annotated(sdata, config, ids, c)
                copy.update({name: sdata[name] for name in annotated})
                tables["cells"].append((c, annotated, instance_key))
                cell_el = annotated[0]
            else:
                cell_el = f"{PREFIX}{'spots' if slide.spot_diameter_um else 'cells'}{suffix}"
                radius_um = slide.spot_diameter_um / 2 if slide.spot_diameter_um else CELL_RADIUS_UM
                xy = np.asarray(c.obsm["spatial"])  # level-0 px of the slide's H&E
                add[cell_el] = _circles(xy, radius_um / slide.pixel_size_um, ids, transformations)
                c.obs["region"], c.obs["instance_id"] = cell_el, ids
                tables["cells"].append((c, cell_el, "instance_id"))
            draw[slide.name] = dict(image=image, cells=cell_el, system=system)
        elif tiles is not None:
            draw[slide.name] = dict(image=image, cells=tile_el, system=system, table="tiles")
    for kind, parts in tables.items():
        if parts:
            add[TABLES[kind]] = _concat_table(parts)
    return add, copy, draw


def _concat_table(parts):
    """(AnnData, region or regions, instance key) per slide as one table annotating them all; each
    part's obs["region"] names its element."""
    import anndata
    from spatialdata.models import TableModel

    regions = []
    for _, region, _ in parts:
        regions += region if isinstance(region, list) else [region]
    adatas = [a for a, _, _ in parts]
    joined = adatas[0].copy() if len(adatas) == 1 else anndata.concat(adatas, merge="same")
    joined.uns = dict(adatas[0].uns)
    joined.obs["region"] = pd.Categorical(joined.obs["region"].astype(str))
    return TableModel.parse(joined, region=regions, region_key="region", instance_key=parts[0][2])


def _annotated(sdata, config, ids: np.ndarray, cells) -> tuple[list[str], str]:
    """(the input table's elements that hold `cells`, its instance key); its region and instance
    columns are copied into `cells.obs` by id."""
    from spatialdata.models import get_table_keys

    name = spatialdata_source.pick(
        sdata.tables, config.data.spatialdata.table, "table", sdata.path, "table"
    )
    table = sdata.tables[name]
    regions, region_key, instance_key = get_table_keys(table)
    rows = table.obs.reindex(pd.Index(ids))
    cells.obs["region"] = rows[region_key].astype(str).to_numpy()
    cells.obs[instance_key] = rows[instance_key].to_numpy()
    used = set(cells.obs["region"])
    names = [r for r in ([regions] if isinstance(regions, str) else regions) if r in used]
    return names, instance_key


def write_store(
    out: str | pathlib.Path, path: str | pathlib.Path, config: ml_collections.ConfigDict
) -> dict:
    """Writes OUT's results to the SpatialData store `path` (module docstring) and draws the
    figure; returns {"store": path, "elements": [...], "figures": [...]}."""
    sd = spatialdata_source.import_spatialdata()
    out, path = pathlib.Path(out), pathlib.Path(path)
    add, copy, draw = results(out, config)
    into_input = (
        config.data.source == "spatialdata"
        and path.exists()
        and path.resolve() == pathlib.Path(config.data.spatialdata.store).resolve()
    )
    if into_input:
        sdata = sd.read_zarr(path)
        for name, element in add.items():
            if name in sdata:
                del sdata[name]
                sdata.delete_element_from_disk(name)
            sdata[name] = element
            sdata.write_element(name)
    else:
        if path.exists():
            raise readers.InputError(
                f"{path}: exists and is not the input store; remove it or name another path"
            )
        sdata = sd.SpatialData.init_from_elements({**copy, **add})
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        sdata.write(tmp)
        tmp.rename(path)
        sdata = sd.read_zarr(path)
    figures = [
        render(sdata, spec, out / "figures" / f"spatialdata_{slide}.png")
        for slide, spec in draw.items()
    ]
    logging.info("%s: %s", path, sorted(add))
    return dict(store=str(path), elements=sorted(add), figures=[str(f) for f in figures])


def render(sdata, spec: dict, path: pathlib.Path) -> pathlib.Path:
    """The clusters (or, without cells, the first predicted gene) over the H&E, by spatialdata-plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers the .pl accessor)

    from sigmma_jax.analysis import figures

    table_name = TABLES[spec.get("table", "cells")]
    table = sdata.tables[table_name]
    color = next((k for k in CLUSTER_KEYS if k in table.obs), None)
    color = color or next((k for k in table.obs if k.startswith("leiden_")), None)
    color = color or str(table.var_names[0])
    element = spec["cells"]
    plot = sdata.pl.render_images(spec["image"])
    if element in sdata.labels:
        plot = plot.pl.render_labels(element, color=color, table_name=table_name)
    else:
        plot = plot.pl.render_shapes(element, color=color, table_name=table_name)
    fig, ax = plt.subplots(figsize=(7, 7))
    plot.pl.show(coordinate_systems=spec["system"], ax=ax, title=f"{color} over the H&E")
    path.parent.mkdir(parents=True, exist_ok=True)
    figures.save(fig, path)
    plt.close(fig)
    return path
