"""CoCa image towers' published state dicts -> `sigmma_jax.models.coca.CoCaVision`.

Two layouts, told apart by their keys (a `module.` prefix from DDP training is dropped first):
- CONCH's `pytorch_model.bin` (MahmoodLab/conch): `visual.trunk.*` (timm ViT names),
  `visual.attn_pool_contrast.{query, attn.{q,k,v}_proj_weight, attn.in_proj_bias, attn.out_proj.*,
  ln_q.*, ln_k.*}`, `visual.ln_contrast.*`, `visual.proj_contrast` (512 x 512), plus
  `visual.attn_pool_caption.*` / `visual.ln_caption.*` (the captioning pooler), `text.*`,
  `logit_scale`; the decoder (`text_decoder.*`) was withheld from the release.
- open_clip's CoCa (`coca_ViT-L-14`; OmiCLIP's checkpoint): `visual.{conv1.weight,
  class_embedding, positional_embedding, ln_pre.*, transformer.resblocks.{i}.{ln_1, attn.in_proj_*,
  attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, attn_pool.*, ln_post.*, proj}`, `text.*`,
  `text_decoder.*`, `logit_scale`.

`adapt` brings either to one set of names: the trunk in timm's names (so `pos_embed` is resampled
to another `--img_size` like any timm ViT), the pooler as `attn_pool.attn.{q,k,v,out}.{weight,bias}`
(the packed `in_proj_*` split), `ln_post`, `proj`; it drops what the image embedding does not use
(text tower, decoder, logit scale, CONCH's caption pooler). The text tower is converted beside the
image tower by the text converter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sigmma_jax.models.coca import trunk_options
from sigmma_jax.tools.keymaps import timm_vit
from sigmma_jax.tools.keymaps.common import IDENTITY, KeyMap, linear, norm

StateDict = dict[str, np.ndarray]

# Keys outside the image embedding: the text tower, the captioning decoder, the
# contrastive temperature (and bias), CONCH's captioning pooler.
_DROPPED = ("text.", "text_decoder.", "logit_scale", "logit_bias")
_CONCH_CAPTION = ("visual.attn_pool_caption.", "visual.ln_caption.")

# open_clip ViT block names -> timm's
_OPEN_CLIP_BLOCK = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.out_proj": "attn.proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def key_map(cfg: dict[str, Any]) -> KeyMap:
    opts = trunk_options(cfg.get("layout", "timm"))
    trunk = dict(depth=cfg["depth"], pre_norm=opts["pre_norm"], patch_bias=opts["patch_bias"])
    m: KeyMap = {k: (("trunk", *path), fn) for k, (path, fn) in timm_vit.key_map(trunk).items()}
    m["attn_pool.query"] = (("attn_pool", "query"), IDENTITY)
    norm(m, "attn_pool.ln_q", ("attn_pool", "ln_q"))
    if cfg.get("layout", "timm") == "timm":  # open_clip's ln_k is the trunk's `norm` (coca.py)
        norm(m, "attn_pool.ln_k", ("attn_pool", "ln_k"))
    for p in ("q", "k", "v", "out"):
        linear(m, f"attn_pool.attn.{p}", ("attn_pool", p))
    norm(m, "ln_post", ("ln_post",))
    if cfg.get("proj_contrast", True):  # `x @ proj`: the (in, out) matrix is the Dense kernel
        m["proj"] = (("proj", "kernel"), IDENTITY)
    return m


def _fail(msg: str) -> ValueError:
    from sigmma_jax.tools.convert import ConversionError  # pylint: disable=import-outside-toplevel

    return ConversionError(msg)


def layout_of(sd: StateDict) -> str:
    """The layout's name: "timm" (CONCH) or "open_clip" (open_clip's CoCa); else ConversionError."""
    if any(k.startswith("visual.trunk.") for k in sd):
        return "timm"
    if "visual.conv1.weight" in sd and any(k.startswith("visual.attn_pool.") for k in sd):
        return "open_clip"
    raise _fail(
        "not a CoCa state dict (neither CONCH's visual.trunk.* nor open_clip's visual.conv1 + "
        f"visual.attn_pool.*); first keys: {sorted(sd)[:5]}"
    )


def _split_mha(sd: StateDict, src: str, dst: str) -> StateDict:
    """torch nn.MultiheadAttention at `src` -> `dst.{q,k,v,out}.{weight,bias}`."""
    out = {}
    if src + ".in_proj_weight" in sd:  # kdim == vdim == embed_dim: one packed (3d, d) weight
        for p, w in zip("qkv", np.split(sd[src + ".in_proj_weight"], 3, axis=0)):
            out[f"{dst}.{p}.weight"] = w
    else:
        for p in "qkv":
            out[f"{dst}.{p}.weight"] = sd[f"{src}.{p}_proj_weight"]
    for p, b in zip("qkv", np.split(sd[src + ".in_proj_bias"], 3)):
        out[f"{dst}.{p}.bias"] = b
    out[f"{dst}.out.weight"] = sd[src + ".out_proj.weight"]
    out[f"{dst}.out.bias"] = sd[src + ".out_proj.bias"]
    return out


def _pooler(sd: StateDict, src: str, with_ln_k: bool) -> StateDict:
    out = {"attn_pool.query": sd[src + ".query"]}
    out.update(_split_mha(sd, src + ".attn", "attn_pool.attn"))
    lns = ("ln_q", "ln_k") if with_ln_k else ("ln_q",)
    for ln in lns:
        for p in ("weight", "bias"):
            out[f"attn_pool.{ln}.{p}"] = sd[f"{src}.{ln}.{p}"]
    return out


def _conch(sd: StateDict) -> StateDict:
    pool = "visual.attn_pool_contrast"
    out = {k[len("visual.trunk.") :]: v for k, v in sd.items() if k.startswith("visual.trunk.")}
    out.update(_pooler(sd, pool, with_ln_k=True))
    for p in ("weight", "bias"):
        out[f"ln_post.{p}"] = sd[f"visual.ln_contrast.{p}"]
    out["proj"] = sd["visual.proj_contrast"]
    done = (
        "visual.trunk.",
        pool + ".",
        "visual.ln_contrast.",
        "visual.proj_contrast",
        *_CONCH_CAPTION,
    )
    # anything else stays under its name, so the converter reports it as unused
    out.update({k: v for k, v in sd.items() if not k.startswith(done)})
    return out


def _open_clip(sd: StateDict) -> StateDict:
    v = {k[len("visual.") :]: a for k, a in sd.items() if k.startswith("visual.")}
    width = v["class_embedding"].shape[-1]
    out: StateDict = {
        "patch_embed.proj.weight": v.pop("conv1.weight"),
        "cls_token": v.pop("class_embedding").reshape(1, 1, width),
        "pos_embed": v.pop("positional_embedding").reshape(1, -1, width),
    }
    for p in ("weight", "bias"):
        out[f"norm_pre.{p}"] = v.pop(f"ln_pre.{p}")
        out[f"norm.{p}"] = v.pop(f"attn_pool.ln_k.{p}")  # the trunk's final norm (models/coca.py)
        out[f"ln_post.{p}"] = v.pop(f"ln_post.{p}")
    out.update(_pooler({"visual." + k: a for k, a in v.items()}, "visual.attn_pool", False))
    if "proj" in v:
        out["proj"] = v.pop("proj")
    for k, a in v.items():
        if k.startswith("attn_pool."):
            continue  # read by _pooler
        if not k.startswith("transformer.resblocks."):
            out["visual." + k] = a  # unknown: left for the converter to report
            continue
        i, rest = k[len("transformer.resblocks.") :].split(".", 1)
        if rest.startswith("attn.in_proj_"):  # q, k, v packed in torch's order: timm's qkv as is
            out[f"blocks.{i}.attn.qkv.{rest.rsplit('_', 1)[1]}"] = a
            continue
        name, p = rest.rsplit(".", 1)
        out[f"blocks.{i}.{_OPEN_CLIP_BLOCK.get(name, name)}.{p}"] = a
    return out


def adapt(sd: StateDict, cfg: dict[str, Any]) -> StateDict:
    """The published CONCH / open_clip CoCa layout -> the names `key_map` reads (see above)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    found = layout_of(sd)
    want = cfg.get("layout", "timm")
    if found != want:
        raise _fail(
            f"this is a {found} CoCa layout ({'CONCH' if found == 'timm' else 'open_clip'}), "
            f"but the preset's tower is {want!r}; pick the matching --arch"
        )
    kept = {k: v for k, v in sd.items() if not k.startswith(_DROPPED)}
    try:
        out = _conch(kept) if found == "timm" else _open_clip(kept)
    except KeyError as e:
        raise _fail(f"CoCa ({found}) state dict lacks {e.args[0]}") from None
    if not cfg.get("proj_contrast", True):
        out.pop("proj", None)
    return out
