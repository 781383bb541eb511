"""Entry point: `python -m sigmma_jax.main --config=configs/demo.py --workdir=DIR`.

Preprocesses (when shards are missing), trains (resuming from the workdir's latest checkpoint) and
evaluates; results land in DIR/results.json, DIR/results.md and DIR/plots/.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from sigmma_jax import preprocess, readers, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for shards, checkpoints, metrics and results.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_bool("preprocess_only", False, "Write the shards and manifest, then stop.")
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:demo]).", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
    """Orbax and Grain log every file they write at INFO; keep our progress lines readable."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(k in record.pathname for k in ("orbax", "grain"))


def main(argv):
    del argv
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if FLAGS.distributed:
        jax.distributed.initialize()
    logging.info(
        "JAX %s: %d processes, %d devices (%s)",
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    try:
        if FLAGS.preprocess_only:
            preprocess.preprocess(FLAGS.config, FLAGS.workdir)
        else:
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (readers.InputError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    app.run(main)
