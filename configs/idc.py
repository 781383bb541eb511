"""Invasive ductal carcinoma (breast): the HEST-1k Xenium samples TENX95, TENX99, NCBI783, NCBI785 (METHOD.md §7).

python -m sigmma_jax.main --config=configs/idc.py --config.data.hest_dir=HEST --workdir=W
"""

from sigmma_jax import config_base


def get_config(arg=None):
    c = config_base.base_config()
    c.data.source = "hest"
    c.data.sample_ids = ("TENX95", "TENX99", "NCBI783", "NCBI785")
    if "demo" in config_base.parse_arg(arg):
        config_base.apply_demo(c)
    return c
