"""Model families by name: `config.model.family` picks one (`get`). A family is the contract of
`sigmma_jax.families.base.Family`: its records and batching, its model, its loss, what inference
keeps, what a run leaves. SIGMMA is "sigmma", ST-Align "st_align"."""

from __future__ import annotations

import importlib

import ml_collections

from sigmma_jax.families.base import Family

# name -> the module defining FAMILY (imported on first use: a family pulls in its models)
FAMILIES = {"sigmma": "sigmma_jax.families.sigmma", "st_align": "sigmma_jax.families.st_align"}
DEFAULT = "sigmma"  # configs written before families existed are SIGMMA's


def name_of(config: ml_collections.ConfigDict) -> str:
    model = config.get("model") or {}
    return model.get("family", DEFAULT) if hasattr(model, "get") else DEFAULT


def get(config: ml_collections.ConfigDict | str) -> Family:
    """The family of a run config (or of a name)."""
    name = config if isinstance(config, str) else name_of(config)
    if name not in FAMILIES:
        raise ValueError(f"unknown model.family {name!r}; expected one of {sorted(FAMILIES)}")
    return importlib.import_module(FAMILIES[name]).FAMILY
