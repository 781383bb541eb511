"""A minimal PyTorch CONCH (MahmoodLab's CoCa ViT-B/16) for parity checks, written from
github.com/mahmoodlab/CONCH `conch/open_clip_custom/` (`coca_model.py`, `vision_tower.py`,
`transformer.py`), with its state-dict names.

Why not open_clip: open_clip 3.3 cannot express CONCH's image tower. CONCH's trunk is a timm
`VisionTransformer` (`forward_features`: class token, timm's final norm at eps 1e-6) feeding two
attentional poolers of different widths (`attn_pool_contrast`: 1 query, 512 wide; `attn_pool_caption`:
256 queries, 768 wide) with their own LayerNorms and a bare `proj_contrast` matrix; open_clip's
`TimmModel` has no attentional pooling and its own `VisionTransformer` uses other names and a shared
`ln_post`. The text tower is open_clip's `TextTransformer` in shape (the same parameter names), but
CONCH runs it its own way: the last of the 128 token ids is dropped before the class embedding is
appended (`num_pos` stays 128), and the pad mask applies to the class row only, shifted by one
position (CONCH's `build_cls_mask`). `text_forward` does that.

The decoder is left out: its weights were not published (CONCH's README), so a real checkpoint has no
`text_decoder.*` keys.

    model = conch_torch.Conch(**conch_torch.CONFIG)          # random weights
    img = model.encode_image(x, proj_contrast=True, normalize=False)
    txt = model.encode_text(tokens, normalize=False)         # tokens: (B, 128) int, pad 0
"""

from __future__ import annotations

import functools
from typing import Any

# conch_ViT-B-16.json, flattened: the vision tower's shape, its poolers, the text tower's.
CONFIG: dict[str, Any] = dict(
    img_size=448,
    patch_size=16,
    width=768,
    depth=12,
    num_heads=12,
    mlp_ratio=4.0,
    embed_dim=512,
    embed_dim_caption=768,
    pool_heads=8,
    n_queries_caption=256,
    text=dict(context_length=128, vocab_size=32007, width=768, heads=12, layers=12, pad_id=0),
)


@functools.lru_cache(maxsize=None)
def _modules():
    """The torch classes (imported on first use: torch and timm are optional)."""
    import torch  # pylint: disable=import-outside-toplevel
    from timm.models.vision_transformer import (  # pylint: disable=import-outside-toplevel
        VisionTransformer,
    )
    from torch import nn  # pylint: disable=import-outside-toplevel

    class AttentionalPooler(nn.Module):
        """CONCH's pooler: queries (LayerNorm'd) attend to the LayerNorm'd tokens, sequence-first."""

        def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
            super().__init__()
            self.query = nn.Parameter(torch.randn(n_queries, d_model))
            self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
            self.ln_q = nn.LayerNorm(d_model)
            self.ln_k = nn.LayerNorm(context_dim)

        def forward(self, x):
            x = self.ln_k(x).permute(1, 0, 2)  # (B, N, C) -> (N, B, C)
            q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[1], -1)
            return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)

    class Visual(nn.Module):
        def __init__(self, c: dict[str, Any]):
            super().__init__()
            self.trunk = VisionTransformer(
                img_size=c["img_size"],
                patch_size=c["patch_size"],
                embed_dim=c["width"],
                depth=c["depth"],
                num_heads=c["num_heads"],
                mlp_ratio=c["mlp_ratio"],
                num_classes=0,
                dynamic_img_size=True,
            )
            d, w = c["embed_dim"], c["width"]
            self.attn_pool_contrast = AttentionalPooler(d, w, c["pool_heads"], 1)
            self.ln_contrast = nn.LayerNorm(d)
            self.proj_contrast = nn.Parameter(w**-0.5 * torch.randn(d, d))
            dc = c["embed_dim_caption"]
            self.attn_pool_caption = AttentionalPooler(
                dc, w, c["pool_heads"], c["n_queries_caption"]
            )
            self.ln_caption = nn.LayerNorm(dc)

        def forward(self, x, proj_contrast: bool = True):
            pooled = self.ln_contrast(self.attn_pool_contrast(self.trunk.forward_features(x))[:, 0])
            return pooled @ self.proj_contrast if proj_contrast else pooled

    class Conch(nn.Module):
        def __init__(self, **overrides):
            super().__init__()
            import open_clip  # pylint: disable=import-outside-toplevel

            c = {**CONFIG, **overrides}
            t = {**CONFIG["text"], **overrides.get("text", {})}
            self.visual = Visual(c)
            # CONCH's TextTransformer in shape: num_pos = context_length (the class embedding takes
            # the last position), so open_clip's (which adds one for it) is built one shorter.
            self.text = open_clip.transformer.TextTransformer(
                context_length=t["context_length"] - 1,
                vocab_size=t["vocab_size"],
                width=t["width"],
                heads=t["heads"],
                layers=t["layers"],
                output_dim=c["embed_dim"],
                embed_cls=True,
                pad_id=t["pad_id"],
                act_layer=nn.GELU,
                norm_layer=nn.LayerNorm,
            )
            self.logit_scale = nn.Parameter(torch.ones([]) * 2.6592)

        def encode_image(self, x, normalize: bool = True, proj_contrast: bool = True):
            out = self.visual(x, proj_contrast)
            return nn.functional.normalize(out, dim=-1) if normalize else out

        def encode_text(self, tokens, normalize: bool = True):
            out = text_forward(self.text, tokens[:, :-1])  # CONCH: room for the class embedding
            return nn.functional.normalize(out, dim=-1) if normalize else out

    def text_forward(t, text):
        """CONCH's TextTransformer.forward (embed_cls) on open_clip's module `t`."""
        b, n = text.shape
        x = torch.cat([t.token_embedding(text), t.cls_emb.view(1, 1, -1).expand(b, 1, -1)], 1)
        size = n + 1
        mask = torch.full((size, size), float("-inf")).triu_(1).expand(b, size, size).clone()
        # The class row (last) cannot see keys whose *preceding* token is a pad: CONCH pads the
        # key mask on the left by one, so its keys are shifted by one position.
        cls_row = torch.zeros(b, size)
        cls_row[:, 1:].masked_fill_(text == t.pad_id, float("-inf"))
        mask[:, -1] = mask[:, -1] + cls_row
        x = x + t.positional_embedding[:size]
        x = t.transformer(x, attn_mask=mask.repeat_interleave(t.heads, 0))
        return t.ln_final(x[:, -1]) @ t.text_projection

    return Conch, text_forward


def Conch(**overrides):  # noqa: N802 (a class factory: torch is imported on first use)
    """CONCH with random weights in eval mode; `overrides` as in `CONFIG` (text=dict(...) for the
    text tower)."""
    return _modules()[0](**overrides).eval()


def text_forward(t, text):
    """CONCH's text forward on an open_clip `TextTransformer(embed_cls=True)`, see the module doc."""
    return _modules()[1](t, text)
