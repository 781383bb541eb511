"""The project's error types, on the ground floor: every layer raises them, none imports upward.

- `InputError`: bad input (a file, a folder, a value read from data); the message names the file
  and the problem, in one line. Commands exit 1 on it.
- `ConfigError`: a config value or command line the code cannot use (a usage error, not the
  data's); commands exit 2 on it.
- `NonFinite`: a training step produced a non-finite loss, gradient or parameter (`train.health`).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the file and the problem."""


class ConfigError(InputError):
    """A config value the code cannot use: a usage error (the command line or the config file is
    wrong, not the data)."""


class NonFinite(RuntimeError):
    """A training step produced a non-finite loss, gradient or parameter."""
