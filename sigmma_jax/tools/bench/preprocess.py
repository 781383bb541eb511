"""Preprocessing at full-slide scale: tiles/s, cells/s and peak memory of the whole process tree.

  python -m sigmma_jax.bench preprocess --size_um=10000 --workers=2

Generates a synthetic slide (not timed), then runs `sigmma_jax.main --preprocess_only` on it in a
child process while sampling the resident memory of that process and its workers from /proc: the
peak is the sum over the tree, i.e. what the machine must hold.
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


def run(size_um: float, workers: int, workdir: pathlib.Path, seed: int = 0) -> dict:
    from sigmma_jax.data import synthetic

    t0 = time.time()
    slide = synthetic.write_synthetic_slide(workdir / "slide", seed=seed, size_um=size_um)
    gen_s = time.time() - t0
    n_cells = anndata.read_h5ad(slide.cells, backed="r").n_obs
    cmd = [
        sys.executable,
        "-m",
        "sigmma_jax.main",
        "--preprocess_only",
        "--config=configs/generic.py",
        f"--config.data.cells={slide.cells}",
        f"--config.data.wsi={slide.wsi}",
        f"--config.data.workers={workers}",
        f"--workdir={workdir / 'run'}",
    ]
    seconds, peak = common.run_measured(cmd)
    manifest = json.loads((workdir / "run" / "shards" / "manifest.json").read_text())
    rep = manifest["report"]
    side_px = round(size_um / 0.2737)
    return dict(
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
        r = run(a.size_um, a.workers, pathlib.Path(a.workdir or tmp))
    common.print_result(r)
    return 0
