"""Results files of a run: results.json, results.md and PNG plots, plus the metrics-log reader.

Every file is written to a temporary name in its own directory and moved into place with
os.replace, so a crash never leaves a half-written file. results.json is written last: its
presence means the whole report is complete.

Plots use matplotlib's Agg canvas directly (Figure + FigureCanvasAgg) rather than pyplot, so
importing this module never switches the backend of a notebook or another caller.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sigmma_jax import atomic
from sigmma_jax.evaluation import _top_k

DIRECTIONS = ("he_to_st", "st_to_he")
RETRIEVAL_SCALES = ("micro", "meso", "macro", "combined")
PROBE_ROWS = (
    ("PCC per tile", "pcc_tile_mean", "pcc_tile_sd"),
    ("MSE per tile", "mse_tile_mean", "mse_tile_sd"),
    ("PCC per gene", "pcc_gene_mean", None),
    ("genes", "n_genes", None),
    ("PCA components", "n_components", None),
)
_LOSS_KEYS = ("loss", "loss_micro", "loss_meso", "loss_macro")


# --------------------------------------------------------------------------- atomic writes


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    with atomic.atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())  # results are what people keep: make them durable too


def _jsonable(x: Any) -> Any:
    # numpy scalars/arrays become plain numbers and lists; NaN/inf become null because bare
    # NaN is not valid JSON and breaks strict readers.
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# --------------------------------------------------------------------------- markdown


def _models(results: dict) -> list[str]:
    # "trained" and "untrained" first; any other entry holding retrieval/probe metrics (a
    # baseline) gets its own column after them.
    found = [
        k for k, v in results.items() if isinstance(v, dict) and ("retrieval" in v or "probe" in v)
    ]
    order = {"trained": 0, "untrained": 1}
    return sorted(found, key=lambda k: (order.get(k, 2), found.index(k)))


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.4f}" if math.isfinite(x) else "nan"
    return str(x)


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _recall(results: dict, model: str, direction: str, scale: str, key: str) -> Any:
    return results[model].get("retrieval", {}).get(direction, {}).get(scale, {}).get(key)


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
                    rows.append([d.replace("_to_", "→").upper(), s] + [_fmt(v) for v in vals])
        lines += _table(header, rows) + [""]

    probes = {m: results[m]["probe"] for m in models if "probe" in results[m]}
    if probes:
        lines += ["## Gene expression prediction (linear probe, mean ± sd over test tiles)", ""]
        rows = []
        for label, mean_key, sd_key in PROBE_ROWS:
            cells = []
            for p in probes.values():
                cell = _fmt(p.get(mean_key))
                if sd_key and p.get(sd_key) is not None:
                    cell += f" ± {_fmt(p[sd_key])}"
                cells.append(cell)
            rows.append([label] + cells)
        lines += _table(["metric"] + list(probes), rows) + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _save_png(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")


def _chance(key: str, n: Any) -> float | None:
    # Random ranking puts the partner in the top k with probability k / N, k = ceil(p% * N).
    try:
        p = float(key.removeprefix("R@"))
    except ValueError:
        return None
    if isinstance(n, (int, np.integer)) and n > 0:
        return _top_k(p, int(n)) / n
    return p / 100


def _plot_recall(results: dict, path: Path) -> None:
    models = [m for m in _models(results) if "retrieval" in results[m]]
    keys = _recall_keys(results, models)
    if not keys:
        return
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
            chance = _chance(k, results.get("n_test_tiles"))
            if chance is not None:
                ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
            ax.set_xticks(x, RETRIEVAL_SCALES)
            ax.set_ylim(0, 1)
            ax.set_title(f"{d.replace('_to_', '→').upper()}  {k}%")
    axes[0, 0].set_ylabel("recall")
    axes[1, 0].set_ylabel("recall")
    axes[0, -1].legend(loc="upper left", fontsize="small")
    _save_png(fig, path)


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
    for key in _LOSS_KEYS:
        steps, vals = _series(history, key)
        if steps:
            ax_loss.plot(steps, vals, label=key, lw=2 if key == "loss" else 1)
    ax_loss.set(xlabel="step", ylabel="InfoNCE loss", title="loss")
    if ax_loss.lines:
        ax_loss.legend(fontsize="small")
    steps, vals = _series(history, "temperature")
    ax_temp.plot(steps, vals)
    ax_temp.set(xlabel="step", ylabel="τ", title="temperature")
    _save_png(fig, path)


# --------------------------------------------------------------------------- public


def write_results(
    workdir: str | os.PathLike, results: dict, history: list[dict] | None = None
) -> None:
    """Write results.md, plots/recall.png, plots/training.png (if `history`) and results.json.

    `results` is {"trained": {"retrieval": ..., "probe": ...}, "untrained": {...},
    "n_test_tiles": int, "n_train_tiles": int, ...}; extra keys are kept in results.json, and
    scalar ones are listed in results.md. Any other entry with "retrieval"/"probe" (a baseline)
    gets its own column.
    """
    workdir = Path(workdir)
    plots = workdir / "plots"
    _atomic_write(workdir / "results.md", lambda f: f.write(_markdown(results)))
    _plot_recall(results, plots / "recall.png")
    if history:
        _plot_training(history, plots / "training.png")
    payload = _jsonable(results)
    # default=str: an odd pass-through extra (a Path in a config) must not sink the whole report.
    _atomic_write(
        workdir / "results.json",
        lambda f: json.dump(payload, f, indent=2, allow_nan=False, default=str),
    )


def read_history(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines metrics log (one dict per line).

    An unparsable last line is dropped silently: it is the normal trace of a run killed mid-write.
    An unparsable line elsewhere is dropped with a warning rather than failing the whole report.
    """
    lines = Path(path).read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                warnings.warn(f"{path}:{i + 1}: skipping malformed line")
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
