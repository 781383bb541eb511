"""A SpatialData zarr store: any platform spatialdata-io reads (Xenium, Visium, CosMx, MERSCOPE...).

  python -m sigmma_jax.main --config=configs/spatialdata.py \
      --config.data.spatialdata.store=SAMPLE.zarr --config.data.spatialdata.image=he --workdir=W

The store holds the H&E as an image element, the cells' counts as a table and the shapes or labels
that table annotates; the store's transformations map the cells onto the H&E. `image`, `table` and
`coordinate_system` may be left empty when the store holds one of each. um_per_unit is the µm per
unit of the cells' own coordinates (Xenium, MERSCOPE: 1; CosMx: its pixel size, e.g. 0.12028).
Visium spots: configs/st_align.py with --config.data.source=spatialdata (README, "SpatialData").
"""

from sigmma_jax import config_base


def get_config(arg=None):
    return config_base.sigmma_config("spatialdata", arg)  # ":demo", ":legacy"
