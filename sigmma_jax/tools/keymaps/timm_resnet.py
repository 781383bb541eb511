"""timm's / torchvision's ResNet state dict -> `sigmma_jax.models.resnet.ResNet`."""

from __future__ import annotations

from typing import Any

from sigmma_jax.tools.keymaps.common import CONV, IDENTITY, KeyMap


def key_map(cfg: dict[str, Any]) -> KeyMap:
    m: KeyMap = {}

    def bn(t, f):
        for tn, fn in (
            ("weight", "scale"),
            ("bias", "bias"),
            ("running_mean", "mean"),
            ("running_var", "var"),
        ):
            m[f"{t}.{tn}"] = ((*f, fn), IDENTITY)

    m["conv1.weight"] = (("conv1", "kernel"), CONV)
    bn("bn1", ("bn1",))
    for s, n in enumerate(cfg["layers"]):
        for j in range(n):
            t, f = f"layer{s + 1}.{j}", f"layer{s + 1}_{j}"
            for k in (1, 2, 3):
                m[f"{t}.conv{k}.weight"] = ((f, f"conv{k}", "kernel"), CONV)
                bn(f"{t}.bn{k}", (f, f"bn{k}"))
            if j == 0:
                m[f"{t}.downsample.0.weight"] = ((f, "downsample_0", "kernel"), CONV)
                bn(f"{t}.downsample.1", (f, "downsample_1"))
    return m
