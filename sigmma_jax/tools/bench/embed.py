"""Embedding a whole slide with a trained run: tiles/s, cells/s and peak memory, then clustering and
figures.

  python -m sigmma_jax.bench embed --run=runs/demo --size_um=10000 --workers=2
  python -m sigmma_jax.bench embed --run=runs/demo --mosaic=4 --mosaic_um=2560 --slide=DIR

Generates a synthetic slide (not timed; 10 mm: 436,828 cells), or takes one in the generic format
(--slide=DIR holding slide.ome.tif and cells.h5ad), then runs `sigmma_jax.embed` on it in a child
process twice: with --nofigures (preprocessing and the model), then again (the embedding
is reused: Leiden on every scale and on expression, markers and figures), sampling the resident
memory of the process tree.

--mosaic=N lays N x N demo-sized synthetic slides (`--mosaic_um` a side) out as one slide in the
generic format, into --slide=DIR (reused when it is there): a slide of 0.5 M cells in minutes where
one 10 mm synthetic slide takes an hour on two loaded cores (`write_mosaic`).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Callable

import numpy as np
from absl import app, flags

from sigmma_jax.tools.bench import common

DEMO_UM = 3840.0  # the demo's slide side (config_base: data.synthetic.size_um)
flags.DEFINE_string(
    "slide", "", "embed: a slide folder (slide.ome.tif, cells.h5ad) instead of one made"
)
flags.DEFINE_bool("embed_clusters", True, "embed: also time clustering and figures (2nd phase).")
flags.DEFINE_integer(
    "mosaic", 0, "embed: a slide of N x N synthetic demo slides, into --slide (0: no mosaic)."
)
flags.DEFINE_float("mosaic_um", DEMO_UM, "embed: side of each slide of the mosaic in µm.")
flags.DEFINE_enum(
    "mosaic_copies",
    "seeds",
    ["seeds", "same"],
    "embed: the mosaic's slides: seeds (slide k drawn with seed k) or the same slide N x N times "
    "(exact duplicates: every cell's nearest neighbours are its copies, see write_mosaic).",
)

MOSAIC = "mosaic.json"


def write_mosaic(
    out_dir: str | pathlib.Path,
    n: int,
    *,
    size_um: float = DEMO_UM,
    copies: str = "seeds",
    seed: int = 0,
    workers: int = 1,
):
    """`out_dir/slide.ome.tif` and `out_dir/cells.h5ad`: N x N synthetic slides of `size_um` side
    laid out in rows as one slide in the generic format (reused if `out_dir` holds this mosaic).

    `copies="seeds"`: the slide at row r, column c is drawn with seed `seed + r * n + c` (distinct
    tissue). `copies="same"`: one slide (seed `seed`) n x n times; its cells are then exact
    duplicates, so a kNN graph of them splits into cliques of copies and Leiden finds thousands of
    clusters of them: fine for the embedding's speed and memory, not for the clustering's.
    Cell ids get the copy's suffix `_r<row>c<col>`, centroids the copy's offset in level-0 px; the
    TIFF is written strip by strip from the copies' TIFFs (synthetic.write_pyramid), so memory holds
    a strip and level 1. The copies, under out_dir/copies, are deleted once the mosaic is written."""
    from sigmma_jax import atomic
    from sigmma_jax.data import synthetic

    out = pathlib.Path(out_dir)
    slide = synthetic.SyntheticSlide(wsi=out / "slide.ome.tif", cells=out / "cells.h5ad")
    params = dict(n=n, size_um=size_um, copies=copies, seed=seed)
    if (out / MOSAIC).exists():
        old = json.loads((out / MOSAIC).read_text())
        if old != params:
            raise ValueError(f"{out} holds the mosaic {old}, not {params}; use another folder")
        return slide
    seeds = [seed + k for k in range(n * n)] if copies == "seeds" else [seed] * (n * n)
    made = _copies(out / "copies", sorted(set(seeds)), size_um, workers)
    grid = [made[s] for s in seeds]
    side = _side(grid[0].wsi)
    with atomic.atomic_path(slide.cells) as tmp:
        _mosaic_cells(grid, n, side).write_h5ad(tmp, compression="gzip")
    with atomic.atomic_path(slide.wsi) as tmp:
        _mosaic_wsi(tmp, grid, n, side)
    atomic.write_json(out / MOSAIC, params)
    shutil.rmtree(out / "copies", ignore_errors=True)
    return slide


def _copies(root: pathlib.Path, seeds: list[int], size_um: float, workers: int) -> dict:
    """{seed: SyntheticSlide}, generated in `workers` processes (spawned: this process may hold
    JAX's threads, which a fork would copy half-way)."""
    from sigmma_jax.data import synthetic

    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max(1, workers), mp_context=ctx) as pool:
        jobs = {
            s: pool.submit(
                synthetic.write_synthetic_slide, root / f"seed_{s}", seed=s, size_um=size_um
            )
            for s in seeds
        }
        return {s: j.result() for s, j in jobs.items()}


def _side(wsi: pathlib.Path) -> int:
    from sigmma_jax.data import readers

    with readers.WSI(wsi) as w:
        if w.shape[0] != w.shape[1]:
            raise ValueError(f"{wsi}: a square slide expected, got {w.shape}")
        return w.shape[0]


def _mosaic_cells(grid: list, n: int, side: int):
    """The copies' cells in one AnnData: ids suffixed with the copy's place, centroids offset."""
    import anndata

    parts, px = [], None
    for k, s in enumerate(grid):
        r, c = divmod(k, n)
        a = anndata.read_h5ad(s.cells)
        px = px or float(a.uns["pixel_size_um"])
        ad = anndata.AnnData(
            X=a.X,
            obs=a.obs,
            var=a.var,
            obsm={"spatial": np.asarray(a.obsm["spatial"]) + [c * side, r * side]},  # (x, y)
        )
        ad.obs_names = [f"{i}_r{r}c{c}" for i in a.obs_names]
        parts.append(ad)
    cells = anndata.concat(parts, merge="first")
    cells.obs_names = cells.obs_names.astype(object)  # anndata refuses to write Arrow strings
    cells.uns["pixel_size_um"] = px
    return cells


def _mosaic_wsi(path: pathlib.Path, grid: list, n: int, side: int) -> None:
    from sigmma_jax.data import readers, synthetic

    wsis = {}
    for s in grid:
        if s.wsi not in wsis:
            wsis[s.wsi] = readers.WSI(s.wsi)
    try:
        px = next(iter(wsis.values())).pixel_size_um()
        render = _mosaic_render([wsis[s.wsi] for s in grid], n, side)
        synthetic.write_pyramid(path, (n * side, n * side), px, render)
    finally:
        for w in wsis.values():
            w.close()


def _mosaic_render(wsis: list, n: int, side: int) -> Callable[[int, int], np.ndarray]:
    """render(y0, h): rows [y0, y0 + h) of the mosaic, read region by region from the copies (a
    strip may straddle two rows of copies)."""

    def render(y0: int, h: int) -> np.ndarray:
        strip = np.empty((h, n * side, 3), np.uint8)
        y = y0
        while y < y0 + h:
            r, yy = divmod(y, side)
            rows = min(y0 + h - y, side - yy)
            for c in range(n):
                part = wsis[r * n + c].read(yy, yy + rows, 0, side)
                strip[y - y0 : y - y0 + rows, c * side : (c + 1) * side] = part
            y += rows
        return strip

    return render


def run(
    run_dir: str,
    size_um: float,
    workers: int,
    workdir: pathlib.Path,
    slide_dir: str,
    clusters: bool = True,
    mosaic: int = 0,
    mosaic_um: float = DEMO_UM,
    mosaic_copies: str = "seeds",
) -> dict:
    from sigmma_jax.data import synthetic

    t0 = time.time()
    if mosaic:
        slide_dir = slide_dir or str(workdir / "mosaic")
        write_mosaic(slide_dir, mosaic, size_um=mosaic_um, copies=mosaic_copies, workers=workers)
    if slide_dir:
        slide = synthetic.SyntheticSlide(
            wsi=pathlib.Path(slide_dir) / "slide.ome.tif",
            cells=pathlib.Path(slide_dir) / "cells.h5ad",
        )
    else:
        slide = synthetic.write_synthetic_slide(workdir / "slide", size_um=size_um)
    gen_s = time.time() - t0
    out = workdir / "embedding"
    cmd = [
        sys.executable,
        "-m",
        "sigmma_jax.embed",
        f"--run={pathlib.Path(run_dir).resolve()}",
        "--config=configs/generic.py",
        f"--config.data.cells={slide.cells}",
        f"--config.data.wsi={slide.wsi}",
        f"--config.data.workers={workers}",
        f"--out={out}",
    ]
    embed_s, embed_peak = common.run_measured(cmd + ["--nofigures"])
    done = json.loads((out / "embed.json").read_text())
    r = dict(
        slide=slide_dir or f"synthetic {size_um:g} µm",
        cells=done["cells"],
        tiles=done["tiles"],
        workers=workers,
        generate_s=round(gen_s, 1),
        preprocess_s=done["preprocessing"]["seconds"],
        model_s=done["seconds"],
        model_tiles_per_s=done["tiles_per_s"],
        model_cells_per_s=round(done["cells"] / max(done["seconds"], 1e-9)),
        embed_total_s=round(embed_s, 1),
        embed_peak_rss_mb=round(embed_peak),
    )
    if clusters:
        figures_s, figures_peak = common.run_measured(cmd)
        r.update(
            clusters_figures_s=round(figures_s, 1),
            clusters_figures_peak_rss_mb=round(figures_peak),
            n_clusters=json.loads((out / "clusters.json").read_text())["n_clusters"],
        )
    return r


def run_cli(a) -> int:
    if not a.run:
        raise app.UsageError("--run=RUN_DIR: a trained run (e.g. the demo's) embeds the slide")
    with tempfile.TemporaryDirectory() as tmp:
        r = run(
            a.run,
            a.size_um,
            a.workers,
            pathlib.Path(a.workdir or tmp),
            a.slide,
            a.embed_clusters,
            a.mosaic,
            a.mosaic_um,
            a.mosaic_copies,
        )
    common.print_result(r)
    return 0
