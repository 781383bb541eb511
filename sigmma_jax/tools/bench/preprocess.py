"""Preprocessing at full-slide scale: tiles/s, cells/s and peak memory of the whole process tree.

  python -m sigmma_jax.bench preprocess --size_um=10000 --workers=2

Generates a synthetic slide (not timed), then runs `sigmma_jax.main --preprocess_only` on it in a
child process while sampling the resident memory of that process and its workers from /proc: the
peak is the sum over the tree, i.e. what the machine must hold.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import anndata
from absl import flags

flags.DEFINE_float("size_um", 10000.0, "Side of the square synthetic slide in µm.")
flags.DEFINE_integer("workers", 2, "Preprocessing processes.")


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss = {}
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            status = (p / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        children.setdefault(int(fields["PPid"]), []).append(int(p.name))
        rss[int(p.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    total, stack = 0.0, [pid]
    while stack:
        q = stack.pop()
        total += rss.get(q, 0.0)
        stack.extend(children.get(q, []))
    return total


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
    peak = [0.0]
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, cwd=pathlib.Path(__file__).resolve().parents[3]
    )  # the repository: configs/

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if proc.wait():
        raise RuntimeError(f"preprocessing failed: {' '.join(cmd)}")
    seconds = time.time() - t0
    sampler.join()
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
        peak_rss_mb=round(peak[0]),
    )


def run_cli(a) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        r = run(a.size_um, a.workers, pathlib.Path(a.workdir or tmp))
    print(json.dumps(r))
    print(
        "| "
        + " | ".join(r)
        + " |\n|"
        + "---|" * len(r)
        + "\n| "
        + " | ".join(str(v) for v in r.values())
        + " |"
    )
    return 0
