"""timm's Swin Transformer with CTransPath's ConvStem -> `sigmma_jax.models.swin.SwinTransformer`.

`key_map` reads timm 1.0's names. `adapt` also takes the published CTransPath checkpoint
(`ctranspath.pth`, github.com/Xiyue-Wang/TransPath; `sigmma_jax.tools.convert` unwraps its
{"model": state_dict}), saved from TransPath's vendored timm 0.5.4 (`timm_ctp`), whose layout
differs in two ways, both as timm 1.0's own `checkpoint_filter_fn` treats them:

- PatchMerging sits at the END of stage i (`layers.{i}.downsample.*`, stages 0..n-2) where timm 1.0
  puts it at the START of stage i + 1 (`layers.{i+1}.downsample.*`): renamed.
- `relative_position_index` (every block) and `attn_mask` (every shifted block) are saved buffers;
  both follow from the window size and the grid, and the model recomputes them: dropped.

The converter's errors name keys after this renaming (a missing `layers.1.downsample.*` of an old
checkpoint is its `layers.0.downsample.*`). A checkpoint saved with a classifier (`head.*`,
`head.fc.*`) is refused as unused keys; CTransPath's has none (TransPath loads it strictly into a
model whose head is `nn.Identity`), else pass `--ignore='^head\\.'`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from sigmma_jax.tools.keymaps.common import CONV, IDENTITY, KeyMap, linear, norm

# Saved by timm 0.5.4 (persistent buffers), recomputed by the model; never parameters.
BUFFERS = re.compile(r"\.(relative_position_index|attn_mask)$")
OLD_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def _bn(m: KeyMap, torch_name: str, flax_path: tuple[str, ...]) -> None:
    for t, f in (
        ("weight", "scale"),
        ("bias", "bias"),
        ("running_mean", "mean"),
        ("running_var", "var"),
    ):
        m[f"{torch_name}.{t}"] = ((*flax_path, f), IDENTITY)


def key_map(cfg: dict[str, Any]) -> KeyMap:
    m: KeyMap = {}
    stem = ("patch_embed",)
    m["patch_embed.proj.0.weight"] = ((*stem, "proj_0", "kernel"), CONV)
    _bn(m, "patch_embed.proj.1", (*stem, "proj_1"))
    m["patch_embed.proj.3.weight"] = ((*stem, "proj_3", "kernel"), CONV)
    _bn(m, "patch_embed.proj.4", (*stem, "proj_4"))
    m["patch_embed.proj.6.weight"] = ((*stem, "proj_6", "kernel"), CONV)
    m["patch_embed.proj.6.bias"] = ((*stem, "proj_6", "bias"), IDENTITY)
    norm(m, "patch_embed.norm", (*stem, "norm"))
    k = 0
    for i, n in enumerate(cfg["depths"]):
        for j in range(n):
            t, f = f"layers.{i}.blocks.{j}", f"blocks_{k}"
            if i and j == 0:  # the stage's PatchMerging lives in its first block (models.swin)
                norm(m, f"layers.{i}.downsample.norm", (f, "downsample", "norm"))
                linear(m, f"layers.{i}.downsample.reduction", (f, "downsample", "reduction"), False)
            norm(m, f"{t}.norm1", (f, "norm1"))
            m[f"{t}.attn.relative_position_bias_table"] = (
                (f, "attn", "relative_position_bias_table"),
                IDENTITY,
            )
            linear(m, f"{t}.attn.qkv", (f, "attn", "qkv"))
            linear(m, f"{t}.attn.proj", (f, "attn", "proj"))
            norm(m, f"{t}.norm2", (f, "norm2"))
            linear(m, f"{t}.mlp.fc1", (f, "fc1"))
            linear(m, f"{t}.mlp.fc2", (f, "fc2"))
            k += 1
    norm(m, "norm", ("norm",))
    return m


def is_old_layout(sd: dict[str, np.ndarray]) -> bool:
    """timm 0.5.4's layout: stage 0 has a PatchMerging (timm 1.0's never has), the test timm 1.0's
    `checkpoint_filter_fn` uses."""
    return any(k.startswith("layers.0.downsample.") for k in sd)


def adapt(sd: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    """timm 0.5.4's (CTransPath's) names -> timm 1.0's; the saved buffers dropped."""
    old = is_old_layout(sd)
    out = {}
    for k, v in sd.items():
        if BUFFERS.search(k):
            continue
        if old:
            k = OLD_DOWNSAMPLE.sub(lambda g: f"layers.{int(g.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out
