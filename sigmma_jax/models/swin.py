"""Swin Transformer laid out like timm 1.0's `SwinTransformer`, with CTransPath's convolutional stem.

CTransPath (Wang et al., Medical Image Analysis 2022; github.com/Xiyue-Wang/TransPath) is timm's
`swin_tiny_patch4_window7_224` (width 96, depths 2-2-6-2, heads 3-6-12-24, 7 x 7 windows) whose 4 x 4
patch convolution is replaced by `ConvStem`: conv 3x3/2 (no bias) -> BatchNorm -> ReLU -> conv 3x3/2
(no bias) -> BatchNorm -> ReLU -> conv 1x1 (bias) -> LayerNorm, widening 3 -> 12 -> 24 -> 96. The
embedding is the global average of the last stage's tokens after the final LayerNorm (768 for
Swin-T; timm's `num_classes=0`). Normalisation by the backbone's mean/std happens inside, so callers
pass RGB in [0, 1]. BatchNorm is in inference form (the checkpoint's running statistics, frozen as in
`models.resnet`). LayerNorm epsilon 1e-5 (torch's default, which timm's Swin uses), exact GELU.

Each stage runs window attention with a relative position bias; every second block shifts the
windows by half a window (cyclic roll) and masks attention across the seams (timm's -100 logits).
As in timm, a stage whose token grid is no larger than the window attends over the whole grid and
does not shift (CTransPath's last stage at 224 px: 7 x 7). Window and shift sizes follow from
`img_size` (as timm fixes them at construction); another input size is padded to whole windows
and masked as timm's `dynamic_img_size=True` does, so any size works, and a 224-px input is the
published model exactly.

Parameter tree (timm 1.0 name -> Flax name): `patch_embed.proj.{0,3,6}` -> `patch_embed/proj_{0,3,6}`
(kernels HWIO), `patch_embed.proj.{1,4}` (BatchNorm) -> `patch_embed/proj_{1,4}/{scale,bias,mean,var}`,
`patch_embed.norm` -> `patch_embed/norm`, `layers.{i}.blocks.{j}.{norm1,attn.relative_position_bias_table,
attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}` -> `blocks_{k}/{norm1,attn/...,norm2,fc1,fc2}` with k the
block's index over all stages, `layers.{i}.downsample` (PatchMerging, at the start of stage i > 0) ->
`blocks_{k}/downsample` of the stage's first block, `norm` -> `norm`. Numbering the blocks across
stages, with each stage's patch merging inside its first block (as a ResNet bottleneck holds its
downsample), lets `trainable_blocks` and the optimizer's layer labels (`train.optimizer`: `blocks_{k}`)
count Swin's 12 blocks as they count a ViT's. `sigmma_jax.tools.keymaps.swin` holds the mapping,
and reads the published `ctranspath.pth` (timm 0.5.4's layout) too.

Precision: parameters are float32; `dtype` is the compute dtype. LayerNorm statistics and the
attention softmax are float32 either way.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sigmma_jax.models.resnet import FrozenBatchNorm

LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which timm's Swin uses
MASK_VALUE = -100.0  # timm's logit for a key across a shifted window's seam


def gelu(x):
    return nn.gelu(x, approximate=False)  # torch.nn.GELU is exact; Flax defaults to tanh


def stage_resolutions(img_size: int, n_stages: int) -> list[int]:
    """The token grid side of each stage at `img_size`: the stem's stride 4 (TransPath's grid is
    img_size // 4), then halved (rounding up, as timm pads odd grids) by each patch merging."""
    r, out = img_size // 4, []
    for i in range(n_stages):
        if i:
            r = -(-r // 2)
        out.append(r)
    return out


def window_and_shift(resolution: int, window_size: int, shifted: bool) -> tuple[int, int]:
    """timm's rule: a grid no larger than the window is one window, and is not shifted."""
    if resolution <= window_size:
        return resolution, 0
    return window_size, (window_size // 2 if shifted else 0)


def relative_position_index(window: int) -> np.ndarray:
    """(N, N) index into the (2w - 1)^2 bias table of each query/key pair of a w x w window, as timm's
    `get_relative_position_index` (row offset * (2w - 1) + column offset)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(
        2, -1
    )
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(windows, N, N) additive mask of a shifted, padded (height, width) grid: 0 where query and key
    come from the same region before the roll, -100 elsewhere (timm's `get_attn_mask` on the padded
    map, with its slices, so that padding falls in the regions timm puts it in)."""
    img = np.zeros((height, width), np.float32)
    cnt = 0
    for h in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for w in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[h, w] = cnt
            cnt += 1
    win = img.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    win = win.reshape(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, MASK_VALUE, 0.0).astype(np.float32)


class ConvStem(nn.Module):
    """CTransPath's stem: two 3x3 stride-2 convolutions (width / 8, width / 4) with BatchNorm and
    ReLU, a 1x1 convolution to `width`, LayerNorm. Names follow the torch `nn.Sequential` indices."""

    width: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.width % 8:
            raise ValueError(f"ConvStem needs a width divisible by 8, got {self.width}")
        c = self.width // 8
        for i, (features, name) in enumerate(((c, "proj_0"), (2 * c, "proj_3"))):
            x = nn.Conv(
                features,
                (3, 3),
                strides=2,
                padding=((1, 1), (1, 1)),
                use_bias=False,
                dtype=self.dtype,
                name=name,
            )(x.astype(self.dtype))
            x = nn.relu(FrozenBatchNorm(self.dtype, name=f"proj_{3 * i + 1}")(x))
        x = nn.Conv(self.width, (1, 1), dtype=self.dtype, name="proj_6")(x)
        return nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)


class PatchMerging(nn.Module):
    """timm's PatchMerging: each 2 x 2 group of tokens concatenated (row offset fastest, as timm's
    x0, x1, x2, x3), LayerNorm, a linear map without bias. Odd grids are zero-padded first."""

    out_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        h, w = x.shape[1:3]
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
        x = x.reshape(b, h // 2, w // 2, 4 * c)
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)
        return nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, name="reduction")(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with timm's relative position bias table."""

    num_heads: int
    window: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask: np.ndarray | None = None):
        """x: (B, windows, N, C); mask: (windows, N, N) additive, or None."""
        b, nw, n, d = x.shape
        h = self.num_heads
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.normal(0.02),
            ((2 * self.window - 1) ** 2, h),
        )
        # A take with clipping (the indices are in range) compiles faster than indexing's gather.
        index = relative_position_index(self.window).reshape(-1)
        bias = jnp.take(table.T, index, axis=1, mode="clip").reshape(h, n, n).astype(jnp.float32)
        # Windows folded into the batch and heads ahead of tokens, as timm: leading batch dimensions
        # make plain batched matmuls, which XLA compiles much faster than a 5-D einsum.
        qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x.reshape(b * nw, n, d))
        # timm packs qkv as (3, heads, head_dim) along the last axis.
        q, k, v = qkv.reshape(b * nw, n, 3, h, d // h).transpose(2, 0, 3, 1, 4)
        q = q * (d // h) ** -0.5
        logits = jnp.matmul(q, k.swapaxes(-1, -2), preferred_element_type=jnp.float32) + bias
        if mask is not None:
            logits = logits.reshape(b, nw, h, n, n) + jnp.asarray(mask)[None, :, None]
            logits = logits.reshape(b * nw, h, n, n)
        probs = jax.nn.softmax(logits, axis=-1)
        out = jnp.matmul(probs.astype(v.dtype), v).transpose(0, 2, 1, 3).reshape(b, nw, n, d)
        return nn.Dense(d, dtype=self.dtype, name="proj")(out)


class SwinBlock(nn.Module):
    """A Swin block (norm1 -> (shifted) window attention -> residual; norm2 -> MLP -> residual) on a
    (B, H, W, C) grid; `downsample_to` > 0: the stage's PatchMerging first (see the module doc)."""

    num_heads: int
    window: int
    shift: int
    mlp_ratio: float = 4.0
    downsample_to: int = 0
    dtype: jnp.dtype = jnp.float32

    def _attention(self, x):
        b, h, w, c = x.shape
        ws, s = self.window, self.shift
        if s:
            x = jnp.roll(x, (-s, -s), axis=(1, 2))
        ph, pw = -h % ws, -w % ws  # timm pads after the roll, at the bottom / right
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
        hp, wp = h + ph, w + pw
        win = x.reshape(b, hp // ws, ws, wp // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
        win = win.reshape(b, -1, ws * ws, c)
        mask = shift_mask(hp, wp, ws, s) if s else None
        y = WindowAttention(self.num_heads, ws, self.dtype, name="attn")(win, mask)
        y = y.reshape(b, hp // ws, wp // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
        y = y.reshape(b, hp, wp, c)[:, :h, :w]
        return jnp.roll(y, (s, s), axis=(1, 2)) if s else y

    @nn.compact
    def __call__(self, x):
        if self.downsample_to:
            x = PatchMerging(self.downsample_to, self.dtype, name="downsample")(x)
        d = x.shape[-1]
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm1")(x)
        x = x + self._attention(y)
        y = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm2")(x)
        y = nn.Dense(int(d * self.mlp_ratio), dtype=self.dtype, name="fc1")(y)  # timm: int(dim * r)
        y = nn.Dense(d, dtype=self.dtype, name="fc2")(gelu(y))
        return x + y


class SwinTransformer(nn.Module):
    """timm's SwinTransformer with CTransPath's ConvStem; `width` is timm's `embed_dim` (the stem's
    output), doubled by each stage; `embed_dim` is the embedding's width."""

    img_size: int = 224
    width: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # rematerialise each block in the backward pass
    trainable_blocks: int = -1  # -1: all; k >= 0: gradients stop below the last k blocks

    @property
    def embed_dim(self) -> int:
        return self.width * 2 ** (len(self.depths) - 1)

    @property
    def depth(self) -> int:
        """Blocks over all stages (what `trainable_blocks` counts)."""
        return sum(self.depths)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """(B, H, W, 3) float RGB in [0, 1] -> (B, embed_dim) mean of the last stage's tokens."""
        if len(self.depths) != len(self.num_heads) or min(self.depths) < 1:
            raise ValueError(
                f"depths {tuple(self.depths)} and num_heads {tuple(self.num_heads)} must have one "
                "entry (>= 1 block) per stage"
            )
        x = (images.astype(jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        x = ConvStem(self.width, self.dtype, name="patch_embed")(x)
        block = SwinBlock
        if self.remat:
            block = nn.remat(SwinBlock, policy=jax.checkpoint_policies.nothing_saveable)
        first_trainable = 0 if self.trainable_blocks < 0 else self.depth - self.trainable_blocks
        k = 0
        resolutions = stage_resolutions(self.img_size, len(self.depths))
        for i, (n, heads, res) in enumerate(zip(self.depths, self.num_heads, resolutions)):
            for j in range(n):
                if k == first_trainable and k > 0:
                    x = jax.lax.stop_gradient(x)
                window, shift = window_and_shift(res, self.window_size, j % 2 == 1)
                x = block(
                    heads,
                    window,
                    shift,
                    self.mlp_ratio,
                    self.width * 2**i if (i and j == 0) else 0,
                    self.dtype,
                    name=f"blocks_{k}",
                )(x)
                k += 1
        x = nn.LayerNorm(LN_EPS, dtype=self.dtype, name="norm")(x)
        emb = x.astype(jnp.float32).mean((1, 2))
        if self.trainable_blocks == 0:
            emb = jax.lax.stop_gradient(emb)
        return emb
