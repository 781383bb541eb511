"""Your own slide in the generic format: any platform we have no reader for.

  python -m sigmma_jax.main --config=configs/generic.py \
      --config.data.cells=CELLS.h5ad --config.data.wsi=HE.tif --workdir=W

CELLS.h5ad: raw counts in X (cells x genes), cell centroids in level-0 WSI pixels in obsm['spatial'].
The pixel size is read from the OME metadata or given as --config.data.pixel_size_um=0.2737.
"""

from sigmma_jax import config_base


def get_config(arg=None):
    return config_base.sigmma_config("generic", arg)  # ":demo", ":legacy"
