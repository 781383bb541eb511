"""What results.md is made of: cells, tables, and the contract by which evaluators render.

Each evaluator has `markdown(by_model, results) -> list[str]`: its sections of results.md, given
{model column ("trained", "initial", a baseline): that column's result of this evaluator} and the
run's whole results (for run-level facts such as the number of test tiles). `report` puts them in
registry order; a new evaluator's numbers reach results.md through its own function alone.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np


def fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.4f}" if math.isfinite(x) else "nan"
    return str(x)


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def direction(d: str) -> str:
    return d.replace("_to_", "→").upper()  # "he_to_st" -> "HE→ST"


def per_model(name: str, render: Callable[[dict], list[str]]):
    """An evaluator's `markdown` from a renderer of one result: its sections one level under a
    "## NAME (MODEL)" heading per model column."""

    def markdown(by_model: dict, results: dict) -> list[str]:
        del results
        lines = []
        for model, result in by_model.items():
            own = [f"#{line}" if line.startswith("#") else line for line in render(result)]
            lines += [f"## {name} ({model})", ""] + own + [""]
        return lines

    return markdown
