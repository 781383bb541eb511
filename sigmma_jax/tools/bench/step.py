"""Will a config fit, and how fast is it: `python -m sigmma_jax.bench step --config=configs/X.py`.

The whole SIGMMA train step (both towers, the loss, the gradient, clipping and the AdamW update: the
function `train.step.make_train_step` jits for a run) is compiled ahead of time for
`--step_devices` devices on abstract inputs (`jit(...).lower(shapes).compile()`): no parameter,
batch or slide is needed, so a paper-scale step can be analysed on a laptop. It reports XLA's memory
analysis per device (arguments, outputs, temporaries, total) and XLA's FLOP count; with `--step_run`
it initialises the state, runs the step on a random batch and reports step time, tiles/s and, on
GPUs and TPUs, model-FLOPs utilisation (the HE backbone's model FLOPs against the bf16 peak).

    python -m sigmma_jax.bench step --config=configs/default.py --step_devices=8 --nostep_run
    python -m sigmma_jax.bench step --config=configs/demo.py
    python -m sigmma_jax.bench step --config=configs/default.py --step_table   # every backbone

`--step_table` sizes every backbone (ResNet-50, UNI, UNI2-h, H-optimus-0) at the config's global
batch, data-parallel and FSDP, on 8, 16 and 64 devices, from shapes alone (`fit_estimate`).

On a CPU, `--step_devices=N` beyond the machine's devices simulates N host devices (set before
JAX starts). XLA:CPU's memory analysis counts arguments and outputs faithfully but not what a GPU
would hold for activations (docs/benchmarks.md). So the step is also sized from shapes alone
(`fit_estimate`: state, gradients, and the activations the traced program keeps for its backward
pass), which reads the same on every backend: the figure to go by without the target accelerator
(within 7% of an H100's peaks with remat; leave a wide margin); on it, XLA's own analysis.
Data shapes come from the config (node budget, tile size), or from a workdir's manifest when
`--workdir` has one; the converted weights are not read (the backbone's preset gives the shapes).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time

import jax
import jax.extend as jex
import numpy as np
from absl import flags

from sigmma_jax.scales import N_CROPS
from sigmma_jax.tools.bench.common import PEAK_BF16, machine_description, xla_flops

flags.DEFINE_integer("step_devices", 0, "step: devices to compile for (0: every device).")
flags.DEFINE_integer(
    "step_fsdp", 1, "step: devices of the mesh's fsdp axis (1: data parallel; see sharding.py)."
)
flags.DEFINE_bool("step_run", True, "step: also initialise and run the step (timing, MFU).")
flags.DEFINE_integer("step_genes", 300, "step: gene panel size when no manifest gives it.")
flags.DEFINE_bool(
    "step_table",
    False,
    "step: the memory table instead (every backbone, data parallel and FSDP, 8/16/64 devices; "
    "from shapes alone).",
)

GiB = 2**30


def _simulate_devices(n: int) -> None:
    """On a CPU-only machine, ask XLA for n host devices (must happen before JAX starts)."""
    if n and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
        ).strip()


def _manifest(config, workdir: str | None, genes: int) -> dict:
    """The shapes the step needs: the workdir's manifest, else the config's budgets. Without a
    manifest the edge budget is the bound of a symmetrised kNN graph, 2 k edges per node."""
    from sigmma_jax.data import shards

    if workdir:
        path = shards.shard_dir(config, workdir) / shards.MANIFEST
        if path.exists():
            return json.loads(path.read_text())
    d = config.data
    nodes = d.node_budget
    return dict(
        genes=[f"g{i}" for i in range(genes)],
        settings=dict(tile_px=d.tile_px),
        budgets=dict(nodes=nodes, edges=-(-2 * d.knn_k * nodes // 64) * 64),
    )


def random_batch(manifest: dict, batch: int, seed: int = 0) -> dict:
    """A host batch of the manifest's shapes: random pixels and counts, every node real, random
    edges inside micro blocks (the dense ST tower's cost does not depend on which)."""
    from sigmma_jax.data import input_pipeline

    rng = np.random.default_rng(seed)
    n, e = manifest["budgets"]["nodes"], manifest["budgets"]["edges"]
    m, g = manifest["settings"]["tile_px"], len(manifest["genes"])
    tiles = []
    for _ in range(batch):
        xy = rng.uniform(0, m, (n, 2)).astype(np.float32)
        blocks = np.minimum(xy // (m // 4), 3).astype(np.int8)
        same = np.flatnonzero((blocks[:, None] == blocks[None]).all(-1).ravel())
        pairs = rng.choice(same, e)
        tile = dict(
            image=rng.integers(0, 256, (m, m, 3), np.uint8),
            xy=xy,
            blocks=blocks,
            counts=rng.poisson(1.0, (n, g)).astype(np.float32),
            senders=(pairs % n).astype(np.int32),
            receivers=(pairs // n).astype(np.int32),
            tile_counts=np.zeros(g, np.float32),
        )
        tiles.append(input_pipeline.pad_tile(tile, n, e))
    return input_pipeline.collate(tiles)


def backbone_model_flops(config, model) -> float | None:
    """Model FLOPs of the HE backbone per step (forward and backward of every crop), as the encoder
    benchmark counts them; None for backbones without a FLOP model (ResNet)."""
    from sigmma_jax.models import backbones
    from sigmma_jax.tools.bench.encoder import model_flops

    cfg, _ = backbones.resolve(config.model)
    mode = {"full": "full", "last_k": "last_k", "frozen": "frozen"}[config.model.backbone_mode]
    per_crop = model_flops(cfg, cfg.get("img_size", 224), mode, config.model.backbone_last_k)
    crops = config.train.global_batch * (N_CROPS if config.model.he_tower == "multi_crop" else 1)
    return None if per_crop is None else per_crop * crops


def saved_bytes(f, params, *args) -> int:
    """Bytes JAX keeps from the forward pass of `f(params, *args)` for its gradient in `params`
    (the VJP's residuals; inputs not counted): the activation memory as the program states it,
    before XLA fuses part of it away. Read from the traced program, so the same on every backend."""

    def linearised(p, *rest):
        return jax.vjp(lambda q: f(q, *rest), p)[1]

    jaxpr = jax.make_jaxpr(linearised)(params, *args).jaxpr
    inputs = set(jaxpr.invars) | set(jaxpr.constvars)
    saved = {v for v in jaxpr.outvars if not isinstance(v, jex.core.Literal) and v not in inputs}
    return sum(v.aval.size * v.aval.dtype.itemsize for v in saved)


def fit_estimate(config, abstract, batch_shapes, axis_sizes: dict[str, int]) -> dict:
    """Per-device memory of the step from shapes alone, for accelerators whose own analysis is not
    at hand: the device's part of the state and of the gradients (laid out by config.sharding on
    a mesh of `axis_sizes`: whole copies under data parallelism, 1/fsdp of each sharded leaf under
    FSDP), the device's share of the batch, what the backward pass keeps and, with remat, one
    block's activations recomputed at a time; under FSDP also the parameters gathered for the block
    being computed and the next (XLA prefetches one). `abstract` needs shapes, not shardings: the
    mesh may be larger than this machine. An estimate, not a bound: against an H100's measured
    peaks (docs/benchmarks.md) it was 6-7% high with remat and 34% high without at 84 crops, yet
    168 crops without remat (72 GiB by it) did not fit in 80 GB. Leave a wide margin."""
    from sigmma_jax import families, sharding
    from sigmma_jax.train import loop
    from sigmma_jax.train import step as step_lib

    n_dev, fsdp = axis_sizes["data"] * axis_sizes["fsdp"], axis_sizes["fsdp"]
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    def per_device(tree) -> int:
        specs = sharding.state_specs(tree, config, fsdp)
        flat = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        return sum(
            sharding.shard_bytes(x.shape, x.dtype, p, axis_sizes)
            for x, p in zip(jax.tree.leaves(tree), flat)
        )

    family, key = families.get(config), jax.random.key(0)

    def saved(remat: bool) -> int:
        c = config.copy_and_resolve_references()
        c.model.remat = remat
        model, cfg = loop.build_model(c)
        loss = lambda p, b: step_lib.loss_fn(
            p, model, b, key, family.loss_fn(c), family.rng_streams
        )[0]
        return saved_bytes(loss, abstract.params, batch_shapes), cfg

    full, cfg = saved(False)
    kept = saved(True)[0] if config.model.remat else full
    blocks = cfg.get("depth") or sum(cfg.get("layers", ())) or 1
    params_here = per_device(abstract.params)  # gradients are laid out like the parameters
    sharded = params_here < nbytes(abstract.params)  # FSDP split some leaf
    backbone = nbytes(abstract.params.get("backbone", {}))
    r = dict(
        state_gib=per_device(abstract) / GiB,
        batch_gib=nbytes(batch_shapes) / n_dev / GiB,
        gradients_gib=params_here / GiB,
        # Gathered for use: a whole block of the backbone, the one computed and the next.
        gathered_gib=(2 * backbone / blocks if sharded else 0) / GiB,
        saved_gib=kept / n_dev / GiB,  # activations are split with the batch
        recomputed_gib=(full - kept) / blocks / n_dev / GiB,
    )
    r["estimate_gib"] = sum(r.values())
    return r


# The backbones of the memory table (docs/benchmarks.md) and the device counts it is given for.
TABLE_BACKBONES = ("resnet50", "uni", "uni2-h", "h-optimus-0")
TABLE_DEVICES = (8, 16, 64)


def fit_table(config, genes: int = 300) -> list[dict]:
    """`fit_estimate` for every backbone of TABLE_BACKBONES at config's global batch, data-parallel
    and FSDP (every device on the fsdp axis), on 8, 16 and 64 devices; from shapes alone, so no
    device of that count is needed."""
    from sigmma_jax.data import input_pipeline
    from sigmma_jax.train import loop, optimizer
    from sigmma_jax.train import state as state_lib

    rows = []
    for name in TABLE_BACKBONES:
        c = config.copy_and_resolve_references()
        c.model.update(backbone=name, backbone_weights="")
        manifest = _manifest(c, None, genes)
        model, _ = loop.build_model(c, manifest)
        tx = optimizer.make_optimizer(c)
        shapes = state_lib.state_shapes(model, tx, c, manifest)
        host = input_pipeline.zeros_batch(manifest, c.train.global_batch)
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host)
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes.params))
        for n in TABLE_DEVICES:
            for layout, sizes in (
                ("data parallel", dict(data=n, fsdp=1)),
                ("FSDP", dict(data=1, fsdp=n)),
            ):
                r = dict(backbone=name, params=n_params, devices=n, layout=layout)
                r["tiles_per_device"] = c.train.global_batch / n
                r.update(fit_estimate(c, shapes, batch, sizes))
                rows.append(r)
    return rows


def fit_table_markdown(rows: list[dict], chips=(16, 32, 80)) -> str:
    head = [
        "backbone",
        "params",
        "devices",
        "layout",
        "state",
        "gradients",
        "gathered",
        "activations",
        "estimate GiB / device",
    ] + [f"fits {g} GB" for g in chips]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        act = r["batch_gib"] + r["saved_gib"] + r["recomputed_gib"]
        fits = ["yes" if r["estimate_gib"] * GiB <= g * 1e9 else "no" for g in chips]
        cells = [
            r["backbone"],
            f"{r['params'] / 1e6:,.0f} M",
            str(r["devices"]),
            r["layout"],
            f"{r['state_gib']:.2f}",
            f"{r['gradients_gib']:.2f}",
            f"{r['gathered_gib']:.2f}",
            f"{act:.2f}",
            f"{r['estimate_gib']:.2f}",
        ] + fits
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure(
    config, devices: int, run: bool, iters: int, warmup: int, workdir=None, genes=300, fsdp=1
):
    from sigmma_jax import families, sharding
    from sigmma_jax.data import input_pipeline
    from sigmma_jax.train import loop, optimizer
    from sigmma_jax.train import state as state_lib
    from sigmma_jax.train import step as step_lib

    config = config.copy_and_resolve_references()
    config.model.backbone_weights = ""  # shapes from the preset; weights are not needed
    if devices:
        config.mesh.update(data=devices // fsdp, fsdp=fsdp)
    elif fsdp > 1:
        config.mesh.update(data=-1, fsdp=fsdp)
    manifest = _manifest(config, workdir, genes)
    mesh = sharding.make_mesh(config)
    n_dev = mesh.devices.size
    model, _ = loop.build_model(config, manifest)
    tx = optimizer.make_optimizer(config)
    abstract, shardings = state_lib.abstract_state(model, tx, config, manifest, mesh)
    split = sharding.data_parallel(mesh)
    host = input_pipeline.zeros_batch(manifest, config.train.global_batch)
    batch_shapes = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=split), host
    )
    step = step_lib.make_train_step(model, tx, config, mesh, shardings, families.get(config))
    t0 = time.perf_counter()
    compiled = step.lower(abstract, batch_shapes).compile()
    r = dict(
        devices=n_dev,
        fsdp=mesh.shape["fsdp"],
        global_batch=config.train.global_batch,
        tiles_per_device=config.train.global_batch // n_dev,
        crops_per_device=config.train.global_batch // n_dev * N_CROPS,
        backbone=config.model.backbone,
        backbone_mode=config.model.backbone_mode,
        remat=bool(config.model.remat),
        dtype=config.model.dtype,
        nodes=manifest["budgets"]["nodes"],
        edges=manifest["budgets"]["edges"],
        genes=len(manifest["genes"]),
        params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params)),
        compile_s=round(time.perf_counter() - t0, 1),
    )
    mem = compiled.memory_analysis()
    if mem is not None:
        r.update(
            argument_gib=mem.argument_size_in_bytes / GiB,
            output_gib=mem.output_size_in_bytes / GiB,
            alias_gib=mem.alias_size_in_bytes / GiB,
            temp_gib=mem.temp_size_in_bytes / GiB,
            generated_code_gib=mem.generated_code_size_in_bytes / GiB,
        )
        # Donated state: outputs alias arguments, so they are held once.
        r["total_gib"] = r["argument_gib"] + r["output_gib"] - r["alias_gib"] + r["temp_gib"]
    r.update(fit_estimate(config, abstract, batch_shapes, dict(mesh.shape)))
    r["xla_flops_per_device"] = xla_flops(compiled)
    r["backbone_model_flops"] = backbone_model_flops(config, model)
    if not run:
        return r
    state = state_lib.initialise(model, tx, config, manifest, mesh, shardings)
    batch = sharding.to_device(random_batch(manifest, config.train.global_batch), mesh)
    for _ in range(warmup):
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    r["step_s"] = statistics.median(times)
    r["tiles_per_s"] = config.train.global_batch / r["step_s"]
    r["loss"] = float(m["loss"])
    kind = jax.devices()[0].device_kind
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in kind), None)
    if jax.devices()[0].platform != "cpu" and peak_flops and r["backbone_model_flops"]:
        r["mfu"] = r["backbone_model_flops"] / r["step_s"] / (peak_flops * n_dev)
    return r


def run(a) -> int:
    from sigmma_jax import cli

    cli.required("config")
    if a.step_table:
        rows = fit_table(a.config, a.step_genes)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(rows, f, indent=1)
        print(fit_table_markdown(rows))
        return 0
    _simulate_devices(a.step_devices)
    r = measure(
        a.config,
        a.step_devices,
        a.step_run,
        a.iters,
        a.warmup,
        a.workdir,
        a.step_genes,
        a.step_fsdp,
    )
    r["date"] = datetime.date.today().isoformat()
    r["machine"] = machine_description()
    print(json.dumps(r))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(r, f, indent=1)
    print(markdown_table([r]))
    return 0


def markdown_table(rows: list[dict]) -> str:
    cols = [
        ("devices", "devices", "{}"),
        ("fsdp", "fsdp", "{}"),
        ("tiles_per_device", "tiles / device", "{}"),
        ("remat", "remat", "{}"),
        ("argument_gib", "arguments GiB", "{:.2f}"),
        ("temp_gib", "temporaries GiB", "{:.2f}"),
        ("total_gib", "total GiB / device", "{:.2f}"),
        ("saved_gib", "kept for backward GiB", "{:.2f}"),
        ("estimate_gib", "estimate GiB / device", "{:.2f}"),
        ("compile_s", "compile s", "{}"),
        ("step_s", "step s", "{:.3f}"),
        ("tiles_per_s", "tiles/s", "{:.1f}"),
        ("mfu", "MFU", "{:.1%}"),
    ]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "" for k, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
