"""timm's VisionTransformer state dict -> `sigmma_jax.models.vit.VisionTransformer`."""

from __future__ import annotations

from typing import Any

from sigmma_jax.tools.keymaps.common import CONV, IDENTITY, KeyMap, linear, norm


def key_map(cfg: dict[str, Any]) -> KeyMap:
    m: KeyMap = {
        "patch_embed.proj.weight": (("patch_embed", "kernel"), CONV),
        "patch_embed.proj.bias": (("patch_embed", "bias"), IDENTITY),
        "cls_token": (("cls_token",), IDENTITY),
        "pos_embed": (("pos_embed",), IDENTITY),
    }
    norm(m, "norm", ("norm",))
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
