"""`python -m sigmma_jax.bench encoder --arch=all`: every registered encoder side by side: the JAX
forward's images/s beside its PyTorch reference's (`tools.references`: timm, transformers, open_clip)
in the same process at the same batch and dtype, the parameter count, the compiled forward's peak
memory (XLA's memory analysis), the embedding width and the input each model expects.

    python -m sigmma_jax.bench encoder --arch=all --timm_setup=tests/support/timm_helpers.py
    python -m sigmma_jax.bench encoder --arch=uni,conch --batch_sizes=8 --out=zoo.json

Weights are random (speed does not depend on them). `--depth=N` runs every ViT at N blocks (the
giants' full depth takes minutes per call on two CPU cores); the row says so. `--arch=all` with
`--modes` other than forward is refused: training modes are `bench encoder --arch=NAME`.
"""

from __future__ import annotations

import datetime
import json
import math
import runpy
from typing import Any

from sigmma_jax.tools.bench.common import csv, machine_description, time_jax


def _archs(spec: str) -> list[str]:
    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel

    names = sorted(backbones.ARCHS) if spec == "all" else csv(spec)
    for n in names:
        backbones.config(n)  # unknown names fail before anything runs
    return names


def _row(arch: str, a, batch: int, dtype: str) -> dict[str, Any]:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel

    overrides = {"depth": a.depth} if a.depth and "depth" in backbones.config(arch) else {}
    cfg = backbones.config(arch, **overrides)
    img = int(cfg["img_size"])
    model = backbones.build(cfg, dtype=jnp.dtype(dtype))
    params = backbones.init_params(model)
    row: dict[str, Any] = dict(
        arch=arch,
        kind=cfg["kind"],
        depth=cfg.get("depth"),
        reduced_depth=bool(overrides),
        params_m=sum(math.prod(x.shape) for x in jax.tree.leaves(params)) / 1e6,
        embed_dim=int(model.embed_dim),
        img_size=img,
        mean=list(cfg["mean"]),
        std=list(cfg["std"]),
        **backbones.input_spec(arch),
        dtype=dtype,
        batch=batch,
    )
    x = jax.random.uniform(jax.random.PRNGKey(batch), (batch, img, img, 3), jnp.float32)
    r = time_jax(lambda p, x: model.apply({"params": p}, x), (params, x), a.iters, a.warmup)
    row.update(
        jax_images_per_s=batch / r["step_s"],
        jax_step_s=r["step_s"],
        compile_s=r["compile_s"],
        peak_gib=(r["peak_bytes"] or 0) / 2**30 or None,
    )
    del params, x
    if a.timm != "no":
        from sigmma_jax.tools.bench.encoder import (  # pylint: disable=import-outside-toplevel
            _reference_forward,
        )

        try:
            res, versions = _reference_forward(
                arch, overrides, img, [batch], [dtype], a.iters, a.warmup, a.threads
            )
            s = res[(dtype, batch)]
            if isinstance(s, str):
                row["reference_error"] = s
            else:
                row.update(
                    reference_images_per_s=batch / s,
                    ratio_jax_reference=(batch / r["step_s"]) / (batch / s),
                    reference=versions,
                )
        except Exception as e:  # pylint: disable=broad-except  (the reference's library missing)
            if a.timm == "yes":
                raise
            row["reference_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
    return row


def run(a) -> int:
    machine = machine_description()
    if csv(a.modes) != ["forward"] and a.modes != "forward,frozen,last_k,full,full_remat":
        raise ValueError("--arch=all times the forward only; train modes: --arch=NAME")
    if a.timm_setup:
        runpy.run_path(a.timm_setup, run_name="__main__")
    batches = csv(a.batch_sizes, int) or [8]
    dtypes = csv(a.dtypes) or ["float32"]
    print(
        f"# encoder zoo on {machine['device_kind']} ({machine['cpu']}, {machine['cpu_count']} cores)"
    )
    rows = []
    for arch in _archs(a.arch):
        for dt in dtypes:
            for b in batches:
                try:
                    row = _row(arch, a, b, dt)
                except Exception as e:  # pylint: disable=broad-except  (out of memory, mostly)
                    row = dict(arch=arch, dtype=dt, batch=b, error=str(e).splitlines()[0][:120])
                rows.append(row)
                print(json.dumps(row), flush=True)
                if a.out:  # after every row: a run cut short keeps what it measured
                    result = dict(
                        date=datetime.date.today().isoformat(), machine=machine, rows=rows
                    )
                    with open(a.out, "w") as f:
                        json.dump(result, f, indent=1)
    print(markdown_table(rows))
    return 0


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| encoder | params (M) | D | input | batch | JAX img/s | reference img/s | JAX/ref | "
        "peak GiB | compile s |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['error']} |||||||||")
            continue
        depth = f" (depth {r['depth']})" if r.get("reduced_depth") else ""
        ref = r.get("reference_images_per_s")
        lines.append(
            f"| {r['arch']}{depth} | {r['params_m']:.1f} | {r['embed_dim']} | "
            f"{r['img_size']} px, {r['mpp']} µm/px | {r['batch']} | {r['jax_images_per_s']:.2f} | "
            + (
                f"{ref:.2f} | {r['ratio_jax_reference']:.2f}"
                if ref
                else r.get("reference_error", "")
            )
            + (" |" if ref else " | |")
            + f" {r['peak_gib'] or 0:.2f} | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines)
