"""Recovery, measured: `python -m sigmma_jax.bench recovery --config=configs/demo.py --kills=20`.

Runs `python -m sigmma_jax.main` on the config in a child process once without interruption (the
reference), then in a second workdir kills it with SIGKILL (its whole process group, workers
included, as a lost machine would) at `--kills` random moments, rerunning it in the same workdir
after each kill until a run completes. Then every number in results.json and results_initial.json,
every number logged in metrics.jsonl (timings aside) and every shard file are compared with the
reference's.

Each kill aims at a phase; the moment within it is random (`--kill_seed`):
- `preprocess`: the synthetic slide's generation or the shard chunks' writing, within what is left
  of them in the workdir (a rerun keeps the finished chunks);
- `initial_eval`: the evaluation of the model at initialisation, before the first step;
- `train`: training, between checkpoints: a random logged step short of the end, then a random
  moment before the next log (by step, not by time, so that no kill finds a finished run);
- `checkpoint`: while an asynchronous checkpoint write is in flight (Orbax's temporary directory
  exists at the moment of the kill);
- `final_eval`: the evaluation after the last step.
Phases that only a fresh workdir goes through come first. The table records where each kill
landed (read from the child's log and workdir at the moment of the kill: its last log line, the
phase, whether a checkpoint write was in flight) and where the rerun resumed. Figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

from sigmma_jax.tools.bench.common import machine_description

PHASES = ("preprocess", "initial_eval", "train", "checkpoint", "final_eval")
# How 20 kills are spread over the phases (in this order), scaled for other counts.
SHARE = dict(preprocess=4, initial_eval=2, train=6, checkpoint=5, final_eval=3)
TIMINGS = re.compile(r"(^|_)(seconds|s|tiles_per_s)$")  # numbers that measure time, not results
REPO = pathlib.Path(__file__).resolve().parents[3]

flags.DEFINE_integer("kills", 20, "recovery: SIGKILLs before the run may complete.")
flags.DEFINE_integer("kill_seed", 0, "recovery: seed of the kill moments.")
flags.DEFINE_string(
    "kill_phases", "", f"recovery: comma-separated phases, one per kill ({', '.join(PHASES)})."
)

_CONFIG_PY = '''"""The config of a recovery benchmark: config.json next to this file, exactly."""
import json
import pathlib

import ml_collections


def get_config():
    return ml_collections.ConfigDict(
        json.loads((pathlib.Path(__file__).parent / "config.json").read_text())
    )
'''


def phases_for(kills: int) -> list[str]:
    """`kills` phases in PHASES order, spread as SHARE (largest remainders)."""
    total = sum(SHARE.values())
    exact = {p: kills * SHARE[p] / total for p in PHASES}
    n = {p: int(v) for p, v in exact.items()}
    for p in sorted(PHASES, key=lambda p: n[p] - exact[p])[: kills - sum(n.values())]:
        n[p] += 1
    return [p for p in PHASES for _ in range(n[p])]


class Child:
    """`python -m sigmma_jax.main` in its own process group; its log lines, timed, in order."""

    def __init__(self, config_py: pathlib.Path, workdir: pathlib.Path, log: pathlib.Path):
        self.t0 = time.time()
        self.workdir = workdir
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sigmma_jax.main",
                f"--config={config_py}",
                f"--workdir={workdir}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._log = open(log, "w")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.time() - self.t0, line.rstrip()))
            self._log.write(line)
        self._log.close()

    def wait_for(self, pattern: str, after: int = 0) -> int | None:
        """Index of the first line from `after` on matching `pattern`; None if the child ends."""
        rx = re.compile(pattern)
        i = after
        while True:
            while i < len(self.lines):
                if rx.search(self.lines[i][1]):
                    return i
                i += 1
            if self.proc.poll() is not None:
                self._reader.join()
                if i >= len(self.lines):
                    return None

            time.sleep(0.002)

    def kill(self) -> bool:
        """SIGKILL to the whole process group; False if the child had already ended."""
        if self.proc.poll() is not None:
            return False
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join()
        return True

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join()
        return rc

    def last_line(self) -> str:
        lines = [l for _, l in self.lines if re.match(r"[IWEF]\d{4} ", l)]  # absl log lines
        return re.sub(r"^\S+ \S+ \d+ ", "", lines[-1])[:90] if lines else "(none)"


def _preprocessed(workdir: pathlib.Path) -> bool:
    return (workdir / "shards" / "manifest.json").exists()  # written last, atomically


def _checkpoint_in_flight(workdir: pathlib.Path) -> bool:
    return any("tmp" in p.name for p in (workdir / "checkpoints").glob("*"))


@dataclasses.dataclass
class Durations:
    """Phase lengths of the reference run, in seconds: the range of the random delays."""

    generate: float  # the synthetic slide (or any reading before the shards)
    chunks: float  # writing the shard chunks
    n_chunks: int
    initial_eval: float
    log_gap: float  # between two logged steps
    final_eval: float

    @classmethod
    def of(cls, child: Child) -> Durations:
        t = lambda rx, nth=0: [s for s, l in child.lines if re.search(rx, l)][nth]
        logs = [s for s, l in child.lines if re.search(r"\] step \d+/", l)]
        gaps = sorted(b - a for a, b in zip(logs, logs[1:])) or [t(r"evaluating", -1) - logs[0]]
        log = "\n".join(l for _, l in child.lines)
        return cls(
            generate=t(r"preprocessing \d+ chunks") - t(r"\] JAX "),
            chunks=t(r"\] mesh ") - t(r"preprocessing \d+ chunks"),
            n_chunks=int(re.search(r"preprocessing (\d+) chunks", log).group(1)),
            initial_eval=t(r"\] evaluated ") - t(r"\] evaluating"),
            log_gap=gaps[len(gaps) // 2],
            final_eval=t(r"\] evaluated ", -1) - t(r"\] evaluating", -1),
        )

    def preprocessing_left(self, workdir: pathlib.Path) -> float:
        """The reference's time for what a run in `workdir` has still to preprocess (at least)."""
        if _preprocessed(workdir):
            return 0.0
        done = sum(1 for p in (workdir / "shards").glob("*.json") if p.name != "manifest.json")
        generate = 0.0 if (workdir / "slide" / "slide.ome.tif").exists() else self.generate
        return generate + self.chunks * (self.n_chunks - done) / self.n_chunks


def _resumed_at(child: Child) -> int | None:
    """The step training (re)starts from; None if the child ends first."""
    i = child.wait_for(r"\] (step \d+/|resumed from step)")
    if i is None:
        return None
    m = re.search(r"resumed from step (\d+)", child.lines[i][1])
    return int(m.group(1)) if m else 0


def _kill_in(child: Child, phase: str, d: Durations, rng: random.Random, train) -> dict:
    """Waits for `phase` in the child and kills it at a random moment in it."""
    row = dict(phase=phase)
    if phase == "preprocess":  # a random moment of what is left to preprocess in this workdir
        start = child.wait_for(r"\] JAX ")
        # 0.6, not 0.9: a child preprocesses faster than the reference when its files are cached
        # (CI once saw a kill land after preprocessing had ended)
        delay = rng.uniform(0, 0.6 * d.preprocessing_left(child.workdir))
    elif phase == "initial_eval":
        start, delay = child.wait_for(r"\] evaluating"), rng.uniform(0, 0.9 * d.initial_eval)
    elif phase == "train":
        # A random logged step before the end, then a random moment before the next log: by step,
        # not by time, so that a kill never comes after the last save (a finished run).
        at = _resumed_at(child)
        steps = [
            s
            for s in range(train.log_every, train.steps, train.log_every)
            if s > (at or 0) and s % train.checkpoint_every
        ]
        if at is None or not steps:
            return dict(row, killed=False)
        start = child.wait_for(rf"\] step {rng.choice(steps)}/")
        delay = rng.uniform(0, 0.9 * d.log_gap)
    elif phase == "checkpoint":
        # The next save after training starts (or resumes). Each rerun resumes further on (or at the
        # same step, if the write did not complete), so the kills hit different saves.
        start, delay = child.wait_for(r"\] (step \d+/|resumed from step)"), 0.0
    else:  # final_eval: the evaluation after the last step (or after resuming at it)
        n = train.steps
        end = child.wait_for(rf"\] (step {n}/{n} |resumed from step {n}$)")
        start = None if end is None else child.wait_for(r"\] evaluating", end)
        delay = rng.uniform(0, 0.9 * d.final_eval)
    if start is None:
        return dict(row, killed=False)
    t_kill = child.lines[start][0] + delay
    while time.time() - child.t0 < t_kill and child.proc.poll() is None:
        time.sleep(0.002)
    if phase == "checkpoint":  # the next save: kill while its temporary directory exists
        i = child.wait_for(r"saving checkpoint", start)
        deadline = time.time() + 10
        while i is not None and not _checkpoint_in_flight(child.workdir) and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.005))
    row["write_in_flight"] = in_flight = _checkpoint_in_flight(child.workdir)
    row["last_line"] = child.last_line()
    row["landed"] = landed(child, in_flight)
    row["at_s"] = round(time.time() - child.t0, 2)
    row["killed"] = child.kill()
    return row


def landed(child: Child, write_in_flight: bool) -> str:
    """The phase a child is in, from its log so far (and whether a checkpoint write is in flight)."""
    lines = [l for _, l in child.lines]
    last = lambda rx: max((i for i, l in enumerate(lines) if re.search(rx, l)), default=-1)
    if last(r"\] results: ") >= 0:
        return "finished"
    if last(r"evaluating the trained model") >= 0:
        return "final_eval"
    if last(r"\] (step \d+/|resumed from step)") >= 0:
        return "checkpoint" if last("saving checkpoint") >= 0 and write_in_flight else "train"
    if last(r"\] evaluating") >= 0 and last(r"\] evaluated ") < last(r"\] evaluating"):
        return "initial_eval"
    if last(r"\] mesh ") >= 0 or _preprocessed(child.workdir):
        return "start-up"
    return "preprocess"


def numbers(obj, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON tree by path, timings left out."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not TIMINGS.search(str(k)):
                out.update(numbers(v, f"{prefix}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(numbers(v, f"{prefix}[{i}]"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = float(obj)
    return out


def _outputs(workdir: pathlib.Path) -> dict[str, float]:
    from sigmma_jax.train import metrics

    out = {}
    for name in ("results.json", "results_initial.json"):
        out.update(numbers(json.loads((workdir / name).read_text()), name))
    for r in metrics.read_history(workdir / "metrics.jsonl"):
        out.update(numbers(r, f"metrics.jsonl/step {r['step']}"))
    for p in sorted((workdir / "shards").glob("*.array_record")):
        out[f"shards/{p.name} (sha256 prefix)"] = int(
            hashlib.sha256(p.read_bytes()).hexdigest()[:12], 16
        )
    return out


def compare(reference: pathlib.Path, recovered: pathlib.Path) -> dict:
    a, b = _outputs(reference), _outputs(recovered)
    common = sorted(set(a) & set(b))
    differ = [k for k in common if a[k] != b[k]]
    return dict(
        numbers=len(common),
        only_reference=sorted(set(a) - set(b))[:10],
        only_recovered=sorted(set(b) - set(a))[:10],
        differ=len(differ),
        first_differences=[(k, a[k], b[k]) for k in differ[:10]],
        max_abs_diff=max((abs(a[k] - b[k]) for k in differ), default=0.0),
        logged_losses=sum(1 for k in common if k.startswith("metrics.jsonl") and "/loss" in k),
        identical=not differ and set(a) == set(b),
    )


def measure(config, root: pathlib.Path, phases: list[str], seed: int, timeout: float = 3600):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(config.to_json())
    (root / "config.py").write_text(_CONFIG_PY)
    t0 = time.time()
    ref = Child(root / "config.py", root / "reference", root / "reference.log")
    if ref.finish(timeout):
        raise RuntimeError(f"the reference run failed: see {root / 'reference.log'}")
    reference_s = time.time() - t0
    durations = Durations.of(ref)
    rng = random.Random(seed)
    rows, t0 = [], time.time()
    workdir = root / "recovered"
    for i, phase in enumerate(phases):
        child = Child(root / "config.py", workdir, root / f"run_{i:02d}.log")
        row = _kill_in(child, phase, durations, rng, config.train)
        if not row["killed"]:
            child.finish(timeout)
        rows.append(row)
        print(json.dumps(row), flush=True)
    child = Child(root / "config.py", workdir, root / f"run_{len(phases):02d}.log")
    if child.finish(timeout):
        raise RuntimeError(f"the last rerun failed: see {root / f'run_{len(phases):02d}.log'}")
    # Where each rerun started: the line after which it resumed.
    for i, row in enumerate(rows):
        log = (root / f"run_{i + 1:02d}.log").read_text()
        m = re.search(r"resumed from step (\d+)", log)
        row["rerun_resumed_from"] = int(m.group(1)) if m else None
        row["rerun_chunks_left"] = (
            int(m.group(1)) if (m := re.search(r"preprocessing (\d+) chunks", log)) else 0
        )
    return dict(
        kills=rows,
        reruns=len(phases) + 1,
        reference_s=round(reference_s, 1),
        recovered_s=round(time.time() - t0, 1),
        durations=dataclasses.asdict(durations),
        comparison=compare(root / "reference", workdir),
    )


def run(a) -> int:
    from sigmma_jax import cli

    cli.required("config")
    phases = a.kill_phases.split(",") if a.kill_phases else phases_for(a.kills)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise ValueError(f"unknown phases {unknown}; known: {', '.join(PHASES)}")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(a.config, pathlib.Path(a.workdir or tmp), phases, a.kill_seed)
    r["date"] = datetime.date.today().isoformat()
    r["machine"] = machine_description()
    print(json.dumps(r))
    if a.out:
        pathlib.Path(a.out).write_text(json.dumps(r, indent=1))
    print(markdown_table(r))
    return 0 if r["comparison"]["identical"] else 1


def markdown_table(r: dict) -> str:
    lines = [
        "| # | aimed at | landed in | killed at (s) | last log line before the kill | "
        "write in flight | rerun: chunks left | rerun: resumed from step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, k in enumerate(r["kills"], 1):
        flight = {True: "yes", False: "no"}.get(k.get("write_in_flight"), "")
        lines.append(
            f"| {i} | {k['phase']} | {k.get('landed', 'not killed')} | {k.get('at_s', '')} "
            f"| `{k.get('last_line', '')}` "
            f"| {flight} | {k.get('rerun_chunks_left', '')} | {k.get('rerun_resumed_from') or '-'} |"
        )
    c = r["comparison"]
    verdict = (
        "identical"
        if c["identical"]
        else f"{c['differ']} differ (max abs diff {c['max_abs_diff']:.3g})"
    )
    lines.append(
        f"\n{c['numbers']} numbers compared ({c['logged_losses']} logged losses): {verdict}"
    )
    return "\n".join(lines)
