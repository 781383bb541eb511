"""The embedded default: a synthetic Xenium-like slide, generated into the workdir if absent, and a
small model that trains and evaluates in minutes on two CPU cores."""

from sigmma_jax import config_base


def get_config(arg=None):
    del arg  # already the demo
    c = config_base.apply_demo(config_base.base_config())
    c.data.source = "synthetic"
    return c
