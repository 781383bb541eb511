"""Preprocessing at full-slide scale: tiles/s, cells/s and peak memory of the whole process tree.

  python -m sigmma_jax.bench preprocess --size_um=10000 --workers=2 [--input=spatialdata]

Generates a synthetic slide (not timed), then runs `sigmma_jax.main --preprocess_only` on it in a
child process while sampling the resident memory of that process and its workers from /proc: the
peak is the sum over the tree, i.e. what the machine must hold. `--input=spatialdata` first writes
the slide as a SpatialData store (not timed: the H&E as a multiscale image in µm, the cells as
circles with their table) and preprocesses it through the spatialdata source.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

import anndata
from absl import flags

from sigmma_jax.tools.bench import common

flags.DEFINE_float("size_um", 10000.0, "Side of the square synthetic slide in µm.")
flags.DEFINE_integer("workers", 2, "Preprocessing processes.")
flags.DEFINE_enum(
    "input", "tiff", ["tiff", "spatialdata"], "What preprocessing reads the slide from."
)


def to_store(cells_path: pathlib.Path, wsi: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The generic slide as a SpatialData store: cells in µm ("global"), the H&E scaled into it."""
    import numpy as np
    import pandas as pd
    import spatialdata as sd
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from sigmma_jax.data import spatialdata_source

    cells = anndata.read_h5ad(cells_path)
    ps = float(cells.uns["pixel_size_um"])
    ids = pd.Index(np.asarray(cells.obs_names, str))
    circles = ShapesModel.parse(
        np.asarray(cells.obsm["spatial"], float) * ps,
        geometry=0,
        radius=np.full(len(ids), 5.0),
        index=ids,
        transformations={"global": Identity()},
    )
    table = anndata.AnnData(X=cells.X, var=cells.var)
    table.obs_names = ids
    table.obs["cell_id"] = ids.to_numpy()
    table.obs["region"] = pd.Categorical(["cells"] * len(ids))
    table = TableModel.parse(table, region="cells", region_key="region", instance_key="cell_id")
    image = spatialdata_source.image_element(wsi, {"global": Scale([ps, ps], axes=("x", "y"))})
    sdata = sd.SpatialData(images={"he": image}, shapes={"cells": circles}, tables={"table": table})
    sdata.write(out)
    return out


def run(
    size_um: float, workers: int, workdir: pathlib.Path, seed: int = 0, source: str = "tiff"
) -> dict:
    from sigmma_jax.data import synthetic

    t0 = time.time()
    slide = synthetic.write_synthetic_slide(workdir / "slide", seed=seed, size_um=size_um)
    if source == "spatialdata":
        store = to_store(slide.cells, slide.wsi, workdir / "slide.zarr")
        data = ["--config=configs/spatialdata.py", f"--config.data.spatialdata.store={store}"]
    else:
        data = [
            "--config=configs/generic.py",
            f"--config.data.cells={slide.cells}",
            f"--config.data.wsi={slide.wsi}",
        ]
    gen_s = time.time() - t0
    n_cells = anndata.read_h5ad(slide.cells, backed="r").n_obs
    cmd = [
        sys.executable,
        "-m",
        "sigmma_jax.main",
        "--preprocess_only",
        *data,
        f"--config.data.workers={workers}",
        f"--workdir={workdir / 'run'}",
    ]
    seconds, peak = common.run_measured(cmd)
    manifest = json.loads((workdir / "run" / "shards" / "manifest.json").read_text())
    rep = manifest["report"]
    side_px = round(size_um / 0.2737)
    return dict(
        input=source,
        size_um=size_um,
        wsi_px=f"{side_px}x{side_px}",
        cells=n_cells,
        tiles_kept=rep["tiles_kept"],
        cells_kept=rep["cells_kept"],
        workers=workers,
        generate_s=round(gen_s, 1),
        preprocess_s=round(seconds, 1),
        tiles_per_s=round(rep["tiles_kept"] / seconds, 1),
        cells_per_s=round(rep["cells_kept"] / seconds),
        peak_rss_mb=round(peak),
    )


def run_cli(a) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        r = run(a.size_um, a.workers, pathlib.Path(a.workdir or tmp), source=a.input)
    common.print_result(r)
    return 0
