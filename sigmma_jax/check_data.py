"""What does a folder hold, and can SIGMMA use it?

    python -m sigmma_jax.check_data HEST_DIR                             # a HEST-1k download
    python -m sigmma_jax.check_data XENIUM_OUTPUT_DIR [HE.tif ALIGN.csv] # a raw Xenium bundle
    python -m sigmma_jax.check_data CELLS.h5ad HE.tif                    # the generic format
    python -m sigmma_jax.check_data STORE.zarr [--config=...]           # a SpatialData store
    python -m sigmma_jax.check_data --config=configs/X.py [--config.data.*=...]  # what a run reads

Cells with their H&E, and any --config, are checked as the run checks them. Exits 0 when everything
found is usable, 1 otherwise. How: `sigmma_jax.data.check`.
"""

from absl import app, flags

from sigmma_jax import cli
from sigmma_jax.data import check

FLAGS = flags.FLAGS


def main(argv) -> int:
    if len(argv) < 2 and FLAGS.config is None:
        raise app.UsageError(
            "name a HEST folder, a Xenium bundle, CELLS.h5ad HE.tif, a SpatialData STORE.zarr, or "
            "--config=..."
        )
    return 0 if check.check(argv[1:], FLAGS.config, FLAGS.workdir) else 1


if __name__ == "__main__":
    cli.run(main)
