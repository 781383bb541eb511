"""The host-side input of scGPT (`sigmma_jax.models.scgpt.ScGPT`) for a batch of spots: gene tokens,
binned values and a padding mask, built as scGPT's `get_batch_cell_embeddings` and `DataCollator`
build them (bowang-lab/scGPT at cebd6fa: scgpt/tasks/cell_emb.py, scgpt/data_collator.py,
scgpt/preprocess.py `binning`, `_digitize`).

Per spot (one row of counts over the panel):
1. the nonzero genes that have a token id (a panel gene absent from the vocabulary is skipped, as
   `embed_data` drops it from the AnnData);
2. their values binned with scGPT's `binning(row, n_bins)`: quantiles of the row's nonzero values,
   `_digitize(side="both")`, which spreads values tied with a bin edge uniformly at random over the
   bins they tie with;
3. `<cls>` first, with value `pad_value`;
4. when longer than the length, a random subset keeping the first token (`<cls>`);
5. padded with the pad token and `pad_value`.

Two differences, both deliberate:
- The length is FIXED for a gene panel, `seq_len(tokens, max_len)` = min(max_len, 1 + number of
  panel genes with a token), where scGPT pads each batch to its longest row: shapes stay static
  under jit, and the `<cls>` output does not depend on padding (padded keys get no attention).
- scGPT draws its tie-spreading numbers (`np.random.rand`) and its sample (`torch.randperm`) from
  unseeded global generators; here they come from an explicit `np.random.Generator`, so the same
  spot and seed give the same tokens. The draws are in scGPT's order: the binning draws (one per
  nonzero gene, over all of them) before the sample.

A row without any nonzero gene is `<cls>` alone (scGPT's collator fails on it: `binning` takes the
maximum of an empty row).

numpy only: the data workers import this module, and JAX has no place in them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PAD, CLS, EOC = "<pad>", "<cls>", "<eoc>"
# The special tokens `embed_data` appends to a vocabulary that lacks them, in its order.
SPECIAL_TOKENS = (PAD, CLS, EOC)
N_BINS = 51  # scGPT's DataCollator bins with n_bins=51 whatever args.json says
MAX_LEN = 1200  # `embed_data`'s max_length


def panel_vocab(panel: Sequence[str]) -> dict[str, int]:
    """A vocabulary of the panel itself, for a model trained without converted weights:
    {"<pad>": 0, "<cls>": 1, "<eoc>": 2, then the panel genes in order}."""
    panel = [str(g) for g in panel]
    clash = sorted(set(panel) & set(SPECIAL_TOKENS))
    if clash:
        raise ValueError(f"gene panel holds scGPT's special tokens {clash}")
    seen: set[str] = set()
    dup = sorted({g for g in panel if g in seen or seen.add(g)})
    if dup:
        raise ValueError(f"gene panel names genes more than once: {dup[:10]}")
    return {t: i for i, t in enumerate((*SPECIAL_TOKENS, *panel))}


def gene_tokens(panel: Sequence[str], vocab: Mapping[str, int]) -> np.ndarray:
    """Token id of each panel gene, -1 where the vocabulary has no such gene (int64, (G,))."""
    return np.array([int(vocab.get(str(g), -1)) for g in panel], np.int64)


def seq_len(tokens: np.ndarray, max_len: int = MAX_LEN) -> int:
    """The fixed sequence length of a panel: `<cls>` plus every panel gene with a token, at most
    `max_len`."""
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1 (the <cls> token), got {max_len}")
    return int(min(max_len, 1 + int(np.count_nonzero(np.asarray(tokens) >= 0))))


def digitize(x: np.ndarray, bins: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scGPT's `_digitize(x, bins, side="both")` with the uniform draws (one per value, always
    drawn) from `rng`: a value tied with several bin edges lands uniformly in one of those bins."""
    assert x.ndim == 1 and bins.ndim == 1
    left = np.digitize(x, bins)
    right = np.digitize(x, bins, right=True)
    rands = rng.random(len(x))
    return np.ceil(rands * (right - left) + left).astype(np.int64)


def binning(row: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """scGPT's `binning(row, n_bins)`: bins 1..n_bins-1 by the quantiles of the row's nonzero
    values, zeros stay 0 (a row without a positive value is all zeros), in the row's dtype."""
    row = np.asarray(row)
    dtype = row.dtype
    if row.max() == 0:
        return np.zeros_like(row, dtype=dtype)
    if row.min() <= 0:
        nonzero = row.nonzero()
        values = row[nonzero]
        bins = np.quantile(values, np.linspace(0, 1, n_bins - 1))
        binned = np.zeros_like(row, dtype=np.int64)
        binned[nonzero] = digitize(values, bins, rng)
    else:
        bins = np.quantile(row, np.linspace(0, 1, n_bins - 1))
        binned = digitize(row, bins, rng)
    return binned.astype(dtype)


def tokenize(
    counts: np.ndarray,
    tokens: np.ndarray,
    length: int,
    pad_id: int,
    cls_id: int,
    pad_value: float,
    n_bins: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(genes int32, values float32, mask bool), each (length,), of one spot's counts over the
    panel (G,), with `tokens` = `gene_tokens(panel, vocab)` and `length` = `seq_len(tokens, ...)`.
    mask is True at real tokens (`<cls>` and genes), False at padding."""
    counts = np.asarray(counts, np.float32)
    tokens = np.asarray(tokens)
    if counts.shape != tokens.shape or counts.ndim != 1:
        raise ValueError(f"counts {counts.shape} and tokens {tokens.shape} must be (G,) each")
    if length < 1:
        raise ValueError(f"length must be at least 1 (the <cls> token), got {length}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be finite and non-negative")
    keep = np.nonzero((counts != 0) & (tokens >= 0))[0]
    genes = np.concatenate([[cls_id], tokens[keep]]).astype(np.int32)
    values = np.full(len(genes), pad_value, np.float32)
    if len(keep):
        values[1:] = binning(counts[keep], n_bins, rng)
    if len(genes) > length:  # DataCollator._sample with keep_first_n_tokens=1
        pick = np.concatenate([[0], 1 + rng.permutation(len(genes) - 1)[: length - 1]])
        genes, values = genes[pick], values[pick]
    n = len(genes)
    out_genes = np.full(length, pad_id, np.int32)
    out_values = np.full(length, pad_value, np.float32)
    out_genes[:n], out_values[:n] = genes, values
    return out_genes, out_values, np.arange(length) < n


def tokenize_batch(
    counts: np.ndarray,
    tokens: np.ndarray,
    length: int,
    pad_id: int,
    cls_id: int,
    pad_value: float,
    n_bins: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`tokenize` of each row of (B, G) counts, stacked: (B, length) genes, values, mask. Rows
    draw from `rng` in order."""
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must be (B, G), got {counts.shape}")
    rows = [tokenize(c, tokens, length, pad_id, cls_id, pad_value, n_bins, rng) for c in counts]
    if not rows:
        return (
            np.zeros((0, length), np.int32),
            np.zeros((0, length), np.float32),
            np.zeros((0, length), bool),
        )
    return tuple(np.stack(a) for a in zip(*rows))  # type: ignore[return-value]
