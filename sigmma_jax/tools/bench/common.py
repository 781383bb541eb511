"""What the benchmarks share: the machine's description, timing a compiled JAX function with XLA's
memory and cost analysis, bf16 peaks for model-FLOPs utilisation, and the flags of the timm reference."""

from __future__ import annotations

import os
import pathlib
import platform
import statistics
import subprocess
import threading
import time
from typing import Any, Callable

from absl import flags

flags.DEFINE_integer("depth", 0, "Override the backbone's number of blocks (0: the preset's).")
flags.DEFINE_string(
    "timm_setup", "", "A Python file run as __main__ before `import timm` (an import shim)."
)

# Dense bf16 tensor-core peaks (FLOP/s) by device kind, for model-FLOPs utilisation.
PEAK_BF16 = {
    "H100": 989e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def csv(s: str, f=str) -> list:
    return [f(v) for v in s.split(",") if v]


def peak_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except
        return None
    if m is None:
        return None
    peak = getattr(m, "peak_memory_in_bytes", 0) or 0
    if peak:
        return int(peak)
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def xla_flops(compiled) -> float | None:
    try:
        c = compiled.cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return float(c.get("flops", 0.0)) or None
    except Exception:  # pylint: disable=broad-except
        return None


def time_jax(fn: Callable, args: tuple, iters: int, warmup: int) -> dict[str, Any]:
    import jax  # pylint: disable=import-outside-toplevel

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = dict(compile_s=compile_s, peak_bytes=peak_bytes(compiled), xla_flops=xla_flops(compiled))
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    out["step_s"] = statistics.median(times)
    return out


def machine_description() -> dict[str, Any]:
    import jax  # pylint: disable=import-outside-toplevel

    d = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(
        platform=d.platform,
        device_kind=d.device_kind,
        devices=jax.device_count(),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        python=platform.python_version(),
    )


def tree_rss_mb(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, in MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss = {}
    for p in pathlib.Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            status = (p / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        children.setdefault(int(fields["PPid"]), []).append(int(p.name))
        rss[int(p.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
    total, stack = 0.0, [pid]
    while stack:
        q = stack.pop()
        total += rss.get(q, 0.0)
        stack.extend(children.get(q, []))
    return total


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Runs `cmd` from the repository (configs/ is there) while sampling the resident memory of its
    process tree every 0.2 s: (seconds, peak MiB summed over the tree, what the machine must hold)."""
    peak = [0.0]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=pathlib.Path(__file__).resolve().parents[3])

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if proc.wait():
        raise RuntimeError(f"failed: {' '.join(cmd)}")
    seconds = time.time() - t0
    sampler.join()
    return seconds, peak[0]


def print_result(r: dict) -> None:
    """One result as a JSON line and as a markdown table row (for docs/benchmarks.md)."""
    import json

    print(json.dumps(r))
    print("| " + " | ".join(r) + " |\n|" + "---|" * len(r))
    print("| " + " | ".join(str(v) for v in r.values()) + " |")
