"""What does a folder hold, and can SIGMMA use it?

    python -m sigmma_jax.check_data HEST_DIR                             # a HEST-1k download
    python -m sigmma_jax.check_data XENIUM_OUTPUT_DIR [HE.tif ALIGN.csv] # a raw Xenium bundle
    python -m sigmma_jax.check_data CELLS.h5ad HE.tif                    # the generic format

Exits 0 when everything found is usable, 1 otherwise. How: `sigmma_jax.data.check`.
"""

from absl import app

from sigmma_jax import cli
from sigmma_jax.data import check


def main(argv) -> int:
    if len(argv) < 2:
        raise app.UsageError("name a HEST folder, a Xenium bundle, or CELLS.h5ad HE.tif")
    return 0 if check.check(argv[1:]) else 1


if __name__ == "__main__":
    cli.run(main)
