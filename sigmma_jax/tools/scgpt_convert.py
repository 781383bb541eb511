"""Ports a released scGPT model folder (args.json, vocab.json, best_model.pt; e.g. "whole-human") to
the Flax `sigmma_jax.models.scgpt.ScGPT` (the command: `python -m sigmma_jax.convert --arch=scgpt
--src=DIR --dst=weights/scgpt`).

- best_model.pt is read with `torch.load(weights_only=True)` (`tools.convert.read_state_dict`).
- Attention keys come in three namings, all accepted (one per file): torch-native
  `self_attn.in_proj_weight/in_proj_bias`, flash-attn's `self_attn.Wqkv.weight/bias` (the released
  checkpoints, trained with flash-attn 1.x) and the newer compatibility wrapper's
  `self_attn._impl.Wqkv` / `self_attn._impl.out_proj`. They hold the same (3, heads, head_dim)
  layout; scGPT's `load_pretrained` renames between them, here the key table follows the file.
- The heads the embedding does not use (`decoder`, `cls_decoder`, `mvc_decoder`, the adversarial
  discriminator) are dropped by `HEADS`; any other key that does not map (a batch encoder, DSBN, a
  deeper model...) stops the conversion, as does a missing or mis-shaped key: one message lists
  every problem. (scGPT's own `load_pretrained(strict=False)` skips such keys silently.)
- The vocabulary gets the special tokens `<pad>`, `<cls>`, `<eoc>` appended when it lacks them, as
  `embed_data` does; its size is the model's ntoken.

The output directory: `params/` (Orbax), `vocab.json`, `scgpt.json`; `models.scgpt.load` reads it.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
from typing import Any

import numpy as np

from sigmma_jax.data import scgpt_tokens
from sigmma_jax.errors import InputError
from sigmma_jax.models import scgpt
from sigmma_jax.tools.convert import IGNORED_BUFFERS, ConversionError, read_state_dict, sha256
from sigmma_jax.tools.keymaps import IDENTITY, LINEAR, Transform

ARGS, VOCAB, WEIGHTS = "args.json", "vocab.json", "best_model.pt"
# Heads of TransformerModel outside the embedding path (model.py: ExprDecoder, ClsDecoder,
# MVCDecoder, AdversarialDiscriminator).
HEADS = re.compile(r"^(decoder|cls_decoder|mvc_decoder|grad_reverse_discriminator)\.")
# The attention keys of each naming, relative to `transformer_encoder.layers.{i}.self_attn.`.
NAMINGS: dict[str, dict[str, str]] = {
    "in_proj": dict(
        qkv_w="in_proj_weight", qkv_b="in_proj_bias", out_w="out_proj.weight", out_b="out_proj.bias"
    ),
    "Wqkv": dict(
        qkv_w="Wqkv.weight", qkv_b="Wqkv.bias", out_w="out_proj.weight", out_b="out_proj.bias"
    ),
    "_impl.Wqkv": dict(
        qkv_w="_impl.Wqkv.weight",
        qkv_b="_impl.Wqkv.bias",
        out_w="_impl.out_proj.weight",
        out_b="_impl.out_proj.bias",
    ),
}


def attention_naming(keys) -> str:
    """The attention naming of a state dict's keys (`NAMINGS`); torch-native when none is found."""
    keys = list(keys)
    if any(".self_attn._impl.Wqkv." in k for k in keys):
        return "_impl.Wqkv"
    if any(".self_attn.Wqkv." in k for k in keys):
        return "Wqkv"
    return "in_proj"


def key_map(cfg: dict[str, Any], naming: str = "in_proj"):
    """torch name -> (Flax path, transform) of the ScGPT of `cfg`, attention keys in `naming`."""
    m: dict[str, tuple[tuple[str, ...], Transform]] = {
        "encoder.embedding.weight": (("encoder", "embedding", "embedding"), IDENTITY)
    }

    def norm(t, f):
        m[t + ".weight"] = ((*f, "scale"), IDENTITY)
        m[t + ".bias"] = ((*f, "bias"), IDENTITY)

    def linear(t, f):
        m[t + ".weight"] = ((*f, "kernel"), LINEAR)
        m[t + ".bias"] = ((*f, "bias"), IDENTITY)

    norm("encoder.enc_norm", ("encoder", "enc_norm"))
    linear("value_encoder.linear1", ("value_encoder", "linear1"))
    linear("value_encoder.linear2", ("value_encoder", "linear2"))
    norm("value_encoder.norm", ("value_encoder", "norm"))
    names = NAMINGS[naming]
    for i in range(cfg["nlayers"]):
        t, f = f"transformer_encoder.layers.{i}.", ("transformer_encoder", f"layers_{i}")
        a = t + "self_attn."
        m[a + names["qkv_w"]] = ((*f, "self_attn", "in_proj", "kernel"), LINEAR)
        m[a + names["qkv_b"]] = ((*f, "self_attn", "in_proj", "bias"), IDENTITY)
        m[a + names["out_w"]] = ((*f, "self_attn", "out_proj", "kernel"), LINEAR)
        m[a + names["out_b"]] = ((*f, "self_attn", "out_proj", "bias"), IDENTITY)
        for n in ("linear1", "linear2"):
            linear(t + n, (*f, n))
        for n in ("norm1", "norm2"):
            norm(t + n, (*f, n))
    return m


def convert_state_dict(
    sd: dict[str, np.ndarray], cfg: dict[str, Any], ignore: str | None = None
) -> tuple[dict, str]:
    """(Flax params, attention naming) of a torch state dict for the ScGPT of `cfg`.

    Raises ConversionError naming every missing, unused or mis-shaped key.
    """
    from flax import traverse_util  # pylint: disable=import-outside-toplevel

    expected = {
        k: tuple(v.shape)
        for k, v in traverse_util.flatten_dict(scgpt.abstract_params(scgpt.build(cfg))).items()
    }
    naming = attention_naming(sd)
    kmap = key_map(cfg, naming)
    mapped = {path for path, _ in kmap.values()}
    if mapped != set(expected):  # the key map and the Flax module must describe the same tree
        raise AssertionError(f"key map out of date: {sorted(mapped ^ set(expected))}")
    ign = re.compile(ignore) if ignore else None
    missing = sorted(k for k in kmap if k not in sd)
    unused = sorted(
        k
        for k in sd
        if k not in kmap
        and not HEADS.search(k)
        and not IGNORED_BUFFERS.search(k)
        and not (ign and ign.search(k))
    )
    flat, wrong = {}, []
    for tk, (path, fn) in kmap.items():
        if tk not in sd:
            continue
        a = np.asarray(sd[tk])
        want = expected[path]
        torch_shape = want[::-1] if fn is LINEAR else want
        if a.ndim != len(want) or fn(a).shape != want:
            wrong.append(f"{tk}: expected shape {tuple(torch_shape)}, found {tuple(a.shape)}")
            continue
        flat[path] = np.ascontiguousarray(fn(a), dtype=np.float32)
    problems = (
        [f"missing key {k}" for k in missing]
        + [f"unused key {k}" for k in unused]
        + [f"wrong shape {w}" for w in wrong]
    )
    if problems:
        raise ConversionError(
            f"state dict does not match the scGPT of args.json ({naming} attention keys; "
            f"{len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    return traverse_util.unflatten_dict(flat), naming


def read_vocab(path: pathlib.Path, pad_token: str) -> tuple[dict[str, int], list[str]]:
    """(vocab with the special tokens, the tokens appended) of a released vocab.json.

    GeneVocab needs the ids to be 0..n-1; each missing special token takes the next id
    (`embed_data`'s `vocab.append_token`).
    """
    try:
        vocab = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not JSON ({e})") from e
    if not isinstance(vocab, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()
    ):
        raise ConversionError(f"{path}: expected an object of gene -> integer token id")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ConversionError(f"{path}: token ids are not 0..{len(vocab) - 1}, each once")
    vocab = dict(vocab)
    appended = []
    for t in dict.fromkeys((pad_token, *scgpt_tokens.SPECIAL_TOKENS)):
        if t not in vocab:
            vocab[t] = len(vocab)
            appended.append(t)
    return vocab, appended


def _file(path: pathlib.Path) -> dict[str, Any]:
    return dict(file=path.name, sha256=sha256(path), bytes=path.stat().st_size)


def convert(
    src_dir: str | pathlib.Path,
    dst_dir: str | pathlib.Path,
    *,
    ignore: str | None = None,
    **overrides,
) -> dict:
    """Reads the released folder `src_dir`, writes `dst_dir`; returns the metadata written to
    `dst_dir/scgpt.json`. `overrides` replace fields of the config made from args.json (e.g.
    norm_scheme="pre"); `ignore` is a regex of further source keys to drop."""
    src = pathlib.Path(src_dir)
    if not src.is_dir():
        raise ConversionError(
            f"{src}: expected a released scGPT folder ({ARGS}, {VOCAB}, {WEIGHTS})"
        )
    absent = [n for n in (ARGS, VOCAB, WEIGHTS) if not (src / n).is_file()]
    if absent:
        raise ConversionError(
            f"{src}: no {', '.join(absent)} (a released scGPT folder has all three)"
        )
    try:
        args = json.loads((src / ARGS).read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{src / ARGS}: not JSON ({e})") from e
    pad_token = str(args.get("pad_token", scgpt_tokens.PAD))
    vocab, appended = read_vocab(src / VOCAB, pad_token)
    try:
        cfg = scgpt.config_from_args(args, ntoken=len(vocab))
    except InputError as e:
        raise ConversionError(f"{src / ARGS}: {e}") from e
    unknown = sorted(set(overrides) - set(scgpt.FIELDS))
    if unknown:
        raise ConversionError(
            f"unknown scGPT config fields {unknown}; expected some of {scgpt.FIELDS}"
        )
    cfg.update(overrides)
    if cfg["norm_scheme"] not in scgpt.NORM_SCHEMES:
        raise ConversionError(f"norm_scheme must be one of {scgpt.NORM_SCHEMES}")
    sd = read_state_dict(src / WEIGHTS)
    params, naming = convert_state_dict(sd, cfg, ignore)
    meta = dict(
        pad_token=pad_token,
        pad_id=vocab[pad_token],
        cls_id=vocab[scgpt_tokens.CLS],
        eoc_id=vocab[scgpt_tokens.EOC],
        pad_value=cfg["pad_value"],
        # scGPT's DataCollator bins with n_bins=51 whatever args.json says; args' value is kept.
        n_bins=int(args.get("n_bins", scgpt_tokens.N_BINS)),
        max_len=scgpt_tokens.MAX_LEN,
        appended_tokens=appended,
        source=dict(
            dir=str(src.absolute()),
            weights=_file(src / WEIGHTS),
            args=_file(src / ARGS),
            vocab=_file(src / VOCAB),
            tensors=len(sd),
            attention_naming=naming,
        ),
        ignored=HEADS.pattern + (f" | {ignore}" if ignore else ""),
        converted=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        args=args,
    )
    scgpt.save(dst_dir, cfg, params, vocab, meta)
    return scgpt.read_meta(dst_dir)
