"""Run as `python tests/support/full_disk.py MAIN_FLAGS...`: `python -m sigmma_jax.main` on a disk
that fills up at the first checkpoint (Orbax's JSON writer raises ENOSPC in its background thread)."""

import errno

from orbax.checkpoint._src.handlers import json_checkpoint_handler


async def _disk_full(self, x, directory):
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))


json_checkpoint_handler.JsonCheckpointHandler._save_fn = _disk_full

if __name__ == "__main__":  # preprocessing workers import this module too
    from sigmma_jax import cli, main

    cli.run(main.main)
