"""Where a run's batch-to-batch loss swings come from: `python -m sigmma_jax.bench loss_noise
--config=configs/demo.py --workdir=runs/demo`.

At the workdir's latest checkpoint (or `--noise_step`'s), the training loss of the run's first
`--noise_batches` batches is evaluated under `--noise_keys` random keys, drawing the edge sampler's
Gumbel noise and the heads' dropout separately, and once in the deterministic evaluation pass
(expected edges, no dropout). The spread is then split into what the batch's tiles cause (the same
keys, other batches) and what each random stream causes (the same batch, other keys), next to the
swing between successive logged losses in metrics.jsonl and the correlation of a batch's loss with
how alike its tiles are. Nothing is trained; figures in docs/benchmarks.md.
"""

from __future__ import annotations

import datetime
import json
import pathlib

import numpy as np
from absl import flags

from sigmma_jax.tools.bench.common import machine_description

flags.DEFINE_integer("noise_batches", 8, "loss_noise: training batches evaluated.")
flags.DEFINE_integer("noise_keys", 8, "loss_noise: random keys per batch and stream.")
flags.DEFINE_integer("noise_step", 0, "loss_noise: the checkpoint's step (0: the latest).")


def measure(
    config, workdir: str | pathlib.Path, n_batches: int, n_keys: int, step: int = 0
) -> dict:
    """{component: {"total"|scale: sd}} and the means; see the module docstring."""
    import jax

    from sigmma_jax import families, sharding
    from sigmma_jax.data import shards
    from sigmma_jax.train import checkpoints, loop
    from sigmma_jax.train import step as step_lib

    workdir = pathlib.Path(workdir)
    manifest = shards.read_manifest(shards.shard_dir(config, workdir))
    mesh = sharding.make_mesh(config)
    model, abstract, mngr = loop.saved_model(config, workdir, manifest, mesh)
    state = checkpoints.restore(mngr, abstract, step=step or None)
    mngr.close()
    loss = families.get(config).loss_fn(config)

    @jax.jit
    def losses(params, batch, k_gumbel, k_drop):
        rngs = {"gumbel": k_gumbel, "dropout": k_drop}
        total, (per, _, _) = step_lib.model_loss(params, model, batch, rngs, loss)
        return dict(total=total, **per)

    @jax.jit
    def eval_losses(params, batch):
        total, (per, _, _) = step_lib.model_loss(params, model, batch, None, loss, train=False)
        return dict(total=total, **per)

    it = loop.train_batches(config, workdir, manifest, mesh)
    keys = jax.random.split(jax.random.PRNGKey(1234), 2 * n_keys)
    gumbel, drop = keys[:n_keys], keys[n_keys:]
    rows = []  # per batch: (both streams varied, Gumbel only, dropout only, evaluation pass)
    profiles = []  # per batch: the tiles' expression profiles (log1p tile counts)
    for _ in range(n_batches):
        host = next(it)
        profiles.append(np.log1p(host["graph"].globals["tile_counts"]))
        batch = sharding.to_device(host, mesh)
        get = lambda g, d: jax.device_get(losses(state.params, batch, g, d))
        rows.append(
            (
                [get(g, d) for g, d in zip(gumbel, drop)],
                [get(g, drop[0]) for g in gumbel],
                [get(gumbel[0], d) for d in drop],
                jax.device_get(eval_losses(state.params, batch)),
            )
        )
    names = ["total"] + [k for k in rows[0][3] if k != "total"]
    # (batches, keys), float64: the losses are float32 and numpy's float32 mean of equal values can
    # miss them by an ulp, which would read as a spread of ~1e-7 where there is none.
    arr = lambda i, k: np.array([[r[k] for r in row[i]] for row in rows], np.float64)
    out = {"step": int(state.step), "batch": config.train.global_batch}
    out["mean_loss"] = {k: float(arr(0, k).mean()) for k in names}
    out["chance"] = {k: float(np.log(config.train.global_batch)) for k in names if k != "total"}
    weights = config.train.scale_weights
    out["chance"]["total"] = float(sum(weights) * np.log(config.train.global_batch))
    out["sd"] = {
        "between batches (same keys)": {k: float(arr(0, k).mean(1).std(ddof=1)) for k in names},
        "Gumbel keys (same batch)": {k: float(arr(1, k).std(1, ddof=1).mean()) for k in names},
        "dropout keys (same batch)": {k: float(arr(2, k).std(1, ddof=1).mean()) for k in names},
        "both streams (same batch)": {k: float(arr(0, k).std(1, ddof=1).mean()) for k in names},
        "evaluation pass, between batches": {
            k: float(np.std([row[3][k] for row in rows], ddof=1)) for k in names
        },
    }
    # How alike a batch's tiles are (mean pairwise cosine of their standardised expression): the
    # more alike, the harder its negatives. Its correlation with the batch's loss tells whether the
    # spread between batches is their composition.
    x = np.concatenate(profiles)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    z = (x / np.linalg.norm(x, axis=1, keepdims=True)).reshape(n_batches, -1, x.shape[1])
    b = z.shape[1]
    alike = np.array([(zi @ zi.T).sum() - b for zi in z]) / (b * (b - 1))
    eval_loss = [float(row[3]["total"]) for row in rows]
    out["corr_loss_vs_batch_similarity"] = float(np.corrcoef(alike, eval_loss)[0, 1])
    history = workdir / "metrics.jsonl"
    if history.exists():
        from sigmma_jax.train import metrics

        logged = np.array([r["loss"] for r in metrics.read_history(history)])
        half = logged[len(logged) // 2 :]
        if len(half) >= 3:
            # Successive logged losses are log_every steps apart: their difference carries the
            # batch-to-batch spread twice (plus the trend, small over one interval).
            out["logged_swing_sd"] = float(np.diff(half).std(ddof=1) / np.sqrt(2))
    return out


def run(a) -> int:
    from sigmma_jax import cli

    cli.required("config", "workdir")
    r = measure(a.config, a.workdir, a.noise_batches, a.noise_keys, a.noise_step)
    r["date"] = datetime.date.today().isoformat()
    r["machine"] = machine_description()
    print(json.dumps(r))
    names = list(r["mean_loss"])
    print(
        f"\nstep {r['step']}, batch {r['batch']}, {a.noise_batches} batches x {a.noise_keys} keys"
    )
    print("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    print("| mean loss | " + " | ".join(f"{r['mean_loss'][k]:.3f}" for k in names) + " |")
    print("| chance (log B) | " + " | ".join(f"{r['chance'][k]:.3f}" for k in names) + " |")
    for what, sd in r["sd"].items():
        print(f"| sd: {what} | " + " | ".join(f"{sd[k]:.3f}" for k in names) + " |")
    print(
        "\ncorrelation of a batch's loss (evaluation pass) with how alike its tiles' expression is: "
        f"{r['corr_loss_vs_batch_similarity']:.2f}"
    )
    if "logged_swing_sd" in r:
        print(f"\nsd of one logged loss (metrics.jsonl, second half): {r['logged_swing_sd']:.3f}")
    return 0
