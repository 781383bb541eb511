"""Everything that needs a GPU, in one command and a few minutes, into one JSON file:

  python -m sigmma_jax.bench gpu --out=gpu.json

1. The whole SIGMMA train step (`bench step`'s) at the paper's batch per device: UNI (ViT-L/16),
   full fine-tuning, bfloat16 compute, remat, 8 tiles (168 crops) on one device, which is what each
   of the paper's 8 GPUs holds of its 64-tile batch: compile time, step time, tiles/s, model-FLOPs
   utilisation (the target is >= 50 % on an H100), XLA's memory analysis and the device's measured
   peak against the shape estimate (`step.fit_estimate`).
2. The demo end to end (`python -m sigmma_jax.main --config=configs/demo.py`): its wall time.

Without a GPU it refuses (the figures would be the CPU's); --gpu_allow_cpu runs it anyway, on the
given --config, for testing the command itself. Record the JSON's figures, with its date and
device, in docs/benchmarks.md.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys
import tempfile
import time

import jax
from absl import flags

from sigmma_jax.tools.bench import common, step

flags.DEFINE_bool("gpu_allow_cpu", False, "gpu: run on a CPU too (tests the command only).")
flags.DEFINE_bool("gpu_demo", True, "gpu: also time the demo end to end.")

PAPER_TILES_PER_DEVICE = 8  # the paper's 64 tiles over 8 GPUs


def step_check(config, tiles: int = PAPER_TILES_PER_DEVICE, iters: int = 5) -> dict:
    """`bench step` on one device at `tiles` per device, with the device's measured peak."""
    c = config.copy_and_resolve_references()
    c.train.global_batch = c.eval.batch = tiles
    r = step.measure(c, devices=1, run=True, iters=iters, warmup=2)
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        r["measured_peak_gib"] = stats["peak_bytes_in_use"] / step.GiB
    return r


def demo_check(workdir: pathlib.Path, config: str = "configs/demo.py", extra=()) -> dict:
    """The demo (or `config`) as a user runs it, in a child process: wall seconds, peak RSS."""
    cmd = [sys.executable, "-m", "sigmma_jax.main", f"--config={config}", f"--workdir={workdir}"]
    seconds, peak = common.run_measured([*cmd, *extra])
    results = json.loads((workdir / "results.json").read_text())
    return dict(
        command=" ".join(cmd[1:]),
        seconds=round(seconds, 1),
        peak_rss_mb=round(peak),
        results_keys=sorted(results),
    )


def run(a) -> int:
    if jax.devices()[0].platform != "gpu" and not a.gpu_allow_cpu:
        raise SystemExit(
            f"bench gpu: no GPU here ({jax.devices()[0].platform}); it measures what needs one "
            "(--gpu_allow_cpu runs it anyway)"
        )
    config = a.config
    if config is None:  # configs/default.py's model: UNI, full fine-tuning, bf16, remat
        from sigmma_jax import config_base

        config = config_base.base_config()
    t0 = time.time()
    out = dict(date=datetime.date.today().isoformat(), machine=common.machine_description())
    out["step"] = step_check(config, iters=a.iters)
    if a.gpu_demo:
        with tempfile.TemporaryDirectory() as tmp:
            out["demo"] = demo_check(pathlib.Path(a.workdir or tmp) / "demo")
    out["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        pathlib.Path(a.out).write_text(text)
    return 0
