"""timm's VisionTransformer state dict -> `sigmma_jax.models.vit.VisionTransformer`.

Other published ViT layouts are first renamed to timm's by an adapter (`ADAPTERS`: the first whose
`detect(keys)` holds renames): Hugging Face DINOv2 (Hibou); open_clip's and Hugging Face CLIPModel's
CLIP vision towers (`clip`: CLIP ViT-B/32, PLIP).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sigmma_jax.tools.keymaps import clip, hf_dinov2
from sigmma_jax.tools.keymaps.common import CONV, IDENTITY, KeyMap, linear, norm

# Modules with `detect(keys) -> bool` and `to_timm(sd, cfg) -> sd`.
ADAPTERS = (hf_dinov2, clip)


def adapt(sd: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    for adapter in ADAPTERS:
        if adapter.detect(sd.keys()):
            return adapter.to_timm(sd, cfg)
    return sd


def key_map(cfg: dict[str, Any]) -> KeyMap:
    m: KeyMap = {
        "patch_embed.proj.weight": (("patch_embed", "kernel"), CONV),
        "cls_token": (("cls_token",), IDENTITY),
        "pos_embed": (("pos_embed",), IDENTITY),
    }
    if cfg.get("patch_bias", True):
        m["patch_embed.proj.bias"] = (("patch_embed", "bias"), IDENTITY)
    if cfg.get("pre_norm"):
        norm(m, "norm_pre", ("norm_pre",))
    norm(m, "norm", ("norm",))
    if cfg.get("proj_dim"):  # timm's head (a CLIP tower's projection, bias-free here)
        linear(m, "head", ("proj",), bias=False)
    if cfg.get("reg_tokens", 0):
        m["reg_token"] = (("reg_token",), IDENTITY)
    for i in range(cfg["depth"]):
        t, f = f"blocks.{i}.", f"blocks_{i}"
        norm(m, t + "norm1", (f, "norm1"))
        norm(m, t + "norm2", (f, "norm2"))
        linear(m, t + "attn.qkv", (f, "attn", "qkv"))
        linear(m, t + "attn.proj", (f, "attn", "proj"))
        linear(m, t + "mlp.fc1", (f, "fc1"))
        linear(m, t + "mlp.fc2", (f, "fc2"))
        if cfg.get("init_values"):
            m[t + "ls1.gamma"] = ((f, "ls1", "gamma"), IDENTITY)
            m[t + "ls2.gamma"] = ((f, "ls2", "gamma"), IDENTITY)
    return m
