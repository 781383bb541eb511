"""Results files of a run: results.json, results.md and PNG plots.

Every file is written atomically (`sigmma_jax.atomic`), so a crash never leaves a half-written
file. results.json is written last: its presence means the whole report is complete.

Plots use matplotlib's Agg canvas directly (Figure + FigureCanvasAgg) rather than pyplot, so
importing this module never switches the backend of a notebook or another caller.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sigmma_jax import atomic
from sigmma_jax.evaluation import markdown as md
from sigmma_jax.evaluation import retrieval
from sigmma_jax.evaluation.retrieval import top_k

DIRECTIONS = retrieval.DIRECTIONS
RETRIEVAL_SCALES = retrieval.RETRIEVAL_SCALES
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


def _recall(
    results: dict, model: str, direction: str, scale: str, key: str, evaluator: str = "retrieval"
) -> Any:
    return results[model].get(evaluator, {}).get(direction, {}).get(scale, {}).get(key)


def _graph(results: dict) -> list[str]:
    graph = results.get("graph")
    if not graph:
        return []
    rows = [[s, md.fmt(v.get("degree")), md.fmt(v.get("sampled"))] for s, v in graph.items()]
    return [
        "## The ST graph as training left it (mean of the last logged steps)",
        "",
        *md.table(["scale", "edges per cell", "candidates drawn"], rows),
        "",
    ]


def _markdown(results: dict) -> str:
    """results.md: the run's scalars, then each evaluator's own sections (`markdown`, in registry
    order), the ST graph's density, and what the columns are."""
    from sigmma_jax.evaluation import EVALUATORS

    models = _models(results)
    lines = ["# Results", ""]
    for k, v in results.items():
        if k not in models and not isinstance(v, (dict, list)):
            lines.append(f"- {k}: {md.fmt(v)}")
    lines.append("")
    for name, module in EVALUATORS.items():
        by_model = {m: results[m][name] for m in models if name in results[m]}
        if by_model:
            lines += module.markdown(by_model, results)
    lines += _graph(results)
    notes = [f"- {m}: {MODEL_NOTES[m]}" for m in models if m in MODEL_NOTES]
    if notes:
        lines += ["Columns:", ""] + notes + [""]
    return "\n".join(lines)


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
    keys = retrieval.recall_keys({m: results[m]["retrieval"] for m in models})
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
