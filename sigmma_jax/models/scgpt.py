"""scGPT's transformer (Cui et al. 2024), the expression encoder of ST-Align (arXiv 2411.16793), and
its converted weights.

    from sigmma_jax.models import scgpt
    model, params = scgpt.load("weights/scgpt")           # made by `python -m sigmma_jax.convert --arch=scgpt`
    emb = model.apply({"params": params}, genes, values, mask)   # (B, L) x3 -> (B, d_model)

The inputs come from `sigmma_jax.data.scgpt_tokens` (gene token ids, binned values, True at real
tokens). What is reproduced (bowang-lab/scGPT at cebd6fa, scgpt/model/model.py):
`TransformerModel._encode` with input_emb_style "continuous", no batch labels and no (DS)BN, then
the `<cls>` position (cell_emb_style "cls"), as `scgpt.tasks.cell_emb.get_batch_cell_embeddings`
takes it. That function also divides by the L2 norm; this module does not (the heads on top decide).

- `GeneEncoder`: Embedding -> LayerNorm.
- `ContinuousValueEncoder`: values clamped above at `max_value` -> Linear(1, d) -> ReLU ->
  Linear(d, d) -> LayerNorm -> Dropout.
- their sum -> `nlayers` encoder layers, torch `nn.TransformerEncoderLayer` semantics (ReLU FFN,
  LayerNorm eps 1e-5, dropout on attention weights and after attention / FFN, key padding mask),
  no final norm. `norm_scheme`:
  - "post" (the released models; torch's default `norm_first=False`):
        x = norm1(x + attn(x));  x = norm2(x + ffn(x))
  - "pre", exactly as scGPT's `FlashTransformerEncoderLayer` writes it, which is not the usual
    pre-norm: the residual branch starts from the NORMALISED input,
        x = norm1(x);  x = x + attn(x);  x = norm2(x);  x = x + ffn(x)

Padded keys get zero attention weight (their logits are float32's most negative value, so their
exp underflows to exactly 0), so the `<cls>` output does not depend on padding.

Parameter tree (torch name -> Flax name), so the converter (`sigmma_jax.tools.scgpt_convert`) is a
table: `encoder.embedding` -> `encoder/embedding/embedding`, `encoder.enc_norm` ->
`encoder/enc_norm`, `value_encoder.{linear1,linear2,norm}` -> `value_encoder/{linear1,linear2,norm}`,
`transformer_encoder.layers.{i}.self_attn.in_proj_{weight,bias}` (flash-attn: `self_attn.Wqkv`) ->
`transformer_encoder/layers_{i}/self_attn/in_proj/{kernel,bias}`, `...self_attn.out_proj` ->
`.../self_attn/out_proj`, `...{linear1,linear2,norm1,norm2}` -> `.../{linear1,...}`.

Precision: parameters are float32; `dtype` is the compute dtype of the matmuls and the embedding
lookup. LayerNorms and the attention softmax run in float32, and the residual stream stays float32.

Converted weights on disk (a directory): `params/` (Orbax, as `backbones` stores backbones),
`vocab.json` (gene -> token id, special tokens included) and `scgpt.json` (model config, token ids,
pad_value, n_bins, source checksums), written last: its presence says the conversion is complete.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sigmma_jax.data import scgpt_tokens
from sigmma_jax.errors import InputError
from sigmma_jax.models import backbones

LN_EPS = 1e-5  # torch's LayerNorm default, every LayerNorm of scGPT
NORM_SCHEMES = ("post", "pre")
META = "scgpt.json"
VOCAB = "vocab.json"
ARCH = "scgpt"


def _layer_norm(x: jax.Array, name: str) -> jax.Array:
    """LayerNorm in float32 whatever the compute dtype."""
    return nn.LayerNorm(LN_EPS, dtype=jnp.float32, name=name)(x.astype(jnp.float32))


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class GeneEncoder(nn.Module):
    ntoken: int
    d_model: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, genes: jax.Array) -> jax.Array:
        # scGPT's init_weights: U(-0.1, 0.1) for the token embedding (padding row included).
        x = nn.Embed(
            self.ntoken,
            self.d_model,
            dtype=self.dtype,
            embedding_init=_uniform(0.1),
            name="embedding",
        )(genes)
        return _layer_norm(x, "enc_norm")


class ContinuousValueEncoder(nn.Module):
    d_model: int
    dropout: float
    max_value: float = 512.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, values: jax.Array, train: bool) -> jax.Array:
        x = jnp.minimum(values.astype(jnp.float32), self.max_value)[..., None]
        x = nn.relu(nn.Dense(self.d_model, dtype=self.dtype, name="linear1")(x))
        x = nn.Dense(self.d_model, dtype=self.dtype, name="linear2")(x)
        x = _layer_norm(x, "norm")
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class SelfAttention(nn.Module):
    """torch `nn.MultiheadAttention(batch_first=True)` self-attention with a key padding mask.

    `in_proj` packs q, k, v as (3, heads, head_dim) along its output axis: torch's in_proj_weight
    rows and flash-attn's `Wqkv` rows are both laid out that way, so either converts as is.
    """

    d_model: int
    nhead: int
    dropout: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        b, n, d = x.shape
        h = self.nhead
        if d % h:
            raise ValueError(f"d_model {d} is not a multiple of nhead {h}")
        qkv = nn.Dense(
            3 * d,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),  # torch MHA's _reset_parameters
            bias_init=nn.initializers.zeros,
            name="in_proj",
        )(x)
        q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, h, d // h), 2, 0)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits * (d // h) ** -0.5
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        probs = nn.Dropout(self.dropout, deterministic=not train)(probs)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v).reshape(b, n, d)
        return nn.Dense(d, dtype=self.dtype, bias_init=nn.initializers.zeros, name="out_proj")(
            out
        ).astype(jnp.float32)


class EncoderLayer(nn.Module):
    """torch `nn.TransformerEncoderLayer(d_model, nhead, d_hid, dropout, batch_first=True)` ("post")
    or scGPT's `FlashTransformerEncoderLayer(norm_scheme="pre")`; see the module docstring."""

    d_model: int
    nhead: int
    d_hid: int
    dropout: float
    norm_scheme: str = "post"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
        attn = SelfAttention(self.d_model, self.nhead, self.dropout, self.dtype, name="self_attn")

        def ffn(y):
            y = nn.relu(nn.Dense(self.d_hid, dtype=self.dtype, name="linear1")(y))
            return nn.Dense(self.d_model, dtype=self.dtype, name="linear2")(drop(y))

        if self.norm_scheme == "post":
            x = _layer_norm(x + drop(attn(x, mask, train)), "norm1")
            return _layer_norm(x + drop(ffn(x)).astype(jnp.float32), "norm2")
        if self.norm_scheme == "pre":
            x = _layer_norm(x, "norm1")
            x = x + drop(attn(x, mask, train))
            x = _layer_norm(x, "norm2")
            return x + drop(ffn(x)).astype(jnp.float32)
        raise ValueError(f"norm_scheme must be one of {NORM_SCHEMES}, got {self.norm_scheme!r}")


class TransformerEncoder(nn.Module):
    """torch `nn.TransformerEncoder(layer, nlayers)` without a final norm (scGPT passes none)."""

    nlayers: int
    d_model: int
    nhead: int
    d_hid: int
    dropout: float
    norm_scheme: str = "post"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        for i in range(self.nlayers):
            x = EncoderLayer(
                self.d_model,
                self.nhead,
                self.d_hid,
                self.dropout,
                self.norm_scheme,
                self.dtype,
                name=f"layers_{i}",
            )(x, mask, train)
        return x


class ScGPT(nn.Module):
    """scGPT's encoder and its `<cls>` embedding (module docstring).

    `pad_value` is the value the tokenizer gives `<cls>` and the padding (args.json's, -2 for the
    released models); the forward pass does not read it (padding is masked, `<cls>` is a token like
    any other), it travels with the config so the model's config is the whole model's.
    """

    ntoken: int
    d_model: int = 512
    nhead: int = 8
    d_hid: int = 512
    nlayers: int = 12
    dropout: float = 0.2
    pad_value: float = -2.0
    max_value: float = 512.0
    norm_scheme: str = "post"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, genes: jax.Array, values: jax.Array, mask: jax.Array, train: bool = False
    ) -> jax.Array:
        """(B, L) int32 token ids, float32 values, bool mask (True = real token, `<cls>` first)
        -> (B, d_model) float32: the `<cls>` position's final state, not normalised."""
        if self.norm_scheme not in NORM_SCHEMES:
            raise ValueError(f"norm_scheme must be one of {NORM_SCHEMES}, got {self.norm_scheme!r}")
        src = GeneEncoder(self.ntoken, self.d_model, self.dtype, name="encoder")(genes)
        vals = ContinuousValueEncoder(
            self.d_model, self.dropout, self.max_value, self.dtype, name="value_encoder"
        )(values, train)
        x = TransformerEncoder(
            self.nlayers,
            self.d_model,
            self.nhead,
            self.d_hid,
            self.dropout,
            self.norm_scheme,
            self.dtype,
            name="transformer_encoder",
        )(src + vals, mask.astype(bool), train)
        return x[:, 0].astype(jnp.float32)


FIELDS = (
    "ntoken",
    "d_model",
    "nhead",
    "d_hid",
    "nlayers",
    "dropout",
    "pad_value",
    "max_value",
    "norm_scheme",
)


def config_from_args(args: Mapping[str, Any], *, ntoken: int) -> dict[str, Any]:
    """ScGPT's constructor fields (not dtype) from a released model's args.json; `ntoken` is the
    vocabulary's size (its vocab.json with the special tokens appended), which args.json lacks.

    Raises InputError for what this port does not reproduce (another input_emb_style, batch
    labels, domain-specific batch norm) and for missing fields.
    """
    need = ("embsize", "nheads", "d_hid", "nlayers")
    missing = [k for k in need if k not in args]
    if missing:
        raise InputError(f"args.json lacks {', '.join(missing)}")
    style = args.get("input_emb_style", "continuous")
    if style != "continuous":
        raise InputError(
            f"args.json: input_emb_style {style!r}; only 'continuous' (the released models) is ported"
        )
    for key in ("use_batch_labels", "DSBN", "domain_spec_batchnorm"):
        if args.get(key):
            raise InputError(f"args.json: {key} is set; batch labels / DSBN are not ported")
    # embed_data builds the model with pre_norm=False; a checkpoint that says otherwise is honoured.
    return dict(
        ntoken=int(ntoken),
        d_model=int(args["embsize"]),
        nhead=int(args["nheads"]),
        d_hid=int(args["d_hid"]),
        nlayers=int(args["nlayers"]),
        dropout=float(args.get("dropout", 0.2)),
        pad_value=float(args.get("pad_value", -2)),
        max_value=512.0,
        norm_scheme="pre" if args.get("pre_norm") else "post",
    )


def build(cfg: Mapping[str, Any], *, dtype: Any = jnp.float32, name: str | None = None) -> ScGPT:
    """The module of a config (`config_from_args`, or the one saved with converted weights)."""
    unknown = sorted(set(cfg) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown scGPT config fields {unknown}; expected some of {FIELDS}")
    return ScGPT(**cfg, dtype=jnp.dtype(dtype), name=name)


def _dummy(seq_len: int):
    return (
        jnp.zeros((1, seq_len), jnp.int32),
        jnp.zeros((1, seq_len), jnp.float32),
        jnp.ones((1, seq_len), bool),
    )


def init_params(module: ScGPT, seq_len: int = 2, seed: int = 0):
    """Random parameters (jitted). Their shapes do not depend on `seq_len`."""
    return jax.jit(module.init)(jax.random.PRNGKey(seed), *_dummy(seq_len))["params"]


def abstract_params(module: ScGPT):
    """The parameters' ShapeDtypeStructs, without computing anything."""
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), *_dummy(2))["params"]


# ---------------------------------------------------------------------------------------------------
# Converted weights on disk.


def save(
    dst: str | pathlib.Path,
    cfg: Mapping[str, Any],
    params,
    vocab: Mapping[str, int],
    meta: Mapping[str, Any],
) -> None:
    """Writes params/ (Orbax), vocab.json, then scgpt.json (arch, config, `meta`) last."""
    from sigmma_jax import atomic  # pylint: disable=import-outside-toplevel

    dst = backbones.save_params(dst, params)
    atomic.write_json(dst / VOCAB, dict(vocab), indent=0)
    atomic.write_json(dst / META, dict(arch=ARCH, config=dict(cfg), **meta), indent=2)


def read_meta(path: str | pathlib.Path) -> dict:
    """The scgpt.json of a converted scGPT directory (InputError if `path` is not one)."""
    path = pathlib.Path(path)
    hint = "make one with `python -m sigmma_jax.convert --arch=scgpt --src=DIR --dst=DIR`"
    if not (path / META).exists():
        what = (
            "an image backbone's converted weights"
            if (path / backbones.META).exists()
            else "not a converted scGPT directory"
        )
        raise InputError(f"{path}: {what} (no {META}); {hint}")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path / META}: not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("arch") != ARCH or "config" not in meta:
        raise InputError(f"{path / META}: not the metadata of converted scGPT weights; {hint}")
    return meta


def read_vocab(path: str | pathlib.Path) -> dict[str, int]:
    """gene (and special token) -> token id of a converted scGPT directory."""
    path = pathlib.Path(path)
    read_meta(path)
    try:
        vocab = json.loads((path / VOCAB).read_text())
    except FileNotFoundError as e:
        raise InputError(f"{path}: no {VOCAB} beside {META}; convert again") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{path / VOCAB}: not JSON ({e})") from e
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise InputError(f"{path / VOCAB}: expected an object of gene -> integer token id")
    missing = [t for t in scgpt_tokens.SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise InputError(f"{path / VOCAB}: lacks the special tokens {missing}")
    return vocab


def load(path: str | pathlib.Path, like=None, *, dtype: Any = jnp.float32) -> tuple[ScGPT, Any]:
    """(module, params) of a converted scGPT directory; the module's compute dtype is `dtype`.

    `like` (arrays or ShapeDtypeStructs, e.g. the scGPT part of an initialised train state) gives
    the restored arrays their shardings; names and shapes must match exactly, and the error lists
    every difference (as `backbones.load`).
    """
    path = pathlib.Path(path)
    module = build(read_meta(path)["config"], dtype=dtype)
    return module, backbones._restore(path, abstract_params(module) if like is None else like)
