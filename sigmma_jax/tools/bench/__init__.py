"""Benchmarks by name: `python -m sigmma_jax.bench NAME [--flags]`; figures in docs/benchmarks.md.

A new benchmark is a module with its flags and `run(flags) -> int`, plus its line in `BENCHMARKS`.
"""

from sigmma_jax.tools.bench import (
    embed,
    encoder,
    gpu,
    loss_noise,
    parity,
    preprocess,
    probe_curve,
    recovery,
    step,
    transcripts,
)

BENCHMARKS = {
    "encoder": (encoder.run, "HE backbone speed and memory vs timm"),
    "parity": (parity.run, "full-size weight port vs timm"),
    "preprocess": (preprocess.run_cli, "full-slide preprocessing: tiles/s, cells/s, peak RSS"),
    "embed": (embed.run_cli, "a trained run on a whole slide: tiles/s, cells/s, peak RSS"),
    "step": (step.run, "the whole train step compiled for N devices: memory, step time, MFU"),
    "recovery": (
        recovery.run,
        "SIGKILL a run N times, rerun it, compare with an uninterrupted one",
    ),
    "loss_noise": (loss_noise.run, "a checkpoint's loss spread: batches vs Gumbel vs dropout"),
    "transcripts": (transcripts.run_cli, "HEST transcript reader vs a pyarrow group-by: M/s, RSS"),
    "probe_curve": (
        probe_curve.run,
        "Task 1 against training tiles: scales' mean vs concatenation",
    ),
    "gpu": (gpu.run, "everything that needs a GPU (paper-scale step, MFU, memory, demo) -> JSON"),
}
