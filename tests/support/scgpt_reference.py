"""scGPT's embedding path rebuilt in torch, the reference of tests/models/test_scgpt.py, and a fake
released model folder written from it.

Mirrors bowang-lab/scGPT at commit cebd6fa (HEAD of the mirror), scgpt/model/model.py:
`GeneEncoder`, `ContinuousValueEncoder`, `ExprDecoder`, `ClsDecoder`, `MVCDecoder` (inner product
only) and `FlashTransformerEncoderLayer` copied as written; `TransformerModel.__init__` (the parts
`embed_data` builds: continuous values, no batch labels, no DSBN, do_mvc=True, n_cls=1) and
`TransformerModel._encode`; the `<cls>` output and the padding mask (`genes == pad id`) as
scgpt/tasks/cell_emb.py `get_batch_cell_embeddings` takes them (without its final L2 norm, which
`ScGPT` leaves to its caller). The `scgpt` package itself cannot be installed here (its pins).

- norm_scheme "post": `nn.TransformerEncoder(nn.TransformerEncoderLayer(d_model, nhead, d_hid,
  dropout, batch_first=True), nlayers)`, torch's own layer, as TransformerModel builds it without
  flash-attn (in eval mode torch runs its nested-tensor fast path here, as it does for scGPT).
- norm_scheme "pre": `FlashTransformerEncoderLayer(norm_scheme="pre")`'s forward with torch's
  `nn.MultiheadAttention` in place of FlashMHA (flash-attn needs CUDA). FlashMHA takes a mask with
  True = keep, so the layer inverts torch's; MultiheadAttention takes torch's (True = pad) as is.

`write_release` saves such a model as a released folder: args.json (the whole-human keys that
matter), vocab.json, best_model.pt (the state dict, attention keys in flash-attn's `Wqkv` naming by
default, decoder heads included).
"""

from __future__ import annotations

import json
import pathlib
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import TransformerEncoder, TransformerEncoderLayer

from sigmma_jax.tools.bench import parity

SPECIALS = ("<pad>", "<cls>", "<eoc>")


class GeneEncoder(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: Optional[int] = None):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embedding(x)  # (batch, seq_len, embsize)
        x = self.enc_norm(x)
        return x


class ContinuousValueEncoder(nn.Module):
    def __init__(self, d_model: int, dropout: float = 0.1, max_value: int = 512):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(-1)
        x = torch.clamp(x, max=self.max_value)
        x = self.activation(self.linear1(x))
        x = self.linear2(x)
        x = self.norm(x)
        return self.dropout(x)


class FlashTransformerEncoderLayer(nn.Module):
    """scGPT's layer; `self_attn` is torch's MultiheadAttention (module docstring)."""

    def __init__(
        self,
        d_model,
        nhead,
        dim_feedforward=2048,
        dropout=0.1,
        activation="relu",
        layer_norm_eps=1e-5,
        batch_first=True,
        norm_scheme="post",
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            d_model, nhead, dropout=dropout, batch_first=batch_first
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = {"relu": F.relu, "gelu": F.gelu}[activation]
        self.norm_scheme = norm_scheme
        if self.norm_scheme not in ["pre", "post"]:
            raise ValueError(f"norm_scheme should be pre or post, not {norm_scheme}")

    def _attn(self, src, key_padding_mask):
        return self.self_attn(src, src, src, key_padding_mask=key_padding_mask, need_weights=False)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, **kwargs):
        if src_mask is not None:
            raise ValueError("FlashTransformerEncoderLayer does not support src_mask")
        if not src_key_padding_mask.any().item():
            src_key_padding_mask_ = None
        else:
            if src_key_padding_mask.dtype != torch.bool:
                src_key_padding_mask = src_key_padding_mask.bool()
            # scGPT inverts here for FlashMHA (True = keep); MultiheadAttention wants True = pad.
            src_key_padding_mask_ = src_key_padding_mask

        if self.norm_scheme == "pre":
            src = self.norm1(src)
            src2 = self._attn(src, src_key_padding_mask_)[0]
            src = src + self.dropout1(src2)
            src = self.norm2(src)
            src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
            src = src + self.dropout2(src2)
        else:
            src2 = self._attn(src, src_key_padding_mask_)[0]
            src = src + self.dropout1(src2)
            src = self.norm1(src)
            src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
            src = src + self.dropout2(src2)
            src = self.norm2(src)
        return src


class ExprDecoder(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )


class ClsDecoder(nn.Module):
    def __init__(self, d_model: int, n_cls: int, nlayers: int = 3, activation=nn.ReLU):
        super().__init__()
        self._decoder = nn.ModuleList()
        for _ in range(nlayers - 1):
            self._decoder.append(nn.Linear(d_model, d_model))
            self._decoder.append(activation())
            self._decoder.append(nn.LayerNorm(d_model))
        self.out_layer = nn.Linear(d_model, n_cls)


class MVCDecoder(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.gene2query = nn.Linear(d_model, d_model)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(d_model, d_model, bias=False)


class TransformerModel(nn.Module):
    """The state-dict layout and `_encode` of scGPT's TransformerModel as `embed_data` builds it."""

    def __init__(
        self,
        ntoken: int,
        d_model: int,
        nhead: int,
        d_hid: int,
        nlayers: int,
        pad_id: int,
        dropout: float = 0.2,
        nlayers_cls: int = 3,
        norm_scheme: str = "post",
    ):
        super().__init__()
        self.encoder = GeneEncoder(ntoken, d_model, padding_idx=pad_id)
        self.value_encoder = ContinuousValueEncoder(d_model, dropout)
        if norm_scheme == "post":
            layer = TransformerEncoderLayer(d_model, nhead, d_hid, dropout, batch_first=True)
        else:
            layer = FlashTransformerEncoderLayer(
                d_model, nhead, d_hid, dropout, batch_first=True, norm_scheme=norm_scheme
            )
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ..." for scGPT's layer
            warnings.simplefilter("ignore", UserWarning)
            self.transformer_encoder = TransformerEncoder(layer, nlayers)
        self.decoder = ExprDecoder(d_model)
        self.cls_decoder = ClsDecoder(d_model, 1, nlayers=nlayers_cls)
        self.mvc_decoder = MVCDecoder(d_model)
        self.encoder.embedding.weight.data.uniform_(-0.1, 0.1)  # init_weights

    def _encode(self, src: Tensor, values: Tensor, src_key_padding_mask: Tensor) -> Tensor:
        src = self.encoder(src)
        values = self.value_encoder(values)
        total_embs = src + values
        return self.transformer_encoder(total_embs, src_key_padding_mask=src_key_padding_mask)


def model(
    ntoken: int,
    pad_id: int,
    d_model: int = 32,
    nhead: int = 4,
    d_hid: int = 48,
    nlayers: int = 2,
    norm_scheme: str = "post",
    seed: int = 0,
) -> TransformerModel:
    """A random reference model in eval mode, every weight redrawn at O(1) scale
    (`parity.randomize_`) so each one shapes the output."""
    torch.manual_seed(seed)
    m = TransformerModel(ntoken, d_model, nhead, d_hid, nlayers, pad_id, norm_scheme=norm_scheme)
    parity.randomize_(m, seed + 1)
    return m.eval()


def cls_embedding(m: TransformerModel, genes: np.ndarray, values: np.ndarray, pad_id: int):
    """get_batch_cell_embeddings' `<cls>` output before its L2 norm: (B, d_model) float32."""
    g = torch.from_numpy(np.asarray(genes, np.int64))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The PyTorch API of nested tensors")
        out = m._encode(g, torch.from_numpy(np.asarray(values, np.float32)), g.eq(pad_id))
    return out[:, 0].numpy()


def state_dict(m: TransformerModel, naming: str = "Wqkv") -> dict[str, Tensor]:
    """The model's state dict with its attention keys in `naming`: "in_proj" (torch), "Wqkv"
    (flash-attn 1.x, the released checkpoints) or "_impl.Wqkv" (scGPT's newer wrapper)."""
    rename = {
        "in_proj": {},
        "Wqkv": {"self_attn.in_proj_weight": "self_attn.Wqkv.weight",
                 "self_attn.in_proj_bias": "self_attn.Wqkv.bias"},
        "_impl.Wqkv": {"self_attn.in_proj_weight": "self_attn._impl.Wqkv.weight",
                       "self_attn.in_proj_bias": "self_attn._impl.Wqkv.bias",
                       "self_attn.out_proj.": "self_attn._impl.out_proj."},
    }[naming]  # fmt: skip
    out = {}
    for k, v in m.state_dict().items():
        for a, b in rename.items():
            k = k.replace(a, b)
        out[k] = v.detach().clone()
    return out


def release_args(m: TransformerModel, norm_scheme: str = "post") -> dict:
    """args.json of a released model (whole-human's keys that matter, and a few that do not)."""
    layer = m.transformer_encoder.layers[0]
    args = dict(
        embsize=layer.linear1.in_features,
        nheads=layer.self_attn.num_heads,
        d_hid=layer.linear1.out_features,
        nlayers=len(m.transformer_encoder.layers),
        dropout=0.2,
        n_bins=51,
        pad_token="<pad>",
        pad_value=-2,
        mask_value=-1,
        input_emb_style="continuous",
        input_style="binned",
        n_layers_cls=3,
        max_seq_len=1200,
        fast_transformer=True,
        MVC=True,
    )
    if norm_scheme == "pre":
        args["pre_norm"] = True
    return args


def write_release(
    folder: pathlib.Path,
    n_genes: int = 20,
    norm_scheme: str = "post",
    naming: str = "Wqkv",
    drop_specials: tuple[str, ...] = (),
    seed: int = 0,
    **model_kw,
) -> tuple[TransformerModel, dict[str, int]]:
    """A released folder (args.json, vocab.json, best_model.pt) of a random reference model over
    genes G0..G{n-1} then the special tokens; `drop_specials` are left out of vocab.json (the
    converter must append them, taking the next ids). Returns (model, the full vocabulary)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    full = {f"G{i}": i for i in range(n_genes)}
    full.update(
        {t: n_genes + j for j, t in enumerate(t for t in SPECIALS if t not in drop_specials)}
    )
    for t in drop_specials:
        full[t] = len(full)
    m = model(len(full), full["<pad>"], norm_scheme=norm_scheme, seed=seed, **model_kw)
    (folder / "args.json").write_text(json.dumps(release_args(m, norm_scheme)))
    on_disk = {k: v for k, v in full.items() if k not in drop_specials}
    (folder / "vocab.json").write_text(json.dumps(on_disk))
    torch.save(state_dict(m, naming), folder / "best_model.pt")
    return m, full
