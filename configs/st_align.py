"""ST-Align (arXiv 2411.16793): Visium spots and their niches (README, "ST-Align").

  python -m sigmma_jax.main --config=configs/st_align.py --config.data.hest_dir=HEST \
      --config.data.sample_ids="('MISC12','MISC11',...)" --config.data.labels=LAYERS.tsv --workdir=W

At the paper's scale: a folder of HEST-1k Visium samples (data.hest_dir, data.sample_ids), whole
slides held out by patient (data.split.fold), DLPFC's layers joined by barcode from spatialLIBD's
barcode_level_layer_map.tsv (data.labels). Space Ranger output: --config.data.source=spaceranger
--config.data.spaceranger_dir=DIR. UNI and scGPT weights from weights/uni and weights/scgpt
(README, "Pretrained weights").

  python -m sigmma_jax.main --config=configs/st_align.py:demo --workdir=W

`:demo`: six synthetic DLPFC-like slices generated into the workdir and a model small enough for
two CPU cores; with data.hest_dir (or another source) given, the demo-sized model on those slides.

  python -m sigmma_jax.main --config=configs/st_align.py:dlpfc --config.data.hest_dir=HEST \
      --config.data.labels=barcode_level_layer_map.tsv --workdir=W

`:dlpfc`: the 12 spatialLIBD slices of HEST-1k (MISC1-MISC12), grouped by donor (HEST names none),
so each fold holds out one donor's four slices; combines with `:demo` (`:dlpfc,demo`).
"""

from sigmma_jax import config_base, dlpfc


def get_config(arg=None):
    c = config_base.st_align_config()
    args = config_base.parse_arg(arg)
    if "demo" in args:
        config_base.apply_st_align_demo(c)
        c.data.source = "synthetic_visium"
    if "dlpfc" in args:
        c.data.source = "hest"
        c.data.sample_ids = tuple(dlpfc.HEST_IDS.values())
        c.data.sample_groups = dlpfc.hest_sample_groups()
    return c
