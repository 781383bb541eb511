"""Vision Transformer laid out like timm's `VisionTransformer`, so PyTorch weights map name by name.

One module covers the pathology ViTs of SIGMMA (see `sigmma_jax.models.backbones` for the presets):
- UNI: timm `vit_large_patch16_224`, LayerScale `init_values=1e-5`, class token, final norm,
  `dynamic_img_size=True`, `num_classes=0`.
- UNI2-h: patch 14, width 1536, 24 blocks, 8 register tokens, SwiGLU-packed MLP, `no_embed_class`.
- H-optimus-0: timm `vit_giant_patch14_reg4_dinov2` (40 blocks, 4 registers, SwiGLU-packed MLP).

The embedding is the class token after the final LayerNorm (timm's `global_pool='token'`).
Normalisation by the backbone's mean/std happens inside, so callers pass RGB in [0, 1].

Parameter tree (timm name -> Flax name): `patch_embed.proj` -> `patch_embed` (kernel HWIO),
`cls_token`, `reg_token`, `pos_embed`, `blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
mlp.fc1,mlp.fc2,ls2.gamma}` -> `blocks_{i}/{norm1,attn/qkv,attn/proj,ls1/gamma,norm2,fc1,fc2,ls2/gamma}`,
`norm` -> `norm`. `sigmma_jax.convert` holds the mapping.

Precision: parameters are float32 (the master weights); `dtype` is the compute dtype (bfloat16 on
accelerators). LayerNorm statistics and the attention softmax are computed in float32 either way.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LN_EPS = 1e-6  # timm's ViT LayerNorm epsilon (CLIP's is 1e-5: `ln_eps`)
MLPS = ("gelu", "quick_gelu", "swiglu_packed")
POOLS = ("token", "token_mean", "tokens")


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)  # OpenAI CLIP's activation


def gelu(x):
    return nn.gelu(x, approximate=False)  # timm uses exact GELU; Flax defaults to tanh


class PatchEmbed(nn.Module):
    """timm's `PatchEmbed` (a stride-p conv) computed as patchify + one matmul.

    The kernel keeps `nn.Conv`'s HWIO layout and name, so checkpoints of the conv form still load.
    """

    width: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32
    use_bias: bool = True  # CLIP's patch conv has none

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.width))
        b, h, w = x.shape[:3]
        if h % p or w % p:  # timm asserts this too (dynamic_img_pad=False)
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {p}")
        gh, gw = h // p, w // p
        x = x.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh, gw, p * p * c)
        y = jnp.dot(x.astype(self.dtype), kernel.reshape(p * p * c, self.width).astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.width,)).astype(self.dtype)
        return y


CUDNN_SEQ_MULTIPLE = 64  # cuDNN's flash attention backward wants the sequence in multiples of 64


def attention(
    q, k, v, implementation: str | None = None, pad_multiple: int = 0, causal: bool = False
):
    """Softmax attention of (B, N, heads, head_dim) q, k, v (`causal`: token i sees tokens <= i).

    With `pad_multiple`, the sequence is zero-padded to a multiple of it and the padded keys are
    masked out through `key_value_seq_lengths` (the padded queries are dropped): cuDNN's fused
    kernels need this for ViT sequence lengths such as 197 (UNI) or 265 (UNI2-h) in the backward
    pass. The result is the unpadded attention.
    """
    b, n = q.shape[:2]
    if not pad_multiple or n % pad_multiple == 0:
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation=implementation
        )
    m = -(-n // pad_multiple) * pad_multiple
    padding = ((0, 0), (0, m - n), (0, 0), (0, 0))
    q, k, v = (jnp.pad(t, padding) for t in (q, k, v))
    lengths = jnp.full((b,), n, jnp.int32)
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        is_causal=causal,
        implementation=implementation,
    )
    return out[:, :n]


class Attention(nn.Module):
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    keep_attention: bool = False  # also return the (B, heads, N, N) attention probabilities
    implementation: str | None = None  # jax.nn.dot_product_attention's ("cudnn" on NVIDIA GPUs)
    causal: bool = False  # a text tower's mask: token i attends to tokens <= i

    @nn.compact
    def __call__(self, x, mask: jax.Array | None = None):
        """`mask`: an optional boolean (B, 1, N, N) of the keys each query may see, on top of
        `causal` (a text tower's padding: open_clip's CoCa cls mask)."""
        b, n, d = x.shape
        h = self.num_heads
        qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
        # timm packs qkv as (3, heads, head_dim) along the last axis.
        q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, h, d // h), 2, 0)
        probs = None
        if self.keep_attention:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            logits = logits * (d // h) ** -0.5
            if self.causal:
                logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, -jnp.inf)
            if mask is not None:
                logits = jnp.where(mask, logits, -jnp.inf)
            probs = jax.nn.softmax(logits, axis=-1)
            out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
        elif mask is not None:  # no sequence padding here: the mask covers the real length
            out = jax.nn.dot_product_attention(
                q, k, v, mask=mask, is_causal=self.causal, implementation=self.implementation
            )
        else:
            pad = CUDNN_SEQ_MULTIPLE if self.implementation == "cudnn" else 0
            out = attention(q, k, v, self.implementation, pad, self.causal)
        out = nn.Dense(d, dtype=self.dtype, name="proj")(out.reshape(b, n, d))
        return out, probs


class LayerScale(nn.Module):
    init_values: float

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.constant(self.init_values), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    num_heads: int
    mlp_ratio: float
    init_values: float | None
    dtype: jnp.dtype = jnp.float32
    mlp: str = "gelu"
    keep_attention: bool = False
    attn_impl: str | None = None
    ln_eps: float = LN_EPS
    causal: bool = False
    mlp_hidden: int = 0  # fc1's width when given (DINOv2's SwiGLU rounds it to a multiple of 8)

    @nn.compact
    def __call__(self, x, mask: jax.Array | None = None):
        d = x.shape[-1]
        ls = (
            (lambda name: LayerScale(self.init_values, name=name))
            if self.init_values
            else (lambda name: lambda y: y)
        )
        y = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="norm1")(x)
        y, probs = Attention(
            self.num_heads,
            self.dtype,
            self.keep_attention,
            self.attn_impl,
            self.causal,
            name="attn",
        )(y, mask)
        x = x + ls("ls1")(y)
        y = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="norm2")(x)
        hidden = self.mlp_hidden or int(d * self.mlp_ratio)  # timm: int(dim * mlp_ratio)
        if self.mlp == "swiglu_packed" and hidden % 2:
            raise ValueError(f"swiglu_packed needs an even hidden width, got {hidden}")
        y = nn.Dense(hidden, dtype=self.dtype, name="fc1")(y)
        if self.mlp == "gelu":
            y = gelu(y)
        elif self.mlp == "quick_gelu":
            y = quick_gelu(y)
        elif self.mlp == "swiglu_packed":
            # timm SwiGLUPacked = GluMlp(act=SiLU, gate_last=False): silu(first half) * second half.
            a, g = jnp.split(y, 2, axis=-1)
            y = nn.silu(a) * g
        else:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        y = nn.Dense(d, dtype=self.dtype, name="fc2")(y)
        return x + ls("ls2")(y), probs


def resample_pos_embed(
    pos: jax.Array,
    grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
) -> jax.Array:
    """timm's `resample_abs_pos_embed`: the patch grid resized, prefix-token entries kept.

    timm calls `F.interpolate(mode='bicubic', antialias=True, align_corners=False)` in float32.
    PyTorch's antialiased bicubic is the separable Keys kernel with a = -0.5, widened by the scale
    factor when shrinking and renormalised over the taps that fall inside the image (as PIL does);
    `jax.image.resize(..., 'cubic', antialias=True)` is the same filter (checked in
    tests/test_backbones.py against timm for both growing and shrinking).
    """
    prefix, patches = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    if old_grid is None:
        side = int(round(patches.shape[1] ** 0.5))
        old_grid = (side, side)
    grid = tuple(int(g) for g in grid)
    if tuple(old_grid) == grid:
        return pos
    dim = patches.shape[-1]
    patches = patches.astype(jnp.float32).reshape(1, *old_grid, dim)
    patches = jax.image.resize(patches, (1, *grid, dim), "cubic", antialias=True)
    patches = patches.reshape(1, grid[0] * grid[1], dim).astype(pos.dtype)
    return jnp.concatenate([prefix, patches], 1) if num_prefix_tokens else patches


class VisionTransformer(nn.Module):
    img_size: int = 224
    patch_size: int = 16
    width: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float | None = 1e-5
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # rematerialise each block in the backward pass
    reg_tokens: int = 0  # register tokens after the class token (UNI2-h 8, H-optimus-0 4)
    no_embed_class: bool = False  # pos_embed covers patches only; added before the prefix tokens
    mlp: str = "gelu"  # "gelu" (fc1-GELU-fc2) | "swiglu_packed" (timm SwiGLUPacked)
    trainable_blocks: int = -1  # -1: all; k >= 0: gradients stop below the last k blocks
    attn_impl: str | None = None  # jax.nn.dot_product_attention implementation (None: XLA picks)
    # CLIP's image tower (timm's `pre_norm=True`): a LayerNorm before the blocks, no patch bias,
    # LayerNorm epsilon 1e-5, QuickGELU (`mlp`), and a projection without bias to `proj_dim`.
    pre_norm: bool = False
    patch_bias: bool = True
    ln_eps: float = LN_EPS
    proj_dim: int = 0
    mlp_hidden: int = 0  # fc1's width, when `mlp_ratio` cannot say it exactly (Hibou's SwiGLU)
    # What the model returns: "token" the class token; "token_mean" the class token beside the mean
    # of the patch tokens (Virchow2's 2 x width embedding); "tokens" every token (B, N, width), for a
    # pooler on top (CONCH's attentional pooling).
    pool: str = "token"

    @property
    def embed_dim(self) -> int:
        if self.proj_dim:
            return self.proj_dim
        return 2 * self.width if self.pool == "token_mean" else self.width

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.reg_tokens

    @nn.compact
    def __call__(self, images: jax.Array, return_attention: bool = False):
        """(B, H, W, 3) float RGB in [0, 1] -> (B, embed_dim) embedding (see `pool`).

        Any H, W (multiples of the patch size) work: the position embedding is resampled as timm's
        `dynamic_img_size=True` does. With `return_attention`, also returns the last block's attention
        probabilities, (B, heads, N, N) in float32 with tokens ordered [class, registers, patches].
        """
        x = (images.astype(jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        x = PatchEmbed(
            self.width, self.patch_size, self.dtype, self.patch_bias, name="patch_embed"
        )(x)
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        base = self.img_size // self.patch_size
        n_pos = base * base + (0 if self.no_embed_class else self.num_prefix_tokens)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d))
        prefix = [jnp.broadcast_to(cls, (b, 1, d))]
        if self.reg_tokens:
            reg = self.param("reg_token", nn.initializers.normal(1e-6), (1, self.reg_tokens, d))
            prefix.append(jnp.broadcast_to(reg, (b, self.reg_tokens, d)))
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, n_pos, d))
        pos = resample_pos_embed(
            pos, (gh, gw), 0 if self.no_embed_class else self.num_prefix_tokens, (base, base)
        ).astype(x.dtype)
        prefix = [p.astype(x.dtype) for p in prefix]
        if self.no_embed_class:  # DeiT-3 / DINOv2 style: add to patches, then prepend the prefix
            x = jnp.concatenate([*prefix, x + pos], 1)
        else:
            x = jnp.concatenate([*prefix, x], 1) + pos
        if self.pre_norm:
            x = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="norm_pre")(x)
        block = Block
        if self.remat:
            block = nn.remat(Block, policy=jax.checkpoint_policies.nothing_saveable)
        first_trainable = 0 if self.trainable_blocks < 0 else self.depth - self.trainable_blocks
        probs = None
        for i in range(self.depth):
            if i == first_trainable and i > 0:
                x = jax.lax.stop_gradient(x)
            keep = return_attention and i == self.depth - 1
            x, p = block(
                self.num_heads,
                self.mlp_ratio,
                self.init_values,
                self.dtype,
                self.mlp,
                keep,
                self.attn_impl,
                self.ln_eps,
                mlp_hidden=self.mlp_hidden,
                name=f"blocks_{i}",
            )(x)
            if keep:
                probs = p
        x = nn.LayerNorm(self.ln_eps, dtype=self.dtype, name="norm")(x)
        if self.pool == "tokens":
            emb = x
        elif self.pool == "token_mean":
            emb = jnp.concatenate([x[:, 0], x[:, self.num_prefix_tokens :].mean(1)], -1)
        else:
            emb = x[:, 0]
        if self.proj_dim:
            emb = nn.Dense(self.proj_dim, use_bias=False, dtype=self.dtype, name="proj")(emb)
        emb = emb.astype(jnp.float32)
        if self.trainable_blocks == 0:
            emb = jax.lax.stop_gradient(emb)
        return (emb, probs) if return_attention else emb
