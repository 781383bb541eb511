"""Embedding a whole slide with a trained run: tiles/s, cells/s and peak memory, then clustering and
figures.

  python -m sigmma_jax.bench embed --run=runs/demo --size_um=10000 --workers=2

Generates a synthetic slide (not timed; 10 mm: 436,828 cells), or takes one in the generic format
(--slide=DIR holding slide.ome.tif and cells.h5ad), then runs `sigmma_jax.embed` on it in a child
process twice: with --nofigures (preprocessing and the model), then again (the embedding
is reused: Leiden on every scale and on expression, markers and figures), sampling the resident
memory of the process tree.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

from absl import app, flags

from sigmma_jax.tools.bench import common

flags.DEFINE_string(
    "slide", "", "embed: a slide folder (slide.ome.tif, cells.h5ad) instead of one made"
)
flags.DEFINE_bool("embed_clusters", True, "embed: also time clustering and figures (2nd phase).")


def run(
    run_dir: str,
    size_um: float,
    workers: int,
    workdir: pathlib.Path,
    slide_dir: str,
    clusters: bool = True,
) -> dict:
    from sigmma_jax.data import synthetic

    t0 = time.time()
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
            a.run, a.size_um, a.workers, pathlib.Path(a.workdir or tmp), a.slide, a.embed_clusters
        )
    common.print_result(r)
    return 0
