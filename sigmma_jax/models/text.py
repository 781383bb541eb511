"""open_clip's text tower (`open_clip.transformer.TextTransformer`, the CLIP / PLIP / CoCa text
encoder) in Flax, and its converted weights on disk.

    from sigmma_jax.models import text
    model, params, tokenizer = text.load("weights/plip")          # made by sigmma_jax.convert
    emb = model.apply({"params": params}, tokenizer(["EPCAM KRT8 CD3E"]))   # (1, 512), un-normalised

The tower: token embedding + learned positions, `depth` causal pre-norm blocks (`vit.Block` with
`causal=True`: QuickGELU and LayerNorm epsilon 1e-5 for OpenAI CLIP), a final LayerNorm, pooling and
a bias-free projection. Pooling:
- "argmax" (CLIP): the EOT token's feature, EOT being the highest id of each sequence (what open_clip's
  `encode_text` and Hugging Face CLIPModel with the legacy `eos_token_id == 2` do);
- `embed_cls=True` (CoCa's text tower): a learned cls embedding appended after the tokens, pooled at
  the last position, LayerNorm applied to that feature only, and open_clip's pad mask over the keys
  (`pad_id`; `correct_cls_mask=False` is open_clip's legacy mask, which existing CoCa weights use and
  which lets the cls row see the first pad position).

Parameter tree: `token_embedding/embedding`, `positional_embedding`, `cls_emb` (embed_cls),
`blocks_{i}/{norm1, attn/qkv, attn/proj, norm2, fc1, fc2}`, `ln_final`, `text_projection/kernel`.
`sigmma_jax.tools.keymaps.clip` maps open_clip's and Hugging Face's names onto it.

On disk (`save` / `load`): <dir>/text/params (Orbax), <dir>/text/text.json (arch, config, tokenizer
files, source) and the tokenizer's vocabulary files, beside the image tower's backbone.json.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigmma_jax import atomic
from sigmma_jax.models import backbones
from sigmma_jax.models.clip_tokenizer import ClipTokenizer
from sigmma_jax.models.vit import Block

POOLS = ("argmax", "last", "first")
_CLIP_TEXT = dict(
    vocab_size=49408,
    context_length=77,
    width=512,
    depth=12,
    num_heads=8,
    mlp_ratio=4.0,
    proj_dim=512,
    mlp="quick_gelu",
    ln_eps=1e-5,
)
# The text tower of each image arch that has one (TextTransformer kwargs). An arch listed here gets its
# text tower converted by `sigmma_jax.convert` beside the image tower. open_clip's coca_ViT-L-14 would be
# dict(vocab_size=49408, context_length=76, width=768, depth=12, num_heads=12, proj_dim=768,
# mlp="gelu", embed_cls=True, pad_id=0): its text_cfg, built without quick_gelu.
ARCHS: dict[str, dict[str, Any]] = {
    "clip-vit-b-32": dict(_CLIP_TEXT),  # open_clip ViT-B-32 (quick_gelu for OpenAI's weights)
    "plip": dict(_CLIP_TEXT),  # vinid/plip: a Hugging Face CLIPModel, OpenAI's ViT-B/32 shape
    # open_clip's coca_ViT-L-14 text_cfg (OmiCLIP / Loki): nn.GELU, 76 tokens + the cls position.
    "coca-vit-l-14": dict(
        vocab_size=49408,
        context_length=76,
        width=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        proj_dim=768,
        mlp="gelu",
        embed_cls=True,
        pad_id=0,
    ),
}

TEXT_DIR = "text"  # the text tower's folder inside a converted directory
META = "text.json"


def config(arch: str, **overrides) -> dict[str, Any]:
    """The text tower's constructor arguments of `arch` with `overrides` applied."""
    if arch not in ARCHS:
        raise ValueError(f"{arch!r} has no text tower; known: {sorted(ARCHS)}")
    return {**ARCHS[arch], **overrides}


def _key_mask(tokens: jax.Array, pad_id: int, correct: bool) -> jax.Array:
    """open_clip 3.3's `_build_additive_mask` for a text with an appended cls: (B, 1, 1, L + 1) keys
    kept. Legacy (`correct=False`): the always-kept entry is put first, so key j + 1 follows token j's
    padding (what CoCa weights were trained with)."""
    valid = tokens != pad_id
    ones = jnp.ones((tokens.shape[0], 1), bool)
    valid = jnp.concatenate([valid, ones] if correct else [ones, valid], axis=1)
    return valid[:, None, None, :]


class TextTransformer(nn.Module):
    vocab_size: int = 49408
    context_length: int = 77  # token positions; embed_cls adds one for the cls
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    proj_dim: int = 512  # the bias-free text_projection's width; 0: none (returns `width` features)
    mlp: str = "quick_gelu"  # "gelu" (exact) for open_clip towers built without quick_gelu (CoCa)
    ln_eps: float = 1e-5
    init_values: float | None = None  # LayerScale (open_clip's ls_init_value)
    embed_cls: bool = False
    pad_id: int = 0
    correct_cls_mask: bool = False
    pool: str = "argmax"  # ignored with embed_cls (the appended cls, "last")
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    trainable_blocks: int = -1  # -1: all; k >= 0: gradients stop below the last k blocks
    attn_impl: str | None = None

    @property
    def embed_dim(self) -> int:
        return self.proj_dim or self.width

    @nn.compact
    def __call__(self, tokens: jax.Array, return_tokens: bool = False):
        """(B, L) integer ids, L <= context_length (zero-padded, EOT the highest id) -> (B, embed_dim)
        float32, un-normalised. With `return_tokens`, also the token features as open_clip's
        `output_tokens` gives them: embed_cls, the tokens before ln_final; else after it."""
        b, n = tokens.shape
        if n > self.context_length:
            raise ValueError(f"{n} tokens exceed the context length {self.context_length}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        d = self.width
        x = nn.Embed(self.vocab_size, d, dtype=self.dtype, name="token_embedding")(tokens)
        mask = None
        if self.embed_cls:
            cls = self.param("cls_emb", nn.initializers.normal(0.01), (d,))
            x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d))], 1)
            mask = _key_mask(tokens, self.pad_id, self.correct_cls_mask)
        n_pos = self.context_length + int(self.embed_cls)
        pos = self.param("positional_embedding", nn.initializers.normal(0.01), (n_pos, d))
        x = x + pos[: x.shape[1]].astype(x.dtype)  # open_clip slices the positions to the length
        block = Block
        if self.remat:
            block = nn.remat(Block, policy=jax.checkpoint_policies.nothing_saveable)
        first_trainable = 0 if self.trainable_blocks < 0 else self.depth - self.trainable_blocks
        for i in range(self.depth):
            if i == first_trainable and i > 0:
                x = jax.lax.stop_gradient(x)
            x, _ = block(
                self.num_heads,
                self.mlp_ratio,
                self.init_values,
                self.dtype,
                self.mlp,
                attn_impl=self.attn_impl,
                ln_eps=self.ln_eps,
                causal=True,
                name=f"blocks_{i}",
            )(x, mask)
        ln = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="ln_final")
        if self.embed_cls:  # open_clip: the cls is pooled first, then normalised
            pooled, out_tokens = ln(x[:, -1]), x[:, :-1]
        else:
            x = ln(x)
            if self.pool == "argmax":
                pooled = x[jnp.arange(b), jnp.argmax(tokens, axis=-1)]
            else:
                pooled = x[:, -1] if self.pool == "last" else x[:, 0]
            out_tokens = x
        if self.proj_dim:
            pooled = nn.Dense(
                self.proj_dim, use_bias=False, dtype=self.dtype, name="text_projection"
            )(pooled)
        pooled = pooled.astype(jnp.float32)
        if self.trainable_blocks == 0:
            pooled = jax.lax.stop_gradient(pooled)
        return (pooled, out_tokens) if return_tokens else pooled


def build(cfg: str | dict[str, Any], **overrides) -> TextTransformer:
    """The module of an arch name (`ARCHS`) or a config dict; `overrides` may hold build options
    (dtype, remat, trainable_blocks, attn_impl) as well as shape fields."""
    cfg = config(cfg, **overrides) if isinstance(cfg, str) else {**cfg, **overrides}
    if "dtype" in cfg:
        cfg["dtype"] = jnp.dtype(cfg["dtype"])
    return TextTransformer(**cfg)


def abstract_params(model: TextTransformer):
    tokens = jax.ShapeDtypeStruct((1, model.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]


def init_params(model: TextTransformer, seed: int = 0):
    tokens = jnp.zeros((1, model.context_length), jnp.int32)
    return jax.jit(model.init)(jax.random.PRNGKey(seed), tokens)["params"]


# ---------------------------------------------------------------------------------------------------
# Converted weights on disk: <dir>/text/{text.json, params/, vocabulary files}.


def _text_dir(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if (path / META).exists() else path / TEXT_DIR


def save(
    dst: str | pathlib.Path,
    arch: str,
    cfg: dict[str, Any],
    params,
    meta: dict,
    vocab: Sequence[str | pathlib.Path],
) -> pathlib.Path:
    """Writes the text tower of converted directory `dst` (Orbax params, the vocabulary files
    copied, then text.json last: its presence says the text tower is complete); returns its folder."""
    d = backbones.save_params(pathlib.Path(dst) / TEXT_DIR, params)
    names = []
    for f in map(pathlib.Path, vocab):
        shutil.copyfile(f, d / f.name)
        names.append(f.name)
    tokenizer = dict(files=names, context_length=int(cfg["context_length"]))
    atomic.write_json(d / META, dict(arch=arch, config=cfg, tokenizer=tokenizer, **meta), indent=2)
    return d


def read_meta(path: str | pathlib.Path) -> dict:
    d = _text_dir(path)
    if not (d / META).exists():
        raise FileNotFoundError(
            f"{path} has no text tower ({TEXT_DIR}/{META}); convert a CLIP-style checkpoint "
            "with `python -m sigmma_jax.convert --arch=clip-vit-b-32|plip --src=... --dst=...`"
        )
    return json.loads((d / META).read_text())


def load(
    path: str | pathlib.Path, *, like=None, **build_kwargs
) -> tuple[TextTransformer, Any, ClipTokenizer]:
    """(model, params, tokenizer) of a directory written by `sigmma_jax.convert` (the converted
    directory or its text/ folder). `build_kwargs`: dtype, remat, trainable_blocks, attn_impl. `like`
    gives the restored arrays their shardings, as in `backbones.load`."""
    d = _text_dir(path)
    meta = read_meta(d)
    model = build(meta["config"], **build_kwargs)
    params = backbones._restore(d, abstract_params(model) if like is None else like)  # pylint: disable=protected-access
    files = [d / f for f in meta["tokenizer"]["files"]]
    tokenizer = ClipTokenizer.from_files(
        files[0], context_length=meta["tokenizer"]["context_length"]
    )
    return model, params, tokenizer


def tokenizer(path: str | pathlib.Path) -> ClipTokenizer:
    """The tokenizer saved with a converted text tower (the converted directory or its text/ folder),
    at the tower's context length; reads no weights."""
    d = _text_dir(path)
    spec = read_meta(d)["tokenizer"]
    return ClipTokenizer.from_files(d / spec["files"][0], context_length=spec["context_length"])
