"""`python -m sigmma_jax.bench encoder`: the HE backbone as SIGMMA uses it (all 21 crops of a batch in
one call): crops/s for the forward pass and for forward+backward in each training mode (frozen:
gradients reach the projection head only; last_k; full; full with per-block rematerialisation),
compile time, peak device memory from XLA's compiled memory analysis, and on GPUs model-FLOPs
utilisation. timm's model runs the same forward in the same process as the reference (ratio JAX/timm
at equal batch and dtype). Weights are random (speed does not depend on them); the optimizer update
is not included.

    python -m sigmma_jax.bench encoder                        # ViT-L (UNI) with defaults per device
    python -m sigmma_jax.bench encoder --batch_sizes=21,84 --train_batch_sizes=21 --dtypes=bfloat16
    python -m sigmma_jax.bench encoder --timm_setup=tests/support/timm_helpers.py   # docs/benchmarks.md
    python -m sigmma_jax.bench encoder --arch=all     # every registered encoder (`zoo`)
"""

from __future__ import annotations

import datetime
import json
import os
import runpy
import statistics
import time
from typing import Any

from absl import flags

from sigmma_jax.scales import N_CROPS
from sigmma_jax.tools.bench.common import (
    PEAK_BF16,
    csv,
    machine_description,
    time_jax,
)

flags.DEFINE_string(
    "batch_sizes",
    "",
    "Forward batch sizes in crops (default: CPU 2,4,8; accelerator 21,84,168,336).",
)
flags.DEFINE_string(
    "train_batch_sizes",
    "",
    "Forward+backward batch sizes in crops (default: CPU 4; accelerator 21,84,168).",
)
flags.DEFINE_string(
    "modes",
    "forward,frozen,last_k,full,full_remat",
    "forward | frozen | last_k | full | full_remat.",
)
flags.DEFINE_integer("last_k", 4, "Trainable blocks in mode last_k.")
flags.DEFINE_string(
    "dtypes",
    "",
    "Compute dtypes (default: CPU float32; accelerator bfloat16,float32 for the forward, "
    "bfloat16 for training).",
)
flags.DEFINE_string(
    "attn_impl", "", "jax.nn.dot_product_attention implementation ('' lets XLA choose; 'cudnn')."
)
flags.DEFINE_integer("iters", 3, "Timed calls per setting (median reported).")
flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation.")
flags.DEFINE_enum("timm", "auto", ["auto", "yes", "no"], "Run timm's forward as the reference.")
flags.DEFINE_integer("threads", 0, "torch threads (0: torch's default).")
flags.DEFINE_float("peak_tflops", 0.0, "bf16 peak for MFU (0: from the device kind).")


def vit_flops(cfg: dict[str, Any], img: int) -> dict[str, float]:
    """Model FLOPs per crop (multiply-add = 2) of a ViT: patch embedding and one block."""
    p, d = cfg["patch_size"], cfg["width"]
    grid = (img // p) ** 2
    n = grid + 1 + cfg.get("reg_tokens", 0)
    hidden = cfg.get("mlp_hidden") or int(d * cfg["mlp_ratio"])
    fc2_in = hidden // 2 if cfg.get("mlp") == "swiglu_packed" else hidden
    block = 2 * n * (3 * d * d + d * d + d * hidden + fc2_in * d) + 4 * n * n * d
    return dict(patch=2.0 * grid * p * p * 3 * d, block=float(block))


def model_flops(cfg, img, mode, last_k) -> float | None:
    if cfg["kind"] != "vit":
        return None
    f = vit_flops(cfg, img)
    fwd = f["patch"] + cfg["depth"] * f["block"]
    if mode in ("forward", "frozen"):
        return fwd
    if mode == "last_k":
        return fwd + 2 * min(last_k, cfg["depth"]) * f["block"]
    return 3 * fwd  # full; remat recomputes, but model FLOPs do not count recomputation


def _encoder_fns(arch_cfg, mode, dtype, last_k, attn_impl):
    """(model, fn(params, head, images) -> outputs) for one benchmark mode."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel
    from sigmma_jax.train import optimizer  # pylint: disable=import-outside-toplevel

    trainable = {"forward": -1, "frozen": 0, "last_k": last_k, "full": -1, "full_remat": -1}[mode]
    model = backbones.build(
        arch_cfg,
        dtype=dtype,
        remat=(mode == "full_remat"),
        trainable_blocks=trainable,
        attn_impl=attn_impl or None,
    )

    def emb(params, images):
        return model.apply({"params": params}, images)

    def loss(params, head, images):  # a projection head and a scalar, standing in for InfoNCE
        z = emb(params, images) @ head
        return jnp.mean(jnp.square(z))

    if mode == "forward":
        return model, lambda params, head, images: emb(params, images)
    if mode == "frozen":
        return model, lambda params, head, images: jax.grad(loss, argnums=1)(params, head, images)

    def split(params):
        labels = optimizer.param_labels(
            {"backbone": params}, "last_k" if mode == "last_k" else "full", last_k
        )["backbone"]
        train = {k: v for k, v in params.items() if _any_label(labels[k], "backbone")}
        frozen = {k: v for k, v in params.items() if k not in train}
        return train, frozen

    def step(params, head, images):
        train, frozen = split(params)
        g = jax.grad(lambda t, h: loss({**frozen, **t}, h, images), argnums=(0, 1))(train, head)
        return g

    return model, step


def _any_label(tree, label) -> bool:
    import jax  # pylint: disable=import-outside-toplevel

    return any(x == label for x in jax.tree.leaves(tree))


def _reference_forward(arch, overrides, img, batches, dtypes, iters, warmup, threads):
    """{(dtype, batch): seconds per call} of the PyTorch reference's forward (`tools.references`:
    timm, transformers or open_clip; inference mode, autocast for bf16), and the library versions."""
    import torch  # pylint: disable=import-outside-toplevel

    from sigmma_jax.tools import references  # pylint: disable=import-outside-toplevel

    if threads:
        torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = references.build(arch, **overrides).to(dev)
    res = {}
    for dt in dtypes:
        for b in batches:
            x = torch.rand(b, 3, img, img, device=dev)
            ctx = (
                torch.autocast(dev, dtype=torch.bfloat16)
                if dt == "bfloat16"
                else torch.autocast(dev, enabled=False)
            )
            try:
                with ctx:
                    for _ in range(1 + warmup):
                        references.embed(arch, model, x)
                    times = []
                    for _ in range(iters):
                        if dev == "cuda":
                            torch.cuda.synchronize()
                        t = time.perf_counter()
                        references.embed(arch, model, x)
                        if dev == "cuda":
                            torch.cuda.synchronize()
                        times.append(time.perf_counter() - t)
                res[(dt, b)] = statistics.median(times)
            except RuntimeError as e:  # out of memory
                res[(dt, b)] = f"failed: {str(e).splitlines()[0][:80]}"
            del x
    if dev == "cuda":
        del model
        torch.cuda.empty_cache()
    return res, references.versions(arch)


def run(a) -> int:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
    if a.arch == "all" or "," in a.arch:
        from sigmma_jax.tools.bench import zoo  # pylint: disable=import-outside-toplevel

        return zoo.run(a)
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel

    machine = machine_description()
    accel = machine["platform"] != "cpu"
    overrides = {}
    if a.depth:
        overrides["depth"] = a.depth
    if a.img_size:
        overrides["img_size"] = a.img_size
    cfg = backbones.config(a.arch, **overrides)
    img = cfg["img_size"]
    fwd_b = csv(a.batch_sizes, int) or ([21, 84, 168, 336] if accel else [2, 4, 8])
    train_b = csv(a.train_batch_sizes, int) or ([21, 84, 168] if accel else [4])
    modes = csv(a.modes)
    dtypes = csv(a.dtypes)
    fwd_dtypes = dtypes or (["bfloat16", "float32"] if accel else ["float32"])
    train_dtypes = dtypes or (["bfloat16"] if accel else ["float32"])
    peak = a.peak_tflops * 1e12 or next(
        (v for k, v in PEAK_BF16.items() if k in machine["device_kind"]), None
    )
    print(
        f"# encoder benchmark: {a.arch} {overrides or ''} at {img}px on {machine['device_kind']} "
        f"({machine['cpu']}, {machine['cpu_count']} cores), jax {machine['jax']}",
        flush=True,
    )

    rows = []
    params_cache: dict[str, Any] = {}
    timm_info: dict[str, str] = {}

    def save():  # after every row, so a run cut short keeps what it measured
        if a.out:
            result = dict(
                date=datetime.date.today().isoformat(),
                machine=machine,
                timm=timm_info,
                arch=a.arch,
                overrides=overrides,
                img_size=img,
                rows=rows,
            )
            with open(a.out, "w") as f:
                json.dump(result, f, indent=1)

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()

    for mode in modes:
        for dt in fwd_dtypes if mode == "forward" else train_dtypes:
            model, fn = _encoder_fns(cfg, mode, jnp.dtype(dt), a.last_k, a.attn_impl)
            if "p" not in params_cache:
                t = time.perf_counter()
                params_cache["p"] = backbones.init_params(model)
                print(f"# init {time.perf_counter() - t:.1f}s", flush=True)
            params = params_cache["p"]
            head = jnp.ones((model.embed_dim, 256), jnp.float32) / model.embed_dim
            for b in fwd_b if mode == "forward" else train_b:
                x = jax.random.uniform(jax.random.PRNGKey(b), (b, img, img, 3), jnp.float32)
                row = dict(arch=a.arch, mode=mode, dtype=dt, batch=b, remat=(mode == "full_remat"))
                try:
                    r = time_jax(fn, (params, head, x), a.iters, a.warmup)
                except Exception as e:  # pylint: disable=broad-except  (out of memory, mostly)
                    row["error"] = str(e).splitlines()[0][:120]
                    emit(row)
                    continue
                row.update(r)
                row["crops_per_s"] = b / r["step_s"]
                row["tiles_per_s"] = row["crops_per_s"] / N_CROPS
                mf = model_flops(cfg, img, mode, a.last_k)
                if mf is not None:
                    row["model_tflops_per_s"] = mf * row["crops_per_s"] / 1e12
                    if accel and peak and dt == "bfloat16":
                        row["mfu"] = row["model_tflops_per_s"] * 1e12 / peak
                emit(row)
                del x

    use_timm = a.timm != "no" and "forward" in modes
    if use_timm:
        try:
            if a.timm_setup:
                runpy.run_path(a.timm_setup, run_name="__main__")
            t_overrides = {k: v for k, v in overrides.items() if k == "depth"}
            if a.img_size:
                t_overrides["img_size"] = a.img_size
            tres, versions = _reference_forward(
                a.arch, t_overrides, img, fwd_b, fwd_dtypes, a.iters, a.warmup, a.threads
            )
            timm_info.update(versions)
            for (dt, b), s in tres.items():
                row = dict(arch=a.arch, mode="timm_forward", dtype=dt, batch=b)
                if isinstance(s, str):
                    row["error"] = s
                else:
                    row.update(step_s=s, crops_per_s=b / s, tiles_per_s=b / s / N_CROPS)
                    ours = next(
                        (
                            r
                            for r in rows
                            if r["mode"] == "forward"
                            and r["dtype"] == dt
                            and r["batch"] == b
                            and "crops_per_s" in r
                        ),
                        None,
                    )
                    if ours:
                        ours["timm_crops_per_s"] = row["crops_per_s"]
                        ours["ratio_jax_timm"] = ours["crops_per_s"] / row["crops_per_s"]
                emit(row)
        except Exception as e:  # pylint: disable=broad-except
            if a.timm == "yes":
                raise
            print(f"# timm reference skipped: {type(e).__name__}: {e}", flush=True)

    save()
    print(markdown_table(rows))
    return 0


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| mode | dtype | batch (crops) | crops/s | tiles/s | step ms | compile s | peak GiB | "
        "JAX/timm | MFU |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['dtype']} | {r['batch']} | {r['error']} |||||||")
            continue
        f = lambda k, fmt: fmt.format(r[k]) if r.get(k) is not None else ""
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r.get("peak_bytes") else ""
        lines.append(
            f"| {r['mode']} | {r['dtype']} | {r['batch']} | {r['crops_per_s']:.2f} | "
            f"{r['tiles_per_s']:.3f} | {1e3 * r['step_s']:.0f} | {f('compile_s', '{:.1f}')} | {peak} | "
            f"{f('ratio_jax_timm', '{:.2f}')} | {f('mfu', '{:.1%}')} |"
        )
    return "\n".join(lines)
