"""Task 1 against the number of training tiles: `python -m sigmma_jax.bench probe_curve
--curve_runs=W/runs/main/sigmma/fold0/seed0,... --curve_out=DIR`.

Each finished run is embedded again from its latest checkpoint on its own shard set and split; the
headline probe (`probe.learning_curve`) is fitted on seeded subsets of its training tiles, for
the mean of the scales and for their concatenation (as wide as all of them), and scored on all its
held-out tiles. Written: DIR/curve.json ({run: {read: {n: [mean, sd]}}}), DIR/curve.md (per
method: mean over its runs) and DIR/curve.png. Figures in docs/benchmarks.md.
"""

from __future__ import annotations

import pathlib
import time
from collections import defaultdict

import numpy as np
from absl import flags
from matplotlib.figure import Figure

from sigmma_jax import atomic

flags.DEFINE_list("curve_runs", [], "probe_curve: finished run directories.")
flags.DEFINE_list("curve_sizes", ["32", "64", "128", "256", "512", "100000"], "probe_curve: tiles.")
flags.DEFINE_integer("curve_repeats", 3, "probe_curve: subsets drawn per size.")
flags.DEFINE_string("curve_out", "probe_curve", "probe_curve: output directory.")

READS = ("projected/mean", "projected/concat")


def run_curve(run_dir: str | pathlib.Path, sizes: list[int], repeats: int) -> dict:
    """{read: {n: [mean, sd]}} of one run (module docstring)."""
    from sigmma_jax import sharding
    from sigmma_jax.analysis.embed import load_run
    from sigmma_jax.evaluation import genes, inference, probe
    from sigmma_jax.families.sigmma import FAMILY
    from sigmma_jax.train import run_info

    mesh = sharding.make_mesh(run_info.read(run_dir)[0])
    run = load_run(run_dir, mesh)
    c, manifest = run.config, run.manifest
    apply = inference.make_embed_fn(FAMILY, run.model, mesh)
    emb = {
        s: inference.embed_split(FAMILY, apply, run.params, c.data.shard_dir, manifest, s, c, mesh)
        for s in ("train", "test")
    }
    emb["genes"] = genes.select(c, manifest, c.data.shard_dir)
    reads = [r for r in READS if r.split("/")[1] != "concat" or len(emb["train"]["he"]) > 1]
    return probe.learning_curve(emb, c, reads, sizes, repeats, seed=c.seed)


def _method(run_dir: str) -> str:
    parts = pathlib.Path(run_dir).parts  # .../runs/BACKBONE/METHOD/foldK/seedS
    return parts[-3] if len(parts) >= 3 else run_dir


def summarise(curves: dict[str, dict]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """{method: {read: {n: [mean, sd] over the method's runs]}}."""
    by: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run_dir, curve in curves.items():
        for read, points in curve.items():
            for n, (mean, _) in points.items():
                by[_method(run_dir)][read][int(n)].append(mean)
    return {
        m: {
            r: {
                n: [float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0]
                for n, v in sorted(pts.items())
            }
            for r, pts in reads.items()
        }
        for m, reads in by.items()
    }


def markdown(summary: dict) -> str:
    from sigmma_jax.evaluation import markdown as md

    sizes = sorted({n for reads in summary.values() for pts in reads.values() for n in pts})
    rows = [
        [f"{m}: `{r}`"] + [f"{pts[n][0]:.3f} ± {pts[n][1]:.3f}" if n in pts else "–" for n in sizes]
        for m, reads in summary.items()
        for r, pts in reads.items()
    ]
    header = ["method: probe input"] + [f"{n} tiles" for n in sizes]
    lines = ["# Task 1 per-gene PCC against training tiles (mean ± sd over runs)", ""]
    return "\n".join(lines + md.table(header, rows)) + "\n"


def plot(summary: dict, path: pathlib.Path) -> None:
    from sigmma_jax.evaluation import report

    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for m, reads in summary.items():
        for r, pts in reads.items():
            n = sorted(pts)
            ax.errorbar(
                n,
                [pts[k][0] for k in n],
                yerr=[pts[k][1] for k in n],
                capsize=2,
                ls="-" if r.endswith("mean") else "--",
                label=f"{m} {r.split('/')[1]}",
            )
    ax.set(xscale="log", xlabel="training tiles", ylabel="per-gene PCC (held-out tiles)")
    ax.legend(fontsize="small")
    report.save_png(fig, path)


def run(f: flags.FlagValues) -> int:
    if not f.curve_runs:
        raise SystemExit("probe_curve: name the runs with --curve_runs=DIR,DIR,...")
    sizes = [int(s) for s in f.curve_sizes]
    out = pathlib.Path(f.curve_out)
    curves = {}
    t0 = time.time()
    for i, d in enumerate(f.curve_runs, 1):
        curves[d] = run_curve(d, sizes, f.curve_repeats)
        rate = i / (time.time() - t0)
        print(
            f"[{i}/{len(f.curve_runs)}] {d}; {rate * 60:.1f} runs/min, "
            f"ETA {(len(f.curve_runs) - i) / rate:.0f} s",
            flush=True,
        )
    summary = summarise(curves)
    atomic.write_text(out / "curve.md", markdown(summary))
    plot(summary, out / "curve.png")
    atomic.write_json(out / "curve.json", {"runs": curves, "by_method": summary}, indent=1)
    print(markdown(summary))
    return 0
