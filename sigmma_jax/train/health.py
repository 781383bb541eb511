"""A run's health: stop at the first non-finite number, save and stop when asked to, say what trains.

- **Non-finite values.** The train step advances the state only when the loss, the gradient norm
  and every updated parameter are finite (`guard`) and reports `finite`; the loop stops at the first
  step that is not (`check`) with a message naming the step and the per-scale losses, and the process
  exits 1. So a checkpoint never holds NaN or inf, and `train.keep_checkpoints` never rotates the
  good ones out for bad ones.
- **Preemption.** SIGTERM (a scheduler's preemption, `scancel`) or SIGINT (Ctrl-C) during training
  finishes the current step, saves a checkpoint at it and returns; the command exits 0 and a rerun
  continues from that checkpoint (`Preemption`). A second Ctrl-C stops at once. With several
  processes every one must stop at the same step: JAX's preemption service agrees on it
  (`multihost_utils.reached_preemption_sync_point`, SIGTERM). Outside the training loop
  (preprocessing, evaluation) a signal has its default effect; everything written there is atomic
  and resumes.
- **Size.** `log_param_counts` logs the parameters per top-level module when a run starts.
"""

from __future__ import annotations

import logging
import signal

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils

from sigmma_jax.errors import NonFinite
from sigmma_jax.scales import SCALES


def all_finite(tree) -> jax.Array:
    """True when every element of every leaf is finite (a scalar bool)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def guard(ok: jax.Array, new, old):
    """`new` where `ok`, else `old`, leaf by leaf (inside the jitted step: no host round trip)."""
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def check(step: int, metrics: dict) -> None:
    """Raises `NonFinite` naming the step and the losses when `metrics['finite']` is false."""
    if bool(metrics["finite"]):
        return
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    per = ", ".join(f"{s} {m[f'loss_{s}']:.4g}" for s in SCALES if f"loss_{s}" in m)
    modules = ", ".join(
        f"{k.split('/', 1)[1]} {v:.4g}" for k, v in m.items() if k.startswith("grad_norm/")
    )
    raise NonFinite(
        f"step {step}: non-finite training values: loss {m['loss']:.4g} ({per}), gradient norm "
        f"{m['grad_norm']:.4g} ({modules}); the step was not applied and no checkpoint of it was "
        "written. Lower train.lr or raise train.warmup_steps, then rerun: training resumes from "
        "the latest checkpoint"
    )


class Preemption:
    """`with Preemption() as p:` ... `if p.requested(step):` save and stop.

    In one process, SIGTERM and SIGINT set a flag (a second SIGINT raises KeyboardInterrupt at
    once). With several, JAX's preemption service (started by `jax.distributed.initialize`) turns a
    SIGTERM on any host into one step at which `requested` is true on all of them.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}
        self._multi = jax.process_count() > 1

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        logging.warning(
            "%s received: saving a checkpoint after this step", signal.Signals(signum).name
        )

    def __enter__(self) -> Preemption:
        if not self._multi:  # the multi-process service installs its own SIGTERM handler
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def requested(self, step: int) -> bool:
        """Whether to save at `step` and stop; with several processes call it at every step."""
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signal is not None


def param_counts(params) -> dict[str, int]:
    """Parameters per top-level module, e.g. {"backbone": 303_350_784, "st": ..., ...}."""
    return {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}


def log_param_counts(params) -> None:
    counts = param_counts(params)
    logging.info(
        "parameters: %s; total %s",
        ", ".join(f"{k} {_size(n)}" for k, n in counts.items()),
        _size(sum(counts.values())),
    )


def _size(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else str(n)
