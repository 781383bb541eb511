"""`--config=tests/support/tiny.py` for commands the tests start as processes (with `tests` on
PYTHONPATH): the suite's tiny config (`support.configs.tiny_config`)."""

from support.configs import tiny_config


def get_config(arg=None):
    del arg
    return tiny_config()
