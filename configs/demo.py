"""The embedded default: a synthetic Xenium-like slide, generated into the workdir if absent, and a
small model that trains and evaluates in minutes on two CPU cores. `:legacy` measures as before
2026-12-03 (config_base.LEGACY)."""

from sigmma_jax import config_base


def get_config(arg=None):
    return config_base.sigmma_config("synthetic", f"demo,{arg or ''}")  # always the demo
