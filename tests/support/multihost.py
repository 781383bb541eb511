"""One process of a multi-process training run on this machine, for tests/train/test_multihost.py.

    python tests/support/multihost.py PROCESS_ID NUM_PROCESSES PORT WORKDIR SHARD_DIR ORDER FSDP

Joins the others through a localhost coordinator, builds the mesh with every process's devices
(ORDER "interleaved": the processes' devices alternate along the mesh, as on a pod where a host's
devices are not consecutive rows; "ids": in device-id order), FSDP devices on its fsdp axis (the
state split over them, every leaf: 1 is data parallelism) and trains the tiny config for a few
steps, evaluating the model at initialisation first. Process 0 writes metrics.jsonl and
results_initial.json into WORKDIR. The devices per process come from XLA_FLAGS.
"""

import sys

import jax
from absl import flags

from sigmma_jax import sharding
from sigmma_jax.data import shards
from sigmma_jax.train import loop
from support.configs import tiny_config


def main(process_id, num_processes, port, workdir, shard_dir, order, fsdp):
    if int(num_processes) > 1:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{port}",
            num_processes=int(num_processes),
            process_id=int(process_id),
        )
    flags.FLAGS.mark_as_parsed()  # Grain reads absl flags
    config = tiny_config(shard_dir)
    config.train.update(steps=3, log_every=1, checkpoint_every=1000)
    config.evals = ("retrieval", "knn_expression")
    devices = jax.devices()
    if order == "interleaved":
        by_process = [
            [d for d in devices if d.process_index == p] for p in range(jax.process_count())
        ]
        devices = [d for group in zip(*by_process) for d in group]
    config.mesh.update(data=-1, fsdp=int(fsdp))
    config.sharding.min_fsdp_bytes = 0  # the tiny model's leaves are all small: split every one
    mesh = sharding.make_mesh(config, devices)
    manifest = shards.read_manifest(shard_dir)
    loop.train(config, workdir, manifest, mesh)
    jax.distributed.shutdown() if int(num_processes) > 1 else None


if __name__ == "__main__":
    main(*sys.argv[1:])
