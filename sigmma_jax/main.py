"""Entry point: `python -m sigmma_jax.main --config=configs/demo.py --workdir=DIR`.

Preprocesses (when shards are missing), trains (resuming from the workdir's latest checkpoint) and
evaluates; results land in DIR/results.json, DIR/results.md and DIR/plots/. SIGTERM or Ctrl-C during
training saves a checkpoint and exits 0 (rerun to continue); a non-finite loss or gradient stops the
run with one line naming the step, exit 1.
"""

import jax
from absl import flags, logging

from sigmma_jax import cli, families

FLAGS = flags.FLAGS
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_bool("preprocess_only", False, "Write the shards and manifest, then stop.")


def main(argv) -> None:
    del argv
    cli.required("config", "workdir")
    cli.local_paths(workdir=FLAGS.workdir, shard_dir=FLAGS.config.data.shard_dir)
    if FLAGS.distributed:
        jax.distributed.initialize()
    logging.info(
        "JAX %s: %d processes, %d devices (%s)",
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    if FLAGS.preprocess_only:
        families.get(FLAGS.config).preprocess(FLAGS.config, FLAGS.workdir)
    else:
        # Imported here: preprocessing's spawned workers re-import this module, and the train loop
        # (models, optimizer, Orbax) would cost each of them seconds for nothing.
        from sigmma_jax.train import loop

        loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main)
