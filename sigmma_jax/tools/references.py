"""The PyTorch reference of each registered backbone: the implementation its weights were published
for (timm, Hugging Face `transformers`, open_clip), built with random weights. The parity tests,
`bench parity` and `bench encoder` compare the Flax backbone with it.

    model = references.build("uni", depth=2)           # torch.nn.Module in eval mode
    emb = references.embed("uni", model, x)            # x: (B, 3, H, W) float32, normalised

torch and the reference's library are imported only here and only when called (`pip install
'sigmma_jax[test]'`). Each entry of `REFERENCES` is (build(arch, **overrides), embed(model, x)); the
embedding is the one the Flax backbone returns.
"""

from __future__ import annotations

from typing import Any, Callable

from sigmma_jax import atomic
from sigmma_jax.models import backbones


def _timm_build(arch: str, **overrides):
    import timm  # pylint: disable=import-outside-toplevel

    name, kw = backbones.timm_kwargs(arch, **overrides)
    return timm.create_model(name, pretrained=False, **kw).eval()


def _call(model, x):
    return model(x)


def _token_mean(model, x):
    """Virchow2's card: the class token beside the mean of the patch tokens (registers left out)."""
    tokens = model(x)
    prefix = model.num_prefix_tokens
    import torch  # pylint: disable=import-outside-toplevel

    return torch.cat([tokens[:, 0], tokens[:, prefix:].mean(1)], -1)


def _hf_dinov2_build(arch: str, **overrides):
    """transformers' Dinov2WithRegistersModel with the preset's shape (Hibou's published layout)."""
    from transformers import (  # pylint: disable=import-outside-toplevel
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    c = backbones.config(arch, **overrides)
    config = Dinov2WithRegistersConfig(
        hidden_size=c["width"],
        num_hidden_layers=c["depth"],
        num_attention_heads=c["num_heads"],
        mlp_ratio=4,
        image_size=c["img_size"],
        patch_size=c["patch_size"],
        num_register_tokens=c["reg_tokens"],
        use_swiglu_ffn=c["mlp"] == "swiglu_packed",
        layerscale_value=c["init_values"],
        layer_norm_eps=1e-6,
    )
    return Dinov2WithRegistersModel(config).eval()


def _pooler(model, x):
    return model(pixel_values=x).pooler_output


REFERENCES: dict[str, tuple[Callable[..., Any], Callable[[Any, Any], Any]]] = {
    **{arch: (_timm_build, _call) for arch in backbones.TIMM},
    "virchow2": (_timm_build, _token_mean),
    "hibou-b": (_hf_dinov2_build, _pooler),
    "hibou-l": (_hf_dinov2_build, _pooler),
}


def _entry(arch: str):
    if arch not in REFERENCES:
        raise ValueError(f"no PyTorch reference for {arch!r}; known: {sorted(REFERENCES)}")
    return REFERENCES[arch]


def describe(arch: str) -> dict[str, Any]:
    """What the reference is, for the converted weights' metadata: timm's model name and kwargs,
    or the first line of the builder's docstring."""
    if REFERENCES.get(arch, (None,))[0] is _timm_build:
        name, kw = backbones.TIMM[arch]
        return dict(library="timm", model=name, kwargs=atomic.jsonable(kw))
    doc = (_entry(arch)[0].__doc__ or "").strip().splitlines()
    return dict(library=_entry(arch)[0].__module__, model=doc[0] if doc else "")


def build(arch: str, **overrides):
    """The reference model of preset `arch` (random weights, eval mode); `overrides` as in
    `backbones.config` (depth=2, img_size=...)."""
    return _entry(arch)[0](arch, **overrides)


def embed(arch: str, model, x):
    """The reference's embedding of normalised NCHW float images, under torch.inference_mode."""
    import torch  # pylint: disable=import-outside-toplevel

    with torch.inference_mode():
        return _entry(arch)[1](model, x)
