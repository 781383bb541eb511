"""CTransPath's convolutional stem in PyTorch, for the parity reference (`tools.references`): timm 1.0's
`swin_tiny_patch4_window7_224(embed_layer=ConvStem)` is CTransPath with these state-dict names.

Written from github.com/Xiyue-Wang/TransPath `ctran.py` (class `ConvStem`), which replaces Swin's
4x4 patch convolution: two 3x3 stride-2 convolutions without bias, each followed by BatchNorm and
ReLU, widening 3 -> embed_dim / 8 -> embed_dim / 4, then a 1x1 convolution with bias to `embed_dim`,
then the `norm_layer` Swin passes (its LayerNorm: `patch_norm=True`). The layers sit in one
`nn.Sequential` called `proj`, so the state dict reads `patch_embed.proj.{0,1,3,4,6}.*` (2 and 5 are
the ReLUs) and `patch_embed.norm.*`.

What differs from TransPath's file is only what timm 1.0 asks of an `embed_layer`: it passes
`strict_img_size`, `output_fmt` ('NHWC': timm 1.0's Swin keeps tokens as a feature map) and
device / dtype. TransPath's stem (for timm 0.5.4) returns (B, H * W, C) and always checks the input
size; this one checks it when `strict_img_size` (timm's default, so the reference refuses other sizes
unless built with `dynamic_img_size=True`).

torch is imported on first use (`conv_stem()`): it is optional for the package.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def conv_stem():
    """The `ConvStem` class (torch imported here, on first use)."""
    from torch import nn  # pylint: disable=import-outside-toplevel

    class ConvStem(nn.Module):
        """conv3x3/2 -> BN -> ReLU -> conv3x3/2 -> BN -> ReLU -> conv1x1 -> norm: a stride-4 patch
        embedding for `patch_size=4` (TransPath asserts it, and that embed_dim is a multiple of 8)."""

        def __init__(
            self,
            img_size=224,
            patch_size=4,
            in_chans=3,
            embed_dim=768,
            norm_layer=None,
            flatten=True,
            strict_img_size=True,
            output_fmt=None,
            device=None,
            dtype=None,
        ):
            super().__init__()
            if patch_size != 4 or embed_dim % 8:
                raise ValueError(
                    f"ConvStem needs patch_size 4 and embed_dim % 8 == 0, "
                    f"got {patch_size}, {embed_dim}"
                )
            dd = dict(device=device, dtype=dtype)
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            self.img_size = size
            self.patch_size = (4, 4)
            self.grid_size = (size[0] // 4, size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]
            self.flatten = flatten
            self.strict_img_size = strict_img_size
            self.output_fmt = output_fmt
            layers, c_in, c_out = [], in_chans, embed_dim // 8
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False, **dd),
                    nn.BatchNorm2d(c_out, **dd),
                    nn.ReLU(inplace=True),
                ]
                c_in, c_out = c_out, 2 * c_out
            layers.append(nn.Conv2d(c_in, embed_dim, 1, **dd))
            self.proj = nn.Sequential(*layers)
            self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

        def forward(self, x):
            if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
                raise ValueError(
                    f"input size {tuple(x.shape[-2:])} does not match the model's {self.img_size}"
                )
            x = self.proj(x)
            if self.output_fmt == "NHWC":  # timm 1.0's Swin
                x = x.permute(0, 2, 3, 1)
            elif self.flatten:  # timm 0.5.4's Swin (TransPath): B, C, H, W -> B, H * W, C
                x = x.flatten(2).transpose(1, 2)
            return self.norm(x)

    return ConvStem
