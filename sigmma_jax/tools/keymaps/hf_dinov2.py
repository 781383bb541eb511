"""Hugging Face DINOv2 (with registers) -> timm's ViT names: Hibou's published checkpoints.

Hibou's `model.safetensors` is a `transformers` Dinov2 with register tokens (its remote code), named
`embeddings.*`, `encoder.layer.{i}.*`, `layernorm.*`. Both namings are read: the published one
(`attention.attention.{query,key,value}`, `attention.output.dense`, `mlp.fc1/fc2` or the packed
SwiGLU `mlp.weights_in/weights_out`) and transformers 5's (`attention.{q,k,v,o}_proj`,
`mlp.{gate,up,down}_proj`).

Two rewrites make it timm's layout for `VisionTransformer(no_embed_class=True)`:
- HF adds the position embedding to [class, patches] and inserts the registers after it, so the
  class token's position entry is folded into the class token and `pos_embed` keeps the patches';
- q, k and v are stacked into timm's qkv, and SwiGLU's gate and up projections into the packed
  fc1 (gate first: `silu(first half) * second half`).
`mask_token` (masked-image pretraining only) is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

PREFIXES = ("dinov2.", "model.")  # wrappers around the bare Dinov2Model
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# per-block names (either naming) -> timm's
_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",
    "mlp.weights_out": "mlp.fc2",
    "mlp.down_proj": "mlp.fc2",
}
_QKV = (
    ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
)
_GATE_UP = ("mlp.gate_proj", "mlp.up_proj")


def _strip(keys: Iterable[str]) -> dict[str, str]:
    out = {}
    for k in keys:
        bare = next((k[len(p) :] for p in PREFIXES if k.startswith(p)), k)
        out[bare] = k
    return out


def detect(keys: Iterable[str]) -> bool:
    bare = _strip(keys)
    return (
        "embeddings.cls_token" in bare and "embeddings.patch_embeddings.projection.weight" in bare
    )


def to_timm(sd: dict[str, np.ndarray], cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    if not cfg.get("no_embed_class"):
        raise ValueError(
            "a Hugging Face DINOv2 state dict converts to a ViT with no_embed_class=True "
            f"(the class token's position is folded into it); this preset has {cfg}"
        )
    bare = {k: sd[orig] for k, orig in _strip(sd).items()}
    out: dict[str, np.ndarray] = {}
    pos = bare.pop("embeddings.position_embeddings")
    out["cls_token"] = bare.pop("embeddings.cls_token") + pos[:, :1]
    out["pos_embed"] = pos[:, 1:]
    bare.pop("embeddings.mask_token", None)
    if "embeddings.register_tokens" in bare:
        out["reg_token"] = bare.pop("embeddings.register_tokens")
    for suffix in ("weight", "bias"):
        k = f"embeddings.patch_embeddings.projection.{suffix}"
        if k in bare:
            out[f"patch_embed.proj.{suffix}"] = bare.pop(k)
        if f"layernorm.{suffix}" in bare:
            out[f"norm.{suffix}"] = bare.pop(f"layernorm.{suffix}")
    layers = sorted({int(m.group(1)) for k in bare if (m := _LAYER.match(k))})
    for i in layers:
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for suffix in ("weight", "bias"):
            for names in _QKV:
                parts = [bare.pop(hf + n + "." + suffix, None) for n in names]
                if all(p is not None for p in parts):
                    out[tm + "attn.qkv." + suffix] = np.concatenate(parts, 0)
            gate_up = [bare.pop(hf + n + "." + suffix, None) for n in _GATE_UP]
            if all(p is not None for p in gate_up):
                out[tm + "mlp.fc1." + suffix] = np.concatenate(gate_up, 0)
        for k in [k for k in bare if k.startswith(hf)]:
            name = k[len(hf) :]
            base, _, suffix = name.rpartition(".")
            if name in _BLOCK:  # lambda1 has no suffix
                out[tm + _BLOCK[name]] = bare.pop(k)
            elif base in _BLOCK:
                out[tm + _BLOCK[base] + "." + suffix] = bare.pop(k)
    out.update(bare)  # anything left is reported as unused by the converter, by its own name
    return out
