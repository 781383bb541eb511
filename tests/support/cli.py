"""Runs a command's `main` in this process as `python -m sigmma_jax.X ARGS` would, after absl has
parsed the flags; every flag is back at its default afterwards."""

from absl import flags


def run(module, argv: list[str]):
    flags.FLAGS.unparse_flags()
    try:
        return module.main(flags.FLAGS(["sigmma_jax", *argv]))
    finally:
        flags.FLAGS.unparse_flags()
        flags.FLAGS.mark_as_parsed()  # Grain reads absl flags
