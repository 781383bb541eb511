"""ST-Align's Tables 1-3 from a suite's finished runs: tables.json, tables.csv, tables.md, runs.csv
and plots/table{1,2,3}.png.

Every number is first a run's (its held-out slides' mean; per slide, the mean over the
clustering or MLP seeds of that run), then mean ± sd over the runs of a row (folds × seeds; sd with
ddof = 1, 0 for a single run):

    {"table1": {METHOD: {ROW: {"slides": {SLIDE: [mean, sd]}, "overall": [mean, sd]}}},  # ARI
     "table2": {ROW: {"ari_kmeans": [...], "ari_gmm": [...], "mse": [...]}},
     "table3": {ROW: {"mse": {GENE: [...]}, "group_mse": {GROUP: [...]}, "overall_mse": [...]}},
     "n_folds": n, "n_seeds": n}

METHOD is the clustering (k-means, Gaussian mixture). The runs of a suite.backbones entry add
its own rows to Tables 1 and 3, named by it ("ctranspath: frozen image encoder, spot image", "plip:
CLIP-style image"): the paper's pathology and CLIP rows. A row whose encoder has no converted weights
is labelled "random init" and kept out of the orders in tables.md.
"""

from __future__ import annotations

import csv
import io
import itertools
import pathlib
from collections import defaultdict
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from matplotlib.figure import Figure

from sigmma_jax.evaluation import markdown as md
from sigmma_jax.evaluation import report
from sigmma_jax.experiments import st_align_methods as methods
from sigmma_jax.experiments.tables import finished_runs, mean_sd, write_files

if TYPE_CHECKING:
    from sigmma_jax.experiments.suite import Run

CLUSTERINGS = ("kmeans", "gmm")
CLUSTERING_LABELS = {"kmeans": "k-means", "gmm": "Gaussian mixture (mclust's EEE)"}
FLOOR = "each gene's training mean (the floor)"


def summary(results: dict) -> str:
    """One run's headline numbers, for the suite's progress line."""
    t = results["trained"]
    parts = []
    for name, res in t.get("domains", {}).get("embeddings", {}).items():
        if "overall" in res:
            parts.append(f"{name} ARI {res['overall']['kmeans']['ari_mean']:.3f}")
    for name, res in t.get("spot_expression", {}).get("embeddings", {}).items():
        if "summary" in res and "overall_mse" in res["summary"]:
            parts.append(f"{name} MSE {res['summary']['overall_mse']['mean']:.4f}")
    return ", ".join(parts[:3])


RANDOM = " (random init: no weights)"
# The image encoder's embeddings: what a suite.backbones entry's weights decide.
IMAGE_ROWS = ("spot_backbone", "niche_backbone", "image", "joint")


def _untrained_label(config: ml_collections.ConfigDict) -> dict[str, str]:
    """Rows whose encoder runs at random initialisation in this suite (no converted weights)."""
    m = config.model
    out = {}
    if not m.backbone_weights:
        out["spot_backbone"] = out["niche_backbone"] = RANDOM
    if not m.scgpt.weights:
        out["scgpt"] = RANDOM
    return out


def _row_sets(finished: dict[Run, dict], config: ml_collections.ConfigDict):
    """[(label prefix, {method: [results]}, {embedding: label suffix})]: the main runs, then each
    suite.backbones entry's, whose image rows carry its name (and "random init" without weights)."""
    from sigmma_jax.experiments import suite  # pylint: disable=import-outside-toplevel

    by_backbone: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run, res in finished.items():
        by_backbone[run.backbone][run.method].append(res)
    out = [("", by_backbone.pop(suite.MAIN, {}), _untrained_label(config))]
    untrained = suite.random_init(config)
    for name, rows in by_backbone.items():
        note = {e: RANDOM for e in IMAGE_ROWS} if name in untrained else {}
        out.append((f"{name}: ", rows, note))
    return out


def _domain(res: dict, emb: str, clustering: str) -> tuple[dict, float | None]:
    r = res["trained"].get("domains", {}).get("embeddings", {}).get(emb, {})
    if "overall" not in r:
        return {}, None
    slides = {s: v[clustering]["ari_mean"] for s, v in r["per_slide"].items() if clustering in v}
    return slides, r["overall"][clustering]["ari_mean"]


def _genes(res: dict, emb: str) -> dict | None:
    r = res["trained"].get("spot_expression", {}).get("embeddings", {}).get(emb, {})
    return r.get("summary") if "summary" in r else None


def collect(finished: dict[Run, dict], config: ml_collections.ConfigDict) -> dict:
    row_sets = _row_sets(finished, config)
    rows = row_sets[0][1]  # the main runs (Table 2 has no per-backbone rows)
    table1: dict[str, dict] = {}
    for clustering in CLUSTERINGS:
        out = {}
        for prefix, set_rows, set_note in row_sets:
            for method, emb, label in methods.TABLE1:
                per_run = [_domain(r, emb, clustering) for r in set_rows.get(method, [])]
                per_run = [p for p in per_run if p[1] is not None]
                if not per_run:
                    continue
                slides = sorted({s for p in per_run for s in p[0]})
                out[prefix + label + set_note.get(emb, "")] = dict(
                    method=method,
                    embedding=emb,
                    slides={s: mean_sd([p[0][s] for p in per_run if s in p[0]]) for s in slides},
                    overall=mean_sd([p[1] for p in per_run]),
                )
        table1[clustering] = out
    table2 = {}
    for method, label in methods.TABLE2:
        found = rows.get(method, [])
        if not found:
            continue
        entry = {}
        for clustering in CLUSTERINGS:
            vals = [_domain(r, "fused_spot", clustering)[1] for r in found]
            if all(v is not None for v in vals):
                entry[f"ari_{clustering}"] = mean_sd(vals)
        mse = [_genes(r, "image") for r in found]
        if all(m is not None and "overall_mse" in m for m in mse):
            entry["mse"] = mean_sd([m["overall_mse"]["mean"] for m in mse])
        table2[label] = entry
    table3: dict[str, dict] = {}
    floor = []
    for (prefix, set_rows, set_note), (method, emb, label) in itertools.product(
        row_sets, methods.TABLE3_GENES
    ):
        sums = [_genes(r, emb) for r in set_rows.get(method, [])]
        sums = [s for s in sums if s is not None and "mse" in s]
        if not sums:
            continue
        table3[prefix + label + set_note.get(emb, "")] = dict(
            mse={g: mean_sd([s["mse"][g]["mean"] for s in sums]) for g in sums[0]["mse"]},
            group_mse={
                g: mean_sd([s["group_mse"][g]["mean"] for s in sums]) for g in sums[0]["group_mse"]
            },
            overall_mse=mean_sd([s["overall_mse"]["mean"] for s in sums]),
        )
        floor += [
            r["trained"]["spot_expression"]["train_mean"]["summary"]
            for r in set_rows.get(method, [])
            if "train_mean" in r["trained"].get("spot_expression", {})
        ]
    if floor and "mse" in floor[0]:
        f = floor[0]
        table3[FLOOR] = dict(
            mse={g: [v["mean"], 0.0] for g, v in f["mse"].items()},
            group_mse={g: [v["mean"], 0.0] for g, v in f["group_mse"].items()},
            overall_mse=[f["overall_mse"]["mean"], 0.0],
        )
    return dict(
        table1=table1,
        table2=table2,
        table3=table3,
        n_folds=len({r.fold for r in finished}),
        n_seeds=len({r.seed for r in finished}),
    )


# --------------------------------------------------------------------------- markdown


def _cell(ms, digits: int = 3) -> str:
    return "–" if not ms else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _order(table: dict, get, lower_is_better: bool = False) -> str:
    scored = [
        (get(v), k) for k, v in table.items() if get(v) is not None and "random init" not in k
    ]
    scored.sort(key=lambda x: x[0] if lower_is_better else -x[0])
    return " > ".join(f"{k} {s:.3f}" for s, k in scored)


def markdown(tables: dict, finished: dict, config: ml_collections.ConfigDict) -> str:
    any_res = next(iter(finished.values()))
    steps = sorted({res["steps"] for res in finished.values() if res["steps"]})
    e = config.eval
    lines = [
        "# ST-Align's experiments",
        "",
        f"- {len(finished)} runs: {tables['n_folds']} fold(s) × {tables['n_seeds']} seed(s) per "
        f"row; {'/'.join(map(str, steps)) or 0} training steps; {any_res['n_train_spots']} train "
        f"/ {any_res['n_test_spots']} test spots (first run).",
        f"- Domains: each held-out slide's spots clustered into as many clusters as it has "
        f"annotated layers, on {e.domain_pca} PCs, {e.domain_seeds} clustering seeds; ARI against "
        "the layers. A cell: mean ± sd over the runs of the row of the run's per-slide mean.",
        f"- Genes: an MLP {tuple(e.gene_mlp_hidden)} on {e.gene_train_fraction:.0%} of each "
        f"held-out slide's spots ({e.gene_split} split), MSE of log1p(counts normalised to 1e4) "
        f"on the rest, {e.gene_seeds} splits; mean over slides, then mean ± sd over runs.",
        "",
    ]
    for clustering, table in tables["table1"].items():
        if not table:
            continue
        slides = sorted({s for row in table.values() for s in row["slides"]})
        lines += [
            f"## Table 1: zero-shot spatial domains, ARI ({CLUSTERING_LABELS[clustering]})",
            "",
        ]
        header = ["embedding", *slides, "overall"]
        rows = [
            [label, *[_cell(row["slides"].get(s)) for s in slides], _cell(row["overall"])]
            for label, row in table.items()
        ]
        lines += md.table(header, rows) + [""]
        lines += ["Order: " + _order(table, lambda v: v["overall"][0]), ""]
    if tables["table2"]:
        lines += ["## Table 2: ablations (fused spot ARI, image MSE)", ""]
        header = ["model", "ARI k-means", "ARI GMM", "MSE (nine genes)"]
        rows = [
            [label, _cell(r.get("ari_kmeans")), _cell(r.get("ari_gmm")), _cell(r.get("mse"), 4)]
            for label, r in tables["table2"].items()
        ]
        lines += md.table(header, rows) + [""]
    t3 = tables["table3"]
    if t3:
        genes = list(next(iter(t3.values()))["mse"])
        groups = list(next(iter(t3.values()))["group_mse"])
        lines += ["## Table 3: gene expression from the image, MSE", ""]
        header = ["image embedding", *genes, *groups, "overall"]
        rows = [
            [label]
            + [_cell(r["mse"][g], 4) for g in genes]
            + [_cell(r["group_mse"][g], 4) for g in groups]
            + [_cell(r["overall_mse"], 4)]
            for label, r in t3.items()
        ]
        lines += md.table(header, rows) + [""]
        lines += [
            "Order (lower is better): "
            + _order(
                {k: v for k, v in t3.items() if k != FLOOR},
                lambda v: v["overall_mse"][0],
                lower_is_better=True,
            ),
            "",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- csv and plots


def csv_text(tables: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["table", "row", "metric", "mean", "sd"])

    def rows(table: str, row: str, entry, prefix: str = "") -> None:
        if isinstance(entry, dict):
            for k, v in entry.items():
                if k not in ("method", "embedding"):
                    rows(table, row, v, f"{prefix}{k}/")
        else:
            w.writerow([table, row, prefix.rstrip("/"), f"{entry[0]:.6g}", f"{entry[1]:.6g}"])

    for clustering, table in tables["table1"].items():
        for row, entry in table.items():
            rows(f"table1_{clustering}", row, entry)
    for t in ("table2", "table3"):
        for row, entry in tables[t].items():
            rows(t, row, entry)
    return out.getvalue()


def runs_csv(finished: dict, times: dict) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["backbone", "method", "fold", "seed", "steps", "summary", "wall_s", "cpu_s"])
    for r, res in finished.items():
        w.writerow(
            [r.backbone, r.method, r.fold, r.seed, res["steps"], summary(res)]
            + [(times.get(r) or {}).get(k, "") for k in ("wall", "cpu")]
        )
    return out.getvalue()


def _bars(ax, labels: list[str], values: list, title: str) -> None:
    x = np.arange(len(labels))
    ax.bar(x, [v[0] for v in values], yerr=[v[1] for v in values], capsize=3, color="tab:blue")
    ax.set_xticks(x, labels, rotation=35, ha="right", fontsize="small")
    ax.set_title(title)


def plots(tables: dict, out_dir: pathlib.Path) -> None:
    t1 = {c: t for c, t in tables["table1"].items() if t}
    if t1:
        fig = Figure(figsize=(7 * len(t1), 5), layout="constrained")
        for ax, (c, t) in zip(fig.subplots(1, len(t1), squeeze=False)[0], t1.items()):
            _bars(ax, list(t), [r["overall"] for r in t.values()], f"ARI, {CLUSTERING_LABELS[c]}")
        report.save_png(fig, out_dir / "table1.png")
    t2 = tables["table2"]
    if t2:
        keys = [k for k in ("ari_kmeans", "ari_gmm", "mse") if all(k in r for r in t2.values())]
        fig = Figure(figsize=(4.5 * max(len(keys), 1), 4.5), layout="constrained")
        for ax, k in zip(fig.subplots(1, max(len(keys), 1), squeeze=False)[0], keys):
            _bars(ax, list(t2), [r[k] for r in t2.values()], k)
        report.save_png(fig, out_dir / "table2.png")
    t3 = tables["table3"]
    if t3:
        fig = Figure(figsize=(7, 4.5), layout="constrained")
        _bars(fig.subplots(), list(t3), [r["overall_mse"] for r in t3.values()], "MSE, nine genes")
        report.save_png(fig, out_dir / "table3.png")


def write(workdir: str | pathlib.Path, runs: list[Run], config: ml_collections.ConfigDict) -> dict:
    """Writes the tables of the finished `runs`; tables.json last (its presence: all written)."""
    workdir = pathlib.Path(workdir)
    finished, times = finished_runs(workdir, runs)
    tables = collect(finished, config)
    write_files(
        workdir,
        tables,
        markdown(tables, finished, config),
        csv_text(tables),
        runs_csv(finished, times),
        plots,
    )
    return tables
