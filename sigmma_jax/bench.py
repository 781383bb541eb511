"""Benchmarks: `python -m sigmma_jax.bench NAME [--flags]` (`--helpfull` lists every flag).

    python -m sigmma_jax.bench encoder      # HE backbone speed and memory vs timm
    python -m sigmma_jax.bench parity       # full-size weight port vs timm
    python -m sigmma_jax.bench preprocess   # full-slide preprocessing: tiles/s, cells/s, peak RSS
    python -m sigmma_jax.bench step --config=configs/default.py --step_devices=8   # will it fit?
    python -m sigmma_jax.bench recovery --config=configs/demo.py --kills=20   # SIGKILL, rerun, compare
    python -m sigmma_jax.bench loss_noise --config=configs/demo.py --workdir=W  # loss swings: why
    python -m sigmma_jax.bench embed --run=RUN  # a trained run on a whole slide, then clusters
    python -m sigmma_jax.bench transcripts --n_transcripts=3000000  # HEST reader vs pyarrow
    python -m sigmma_jax.bench probe_curve --curve_runs=RUN,RUN  # Task 1 vs training tiles
    python -m sigmma_jax.bench gpu --out=gpu.json  # when a GPU is lent: step, MFU, memory, demo

Figures and the commands that made them: docs/benchmarks.md. How: `sigmma_jax.tools.bench`.
"""

from absl import app, flags

from sigmma_jax import cli
from sigmma_jax.tools.bench import BENCHMARKS


def main(argv) -> int:
    if len(argv) != 2 or argv[1] not in BENCHMARKS:
        names = "\n".join(f"  {k:12s} {help_}" for k, (_, help_) in BENCHMARKS.items())
        raise app.UsageError(f"name one benchmark:\n{names}")
    return BENCHMARKS[argv[1]][0](flags.FLAGS)


if __name__ == "__main__":
    cli.run(main)
