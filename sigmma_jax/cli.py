"""What every command shares: absl flags that several commands read, and `run`, which starts one.

Each command (`python -m sigmma_jax.main`, `check_data`, `convert`, `bench`, `attention_maps`,
`embed`) is a small module that defines its own flags and a `main(argv)`. Flags that more than one command reads
are defined here, once: absl has one flag namespace per process, and the tests import every command.
Spellings are snake_case throughout.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from sigmma_jax.data.readers import InputError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, configs/NAME.py[:demo]; override fields with --config.a.b=v.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for shards, checkpoints, metrics and results.")
flags.DEFINE_string("out", None, "Where the command writes its output.")
flags.DEFINE_string("run", None, "A run directory of `python -m sigmma_jax.main` (its --workdir).")
flags.DEFINE_string("arch", "uni", "Backbone preset: uni, uni2-h, h-optimus-0 or resnet50.")
flags.DEFINE_integer("img_size", 0, "Backbone input size in pixels (0: the preset's).")


class _QuietLibraries:
    """Orbax and Grain log every file they write at INFO, matplotlib each categorical axis; keep our
    progress lines readable."""

    def filter(self, record) -> bool:
        noisy = ("orbax", "grain", "matplotlib")
        return record.levelno >= 30 or not any(k in record.pathname for k in noisy)


def required(*names: str) -> None:
    missing = [n for n in names if FLAGS[n].value is None]
    if missing:
        raise app.UsageError("missing " + ", ".join(f"--{n}" for n in missing))


def run(main: Callable[[list[str]], int | None]) -> None:
    """`absl.app.run(main)`; bad input ends the command with one line naming the problem, exit 1."""

    def wrapped(argv):
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().addFilter(_QuietLibraries())
        try:
            return main(argv)
        except (InputError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    app.run(wrapped)
