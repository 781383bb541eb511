"""Ports a PyTorch (timm) backbone state dict to Flax parameters saved with Orbax
(the command: `python -m sigmma_jax.convert`).

Reading is safe: `torch.load(weights_only=True)` for `.bin`/`.pt`/`.pth` (torch is needed only
for these: `pip install sigmma_jax[torch]`), or safetensors for `.safetensors`. Never an unrestricted
unpickle. Every key is mapped; a missing, unused or mis-shaped key stops the conversion with a
message naming it (`--ignore=REGEX` drops keys you know are not part of the backbone, e.g. a
classifier head). A position embedding trained on another grid is resampled to `--img_size` (default:
the preset's) with timm's bicubic, antialiased `resample_abs_pos_embed`. The output directory holds
`params/` (Orbax) and `backbone.json` (architecture, model config, the source file's SHA-256).
`sigmma_jax.models.backbones.load(dst)` reads it.
"""

from __future__ import annotations

import datetime
import hashlib
import pathlib
import pickle
import re
from typing import Any

import numpy as np

from sigmma_jax.models import backbones, text
from sigmma_jax.tools import keymaps, references
from sigmma_jax.tools.keymaps import clip

TORCH_SUFFIXES = (".bin", ".pt", ".pth")
# Buffers with no meaning for a model in inference form; skipped without complaint.
IGNORED_BUFFERS = re.compile(r"(^|\.)num_batches_tracked$")


class ConversionError(ValueError):
    pass


def sha256(path: str | pathlib.Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _to_numpy(t) -> np.ndarray:
    import torch  # pylint: disable=import-outside-toplevel

    if t.is_floating_point():
        return t.detach().to(dtype=torch.float32).cpu().numpy()
    return t.detach().cpu().numpy()


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A flat {name: array} from a PyTorch pickle (weights_only; a lone "model" or "state_dict"
    wrapper is unwrapped) or a safetensors file."""
    path = pathlib.Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open  # pylint: disable=import-outside-toplevel

        try:
            with safe_open(str(path), framework="np") as f:
                return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}
        except (TypeError, ValueError):  # bfloat16 has no numpy dtype: go through torch
            with safe_open(str(path), framework="pt") as f:
                return {k: _to_numpy(f.get_tensor(k)) for k in f.keys()}
    if path.suffix not in TORCH_SUFFIXES:
        raise ConversionError(f"{path}: expected a .safetensors or {'/'.join(TORCH_SUFFIXES)} file")
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ConversionError(
            f"reading {path.name} needs PyTorch: pip install 'sigmma_jax[torch]' "
            "(or convert a .safetensors file, which does not)"
        ) from e
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path}: refused by torch.load(weights_only=True), which loads tensors "
            f"and plain containers only: {str(e).splitlines()[0]}"
        ) from e
    # A training script's lone wrapper key, e.g. CTransPath's {"model": state_dict}.
    if isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in ("model", "state_dict"):
        sd = next(iter(sd.values()))
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = list(sd)[:5] if isinstance(sd, dict) else type(sd).__name__
        raise ConversionError(
            f"{path} is not a flat state dict of tensors (top level: {keys}); "
            "save `model.state_dict()` itself"
        )
    return {k: _to_numpy(v) for k, v in sd.items()}


# The torch shape a Flax shape comes from, for the error message.
_TORCH_SHAPE = {
    keymaps.IDENTITY: tuple,
    keymaps.LINEAR: lambda s: tuple(s[::-1]),
    keymaps.CONV: lambda s: (s[3], s[2], s[0], s[1]),
}


def _pos_grid(n_tokens: int, prefix: int, what: str) -> int:
    side = int(round((n_tokens - prefix) ** 0.5))
    if side * side != n_tokens - prefix:
        raise ConversionError(
            f"{what}: {n_tokens} tokens minus {prefix} prefix tokens is not a square grid"
        )
    return side


def convert_state_dict(
    sd: dict[str, np.ndarray], cfg: dict[str, Any], ignore: str | None = None
) -> tuple[dict, dict[str, Any]]:
    """(Flax params, notes) from a torch state dict for the model of `cfg` (a backbones config).

    Raises ConversionError naming every missing, unused or mis-shaped key.
    """
    from flax import traverse_util  # pylint: disable=import-outside-toplevel

    model = backbones.build(cfg)
    expected = {
        k: tuple(v.shape)
        for k, v in traverse_util.flatten_dict(backbones.abstract_params(model)).items()
    }
    sd = keymaps.adapt(sd, cfg)
    kmap = keymaps.key_map(cfg)
    mapped = {path for path, _ in kmap.values()}
    if mapped != set(expected):  # the key map and the Flax module must describe the same tree
        raise AssertionError(f"key map out of date: {sorted(mapped ^ set(expected))}")
    ign = re.compile(ignore) if ignore else None
    notes: dict[str, Any] = {}
    missing = sorted(k for k in kmap if k not in sd)
    unused = sorted(
        k
        for k in sd
        if k not in kmap and not IGNORED_BUFFERS.search(k) and not (ign and ign.search(k))
    )
    flat, wrong = {}, []
    for tk, (path, fn) in kmap.items():
        if tk not in sd:
            continue
        a = np.asarray(sd[tk])
        want = expected[path]
        torch_shape = _TORCH_SHAPE.get(fn, lambda s: f"{s} after transposing")(want)
        if tk == "pos_embed" and a.ndim == 3 and a.shape[-1] == want[-1] and a.shape != want:
            try:
                a = _resample_pos_embed(a, cfg, want)
            except ConversionError as e:
                wrong.append(f"{tk}: {e}")
                continue
            notes["pos_embed_resampled"] = [list(sd[tk].shape), list(a.shape)]
        if a.ndim != len(want) or fn(a).shape != want:
            wrong.append(f"{tk}: expected shape {torch_shape}, found {tuple(sd[tk].shape)}")
            continue
        a = fn(a)
        flat[path] = np.ascontiguousarray(a, dtype=np.float32)
    problems = (
        [f"missing key {k}" for k in missing]
        + [f"unused key {k}" for k in unused]
        + [f"wrong shape {w}" for w in wrong]
    )
    if problems:
        raise ConversionError(
            f"state dict does not match {cfg.get('kind')} config "
            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
        )
    return traverse_util.unflatten_dict(flat), notes


def _resample_pos_embed(a: np.ndarray, cfg: dict[str, Any], want: tuple[int, ...]) -> np.ndarray:
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models.vit import resample_pos_embed  # pylint: disable=import-outside-toplevel

    prefix = 0 if cfg.get("no_embed_class") else 1 + cfg.get("reg_tokens", 0)
    old = _pos_grid(a.shape[1], prefix, "pos_embed in the state dict")
    new = _pos_grid(want[1], prefix, "pos_embed of the model")
    out = resample_pos_embed(jnp.asarray(a), (new, new), prefix, (old, old))
    return np.asarray(out)


def convert(
    arch: str,
    src: str | pathlib.Path,
    dst: str | pathlib.Path,
    *,
    img_size: int | None = None,
    ignore: str | None = None,
    **overrides,
) -> dict:
    """Reads `src`, converts it for preset `arch` (with `overrides`, e.g. depth=2 in tests), writes
    `dst`; returns the metadata written to `dst/backbone.json`.

    An arch with a text tower (`models.text.ARCHS`: CLIP, PLIP, CoCa) also gets it converted from the
    same file into `dst/text` (`keymaps.clip.convert_text`); overrides named "text.<field>" shape it.
    """
    src = pathlib.Path(src)
    text_overrides = {k[5:]: overrides.pop(k) for k in list(overrides) if k.startswith("text.")}
    if img_size is not None:
        overrides["img_size"] = int(img_size)
    cfg = backbones.config(arch, **overrides)
    if cfg["kind"] == "vit" and cfg["img_size"] % cfg["patch_size"]:
        raise ConversionError(
            f"img_size {cfg['img_size']} is not a multiple of the patch size {cfg['patch_size']}"
        )
    sd = read_state_dict(src)
    if arch in text.ARCHS:  # before any work: one line for a file that is not a CLIP checkpoint
        clip.check_layout(sd, src)
    params, notes = convert_state_dict(sd, cfg, ignore)
    meta = dict(
        source=dict(file=src.name, sha256=sha256(src), bytes=src.stat().st_size, tensors=len(sd)),
        converted=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        reference=references.describe(arch),
        input=backbones.input_spec(arch),
        ignored=ignore or "",
        **notes,
    )
    if arch in text.ARCHS:  # written before backbone.json, which marks the directory complete
        meta["text"] = clip.convert_text(arch, sd, src, dst, **text_overrides)
    backbones.save(dst, arch, cfg, params, meta)
    return backbones.read_meta(dst)
