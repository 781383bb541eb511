"""`python -m sigmma_jax.bench parity`: the weight port at full size. A randomly initialised PyTorch
reference (`tools.references`: timm, transformers, open_clip) saved to disk (pytorch_model.bin),
converted with `sigmma_jax.convert`, loaded with `backbones.load`, and its embeddings compared with
the reference's at 224 px and another size (max abs difference, cosine).

    python -m sigmma_jax.bench parity --arch=uni --timm_setup=tests/support/timm_helpers.py
"""

from __future__ import annotations

import datetime
import json
import runpy
import time

import numpy as np
from absl import flags

from sigmma_jax.tools.bench.common import csv, machine_description

flags.DEFINE_string("init", "timm,randomized", "timm (timm's own random init) and/or randomized.")
flags.DEFINE_string("sizes", "224,288", "Input sizes (multiples of the patch size).")
flags.DEFINE_integer("batch", 4, "Images per comparison.")


# Float buffers that are structure, not weights: open_clip's causal mask (-inf above the diagonal).
_STRUCTURAL_BUFFERS = ("attn_mask",)


def randomize_(model, seed: int = 0) -> None:
    """Redraws every floating parameter and buffer of a torch model in place with O(1)-scale values.

    timm's own init leaves LayerScale at 1e-5 and BatchNorm at identity statistics, which would hide
    most weights from a parity check. Here LayerScale ~ U(0.5, 1), norm scales 1 + 0.1 N, biases 0.1 N,
    tokens and position embeddings 0.5 N, BatchNorm statistics away from 0 / 1, and linear / conv
    weights N(0, 1 / fan_in).
    """
    import math  # pylint: disable=import-outside-toplevel

    import torch  # pylint: disable=import-outside-toplevel

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in list(model.named_parameters()) + list(model.named_buffers()):
            last = n.rsplit(".", 1)[-1]
            if not p.is_floating_point() or last in _STRUCTURAL_BUFFERS:
                continue
            r = torch.randn(p.shape, generator=g)
            if last == "gamma":
                p.copy_(0.5 + 0.5 * torch.rand(p.shape, generator=g))
            elif last == "running_var":
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif last == "running_mean":
                p.copy_(0.1 * r)
            elif p.ndim == 1 and last == "weight":  # norm scales
                p.copy_(1.0 + 0.1 * r)
            elif last == "bias":
                p.copy_(0.1 * r)
            elif n in ("cls_token", "reg_token", "pos_embed"):
                p.copy_(0.5 * r)
            else:
                p.copy_(r / math.sqrt(math.prod(p.shape[1:])))


def run(a) -> int:
    import pathlib  # pylint: disable=import-outside-toplevel
    import shutil  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    if a.timm_setup:
        runpy.run_path(a.timm_setup, run_name="__main__")
    import jax  # pylint: disable=import-outside-toplevel

    # GPUs default to TF32 for float32 matmuls; a float32 parity check wants full float32.
    jax.config.update("jax_default_matmul_precision", "highest")
    import torch  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel
    from sigmma_jax.tools import convert, references  # pylint: disable=import-outside-toplevel

    overrides = dict(depth=a.depth) if a.depth else {}
    cfg = backbones.config(a.arch, **overrides)
    root = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="sigmma_parity_"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for init in csv(a.init):
            torch.manual_seed(0)
            tm = references.build(a.arch, **overrides)
            if init == "randomized":
                randomize_(tm, seed=1)
            src = root / f"{a.arch}_{init}_pytorch_model.bin"
            torch.save(tm.state_dict(), src)
            t = time.perf_counter()
            convert.convert(a.arch, src, root / f"{a.arch}_{init}_flax", **overrides)
            t_convert = time.perf_counter() - t
            model, params = backbones.load(root / f"{a.arch}_{init}_flax", arch=a.arch)
            apply = jax.jit(model.apply)
            rng = np.random.default_rng(0)
            for size in csv(a.sizes, int):
                x = rng.random((a.batch, size, size, 3), np.float32)
                xt = (x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
                xt = torch.from_numpy(xt.transpose(0, 3, 1, 2).copy())
                ref = references.embed(a.arch, tm, xt).numpy().astype(np.float64)
                got = np.asarray(apply({"params": params}, x), np.float64)
                cos = (got * ref).sum(-1) / (
                    np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1)
                )
                row = dict(
                    arch=a.arch,
                    init=init,
                    size=size,
                    batch=a.batch,
                    params=int(sum(v.numel() for v in tm.state_dict().values())),
                    max_abs_diff=float(np.abs(got - ref).max()),
                    min_cosine=float(cos.min()),
                    max_abs_embedding=float(np.abs(ref).max()),
                    convert_s=round(t_convert, 1),
                )
                results.append(row)
                print(json.dumps(row), flush=True)
            del tm, params
    finally:
        if not a.workdir:
            shutil.rmtree(root, ignore_errors=True)
    ok = all(r["max_abs_diff"] <= 1e-3 and r["min_cosine"] >= 0.9999 for r in results)
    print("parity", "PASSED" if ok else "FAILED", "(max abs diff <= 1e-3, cosine >= 0.9999)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(
                dict(
                    date=datetime.date.today().isoformat(),
                    machine=machine_description(),
                    reference=dict(references.describe(a.arch), **references.versions(a.arch)),
                    rows=results,
                ),
                f,
                indent=1,
            )
    return 0 if ok else 1
