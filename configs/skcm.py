"""Skin cutaneous melanoma: HEST-1k Xenium samples TENX115, TENX117 (docs/method.md, "Data formats").

  python -m sigmma_jax.main --config=configs/skcm.py --config.data.hest_dir=HEST --workdir=W

HEST-Benchmark's folds: --config.data.split.fold=k holds out the k-th patient (samples grouped by
dataset_title and patient from the metadata). UNI weights are read from
weights/uni (README, "Pretrained backbones").
"""

from sigmma_jax import config_base


def get_config(arg=None):
    return config_base.hest_config(("TENX115", "TENX117"), arg)
