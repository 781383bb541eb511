"""ResNet-50 laid out like timm's `resnet50` (torchvision's v1.5: stride on the 3x3 conv): SIGMMA's
Table 3 backbone, and, from scratch, ST-Align's spot image encoder AE-Img (§3.2).

`num_classes=0`: the embedding is the global average pool of the last stage (2048-d).
Normalisation by the backbone's mean/std happens inside, so callers pass RGB in [0, 1].

ST-Align's AE-Img is this network trained from scratch on 28 px spot crops, with the authors' code's
CIFAR stem (`stem="cifar"`: no downsampling of so small an image) and GroupNorm (`norm="group"`):
the paper trains with SyncBN on 3 GPUs, but the train state here holds parameters only (no batch
statistics), and GroupNorm matches BatchNorm for ResNet-50 trained from scratch (Wu & He 2018).

BatchNorm (the default) is frozen: it uses the checkpoint's running statistics in training too (the usual
choice when fine-tuning a pretrained CNN on small per-device batches), so the whole model lives in
`params` and `model.apply({"params": params}, images)` works as for the ViTs. The scale and bias are
trainable; the statistics `mean`/`var` sit in `params` under a stop-gradient.

Parameter tree (timm name -> Flax name): `conv1` -> `conv1` (kernel HWIO), `bn1` -> `bn1`
{weight: scale, bias: bias, running_mean: mean, running_var: var}, `layer{s}.{j}.{conv,bn}{1,2,3}` ->
`layer{s}_{j}/...`, `layer{s}.{j}.downsample.{0,1}` -> `layer{s}_{j}/downsample_{0,1}`.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPS = 1e-5  # torch.nn.BatchNorm2d
STEMS = ("imagenet", "cifar")
NORMS = ("frozen_bn", "group")
GROUPS = 32  # GroupNorm's groups (Wu & He 2018); a layer with fewer channels: gcd(32, channels)


class FrozenBatchNorm(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = jax.lax.stop_gradient(self.param("mean", nn.initializers.zeros, (c,)))
        var = jax.lax.stop_gradient(self.param("var", nn.initializers.ones, (c,)))
        mult = scale * jax.lax.rsqrt(var + BN_EPS)
        return (x * mult.astype(x.dtype) + (bias - mean * mult).astype(x.dtype)).astype(self.dtype)


def _conv(features, kernel, stride, dtype, name):
    pad = (kernel - 1) // 2  # torch's symmetric padding, as timm's get_padding for these kernels
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        name=name,
    )


def _norm(kind: str, dtype, name: str) -> nn.Module:
    if kind == "frozen_bn":
        return FrozenBatchNorm(dtype, name=name)
    if kind == "group":
        return _GroupNorm(dtype, name=name)
    raise ValueError(f"ResNet norm must be one of {NORMS}, got {kind!r}")


class _GroupNorm(nn.Module):
    """GroupNorm (eps 1e-5, torch's) with GROUPS groups, or gcd(GROUPS, channels) for narrow
    layers; statistics in float32."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        groups = math.gcd(GROUPS, x.shape[-1])
        y = nn.GroupNorm(groups, epsilon=BN_EPS, dtype=jnp.float32, name="gn")(
            x.astype(jnp.float32)
        )
        return y.astype(self.dtype)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: jnp.dtype = jnp.float32
    norm: str = "frozen_bn"

    @nn.compact
    def __call__(self, x):
        out = self.planes * 4
        norm = lambda name: _norm(self.norm, self.dtype, name)  # noqa: E731
        y = nn.relu(norm("bn1")(_conv(self.planes, 1, 1, self.dtype, "conv1")(x)))
        y = _conv(self.planes, 3, self.stride, self.dtype, "conv2")(y)
        y = nn.relu(norm("bn2")(y))
        y = norm("bn3")(_conv(out, 1, 1, self.dtype, "conv3")(y))
        if self.downsample:
            x = _conv(out, 1, self.stride, self.dtype, "downsample_0")(x)
            x = norm("downsample_1")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    layers: Sequence[int] = (3, 4, 6, 3)
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    img_size: int = 224  # the input size the HE encoder resizes crops to (any size works)
    trainable_blocks: int = -1  # -1: all; k >= 0: gradients stop below the last k bottlenecks
    width: int = 64  # planes of the first stage (timm's resnet50: 64); the demo's spot encoder: 16
    stem: str = "imagenet"  # 7x7/2 conv + 3x3/2 max-pool | "cifar": a 3x3/1 conv, no pool
    norm: str = "frozen_bn"  # checkpoint statistics | "group": GroupNorm, for training from scratch

    @property
    def embed_dim(self) -> int:
        return self.width * 2 ** (len(self.layers) - 1) * 4

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """(B, H, W, 3) float RGB in [0, 1] -> (B, 2048) average-pooled last-stage features."""
        x = (images.astype(jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(self.std)
        if self.stem not in STEMS:
            raise ValueError(f"ResNet stem must be one of {STEMS}, got {self.stem!r}")
        imagenet = self.stem == "imagenet"
        x = _conv(self.width, 7 if imagenet else 3, 2 if imagenet else 1, self.dtype, "conv1")(
            x.astype(self.dtype)
        )
        x = nn.relu(_norm(self.norm, self.dtype, "bn1")(x))
        if imagenet:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block = nn.remat(Bottleneck) if self.remat else Bottleneck
        total = sum(self.layers)
        first_trainable = 0 if self.trainable_blocks < 0 else total - self.trainable_blocks
        i = 0
        for s, n in enumerate(self.layers):
            planes = self.width * 2**s
            for j in range(n):
                if i == first_trainable and i > 0:
                    x = jax.lax.stop_gradient(x)
                stride = 2 if (j == 0 and s > 0) else 1
                x = block(planes, stride, j == 0, self.dtype, self.norm, name=f"layer{s + 1}_{j}")(
                    x
                )
                i += 1
        emb = x.astype(jnp.float32).mean((1, 2))
        if self.trainable_blocks == 0:
            emb = jax.lax.stop_gradient(emb)
        return emb
