"""What every command shares: absl flags that several commands read, and `run`, which starts one.

Each command (`python -m sigmma_jax.main`, `check_data`, `convert`, `bench`, `attention_maps`,
`embed`) is a small module that defines its own flags and a `main(argv)`. Flags that more than one command reads
are defined here, once: absl has one flag namespace per process, and the tests import every command.
Spellings are snake_case throughout.

Every mistake ends a command with one line on stderr, `error: ...`, and no traceback: exit code 2
for a bad command line (unknown flag, unknown config field or a value it cannot take, a config file
that does not load, missing flags), 1 for bad data or a failing environment (`InputError`, an
`OSError` such as a full disk or a read-only directory).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

from absl import app, flags
from ml_collections import config_flags

from sigmma_jax import config_check
from sigmma_jax.errors import ConfigError, InputError, NonFinite

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

USAGE_EXIT, ERROR_EXIT = 2, 1


class _QuietLibraries:
    """Orbax and Grain log every file they write at INFO, matplotlib each categorical axis; keep our
    progress lines readable. Orbax also logs the traceback of a failed background save (several
    times); the run reports that failure itself, in one line (`train.checkpoints`)."""

    def filter(self, record) -> bool:
        if not any(k in record.pathname for k in ("orbax", "grain", "matplotlib")):
            return True
        return record.levelno >= 30 and not record.exc_info


def required(*names: str) -> None:
    missing = [n for n in names if FLAGS[n].value is None]
    if missing:
        raise app.UsageError("missing " + ", ".join(f"--{n}" for n in missing))


def local_paths(**paths: str) -> None:
    """Refuses URLs for paths the run writes to: every file goes through the local filesystem API
    (atomic renames, appends, Orbax's directory renames). Shared storage is a filesystem that every
    host mounts (NFS, Lustre, Filestore); a `gs://` workdir would otherwise become a local folder
    named `gs:` (launch/README.md)."""
    for name, value in paths.items():
        if value and "://" in str(value):
            raise InputError(
                f"{value}: {name} must be a filesystem path (shared storage mounted on every "
                "host); URLs such as gs:// are not supported, see launch/README.md"
            )


def _say(message: str) -> None:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)


def _last_word() -> None:
    """After the error line nothing more is said: background threads of a failed run (Orbax's
    asynchronous writes, whose event loop is gone) would otherwise print a traceback each while the
    interpreter shuts down."""
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stderr.fileno())
    os.close(devnull)


def os_error_line(e: OSError) -> str:
    """`path: reason` for an OSError that names a file, else its text."""
    if e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def flag_error_line(e: Exception, argv: list[str]) -> str:
    """One line for an error raised while absl parses the command line (and ml_collections loads
    --config and applies its --config.a.b=v overrides)."""
    if isinstance(e, flags.Error):  # unknown flag, bad value, missing value
        return str(e)
    errors = list(_chain(e))
    keys = [x for x in errors if isinstance(x, KeyError)]
    if keys:  # an override names a field the config does not have
        key = str(keys[-1].args[0]).splitlines()[0].strip("'\"")
        hint = re.search(r'Did you mean "([^"]+)"', " ".join(str(x) for x in errors))
        arg = next(
            (
                a
                for a in argv
                if a.startswith("--config.") and key in a.split("=")[0].split(".")[1:]
            ),
            f"--config.…{key}",
        )
        return f"{arg}: the config has no field {key!r}" + (
            f" (did you mean {hint.group(1)!r}?)" if hint else ""
        )
    if isinstance(e, SyntaxError):
        return f"--config={e.filename}: not a Python config file ({e.msg}, line {e.lineno})"
    if isinstance(e, OSError):  # ml_collections lists every path it tried; the last line says why
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return f"--config: cannot load the config file: {lines[-1] if lines else e}"
    return f"--config: the config file failed: {type(e).__name__}: {e}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing; a bad command line ends the command with one line and exit code 2."""
    try:
        rest = FLAGS(argv)
        if FLAGS["config"].present:
            FLAGS.config.keys()  # ml_collections defers a load failure to the first access
        return rest
    except Exception as e:  # noqa: BLE001 - every parse error becomes one line, none a traceback
        _say(flag_error_line(e, argv))
        sys.exit(USAGE_EXIT)


def run(main: Callable[[list[str]], int | None], errors: tuple[type, ...] = ()) -> None:
    """`absl.app.run(main)`; every mistake ends the command with one line (module docstring), as
    does one of the command's own `errors` (exit 1). A `--config` is checked here, once, before
    the command starts anything (`sigmma_jax.config_check`)."""

    def wrapped(argv):
        from absl import logging as absl_logging

        absl_logging.get_absl_handler().addFilter(_QuietLibraries())
        try:
            if FLAGS["config"].value is not None:
                config_check.validate(FLAGS.config)
            return main(argv)
        except app.UsageError as e:
            _say(f"{e} (see --help)")
            return USAGE_EXIT
        except ConfigError as e:
            _say(str(e))
            return USAGE_EXIT
        except (InputError, NonFinite, *errors) as e:
            _say(str(e))
            return ERROR_EXIT
        except OSError as e:
            _say(os_error_line(e))
            _last_word()
            return ERROR_EXIT

    app.run(wrapped, flags_parser=parse_flags)
