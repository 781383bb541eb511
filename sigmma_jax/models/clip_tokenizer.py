"""CLIP's byte-level BPE tokenizer (OpenAI CLIP, open_clip's `SimpleTokenizer`), in plain Python.

    tok = ClipTokenizer.from_files("weights/plip/text")     # a converted text directory, or the files
    ids = tok(["EPCAM KRT8 CD3E", "a tile of tumour"])      # np.int32 (2, 77): SOT ... EOT, zero-padded

The text is cleaned as open_clip does (ftfy.fix_text, HTML unescaped twice, whitespace collapsed,
lower-cased), split with CLIP's regex, each piece's UTF-8 bytes mapped to printable characters
(`bytes_to_unicode`) and merged by rank. A sequence longer than the context is cut to it and its last
token set to EOT, as `open_clip.tokenize` does, so argmax pooling still finds the EOT.

Vocabularies read (the same 49,408 tokens in every published form):
- open_clip's `bpe_simple_vocab_16e6.txt.gz` (merges only; the vocabulary is built from them, with
  the special tokens `<start_of_text>` / `<end_of_text>` at ids 49406 / 49407),
- Hugging Face `vocab.json` + `merges.txt` (openai/clip-vit-base-patch32),
- Hugging Face `tokenizer.json` (vinid/plip publishes only this form).
The Hugging Face files name the special tokens `<|startoftext|>` / `<|endoftext|>`; the ids agree.
"""

from __future__ import annotations

import gzip
import html
import json
import pathlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

CONTEXT_LENGTH = 77
BPE_GZ = "bpe_simple_vocab_16e6.txt.gz"
HF_VOCAB, HF_MERGES, HF_TOKENIZER = "vocab.json", "merges.txt", "tokenizer.json"
# open_clip keeps the first 49152 - 256 - 2 merges of the file (the rest were never trained).
N_MERGES = 49152 - 256 - 2
_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Each byte -> a printable character: the printable Latin-1 bytes stand for themselves, the
    rest are shifted above 255, so BPE never sees whitespace or control characters."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML entities (twice), whitespace, lower case."""
    import ftfy  # pylint: disable=import-outside-toplevel

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


class ClipTokenizer:
    """CLIP's BPE over a vocabulary (`encoder`: token -> id) and ranked merges."""

    def __init__(
        self,
        encoder: dict[str, int],
        merges: Sequence[tuple[str, str]],
        special: tuple[str, str],
        context_length: int = CONTEXT_LENGTH,
    ):
        import regex  # pylint: disable=import-outside-toplevel

        self.encoder = encoder
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.special = special
        self.sot_id, self.eot_id = (encoder[s] for s in special)
        self.context_length = int(context_length)
        self.byte_encoder = bytes_to_unicode()
        self.cache: dict[str, str] = {s: s for s in special}
        # The special tokens written out in a text stay one token each (OpenAI's and open_clip's rule).
        alternatives = "|".join(regex.escape(s) for s in special)
        self.pattern = regex.compile(alternatives + "|" + _PATTERN, regex.IGNORECASE)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # ---- reading the published vocabularies -------------------------------------------------------

    @classmethod
    def from_bpe_gz(cls, path: str | pathlib.Path, **kw) -> "ClipTokenizer":
        """open_clip's / OpenAI's `bpe_simple_vocab_16e6.txt.gz`."""
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        special = ("<start_of_text>", "<end_of_text>")
        vocab += list(special)
        return cls(dict(zip(vocab, range(len(vocab)))), merges, special, **kw)

    @classmethod
    def from_hf(
        cls, vocab_json: str | pathlib.Path, merges_txt: str | pathlib.Path, **kw
    ) -> "ClipTokenizer":
        """A Hugging Face CLIPTokenizer's `vocab.json` + `merges.txt`."""
        encoder = json.loads(pathlib.Path(vocab_json).read_text(encoding="utf-8"))
        lines = pathlib.Path(merges_txt).read_text(encoding="utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
        return cls(encoder, merges, _hf_special(encoder, vocab_json), **kw)

    @classmethod
    def from_tokenizer_json(cls, path: str | pathlib.Path, **kw) -> "ClipTokenizer":
        """A Hugging Face fast tokenizer's `tokenizer.json` (its BPE model's vocab and merges)."""
        try:
            model = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))["model"]
            encoder, raw = model["vocab"], model["merges"]
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a BPE tokenizer.json ({e})") from e
        merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in raw]
        return cls(encoder, merges, _hf_special(encoder, path), **kw)

    @classmethod
    def from_files(cls, where: str | pathlib.Path, **kw) -> "ClipTokenizer":
        """The tokenizer of a directory holding one of the vocabularies (see `vocab_files`), or of
        one such file."""
        files = vocab_files(where)
        if files is None:
            raise FileNotFoundError(
                f"{where}: no CLIP vocabulary ({BPE_GZ}, {HF_VOCAB} + {HF_MERGES}, or {HF_TOKENIZER})"
            )
        if files[0].name == HF_VOCAB:
            return cls.from_hf(*files, **kw)
        if files[0].name.endswith(".json"):
            return cls.from_tokenizer_json(files[0], **kw)
        return cls.from_bpe_gz(files[0], **kw)

    # ---- tokenizing ------------------------------------------------------------------------------

    def bpe(self, token: str) -> str:
        """The space-separated BPE pieces of one pre-token (its characters already byte-mapped)."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        while pairs:
            first, second = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if (first, second) not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            pairs = _pairs(word) if len(word) > 1 else set()
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without SOT / EOT."""
        ids = []
        for piece in self.pattern.findall(clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """(N, context_length) int32: SOT, the text's ids, EOT, zeros; cut to the context with EOT kept
        last."""
        if isinstance(texts, str):
            texts = [texts]
        n = int(context_length or self.context_length)
        out = np.zeros((len(texts), n), np.int32)
        for i, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot_id
            out[i, : len(ids)] = ids
        return out


def _hf_special(encoder: dict[str, int], where) -> tuple[str, str]:
    special = ("<|startoftext|>", "<|endoftext|>")
    missing = [s for s in special if s not in encoder]
    if missing:
        raise ValueError(
            f"{where}: the vocabulary has no {' / '.join(missing)}; not a CLIP tokenizer"
        )
    return special


def vocab_files(where: str | pathlib.Path) -> tuple[pathlib.Path, ...] | None:
    """The vocabulary files in directory `where` (or `where` itself when it is one), preferring
    vocab.json + merges.txt, then tokenizer.json, then bpe_simple_vocab_16e6.txt.gz; None if none."""
    where = pathlib.Path(where)
    if where.is_file():
        if where.name == HF_VOCAB and (where.parent / HF_MERGES).exists():
            return where, where.parent / HF_MERGES
        return (where,) if where.name.endswith((".json", ".gz")) else None
    if (where / HF_VOCAB).exists() and (where / HF_MERGES).exists():
        return where / HF_VOCAB, where / HF_MERGES
    for name in (HF_TOKENIZER, BPE_GZ):
        if (where / name).exists():
            return (where / name,)
    return None


def open_clip_vocab() -> pathlib.Path | None:
    """open_clip's shipped `bpe_simple_vocab_16e6.txt.gz`, found without importing open_clip (whose
    import pulls in torchvision); None when open_clip is not installed."""
    import importlib.util  # pylint: disable=import-outside-toplevel

    spec = importlib.util.find_spec("open_clip")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = pathlib.Path(root) / BPE_GZ
        if path.exists():
            return path
    return None
