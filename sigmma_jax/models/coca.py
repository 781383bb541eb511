"""CoCa image towers: a ViT trunk, open_clip's attentional pooler, a LayerNorm and a projection.

Two published layouts (see `sigmma_jax.models.backbones` for the presets):
- CONCH (`conch`, MahmoodLab): a timm `VisionTransformer` trunk (ViT-B/16 at 448 px, its final norm,
  `forward_features`), then `attn_pool_contrast` (1 query, 512 wide, 8 heads) -> `ln_contrast` ->
  `@ proj_contrast`. The caption pooler (`attn_pool_caption`, 256 queries) only feeds the text decoder,
  whose weights were not published; it is not part of the image embedding and is left out.
- open_clip's CoCa (`coca-vit-l-14`, OmiCLIP / Loki's architecture): a CLIP-style tower (no patch
  bias, `ln_pre`, LayerNorm eps 1e-5, exact GELU) whose tokens go straight into `attn_pool` (256
  queries); `ln_post` then `@ proj` applied to the first query's output. The 256 queries do not see
  each other (each attends to the image tokens only), so the first one alone gives the same embedding.

open_clip's tower has no LayerNorm between its blocks and the pooler, while `vit.VisionTransformer`
always ends with one (`norm`); the pooler's first step is a LayerNorm of the tokens (`ln_k`, eps
1e-5), so in that layout the trunk's final norm *is* `ln_k` (same eps, same weights) and the pooler
skips its own (`context_norm=False`). That is exact, not an approximation.

The embedding is what `encode_image(normalize=False)` returns (CONCH: `proj_contrast=True`), float32
(B, proj_dim). `proj_contrast=False` returns the pooled features after `ln_post`, before the
projection, instead (B, pool_dim): CONCH's README recommends these (`encode_image(proj_contrast=False, normalize=False)`) for
linear probes and multiple-instance learning; the projected ones live in the text tower's space.

Parameter tree: `trunk/...` (a `vit.VisionTransformer`, timm names), `attn_pool/{query, ln_q, ln_k,
q, k, v, out}`, `ln_post`, `proj` (a bias-free Dense whose kernel is the published (in, out) matrix).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigmma_jax.models.vit import VisionTransformer

CLIP_LN_EPS = 1e-5  # torch's nn.LayerNorm default: open_clip's and CONCH's poolers and norms
# OpenAI CLIP's normalisation: CONCH's `create_model` sets it, open_clip's CoCa configs default to it.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Trunk options of each published layout (`vit.VisionTransformer` fields).
LAYOUTS: dict[str, dict[str, Any]] = {
    # CONCH: timm's ViT (patch bias, no pre-norm, LayerNorm eps 1e-6, exact GELU).
    "timm": dict(pre_norm=False, patch_bias=True, ln_eps=1e-6, mlp="gelu"),
    # open_clip's VisionTransformer: conv1 without bias, ln_pre, eps 1e-5; CoCa uses nn.GELU (exact).
    "open_clip": dict(pre_norm=True, patch_bias=False, ln_eps=CLIP_LN_EPS, mlp="gelu"),
}


# CONCH's text tower as `sigmma_jax.models.text.TextTransformer` kwargs (conch_ViT-B-16.json text_cfg,
# nn.GELU, embed_dim 512). CONCH's positional embedding has 128 rows and its cls takes the last one,
# so 127 token positions: CONCH's `tokenize` pads to 127 and appends one pad, which its
# `encode_text` drops again (`text[:, :-1]`); feed the first 127 ids. Its tokenizer is not CLIP's:
# a Hugging Face byte-level BPE (`conch_byte_level_bpe_uncased.json` in github.com/mahmoodlab/CONCH,
# 32007 ids, <pad>=0, <start_of_text>=1, <end_of_text>=2, NFD + accent strip + lower-casing).
CONCH_TEXT: dict[str, Any] = dict(
    vocab_size=32007,
    context_length=127,
    width=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    proj_dim=512,
    mlp="gelu",
    embed_cls=True,
    pad_id=0,
)


def trunk_options(layout: str) -> dict[str, Any]:
    if layout not in LAYOUTS:
        raise ValueError(f"CoCa layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout]


class AttentionalPooler(nn.Module):
    """open_clip's `AttentionalPooler`: learned queries (LayerNorm `ln_q`) attend to the LayerNorm'd
    context (`ln_k`) through `nn.MultiheadAttention(d_model, n_head, kdim=context, vdim=context)`.

    torch keeps separate q/k/v projections when kdim != d_model and one packed `in_proj_weight`
    otherwise; either way they are the Dense layers `q`, `k`, `v` here (the key map splits them).
    `use_queries` computes only the first queries' outputs (each query attends independently).
    """

    d_model: int
    n_head: int = 8
    n_queries: int = 1
    use_queries: int = 0  # 0: all
    context_norm: bool = True  # False: the context arrives normalised (open_clip layout, see above)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, N, context) tokens -> (B, queries, d_model)."""
        d, h = self.d_model, self.n_head
        if d % h:
            raise ValueError(f"pooler width {d} is not divisible by its {h} heads")
        b = x.shape[0]
        if self.context_norm:
            x = nn.LayerNorm(CLIP_LN_EPS, dtype=self.dtype, name="ln_k")(x)
        query = self.param("query", nn.initializers.normal(1.0), (self.n_queries, d))
        if self.use_queries:
            query = query[: self.use_queries]
        q = nn.LayerNorm(CLIP_LN_EPS, dtype=self.dtype, name="ln_q")(query)
        dense = lambda name: nn.Dense(d, dtype=self.dtype, name=name)  # noqa: E731
        q = jnp.broadcast_to(dense("q")(q), (b, *q.shape))
        k, v = dense("k")(x), dense("v")(x)
        split = lambda t: t.reshape(*t.shape[:2], h, d // h)  # noqa: E731
        out = jax.nn.dot_product_attention(split(q), split(k), split(v))
        return dense("out")(out.reshape(*q.shape))


class CoCaVision(nn.Module):
    """A CoCa image tower returning the contrastive image embedding (B, embed_dim), float32.

    Carries `img_size`, `patch_size`, `dtype`, `remat`, `trainable_blocks`, `attn_impl` as
    `vit.VisionTransformer` does (they go to the trunk). `trainable_blocks=0` also stops gradients
    into the pooler and projection (a frozen backbone); `last_k` trains them with the last blocks.
    """

    img_size: int = 448
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mean: Sequence[float] = OPENAI_MEAN
    std: Sequence[float] = OPENAI_STD
    layout: str = "timm"  # "timm" (CONCH) | "open_clip" (open_clip's CoCa); see LAYOUTS
    pool_dim: int = 512  # the contrastive pooler's width (open_clip: embed_dim)
    pool_heads: int = 8
    pool_queries: int = 1  # learned queries of that pooler; the first one is the embedding
    proj_dim: int = 512
    proj_contrast: bool = True  # False: the pooled features before the projection (see above)
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    trainable_blocks: int = -1
    attn_impl: str | None = None

    @property
    def embed_dim(self) -> int:
        return self.proj_dim if self.proj_contrast else self.pool_dim

    @property
    def num_prefix_tokens(self) -> int:
        return 1  # the trunk's class token (for its attention maps)

    @nn.compact
    def __call__(self, images: jax.Array, return_attention: bool = False):
        """(B, H, W, 3) float RGB in [0, 1] -> (B, embed_dim); with `return_attention`, also the
        trunk's last-block attention probabilities (see `vit.VisionTransformer`)."""
        trunk = VisionTransformer(
            img_size=self.img_size,
            patch_size=self.patch_size,
            width=self.width,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            init_values=None,
            mean=self.mean,
            std=self.std,
            dtype=self.dtype,
            remat=self.remat,
            trainable_blocks=self.trainable_blocks,
            attn_impl=self.attn_impl,
            pool="tokens",
            **trunk_options(self.layout),
            name="trunk",
        )
        if return_attention:
            tokens, probs = trunk(images, return_attention=True)
        else:
            tokens, probs = trunk(images), None
        pooled = AttentionalPooler(
            self.pool_dim,
            self.pool_heads,
            self.pool_queries,
            use_queries=1,
            context_norm=self.layout == "timm",
            dtype=self.dtype,
            name="attn_pool",
        )(tokens.astype(self.dtype))[:, 0]
        emb = nn.LayerNorm(CLIP_LN_EPS, dtype=self.dtype, name="ln_post")(pooled)
        if self.proj_contrast:
            emb = nn.Dense(self.proj_dim, use_bias=False, dtype=self.dtype, name="proj")(emb)
        emb = emb.astype(jnp.float32)
        if self.trainable_blocks == 0:
            emb = jax.lax.stop_gradient(emb)
        return (emb, probs) if return_attention else emb
