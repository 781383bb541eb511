"""The paper's Tables 1-4 from a suite's finished runs: tables.json, tables.csv, tables.md and
plots/table{1,2,3,4}.png.

tables.json (mean and sd over every fold x seed of a row; sd with ddof=1, 0 for a single run):

    {"table1": {METHOD: {"pcc_tile": [mean, sd], "mse_tile": [...], "pcc_gene": [...]}},
     "table2": {METHOD: {"he_to_st": {"R@5": [mean, sd], "R@10": ..., "R@15": ...}, "st_to_he": ...}},
     "table3": {BACKBONE: {"frozen_backbone": {table 1 keys}, "sigmma": {...}}},
     "table4": {ROW: {table 1 and table 2 keys}},
     "random_init": [BACKBONE, ...], "n_folds": n, "n_seeds": n}

A vision-language model given in suite.backbones (CLIP, PLIP, OmiCLIP's CoCa) runs `text_tower`: its
rows in Tables 1 and 2 are "NAME:text_tower". A backbone in "random_init" had no converted weights:
its rows say so and stay out of every order.

Table 1's "bleep" row also holds "knn_expression", BLEEP's own predictor, in table 1's keys; every
Task 1 row also "hest_pcc_gene" (HEST-Benchmark's protocol on the same input) and, with several
scales, "inputs" ({probe input: per-gene PCC}). Table 4's rows hold "graph" ({scale: edges per
cell}); "whole_tile" the SIGMMA variants of `methods.TABLE_WHOLE_TILE` that ran.
Retrieval is the "combined" score (the sum of the model's scales' similarities; a single-scale
model's one scale). tables.md adds what the JSON leaves out: the sd across test tiles (the paper's
±), per-gene PCC per fold with mean ± sd across folds (HEST-Benchmark's ±), the probe's settings,
and the order of the methods, overall and per seed. tables.csv has one line per table, row and
metric, and runs.csv one line per run.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
from collections import defaultdict
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from sigmma_jax import atomic
from sigmma_jax.evaluation import markdown as md
from sigmma_jax.evaluation import report, retrieval
from sigmma_jax.experiments import methods
from sigmma_jax.scales import SCALES

if TYPE_CHECKING:
    from sigmma_jax.experiments.suite import Run

EXPRESSION = {"pcc_tile": "pcc_tile_mean", "mse_tile": "mse_tile_mean", "pcc_gene": "pcc_gene_mean"}
RECALLS = tuple(f"R@{p}" for p in retrieval.PERCENTS)
DIRECTIONS = retrieval.DIRECTIONS
LABELS = {
    "frozen_backbone": "backbone alone, frozen (the paper's UNI row)",
    "single_scale_clip": "single-scale CLIP (whole tile vs expression MLP)",
    "bleep": "BLEEP",
    "gene_sentence": "gene sentence, a transformer trained from scratch (OmiCLIP's input)",
    "sigmma": "SIGMMA",
    "no_graph": "(a) no graph, single scale (= gene sentence)",
    "graph_single_scale_full": "(b) graph, single scale, fully connected",
    "graph_multiscale_full": "(c) graph, three scales, fully connected",
    "sigmma_heads_per_scale": "SIGMMA, one projection head per scale",
    "sigmma_macro_weighted": "SIGMMA, scale weights 0.5 / 0.5 / 2 (macro)",
    "sigmma_backbone_lr": "SIGMMA, backbone at 0.1 × the learning rate",
}
LOWER_IS_BETTER = {"mse_tile"}


def summary(results: dict) -> str:
    """One run's headline numbers, for the suite's progress line."""
    t = results["trained"]
    parts = []
    if "retrieval" in t:
        parts.append(f"HE→ST R@5 {t['retrieval']['he_to_st']['combined']['R@5']:.3f}")
    if "probe" in t:
        parts.append(f"probe PCC tile {t['probe']['pcc_tile_mean']:.3f}")
        parts.append(f"gene {t['probe']['pcc_gene_mean']:.3f}")
    return ", ".join(parts)


def mean_sd(values) -> list[float]:
    v = np.asarray(values, np.float64)
    return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]


def _expression(results: list[dict], evaluator: str = "probe") -> dict:
    found = [r["trained"][evaluator] for r in results if evaluator in r["trained"]]
    if not found:
        return {}
    out = {k: mean_sd([f[key] for f in found]) for k, key in EXPRESSION.items()}
    if all("hest" in f for f in found):
        out["hest_pcc_gene"] = mean_sd([f["hest"]["pcc_gene_mean"] for f in found])
        out["input"] = found[0].get("input")
        out["width"] = found[0].get("n_components")
    reads = [v for v in found[0].get("variants", {}) if all(v in f["variants"] for f in found)]
    if len(reads) > 1:
        out["inputs"] = {
            v: mean_sd([f["variants"][v]["pcc_gene_mean"] for f in found]) for v in reads
        }
    return out


def _graph(results: list[dict]) -> dict:
    """{scale: {"degree": [mean, sd], "sampled": ...}} over the runs that logged the ST graph."""
    found = [r["graph"] for r in results if r.get("graph")]
    if not found:
        return {}
    return {
        s: {k: mean_sd([g[s][k] for g in found if k in g.get(s, {})]) for k in found[0][s]}
        for s in found[0]
    }


def _retrieval(results: list[dict]) -> dict:
    found = [r["trained"]["retrieval"] for r in results if "retrieval" in r["trained"]]
    if not found:
        return {}
    return {
        d: {k: mean_sd([f[d]["combined"][k] for f in found]) for k in RECALLS} for d in DIRECTIONS
    }


VL = "text_tower"  # the method of a vision-language suite.backbones entry: rows "NAME:text_tower"


def _where(key: str) -> tuple[str, str]:
    """(backbone, method) of a Table 1 / 2 row key: "NAME:text_tower" or a method of the main runs."""
    name, _, method = key.rpartition(":")
    return (name, method) if name else ("main", key)


def label_of(key: str, random_init=()) -> str:
    backbone, method = _where(key)
    if backbone == "main":
        return LABELS.get(key, key)
    note = " (random init: no weights)" if backbone in random_init else ""
    return f"{backbone}: its pretrained image and text towers, the gene sentence as text{note}"


def collect(finished: dict[Run, dict], random_init=()) -> dict:
    """tables.json's content from {run: results.json} of the finished runs; `random_init`: the
    suite.backbones names without converted weights."""
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run, res in finished.items():
        rows[run.backbone, run.method].append(res)
    main = {m: res for (backbone, m), res in rows.items() if backbone == "main"}
    vl = {f"{b}:{m}": res for (b, m), res in rows.items() if b != "main" and m == VL}
    table1 = {m: _expression(main[m]) for m in methods.TABLE1 if m in main}
    table1.update({k: _expression(v) for k, v in vl.items()})
    if "bleep" in table1 and (knn := _expression(main["bleep"], "knn_expression")):
        table1["bleep"]["knn_expression"] = knn
    table3: dict[str, dict] = {}
    for backbone, method in rows:
        if backbone != "main" and method in methods.TABLE3:
            table3.setdefault(backbone, {})[method] = _expression(rows[backbone, method])
    table2 = {m: _retrieval(main[m]) for m in methods.TABLE2 if m in main}
    table2.update({k: _retrieval(v) for k, v in vl.items()})
    return dict(
        table1=table1,
        table2=table2,
        table3=table3,
        random_init=sorted({b for b, _ in rows if b in set(random_init)}),
        table4={
            row: {**_expression(main[m]), **_retrieval(main[m]), "graph": _graph(main[m])}
            for row, m in methods.TABLE4.items()
            if m in main
        },
        whole_tile={
            m: {**_expression(main[m]), **_retrieval(main[m])}
            for m in methods.TABLE_WHOLE_TILE
            if m in main
        }
        if any(m in main for m in methods.TABLE_WHOLE_TILE[1:])
        else {},
        n_folds=len({r.fold for r in finished}),
        n_seeds=len({r.seed for r in finished}),
    )


# --------------------------------------------------------------------------- markdown


def _cell(ms: list[float] | None, digits: int = 3) -> str:
    return "–" if not ms else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _order(table: dict, get, lower_is_better: bool = False, random_init=()) -> str:
    """The rows by a value, best first; rows of a random-init backbone are left out."""
    scored = [
        (get(v), k)
        for k, v in table.items()
        if get(v) is not None and _where(k)[0] not in random_init
    ]
    scored.sort(key=lambda x: x[0] if lower_is_better else -x[0])
    return " > ".join(f"{k} {s:.3f}" for s, k in scored)


def _per_seed_orders(finished: dict, members: dict[str, str], value, random_init=()) -> list[str]:
    """'seed S: a > b > ...' for each seed, from each row's runs of that seed (mean over folds)."""
    lines = []
    for seed in sorted({r.seed for r in finished}):
        table = {}
        for row, method in members.items():
            vals = [
                value(res)
                for r, res in finished.items()
                if (r.backbone, r.method) == _where(method) and r.seed == seed
            ]
            vals = [v for v in vals if v is not None]
            if vals:
                table[row] = float(np.mean(vals))
        lines.append(f"seed {seed}: " + _order(table, lambda v: v, random_init=random_init))
    return lines


def _probe_value(key):
    return lambda res: res["trained"].get("probe", {}).get(key)


def _recall_value(res):
    r = res["trained"].get("retrieval")
    return r["he_to_st"]["combined"]["R@5"] if r else None


def _tile_sd(finished: dict, backbone: str, method: str, key: str) -> str:
    vals = [
        res["trained"]["probe"][key]
        for r, res in finished.items()
        if r.backbone == backbone and r.method == method and "probe" in res["trained"]
    ]
    return f"{np.mean(vals):.3f}" if vals else "–"


def _fold_cells(finished: dict, backbone: str, method: str, folds: list[int]) -> list[str]:
    """Per-gene PCC per fold (mean over seeds), then mean ± sd across folds (HEST's ±)."""
    per_fold = []
    for f in folds:
        vals = [
            res["trained"]["probe"]["pcc_gene_mean"]
            for r, res in finished.items()
            if (r.backbone, r.method, r.fold) == (backbone, method, f) and "probe" in res["trained"]
        ]
        per_fold.append(float(np.mean(vals)) if vals else None)
    found = [v for v in per_fold if v is not None]
    cells = ["–" if v is None else f"{v:.3f}" for v in per_fold]
    return cells + [_cell([np.mean(found), np.std(found, ddof=1) if len(found) > 1 else 0.0])]


def _setup(finished: dict, config: ml_collections.ConfigDict) -> list[str]:
    any_res = next(iter(finished.values()))
    steps = sorted({res["steps"] for r, res in finished.items() if r.method != "frozen_backbone"})
    probe = next(
        (res["trained"]["probe"] for res in finished.values() if "probe" in res["trained"]), {}
    )
    e = config.eval
    target = (
        "log1p of raw counts (HEST-Benchmark)"
        if e.target == "log1p"
        else f"log1p of counts scaled to {e.target_sum:g} per tile"
    )
    genes = (
        f"the list in {e.genes_file}"
        if e.genes_file
        else "HEST-Benchmark's procedure on the tiles (≥ 10 % of each slide's tiles, scanpy "
        "seurat HVGs)"
    )
    scales = "; the mean of the scales for a multi-scale model" if e.probe_scales == "mean" else ""
    width = (
        f" and no more than the joint space's width {config.model.embed_dim}, so every method is "
        "read at the same width"
        if e.equal_width
        else ""
    )
    units = (
        "each gene scaled to [0, 1] by its range over the training tiles (MSE on the paper's scale)"
        if e.target_scale == "minmax"
        else "log1p units"
    )
    n_folds = len({r.fold for r in finished})
    n_seeds = len({r.seed for r in finished})
    return [
        f"- {len(finished)} runs: {n_folds} fold(s) × {n_seeds} seed(s) per row; "
        f"{'/'.join(map(str, steps)) or 0} training steps; "
        f"{any_res['n_train_tiles']} train / {any_res['n_test_tiles']} test tiles (first run).",
        f"- Task 1 probe: StandardScaler → PCA → ridge (α = 100 / (components × genes), lsqr), "
        f"{'with' if e.probe_intercept else 'without'} intercept, on each method's own tile "
        f'embedding ("probe reads": the input and its width{scales}), at most '
        f"{e.pca_components} components{width}; target {target}, scored in {units}; "
        f"{probe.get('n_genes', e.n_genes)} genes from {genes}. "
        '"HEST PCC per gene": HEST-Benchmark\'s own protocol (no intercept, log1p units) on the '
        "same input, its leaderboard's number.",
        '- Cells: mean ± sd over the runs of a row (folds × seeds). "± tiles": the sd across '
        "test tiles, averaged over runs (the paper's ±).",
        "- Retrieval: Recall@p% on held-out tiles, the combined score (sum of the model's scales' "
        "cosine similarities).",
    ]


def markdown(tables: dict, finished: dict, config: ml_collections.ConfigDict) -> str:
    lines = ["# The paper's experiments", ""] + _setup(finished, config) + [""]
    folds = sorted({r.fold for r in finished})
    untrained = tables.get("random_init", [])

    def expression_rows(
        table: dict, backbone: str, label=lambda k: f"{label_of(k, untrained)} (`{_where(k)[1]}`)"
    ):
        out = []
        for key, row in table.items():
            method = methods.TABLE4.get(key, key)
            if backbone == "main":
                backbone_, method = _where(method)
            else:
                backbone_ = backbone
            out.append(
                [
                    label(key),
                    _cell(row.get("pcc_tile")),
                    _tile_sd(finished, backbone_, method, "pcc_tile_sd"),
                    _cell(row.get("mse_tile")),
                    _tile_sd(finished, backbone_, method, "mse_tile_sd"),
                    _cell(row.get("pcc_gene")),
                    _cell(row.get("hest_pcc_gene")),
                    f"`{row['input']}` ({row['width']})" if row.get("input") else "–",
                ]
            )
        return out

    header1 = ["method", "PCC per tile", "± tiles", "MSE per tile", "± tiles", "PCC per gene"]
    header1 += ["HEST PCC per gene", "probe reads"]
    t1 = tables["table1"]
    if t1:
        lines += ["## Table 1: gene expression prediction (Task 1, linear probe)", ""]
        lines += md.table(header1, expression_rows(t1, "main")) + [""]
        if "knn_expression" in t1.get("bleep", {}):
            k = t1["bleep"]["knn_expression"]
            lines += [
                f"BLEEP's own predictor (mean of the {config.eval.knn_k} nearest training tiles in "
                f"the joint space): PCC per tile {_cell(k['pcc_tile'])}, MSE per tile "
                f"{_cell(k['mse_tile'])}, PCC per gene {_cell(k['pcc_gene'])}.",
                "",
            ]
        lines += [
            "The gene-sentence row is OmiCLIP's representation of ST read by a transformer trained "
            "from scratch beside our backbone. The paper's CLIP, PLIP and OmiCLIP rows are the "
            '"NAME: its pretrained image and text towers" rows, one per vision-language model in '
            "suite.backbones (`text_tower`).",
            "",
            "Order by PCC per tile: "
            + _order(t1, lambda v: v.get("pcc_tile", [None])[0], random_init=untrained),
            "",
        ]
        lines += [
            "- " + s
            for s in _per_seed_orders(
                finished, {m: m for m in t1}, _probe_value("pcc_tile_mean"), untrained
            )
        ] + [""]
    t2 = tables["table2"]
    if t2:
        lines += ["## Table 2: cross-modal retrieval (Task 2)", ""]
        header = ["method"] + [
            f"{d.replace('_to_', '→').upper()} {k}%" for d in DIRECTIONS for k in RECALLS
        ]
        rows = [
            [f"{label_of(m, untrained)} (`{_where(m)[1]}`)"]
            + [_cell(row.get(d, {}).get(k)) for d in DIRECTIONS for k in RECALLS]
            for m, row in t2.items()
        ]
        n_test = next(iter(finished.values()))["n_test_tiles"]
        chance = ", ".join(f"{k}% {report.chance(k, n_test):.3f}" for k in RECALLS)
        lines += md.table(header, rows) + [
            "",
            f"Chance ({n_test} test tiles): {chance}.",
            "",
        ]
        lines += [
            "Order by HE→ST R@5%: "
            + _order(
                t2, lambda v: v.get("he_to_st", {}).get("R@5", [None])[0], random_init=untrained
            ),
            "",
        ]
        lines += [
            "- " + s
            for s in _per_seed_orders(finished, {m: m for m in t2}, _recall_value, untrained)
        ] + [""]
    t3 = tables["table3"]
    if t3:
        lines += ["## Table 3: backbones (Task 1, linear probe)", ""]
        rows = []
        for backbone, entries in t3.items():
            note = " (random init: no weights)" if backbone in untrained else ""
            rows += expression_rows(entries, backbone, lambda k, b=backbone: f"{b}{note}: `{k}`")
        lines += md.table(header1, rows) + [""]
    t4 = tables["table4"]
    if t4:
        lines += ["## Table 4: ablations (cumulative rows)", ""]
        header = header1 + ["HE→ST R@5%", "ST→HE R@5%", "edges per cell (micro / meso / macro)"]
        rows = [
            r
            + [_cell(t4[k].get(d, {}).get("R@5")) for d in DIRECTIONS]
            + [_degrees(t4[k].get("graph", {}))]
            for r, k in zip(expression_rows(t4, "main", lambda k: LABELS.get(k, k)), t4)
        ]
        lines += md.table(header, rows) + [""]
        lines += [
            "Edges per cell: the ST graph's mean degree after each stage over the last logged "
            "training steps (sampled edges in SIGMMA; every candidate in the fully connected "
            "rows; – where the ST tower has no graph).",
            "",
        ]
        lines += [
            "Order by PCC per tile: " + _order(t4, lambda v: v.get("pcc_tile", [None])[0]),
            "",
        ]
        lines += [
            "- " + s
            for s in _per_seed_orders(finished, methods.TABLE4, _probe_value("pcc_tile_mean"))
        ] + [""]
    lines += _inputs_table(tables)
    lines += _whole_tile_table(tables.get("whole_tile", {}))
    if len(folds) > 1:
        lines += [
            "## Per fold: PCC per gene (mean over seeds), mean ± sd across folds (HEST-Benchmark)",
            "",
        ]
        header = ["run"] + [f"fold {f}" for f in folds] + ["mean ± sd"]
        keys = sorted({(r.backbone, r.method) for r in finished})
        rows = [[f"{b}/{m}"] + _fold_cells(finished, b, m, folds) for b, m in keys]
        lines += md.table(header, rows) + [""]
    return "\n".join(lines)


def _degrees(graph: dict) -> str:
    if not graph:
        return "–"
    return " / ".join(f"{graph[s]['degree'][0]:.1f}" if s in graph else "–" for s in SCALES)


def _inputs_table(tables: dict) -> list[str]:
    """Task 1's per-gene PCC for each probe input of each multi-input row (Tables 1 and 4)."""
    rows = dict(tables["table1"])
    for key, v in tables["table4"].items():  # by method: (a) is Table 1's gene sentence
        rows.setdefault(methods.TABLE4[key], v)
    rows.update(tables.get("whole_tile", {}))
    rows = {k: v for k, v in rows.items() if v.get("inputs")}
    if not rows:
        return []
    found = {r for v in rows.values() for r in v["inputs"]}
    order = [f"{e}/{s}" for e in ("projected", "backbone") for s in (*SCALES, "mean", "concat")]
    reads = [r for r in order if r in found]
    body = [
        [LABELS.get(k, k)] + [_cell(v["inputs"].get(r)) for r in reads] for k, v in rows.items()
    ]
    return [
        "## Task 1 by what the probe reads (PCC per gene, the headline's settings)",
        "",
        *md.table(["method"] + [f"`{r}`" for r in reads], body),
        "",
        "`projected/S`: the heads' embedding of scale S; `mean`: the mean of the scales (the "
        "headline); `concat`: the scales side by side, as wide as all of them (the default before "
        "2026-12-03; its PCA keeps as many components, so on few training tiles the ridge "
        "overfits); `backbone/...`: the image backbone's embedding before the head.",
        "",
    ]


def _whole_tile_table(t: dict) -> list[str]:
    if not t:
        return []
    header = ["variant", "PCC per tile", "PCC per gene", "backbone on the whole tile: PCC per gene"]
    header += ["HE→ST R@5%", "ST→HE R@5%"]
    rows = [
        [LABELS.get(k, k), _cell(v.get("pcc_tile")), _cell(v.get("pcc_gene"))]
        + [_cell(v.get("inputs", {}).get("backbone/macro"))]
        + [_cell(v.get(d, {}).get("R@5")) for d in DIRECTIONS]
        for k, v in t.items()
    ]
    return [
        "## Why SIGMMA's backbone embeds the whole tile as it does (SIGMMA variants)",
        "",
        *md.table(header, rows),
        "",
    ]


# --------------------------------------------------------------------------- csv and plots


def read_run(workdir: str | pathlib.Path, run: Run) -> tuple[dict, dict | None]:
    """(results.json, time.json or None) of a finished run."""
    d = pathlib.Path(workdir) / run.path
    time_path = d / "time.json"
    return (
        json.loads((d / "results.json").read_text()),
        json.loads(time_path.read_text()) if time_path.exists() else None,
    )


def csv_text(tables: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["table", "row", "metric", "mean", "sd"])

    def rows(table: str, row: str, entry: dict, prefix: str = "") -> None:
        for k, v in entry.items():
            if isinstance(v, dict):
                rows(table, row, v, f"{prefix}{k}/")
            elif isinstance(v, list):  # [mean, sd]; labels such as "input" are in tables.json
                w.writerow([table, row, prefix + k, f"{v[0]:.6g}", f"{v[1]:.6g}"])

    for t in ("table1", "table2", "table4", "whole_tile"):
        for row, entry in tables.get(t, {}).items():
            rows(t, row, entry)
    for backbone, entries in tables["table3"].items():
        for method, entry in entries.items():
            rows("table3", f"{backbone}/{method}", entry)
    return out.getvalue()


def runs_csv(finished: dict, times: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    cols = ["pcc_tile_mean", "pcc_tile_sd", "mse_tile_mean", "pcc_gene_mean"]
    w.writerow(
        ["backbone", "method", "fold", "seed", "steps", *cols, "he_to_st_R@5", "st_to_he_R@5"]
        + ["wall_s", "cpu_s"]
    )
    for r, res in finished.items():
        t = res["trained"]
        probe = t.get("probe", {})
        ret = t.get("retrieval")
        w.writerow(
            [r.backbone, r.method, r.fold, r.seed, res["steps"]]
            + [f"{probe[c]:.6g}" if c in probe else "" for c in cols]
            + [f"{ret[d]['combined']['R@5']:.6g}" if ret else "" for d in DIRECTIONS]
            + [(times.get(r) or {}).get(k, "") for k in ("wall", "cpu")]
        )
    return out.getvalue()


def _bars(ax, labels: list[str], values: list[list[float] | None], title: str) -> None:
    x = np.arange(len(labels))
    means = [np.nan if not v else v[0] for v in values]
    sds = [0.0 if not v else v[1] for v in values]
    ax.bar(x, means, yerr=sds, capsize=3, color="tab:blue")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    ax.set_title(title)


def plots(tables: dict, out_dir: pathlib.Path) -> None:
    panels = {
        "table1": (tables["table1"], [(k, k) for k in EXPRESSION]),
        "table4": (
            tables["table4"],
            [(k, k) for k in EXPRESSION] + [("HE→ST R@5", ("he_to_st", "R@5"))],
        ),
        "table2": (
            tables["table2"],
            [
                (f"{d.replace('_to_', '→').upper()} {k}", (d, k))
                for d in DIRECTIONS
                for k in RECALLS
            ],
        ),
        "table3": (
            {f"{b}/{m}": e for b, entries in tables["table3"].items() for m, e in entries.items()},
            [(k, k) for k in EXPRESSION],
        ),
    }
    for name, (table, metrics) in panels.items():
        if not table:
            continue
        fig = Figure(figsize=(3.6 * len(metrics), 4.2), layout="constrained")
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, (title, key) in zip(axes, metrics):
            if isinstance(key, tuple):
                vals = [row.get(key[0], {}).get(key[1]) for row in table.values()]
            else:
                vals = [row.get(key) for row in table.values()]
            _bars(ax, list(table), vals, title)
        fig.suptitle(f"{name}: mean ± sd over folds × seeds")
        report.save_png(fig, out_dir / f"{name}.png")


def finished_runs(workdir: pathlib.Path, runs: list[Run]) -> tuple[dict, dict]:
    """(results, times) of the `runs` whose results.json exists; refuses a suite with none."""
    finished, times = {}, {}
    for r in runs:
        if (workdir / r.path / "results.json").exists():
            finished[r], times[r] = read_run(workdir, r)
    if not finished:
        raise ValueError(f"no finished run under {workdir / 'runs'}")
    return finished, times


def write_files(workdir: pathlib.Path, tables: dict, md: str, csv: str, runs: str, plot) -> None:
    """tables.md, tables.csv, runs.csv, plots/ (`plot(tables, dir)`), then tables.json last: its
    presence says all were written."""
    atomic.write_text(workdir / "tables.md", md)
    atomic.write_text(workdir / "tables.csv", csv)
    atomic.write_text(workdir / "runs.csv", runs)
    plot(tables, workdir / "plots")
    atomic.write_json(workdir / "tables.json", tables, indent=2)


def write(workdir: str | pathlib.Path, runs: list[Run], config: ml_collections.ConfigDict) -> dict:
    """Writes the tables of the finished `runs`; tables.json last (its presence: all written)."""
    workdir = pathlib.Path(workdir)
    from sigmma_jax.experiments import suite  # pylint: disable=import-outside-toplevel

    finished, times = finished_runs(workdir, runs)
    tables = collect(finished, suite.random_init(config))
    write_files(
        workdir,
        tables,
        markdown(tables, finished, config),
        csv_text(tables),
        runs_csv(finished, times),
        plots,
    )
    return tables
