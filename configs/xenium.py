"""A raw 10x Xenium output folder with its H&E and the H&E -> morphology alignment.

  python -m sigmma_jax.main --config=configs/xenium.py \
      --config.data.xenium_dir=output-XETG.../ --config.data.wsi=HE.ome.tif \
      --config.data.alignment=HE_imagealignment.csv --workdir=W

The alignment is Xenium Explorer's 3x3 affine CSV (H&E pixels -> morphology pixels) or its keypoints
CSV (fixedX, fixedY, alignmentX, alignmentY). Cells are mapped into H&E level-0 pixels.
"""

from sigmma_jax import config_base


def get_config(arg=None):
    return config_base.sigmma_config("xenium", arg)  # ":demo", ":legacy"
