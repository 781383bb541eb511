"""Benchmarks: `python -m sigmma_jax.bench SUBCOMMAND [flags]` (`--help` lists them).

encoder
    The HE backbone as SIGMMA uses it (all 21 crops of a batch in one call): crops/s for the forward
    pass and for forward+backward in each training mode (frozen: gradients reach the projection head
    only; last_k; full; full with per-block rematerialisation), compile time, peak device memory
    from XLA's compiled memory analysis, and on GPUs model-FLOPs utilisation. timm's model runs the
    same forward in the same process as the reference (ratio JAX/timm at equal batch and dtype).
    Weights are random (speed does not depend on them); the optimizer update is not included.

        python -m sigmma_jax.bench encoder                        # ViT-L (UNI) with defaults per device
        python -m sigmma_jax.bench encoder --batch_sizes=21,84 --train_batch_sizes=21 --dtypes=bfloat16
        python -m sigmma_jax.bench encoder --timm_setup=tests/timm_helpers.py   # see docs/benchmarks.md

parity
    The weight port at full size: a randomly initialised timm model's state dict saved to disk
    (pytorch_model.bin), converted with `sigmma_jax.convert`, loaded with `backbones.load`, and its
    embeddings compared with timm's at 224 px and another size (max abs difference, cosine).

        python -m sigmma_jax.bench parity --arch=uni --timm_setup=tests/timm_helpers.py

New subcommands register in `SUBCOMMANDS` with an argument builder and a runner.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import runpy
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

from sigmma_jax import bench_preprocess

N_CROPS = 21  # crops per tile (he_encoder.N_CROPS), kept here so the bench imports no data code

# Dense bf16 tensor-core peaks (FLOP/s) by device kind, for model-FLOPs utilisation.
PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def _csv(s: str, f=str) -> list:
    return [f(v) for v in s.split(",") if v]


# ---------------------------------------------------------------------------------------------------
# encoder


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="uni", help="backbone preset (sigmma_jax.models.backbones)")
    p.add_argument("--depth", type=int, default=0, help="override the number of blocks (0: preset)")
    p.add_argument("--img_size", type=int, default=0, help="input size (0: preset)")
    p.add_argument(
        "--batch_sizes",
        default="",
        help="forward batch sizes in crops (default: CPU 2,4,8; accelerator 21,84,168,336)",
    )
    p.add_argument(
        "--train_batch_sizes",
        default="",
        help="forward+backward batch sizes in crops (default: CPU 4; accelerator 21,84,168)",
    )
    p.add_argument(
        "--modes",
        default="forward,frozen,last_k,full,full_remat",
        help="forward | frozen | last_k | full | full_remat (comma-separated)",
    )
    p.add_argument("--last_k", type=int, default=4, help="trainable blocks in mode last_k")
    p.add_argument(
        "--dtypes",
        default="",
        help="compute dtypes (default: CPU float32; "
        "accelerator bfloat16,float32 for the forward and bfloat16 for training)",
    )
    p.add_argument(
        "--attn_impl",
        default="",
        help="jax.nn.dot_product_attention implementation "
        "('' lets XLA choose; 'cudnn' on NVIDIA GPUs)",
    )
    p.add_argument("--iters", type=int, default=3, help="timed calls per setting (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after compilation")
    p.add_argument(
        "--timm",
        default="auto",
        choices=["auto", "yes", "no"],
        help="run timm's forward as the reference (auto: when timm imports)",
    )
    p.add_argument(
        "--timm_setup",
        default="",
        help="a Python file run as __main__ before `import timm` (an import shim)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--peak_tflops", type=float, default=0.0, help="bf16 peak for MFU (0: from the device kind)"
    )
    p.add_argument("--out", default="", help="write the results as JSON here")


def vit_flops(cfg: dict[str, Any], img: int) -> dict[str, float]:
    """Model FLOPs per crop (multiply-add = 2) of a ViT: patch embedding and one block."""
    p, d = cfg["patch_size"], cfg["width"]
    grid = (img // p) ** 2
    n = grid + 1 + cfg.get("reg_tokens", 0)
    hidden = int(d * cfg["mlp_ratio"])
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


def _peak_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except
        return None
    if m is None:
        return None
    peak = getattr(m, "peak_memory_in_bytes", 0) or 0
    if peak:
        return int(peak)
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def _xla_flops(compiled) -> float | None:
    try:
        c = compiled.cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return float(c.get("flops", 0.0)) or None
    except Exception:  # pylint: disable=broad-except
        return None


def time_jax(fn: Callable, args: tuple, iters: int, warmup: int) -> dict[str, Any]:
    import jax  # pylint: disable=import-outside-toplevel

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = dict(
        compile_s=compile_s, peak_bytes=_peak_bytes(compiled), xla_flops=_xla_flops(compiled)
    )
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    out["step_s"] = statistics.median(times)
    return out


def _encoder_fns(arch_cfg, mode, dtype, last_k, attn_impl):
    """(model, fn(params, head, images) -> outputs) for one benchmark mode."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel

    extra = dict(attn_impl=attn_impl or None) if arch_cfg["kind"] == "vit" else {}
    trainable = {"forward": -1, "frozen": 0, "last_k": last_k, "full": -1, "full_remat": -1}[mode]
    model = backbones.build_module(
        arch_cfg, dtype=dtype, remat=(mode == "full_remat"), trainable_blocks=trainable, **extra
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
        labels = backbones.param_labels(
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


def _timm_forward(arch, overrides, img, batches, dtypes, iters, warmup, threads):
    """{(dtype, batch): seconds per call} of timm's forward (inference mode, autocast for bf16)."""
    import timm  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel

    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel

    if threads:
        torch.set_num_threads(threads)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name, kw = backbones.timm_kwargs(arch, **overrides)
    model = timm.create_model(name, pretrained=False, **kw).eval().to(dev)
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
                with torch.inference_mode(), ctx:
                    for _ in range(1 + warmup):
                        model(x)
                    times = []
                    for _ in range(iters):
                        if dev == "cuda":
                            torch.cuda.synchronize()
                        t = time.perf_counter()
                        model(x)
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
    return res, torch.__version__, timm.__version__


def machine_description() -> dict[str, Any]:
    import jax  # pylint: disable=import-outside-toplevel

    d = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(
        platform=d.platform,
        device_kind=d.device_kind,
        devices=jax.device_count(),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        python=platform.python_version(),
    )


def run_encoder(a: argparse.Namespace) -> int:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
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
    fwd_b = _csv(a.batch_sizes, int) or ([21, 84, 168, 336] if accel else [2, 4, 8])
    train_b = _csv(a.train_batch_sizes, int) or ([21, 84, 168] if accel else [4])
    modes = _csv(a.modes)
    dtypes = _csv(a.dtypes)
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
            tres, tv, timm_v = _timm_forward(
                a.arch, t_overrides, img, fwd_b, fwd_dtypes, a.iters, a.warmup, a.threads
            )
            timm_info.update(torch=tv, timm=timm_v)
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


# ---------------------------------------------------------------------------------------------------
# parity


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
            if not p.is_floating_point():
                continue
            last = n.rsplit(".", 1)[-1]
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


def add_parity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="uni")
    p.add_argument("--depth", type=int, default=0, help="override the number of blocks (0: preset)")
    p.add_argument(
        "--init",
        default="timm,randomized",
        help="timm (timm's own random init) and/or randomized (see randomize_)",
    )
    p.add_argument("--sizes", default="224,288", help="input sizes (multiples of the patch size)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--workdir",
        default="",
        help="where the .bin and the converted directory go "
        "(default: a temporary directory, removed afterwards)",
    )
    p.add_argument(
        "--timm_setup",
        default="",
        help="a Python file run as __main__ before `import timm` (an import shim)",
    )
    p.add_argument("--out", default="", help="write the results as JSON here")


def run_parity(a: argparse.Namespace) -> int:
    import pathlib  # pylint: disable=import-outside-toplevel
    import shutil  # pylint: disable=import-outside-toplevel
    import tempfile  # pylint: disable=import-outside-toplevel

    if a.timm_setup:
        runpy.run_path(a.timm_setup, run_name="__main__")
    import jax  # pylint: disable=import-outside-toplevel
    import timm  # pylint: disable=import-outside-toplevel

    # GPUs default to TF32 for float32 matmuls; a float32 parity check wants full float32.
    jax.config.update("jax_default_matmul_precision", "highest")
    import torch  # pylint: disable=import-outside-toplevel

    from sigmma_jax import convert  # pylint: disable=import-outside-toplevel
    from sigmma_jax.models import backbones  # pylint: disable=import-outside-toplevel

    overrides = dict(depth=a.depth) if a.depth else {}
    name, kw = backbones.timm_kwargs(a.arch, **overrides)
    cfg = backbones.config(a.arch, **overrides)
    root = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="sigmma_parity_"))
    root.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for init in _csv(a.init):
            torch.manual_seed(0)
            tm = timm.create_model(name, pretrained=False, **kw).eval()
            if init == "randomized":
                randomize_(tm, seed=1)
            src = root / f"{a.arch}_{init}_pytorch_model.bin"
            torch.save(tm.state_dict(), src)
            t = time.perf_counter()
            convert.convert(a.arch, src, root / f"{a.arch}_{init}_flax", **overrides)
            t_convert = time.perf_counter() - t
            model, params = backbones.load(a.arch, root / f"{a.arch}_{init}_flax")
            apply = jax.jit(model.apply)
            rng = np.random.default_rng(0)
            for size in _csv(a.sizes, int):
                x = rng.random((a.batch, size, size, 3), np.float32)
                xt = (x - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
                with torch.inference_mode():
                    ref = (
                        tm(torch.from_numpy(xt.transpose(0, 3, 1, 2).copy()))
                        .numpy()
                        .astype(np.float64)
                    )
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
                    torch=torch.__version__,
                    timm=timm.__version__,
                    rows=results,
                ),
                f,
                indent=1,
            )
    return 0 if ok else 1


SUBCOMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "encoder": ("HE backbone speed and memory vs timm", add_encoder_args, run_encoder),
    "parity": ("full-size weight port vs timm", add_parity_args, run_parity),
    "preprocess": (
        "full-slide preprocessing: tiles/s, cells/s, peak RSS",
        bench_preprocess.add_args,
        bench_preprocess.run_cli,
    ),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sigmma_jax.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, (help_, add, _) in SUBCOMMANDS.items():
        add(sub.add_parser(name, help=help_))
    a = p.parse_args(argv)
    return SUBCOMMANDS[a.command][2](a)


if __name__ == "__main__":
    sys.exit(main())
