"""CLIP checkpoints -> the Flax image tower (`vit.VisionTransformer`, through timm's names) and text
tower (`sigmma_jax.models.text.TextTransformer`).

Layouts, told apart by their keys (a `module.` prefix left by DDP training is dropped first):
- open_clip's CLIP (`open_clip_pytorch_model.bin` of `timm/vit_base_patch32_clip_224.openai`, what
  `open_clip.create_model('ViT-B-32', pretrained='openai')` loads): `visual.{class_embedding,
  positional_embedding, conv1.weight, ln_pre, transformer.resblocks.{i}.{ln_1, attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_post, proj}` and the text tower
  at the top level: `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.*`,
  `ln_final`, `text_projection`, with `logit_scale`.
- open_clip's custom-text models (CoCa, CONCH): the same text names under `text.` (+ `text.cls_emb`).
- Hugging Face CLIPModel (`openai/clip-vit-base-patch32`, `vinid/plip`): `vision_model.{embeddings.
  {class_embedding, patch_embedding.weight, position_embedding.weight}, pre_layrnorm, encoder.layers.
  {i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}, post_layernorm}`,
  `visual_projection.weight`, `text_model.{embeddings.{token_embedding, position_embedding},
  encoder.layers.*, final_layer_norm}`, `text_projection.weight`, `logit_scale`; older files also hold
  the `position_ids` buffers (int64), which are dropped.

Image side: `detect` / `to_timm` (an adapter of `timm_vit`) rename the open_clip or Hugging Face
vision tower to timm's ViT names (q/k/v stacked into qkv, the projection as timm's `head`) and drop
everything else; unknown vision keys keep their names, so the converter reports them. Text side:
`convert_text` maps the text tower onto the Flax tree and writes it beside the image tower with the
tokenizer's vocabulary (`text.save`); `check_layout` refuses, in one line, a state dict that is none
of these layouts before anything is converted.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from sigmma_jax.models import clip_tokenizer, text
from sigmma_jax.tools.keymaps.common import IDENTITY, LINEAR, KeyMap, linear, norm

StateDict = dict[str, np.ndarray]
OPEN_CLIP, OPEN_CLIP_CUSTOM, HF = "open_clip", "open_clip_custom", "hf"
# Neither tower: the contrastive temperature (and SigLIP's bias); buffers without weights.
_EXTRA = re.compile(
    r"^(logit_scale|logit_bias|attn_mask|(text_model|vision_model)\.embeddings\.position_ids)$"
)
# Image keys of each layout (prefixes): what the text side leaves alone.
_IMAGE_PREFIXES = ("visual.", "vision_model.", "visual_projection.")
# The text tower of each layout: a key that must be there.
_TEXT_PROBE = {
    OPEN_CLIP: "token_embedding.weight",
    OPEN_CLIP_CUSTOM: "text.token_embedding.weight",
    HF: "text_model.embeddings.token_embedding.weight",
}
_OPEN_CLIP_BLOCK = {  # open_clip ResidualAttentionBlock -> timm Block
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.in_proj": "attn.qkv",
    "attn.out_proj": "attn.proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ls_1": "ls1",
    "ls_2": "ls2",
}
_HF_BLOCK = {  # Hugging Face CLIPEncoderLayer -> open_clip ResidualAttentionBlock
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def _unwrap(sd: StateDict) -> StateDict:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _bare(keys: Iterable[str]) -> set[str]:
    return {k.removeprefix("module.") for k in keys}


def image_layout(keys: Iterable[str]) -> str | None:
    keys = _bare(keys)
    if {"visual.conv1.weight", "visual.class_embedding"} <= keys:
        return OPEN_CLIP
    if "vision_model.embeddings.patch_embedding.weight" in keys:
        return HF
    return None


def text_layout(keys: Iterable[str]) -> str | None:
    keys = _bare(keys)
    return next((name for name, probe in _TEXT_PROBE.items() if probe in keys), None)


def _fail(msg: str):
    from sigmma_jax.tools.convert import ConversionError  # pylint: disable=import-outside-toplevel

    return ConversionError(msg)


def check_layout(sd: StateDict, src: str | pathlib.Path) -> str:
    """The text layout of a CLIP-style checkpoint, or one ConversionError line saying what it is not."""
    if text_layout(sd) is None or not any(k.startswith(_IMAGE_PREFIXES) for k in _bare(sd)):
        raise _fail(
            f"{src}: not a CLIP checkpoint in a known layout (open_clip: visual.* with "
            "token_embedding.weight / transformer.resblocks.* or text.*; Hugging Face CLIPModel: "
            f"vision_model.* with text_model.*); its first keys: {sorted(sd)[:4]}"
        )
    return text_layout(sd)


# ---------------------------------------------------------------------------------------------------
# Image tower: an adapter of `timm_vit` (detect / to_timm).


def detect(keys: Iterable[str]) -> bool:
    return image_layout(keys) is not None


def _rename_block(rest: str, table: dict[str, str]) -> str | None:
    base, _, suffix = rest.rpartition(".")
    if base in table:
        return f"{table[base]}.{suffix}"
    if rest.startswith("attn.in_proj_"):  # nn.MultiheadAttention's packed in_proj_{weight,bias}
        return f"{table['attn.in_proj']}.{rest[len('attn.in_proj_') :]}"
    return None


def _open_clip_visual(sd: StateDict) -> StateDict:
    out: StateDict = {}
    for k, v in sd.items():
        if not k.startswith("visual."):
            continue
        name = k[len("visual.") :]
        m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", name)
        new = None
        if m:
            tail = _rename_block(m.group(2), _OPEN_CLIP_BLOCK)
            new = f"blocks.{m.group(1)}.{tail}" if tail else None
        elif name == "class_embedding":
            new, v = "cls_token", v.reshape(1, 1, -1)
        elif name == "positional_embedding":
            new, v = "pos_embed", v[None]
        elif name == "conv1.weight":
            new = "patch_embed.proj.weight"
        elif name == "proj":  # `x @ proj` -> timm's head, an nn.Linear (out, in)
            new, v = "head.weight", v.T
        elif name.startswith(("ln_pre.", "ln_post.")):
            new = ("norm_pre." if name.startswith("ln_pre.") else "norm.") + name.split(".", 1)[1]
        out[new or k] = v  # an unknown visual key keeps its name: the converter reports it
    return out


def _hf_blocks(sd: StateDict, prefix: str, block_prefix: str, table: dict[str, str]) -> StateDict:
    """Hugging Face encoder layers under `prefix` -> `block_prefix{i}.` + `table`'s names, q/k/v
    stacked (torch (out, in) rows q, k, v: the packed in_proj / qkv layout)."""
    out: StateDict = {}
    layer = re.compile(re.escape(prefix) + r"(\d+)\.(.+)$")
    done = set()
    for k in sd:
        m = layer.match(k)
        if not m:
            continue
        i, rest = m.groups()
        base, _, suffix = rest.rpartition(".")
        if base in _QKV:
            if (i, suffix) in done:
                continue
            parts = [sd.get(f"{prefix}{i}.{p}.{suffix}") for p in _QKV]
            if any(p is None for p in parts):
                out[k] = sd[k]  # an incomplete q/k/v: reported by its own name
                continue
            out[f"{block_prefix}{i}.{table['qkv']}.{suffix}"] = np.concatenate(parts, 0)
            done.add((i, suffix))
        elif base in table:
            out[f"{block_prefix}{i}.{table[base]}.{suffix}"] = sd[k]
        else:
            out[k] = sd[k]
    return out


def _hf_visual(sd: StateDict) -> StateDict:
    out: StateDict = {}
    e = "vision_model.embeddings."
    timm_block = {**{h: _OPEN_CLIP_BLOCK[o] for h, o in _HF_BLOCK.items()}, "qkv": "attn.qkv"}
    for k, v in sd.items():
        if k.startswith("vision_model.encoder.layers."):
            continue
        if k == e + "class_embedding":
            out["cls_token"] = v.reshape(1, 1, -1)
        elif k == e + "position_embedding.weight":
            out["pos_embed"] = v[None]
        elif k == e + "patch_embedding.weight":
            out["patch_embed.proj.weight"] = v
        elif k == "visual_projection.weight":
            out["head.weight"] = v
        elif k.startswith(("vision_model.pre_layrnorm.", "vision_model.pre_layernorm.")):
            out["norm_pre." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("vision_model.post_layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("vision_model.") and not _EXTRA.match(k):
            out[k] = v
    out.update(_hf_blocks(sd, "vision_model.encoder.layers.", "blocks.", timm_block))
    return out


def to_timm(sd: StateDict, cfg: dict[str, Any]) -> StateDict:
    """The vision tower of an open_clip or Hugging Face CLIP state dict in timm's ViT names."""
    del cfg
    sd = _unwrap(sd)
    return _open_clip_visual(sd) if image_layout(sd) == OPEN_CLIP else _hf_visual(sd)


# ---------------------------------------------------------------------------------------------------
# Text tower: open_clip's TextTransformer names (prefix stripped) -> Flax paths.


def text_key_map(cfg: dict[str, Any]) -> KeyMap:
    """open_clip TextTransformer name -> (Flax path of `TextTransformer(**cfg)`, transform)."""
    m: KeyMap = {
        "token_embedding.weight": (("token_embedding", "embedding"), IDENTITY),
        "positional_embedding": (("positional_embedding",), IDENTITY),
    }
    if cfg.get("embed_cls"):
        m["cls_emb"] = (("cls_emb",), IDENTITY)
    norm(m, "ln_final", ("ln_final",))
    if cfg.get("proj_dim", 512):
        m["text_projection"] = (("text_projection", "kernel"), IDENTITY)  # `x @ proj`: (in, out)
    for i in range(cfg["depth"]):
        t, f = f"transformer.resblocks.{i}.", f"blocks_{i}"
        norm(m, t + "ln_1", (f, "norm1"))
        norm(m, t + "ln_2", (f, "norm2"))
        m[t + "attn.in_proj_weight"] = ((f, "attn", "qkv", "kernel"), LINEAR)
        m[t + "attn.in_proj_bias"] = ((f, "attn", "qkv", "bias"), IDENTITY)
        linear(m, t + "attn.out_proj", (f, "attn", "proj"))
        linear(m, t + "mlp.c_fc", (f, "fc1"))
        linear(m, t + "mlp.c_proj", (f, "fc2"))
        if cfg.get("init_values"):
            m[t + "ls_1.gamma"] = ((f, "ls1", "gamma"), IDENTITY)
            m[t + "ls_2.gamma"] = ((f, "ls2", "gamma"), IDENTITY)
    return m


def text_state_dict(sd: StateDict, layout: str) -> tuple[StateDict, list[str]]:
    """(the text tower in open_clip TextTransformer names, keys of neither tower nor known extras)."""
    sd = _unwrap(sd)
    image = lambda k: k.startswith(_IMAGE_PREFIXES)
    if layout == OPEN_CLIP_CUSTOM:
        tower = {k[len("text.") :]: v for k, v in sd.items() if k.startswith("text.")}
        # CoCa's decoder and CONCH's caption parts are not the text tower.
        other = [
            k
            for k in sd
            if not (k.startswith(("text.", "text_decoder.")) or image(k) or _EXTRA.match(k))
        ]
        return tower, other
    if layout == OPEN_CLIP:
        tower = {k: v for k, v in sd.items() if not (image(k) or _EXTRA.match(k))}
        return tower, []  # what is left over is reported as unused text keys
    tower: StateDict = {}
    e = "text_model.embeddings."
    for k, v in sd.items():
        if k == e + "token_embedding.weight":
            tower["token_embedding.weight"] = v
        elif k == e + "position_embedding.weight":
            tower["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            tower["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            tower["text_projection"] = v.T
        elif k.startswith("text_model.") and not k.startswith("text_model.encoder.layers."):
            if not _EXTRA.match(k):
                tower[k] = v
        elif not (image(k) or _EXTRA.match(k) or k.startswith("text_model.")):
            tower[k] = v
    table = {**_HF_BLOCK, "qkv": "attn.in_proj"}
    blocks = _hf_blocks(sd, "text_model.encoder.layers.", "transformer.resblocks.", table)
    for k, v in blocks.items():  # the packed in_proj is open_clip's in_proj_weight / in_proj_bias
        tower[re.sub(r"\.attn\.in_proj\.(weight|bias)$", r".attn.in_proj_\1", k)] = v
    return tower, []


def _text_params(tower: StateDict, cfg: dict[str, Any], other: list[str]) -> dict:
    from flax import traverse_util  # pylint: disable=import-outside-toplevel

    model = text.build(cfg)
    expected = {
        k: tuple(v.shape)
        for k, v in traverse_util.flatten_dict(text.abstract_params(model)).items()
    }
    kmap = text_key_map(cfg)
    if {p for p, _ in kmap.values()} != set(expected):
        raise AssertionError(
            f"text key map out of date: {sorted({p for p, _ in kmap.values()} ^ set(expected))}"
        )
    problems = [f"missing key {k}" for k in kmap if k not in tower]
    problems += [f"unused key {k}" for k in sorted(set(tower) - set(kmap)) + other]
    flat = {}
    for k, (path, fn) in kmap.items():
        if k not in tower:
            continue
        a = np.asarray(tower[k])
        if a.ndim != len(expected[path]) or fn(a).shape != expected[path]:
            problems.append(f"wrong shape {k}: {tuple(a.shape)} for the model's {expected[path]}")
            continue
        flat[path] = np.ascontiguousarray(fn(a), dtype=np.float32)
    if problems:
        raise _fail(
            f"text tower does not match its config ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems)
        )
    return traverse_util.unflatten_dict(flat)


def _vocab(src: pathlib.Path) -> tuple[list[pathlib.Path], str]:
    """The tokenizer vocabulary to copy: files next to the checkpoint, else open_clip's shipped one
    (the same 49,408-token BPE as OpenAI's and every Hugging Face CLIP repository's)."""
    found = clip_tokenizer.vocab_files(src.parent)
    if found:
        return list(found), "beside the checkpoint"
    shipped = clip_tokenizer.open_clip_vocab()
    if shipped is None:
        raise _fail(
            f"{src.parent}: no tokenizer vocabulary ({clip_tokenizer.HF_VOCAB} + "
            f"{clip_tokenizer.HF_MERGES}, {clip_tokenizer.HF_TOKENIZER} or {clip_tokenizer.BPE_GZ}) "
            "and open_clip_torch is not installed to supply its copy"
        )
    return [shipped], "open_clip's bpe_simple_vocab_16e6.txt.gz"


def convert_text(
    arch: str, sd: StateDict, src: str | pathlib.Path, dst: str | pathlib.Path, **overrides
) -> dict[str, Any]:
    """Converts the text tower of `sd` (read from `src`) for `text.ARCHS[arch]` with `overrides`,
    writes it to `dst`/text with its vocabulary; returns a summary for the image tower's metadata."""
    src = pathlib.Path(src)
    layout = check_layout(sd, src)
    cfg = text.config(arch, **overrides)
    tower, other = text_state_dict(sd, layout)
    params = _text_params(tower, cfg, other)
    files, where = _vocab(src)
    clip_tokenizer.ClipTokenizer.from_files(files[0])  # a vocabulary that does not read fails here
    summary = dict(dir=text.TEXT_DIR, layout=layout, tokenizer=[f.name for f in files])
    text.save(dst, arch, cfg, params, dict(layout=layout, vocabulary_from=where), files)
    return summary
