"""Slides named by a run config: `config.data.source` picks the reader, the other fields feed it.

Every reader returns `readers.Slide`s; nothing downstream knows the format. A new platform is one
reader module and one entry in `SOURCES`.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Callable

import ml_collections

from sigmma_jax.data import cell_embeddings, readers

# The generated demo sources: config section -> the workdir folder they are written to when the
# section's `dir` is empty.
GENERATED = {"synthetic": "slide", "synthetic_visium": "slides"}


def _synthetic(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[readers.Slide]:
    from sigmma_jax.data import synthetic  # only the demo needs the generator

    s = d.synthetic
    out = synthetic.write_synthetic_slide(
        s.dir or workdir / GENERATED["synthetic"],
        seed=s.seed,
        size_um=s.size_um,
        pixel_size_um=s.pixel_size_um,
        n_genes=s.n_genes,
        cell_density=s.cell_density,
    )
    return [readers.read_generic(out.cells, out.wsi, name="synthetic")]


def is_spots(d: ml_collections.ConfigDict) -> bool:
    """A config for spots (ST-Align's: it has data.spots): the generic source reads spots."""
    return "spots" in d


def _generic(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[readers.Slide]:
    if not d.cells or not d.wsi:
        raise readers.InputError(
            "the generic source needs --config.data.cells=FILE.h5ad and --config.data.wsi=FILE.tif"
        )
    if is_spots(d):
        from sigmma_jax.data import visium

        return [
            visium.read_spots_h5ad(
                d.cells,
                d.wsi,
                d.pixel_size_um,
                d.spots.diameter_um,
                allow_non_integer=d.allow_non_integer_counts,
            )
        ]
    return [
        readers.read_generic(
            d.cells, d.wsi, d.pixel_size_um, allow_non_integer=d.allow_non_integer_counts
        )
    ]


def _hest(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[readers.Slide]:
    from sigmma_jax.data import hest

    if not d.hest_dir or not d.sample_ids:
        raise readers.InputError("HEST configs need --config.data.hest_dir=DIR (and sample_ids)")
    return [hest.read_hest(d.hest_dir, sid, d.min_qv) for sid in d.sample_ids]


def _spaceranger(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[readers.Slide]:
    from sigmma_jax.data import visium

    if not d.spaceranger_dir:
        raise readers.InputError(
            "the spaceranger source needs --config.data.spaceranger_dir=DIR (an outs/ folder, a "
            "sample folder holding one, or a folder of sample folders)"
        )
    return visium.read_spaceranger_samples(d.spaceranger_dir, d.wsi)


def _synthetic_visium(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[readers.Slide]:
    """ST-Align's demo: DLPFC-like Visium slices generated in HEST-1k's layout, read as HEST."""
    from sigmma_jax.data import synthetic_visium, visium

    s = d.synthetic_visium
    out = synthetic_visium.write_synthetic_visium(
        s.dir or workdir / GENERATED["synthetic_visium"],
        seed=s.seed,
        n_slices=s.n_slices,
        slices_per_donor=s.slices_per_donor,
        size_um=s.size_um,
        pixel_size_um=s.pixel_size_um,
        n_genes=s.n_genes,
    )
    slides = [visium.read_hest_visium(out.hest_dir, sid) for sid in out.sample_ids]
    if not d.labels:  # the demo's layers, unless the config names other labels
        visium.attach_labels(slides, str(out.labels))
    return slides


def _xenium(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[readers.Slide]:
    from sigmma_jax.data import xenium

    if not d.xenium_dir or not d.wsi or not d.alignment:
        raise readers.InputError(
            "configs/xenium.py needs --config.data.xenium_dir=BUNDLE "
            "--config.data.wsi=HE.ome.tif --config.data.alignment=ALIGN.csv"
        )
    return [xenium.read_xenium(d.xenium_dir, d.wsi, d.alignment, he_pixel_size_um=d.pixel_size_um)]


def _spatialdata(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list[readers.Slide]:
    from sigmma_jax.data import spatialdata_source

    sd = d.spatialdata
    if not sd.store:
        raise readers.InputError(
            "the spatialdata source needs --config.data.spatialdata.store=STORE.zarr (README, "
            "'SpatialData')"
        )
    return [
        spatialdata_source.read_spatialdata(
            sd.store,
            image=sd.image,
            table=sd.table,
            coordinate_system=sd.coordinate_system,
            centroids=sd.centroids,
            um_per_unit=sd.um_per_unit,
            pixel_size_um=d.pixel_size_um,
            spot_diameter_um=d.spots.diameter_um if is_spots(d) else 0.0,
            allow_non_integer=d.allow_non_integer_counts,
        )
    ]


SOURCES: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path], list[readers.Slide]]] = {
    "synthetic": _synthetic,
    "generic": _generic,
    "hest": _hest,
    "xenium": _xenium,
    "spaceranger": _spaceranger,
    "synthetic_visium": _synthetic_visium,
    "spatialdata": _spatialdata,
}


def _synthetic_obs(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list:
    return [readers.read_obs(pathlib.Path(workdir) / "slide" / "cells.h5ad")]


def _hest_obs(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list:
    import pandas as pd

    return [pd.DataFrame() for _ in d.sample_ids]  # HEST's transcripts carry cell ids only


def _xenium_obs(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list:
    from sigmma_jax.data import xenium

    return [xenium.read_cells_table(d.xenium_dir)]


def _spatialdata_obs(d: ml_collections.ConfigDict, workdir: pathlib.Path) -> list:
    from sigmma_jax.data import spatialdata_source

    return [spatialdata_source.read_obs(d.spatialdata.store, d.spatialdata.table)]


# The input's own per-cell table of each slide (indexed by cell id; columns carried into results).
OBS: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path], list]] = {
    "synthetic": _synthetic_obs,
    "generic": lambda d, workdir: [readers.read_obs(d.cells)],
    "hest": _hest_obs,
    "xenium": _xenium_obs,
    "spatialdata": _spatialdata_obs,
}


def load_obs(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list:
    """Per slide of `load_slides` (same order), the input's cell table as a pandas DataFrame indexed
    by cell id: the .h5ad's obs, the Xenium cells.parquet columns, nothing but ids for HEST."""
    return OBS[config.data.source](config.data, pathlib.Path(workdir))


def load_slides(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> list[readers.Slide]:
    """The slides of `config.data` (the synthetic one is generated into `workdir/slide` first), with
    their precomputed cell embeddings when data.cell_embedding_key names them."""
    source = config.data.source
    if source not in SOURCES:
        raise readers.InputError(
            f"unknown data.source {source!r}; expected one of {sorted(SOURCES)}"
        )
    slides = SOURCES[source](config.data, pathlib.Path(workdir))
    _regroup(slides, config.data.get("sample_groups", ()))
    if is_spots(config.data):
        if config.data.get("labels"):  # ground truth for evaluation (spatialLIBD's layers...)
            from sigmma_jax.data import visium

            visium.attach_labels(slides, config.data.labels, _obs_or_none(config, workdir))
    else:
        cell_embeddings.attach(slides, config.data)
    return slides


def _regroup(slides: list[readers.Slide], spec) -> None:
    """data.sample_groups ("SAMPLE=GROUP" each) over the groups the metadata gave; a sample left
    without a group while others share one is said once (it is held out alone)."""
    names = {s.name for s in slides}
    for entry in spec:
        sample, sep, group = str(entry).partition("=")
        if not sep or not group:
            raise readers.InputError(
                f"data.sample_groups entry {entry!r}: expected SAMPLE=GROUP (e.g. 151507=Br5292)"
            )
        if sample not in names:
            raise readers.InputError(
                f"data.sample_groups names {sample!r}, which is not one of the slides "
                f"({', '.join(sorted(names))})"
            )
        for s in slides:
            if s.name == sample:
                s.group = group
    alone = [s.name for s in slides if not s.group]
    if alone and len(slides) > 1:
        logging.warning(
            "%d of %d samples name no patient or donor (%s): each is held out as a group of its "
            "own, so a donor's other samples may train; --config.data.sample_groups sets them",
            len(alone),
            len(slides),
            ", ".join(alone[:5]) + (", ..." if len(alone) > 5 else ""),
        )


def _obs_or_none(config: ml_collections.ConfigDict, workdir) -> list | None:
    """Each slide's obs table when its source keeps one (an obs column can name the labels)."""
    if config.data.source not in OBS:
        return None
    return load_obs(config, workdir)
