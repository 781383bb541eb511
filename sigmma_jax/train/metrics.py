"""The metrics log: metrics.jsonl (one JSON object per logged step), evals.jsonl (the evaluators'
results every `eval_every` steps) and TensorBoard, written by process 0. A resumed run first drops the
lines past its step, so the logs read as one run."""

from __future__ import annotations

import json
import pathlib
import warnings

import jax
from flax import traverse_util

from sigmma_jax import atomic


def read_history(path: str | pathlib.Path) -> list[dict]:
    """Read a JSON-lines metrics log (one dict per line).

    An unparsable last line is dropped silently: it is the normal trace of a run killed mid-write.
    An unparsable line elsewhere is dropped with a warning rather than failing the whole report.
    """
    lines = pathlib.Path(path).read_text().splitlines()
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


def graph_density(history: list[dict], last: int = 5) -> dict[str, dict[str, float]]:
    """The ST graph's growth as training left it, {scale: {"degree": mean edges per cell,
    "sampled": fraction of the candidates drawn}}: each logged `graph_{scale}_{what}` averaged over
    the last `last` logged steps (each one batch). {} for a model without the graph tower."""
    out: dict[str, dict[str, float]] = {}
    logged = [h for h in history if any(k.startswith("graph_") for k in h)][-last:]
    for key in sorted({k for h in logged for k in h if k.startswith("graph_")}):
        _, scale, what = key.split("_", 2)
        vals = [h[key] for h in logged if key in h]
        out.setdefault(scale, {})[what] = round(sum(vals) / len(vals), 4)
    return out


class MetricsWriter:
    def __init__(self, workdir: pathlib.Path, resume_step: int):
        workdir = pathlib.Path(workdir)
        self.path, self.evals_path = workdir / "metrics.jsonl", workdir / "evals.jsonl"
        self.enabled = jax.process_index() == 0
        self.tb = None
        if not self.enabled:
            return
        for path in (self.path, self.evals_path):
            if path.exists():
                kept = [r for r in read_history(path) if r["step"] <= resume_step]
                atomic.write_text(
                    path, "".join(json.dumps(atomic.jsonable(r)) + "\n" for r in kept)
                )
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def _append(self, path: pathlib.Path, step: int, record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(atomic.jsonable({"step": step, **record})) + "\n")

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._append(self.path, step, metrics)
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def write_evals(self, step: int, results: dict) -> None:
        if not self.enabled:
            return
        self._append(self.evals_path, step, results)
        for k, v in traverse_util.flatten_dict(results, sep="/").items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                # TensorBoard names allow no "@" (it warns per name and writes "R_5" anyway).
                self.tb.add_scalar(f"eval/{k}".replace("@", "_"), v, step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
