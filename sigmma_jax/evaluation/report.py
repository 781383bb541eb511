"""Results files of a run: results.json, results.md and PNG plots.

Every file is written atomically (`sigmma_jax.atomic`), so a crash never leaves a half-written
file. results.json is written last: its presence means the whole report is complete.

Plots use matplotlib's Agg canvas directly (Figure + FigureCanvasAgg) rather than pyplot, so
importing this module never switches the backend of a notebook or another caller.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sigmma_jax import atomic
from sigmma_jax.evaluation.retrieval import top_k

DIRECTIONS = ("he_to_st", "st_to_he")
RETRIEVAL_SCALES = ("micro", "meso", "macro", "combined")
EXPRESSION_ROWS = (
    ("PCC per tile", "pcc_tile_mean", "pcc_tile_sd"),
    ("MSE per tile", "mse_tile_mean", "mse_tile_sd"),
    ("PCC per gene", "pcc_gene_mean", None),
    ("genes", "n_genes", None),
    ("PCA components", "n_components", None),
    ("neighbours", "k", None),
)
# Expression evaluators and the title of their table.
EXPRESSION = {
    "probe": "Gene expression prediction: linear probe on HE embeddings (mean ± sd over test tiles)",
    "knn_expression": "Gene expression prediction: mean of the nearest training tiles in the joint "
    "space, BLEEP's predictor (mean ± sd over test tiles)",
}
# What the model columns are; results.md says it under the tables.
MODEL_NOTES = {
    "trained": "the model after training",
    "initial": "the model at initialisation: with converted weights, the pretrained backbone behind "
    "randomly initialised heads and ST tower",
}


# --------------------------------------------------------------------------- markdown


def _models(results: dict) -> list[str]:
    # "trained" and "initial" first; any other entry holding evaluator results (a baseline) gets its
    # own column after them.
    from sigmma_jax.evaluation import EVALUATORS

    found = [
        k for k, v in results.items() if isinstance(v, dict) and any(e in v for e in EVALUATORS)
    ]
    order = {"trained": 0, "initial": 1}
    return sorted(found, key=lambda k: (order.get(k, 2), found.index(k)))


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.4f}" if math.isfinite(x) else "nan"
    return str(x)


def md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _recall(
    results: dict, model: str, direction: str, scale: str, key: str, evaluator: str = "retrieval"
) -> Any:
    return results[model].get(evaluator, {}).get(direction, {}).get(scale, {}).get(key)


def _direction(d: str) -> str:
    return d.replace("_to_", "→").upper()  # "he_to_st" -> "HE→ST"


def _recall_keys(results: dict, models: list[str]) -> list[str]:
    for m in models:
        for by_scale in results[m].get("retrieval", {}).values():
            for recalls in by_scale.values():
                return list(recalls)
    return []


def _markdown(results: dict) -> str:
    models = _models(results)
    lines = ["# Results", ""]
    for k, v in results.items():
        if k not in models and not isinstance(v, (dict, list)):
            lines.append(f"- {k}: {_fmt(v)}")
    lines.append("")

    keys = _recall_keys(results, models)
    if keys:
        lines += ["## Cross-modal retrieval (Recall@p%)", ""]
        header = ["direction", "scale"] + [f"{k}% {m}" for k in keys for m in models]
        rows = []
        for d in DIRECTIONS:
            for s in RETRIEVAL_SCALES:
                vals = [_recall(results, m, d, s, k) for k in keys for m in models]
                if any(v is not None for v in vals):
                    rows.append([_direction(d), s] + [_fmt(v) for v in vals])
        lines += md_table(header, rows) + [""]

    trained_on = {
        m: results[m]["retrieval_train"] for m in models if "retrieval_train" in results[m]
    }
    if keys and trained_on:
        n = next(iter(trained_on.values()))["n_tiles"]
        lines += [
            f"## Retrieval on {n} training tiles (combined; its gap to the held-out figure is "
            "overfitting)",
            "",
        ]
        header = ["direction"] + [f"{k}% {m}" for k in keys for m in trained_on]
        rows = [
            [_direction(d)]
            + [
                _fmt(_recall(results, m, d, "combined", k, "retrieval_train"))
                for k in keys
                for m in trained_on
            ]
            for d in DIRECTIONS
        ]
        lines += md_table(header, rows) + [""]

    for evaluator, title in EXPRESSION.items():
        found = {m: results[m][evaluator] for m in models if evaluator in results[m]}
        if not found:
            continue
        lines += [f"## {title}", ""]
        rows = []
        for label, mean_key, sd_key in EXPRESSION_ROWS:
            if all(p.get(mean_key) is None for p in found.values()):
                continue
            cells = []
            for p in found.values():
                cell = _fmt(p.get(mean_key))
                if sd_key and p.get(sd_key) is not None:
                    cell += f" ± {_fmt(p[sd_key])}"
                cells.append(cell)
            rows.append([label] + cells)
        lines += md_table(["metric"] + list(found), rows) + [""]
    lines += _own_tables(results, models)
    notes = [f"- {m}: {MODEL_NOTES[m]}" for m in models if m in MODEL_NOTES]
    if notes:
        lines += ["Columns:", ""] + notes + [""]
    return "\n".join(lines)


def _own_tables(results: dict, models: list[str]) -> list[str]:
    """The tables of the evaluators that render their own results (`markdown(result)`)."""
    from sigmma_jax.evaluation import EVALUATORS

    lines = []
    for m in models:
        for name, result in results[m].items():
            render = getattr(EVALUATORS.get(name), "markdown", None)
            if render is not None:  # its sections one level under the model's
                own = [f"#{line}" if line.startswith("#") else line for line in render(result)]
                lines += [f"## {name} ({m})", ""] + own + [""]
    return lines


# --------------------------------------------------------------------------- plots


def save_png(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)


def chance(key: str, n: Any) -> float | None:
    # Random ranking puts the partner in the top k with probability k / N, k = ceil(p% * N).
    try:
        p = float(key.removeprefix("R@"))
    except ValueError:
        return None
    if isinstance(n, (int, np.integer)) and n > 0:
        return top_k(p, int(n)) / n
    return p / 100


def _plot_recall(results: dict, path: Path) -> bool:
    """Plots the recall bars (False when there is no retrieval result to plot)."""
    models = [m for m in _models(results) if "retrieval" in results[m]]
    keys = _recall_keys(results, models)
    if not keys:
        return False
    fig = Figure(figsize=(4.2 * len(keys), 6.5), layout="constrained")
    axes = fig.subplots(len(DIRECTIONS), len(keys), squeeze=False, sharey=True)
    x = np.arange(len(RETRIEVAL_SCALES))
    width = 0.8 / len(models)
    for r, d in enumerate(DIRECTIONS):
        for c, k in enumerate(keys):
            ax = axes[r, c]
            for i, m in enumerate(models):
                vals = [_recall(results, m, d, s, k) for s in RETRIEVAL_SCALES]
                vals = [np.nan if v is None else v for v in vals]
                ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=m)
            level = chance(k, results.get("n_test_tiles"))
            if level is not None:
                ax.axhline(level, color="grey", ls="--", lw=1, label="chance")
            ax.set_xticks(x, RETRIEVAL_SCALES)
            ax.set_ylim(0, 1)
            ax.set_title(f"{d.replace('_to_', '→').upper()}  {k}%")
    axes[0, 0].set_ylabel("recall")
    axes[1, 0].set_ylabel("recall")
    axes[0, -1].legend(loc="upper left", fontsize="small")
    save_png(fig, path)
    return True


def _series(history: list[dict], key: str) -> tuple[list, list]:
    pts = [
        (h["step"], h[key])
        for h in history
        if "step" in h and isinstance(h.get(key), (int, float)) and not isinstance(h[key], bool)
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot_training(history: list[dict], path: Path) -> None:
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_temp = fig.subplots(1, 2)
    keys = ["loss"] + sorted({k for h in history for k in h if k.startswith("loss_")})
    for key in keys:
        steps, vals = _series(history, key)
        if steps:
            ax_loss.plot(steps, vals, label=key, lw=2 if key == "loss" else 1)
    ax_loss.set(xlabel="step", ylabel="contrastive loss", title="loss")
    if ax_loss.lines:
        ax_loss.legend(fontsize="small")
    steps, vals = _series(history, "temperature")
    ax_temp.plot(steps, vals)
    ax_temp.set(xlabel="step", ylabel="τ", title="temperature")
    save_png(fig, path)


# --------------------------------------------------------------------------- public


def write_results(
    workdir: str | os.PathLike, results: dict, history: list[dict] | None = None
) -> list[Path]:
    """Write results.md, plots/recall.png, plots/training.png (if `history`) and results.json;
    returns the paths written.

    `results` is {"trained": {evaluator: ...}, "initial": {...}, "n_test_tiles": int,
    "n_train_tiles": int, ...}; extra keys are kept in results.json, and scalar ones are listed in
    results.md. Any other entry with evaluator results (a baseline) gets its own column.
    """
    workdir = Path(workdir)
    plots = workdir / "plots"
    written = [workdir / "results.md", workdir / "results.json"]
    atomic.write_text(written[0], _markdown(results))
    if _plot_recall(results, plots / "recall.png"):
        written.append(plots / "recall.png")
    if history:
        _plot_training(history, plots / "training.png")
        written.append(plots / "training.png")
    atomic.write_json(written[1], results, indent=2)
    return written
