"""Paper scale: UNI (ViT-L/16 at 224 px, weights converted into weights/uni) through 21 crops per
tile, fine-tuned.

Data come from your own slide in the generic format unless overridden; see generic.py and the HEST
configs (luad.py, ...). `--config=configs/default.py:demo` swaps in the demo's model and schedule.
"""

from sigmma_jax import config_base


def get_config(arg=None):
    return config_base.sigmma_config("generic", arg)  # ":demo", ":legacy"
