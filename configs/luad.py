"""Lung adenocarcinoma: HEST-1k Xenium samples TENX118, TENX141 (docs/method.md, "Data formats").

  python -m sigmma_jax.main --config=configs/luad.py --config.data.hest_dir=HEST --workdir=W

HEST-Benchmark's folds: --config.data.split.fold=k holds out the k-th patient (samples grouped by
dataset_title and patient from the metadata). UNI weights are read from
weights/uni (README, "Pretrained backbones").
"""

from sigmma_jax import config_base


def get_config(arg=None):
    return config_base.hest_config(("TENX118", "TENX141"), arg)
