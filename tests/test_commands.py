"""Every documented command starts as `python -m sigmma_jax.X` and answers in one style (absl)."""

import subprocess
import sys

import pytest
from support.configs import REPO

COMMANDS = {  # a line of the module's docstring and one of its flags
    "main": ("Entry point", "--workdir"),
    "check_data": ("can SIGMMA use it", "--config"),
    "convert": ("Converts a PyTorch backbone", "--src"),
    "bench": ("Benchmarks", "--batch_sizes"),
    "attention_maps": ("attention maps", "--weights"),
    "experiments": ("The paper's experiments in one command", "--workdir"),
}


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_commands_start_and_describe_their_flags(name):
    r = _run(f"sigmma_jax.{name}", "--helpfull")  # absl exits 1 after the help
    assert all(text in r.stdout for text in COMMANDS[name]), r.stdout + r.stderr


def test_missing_data_is_one_line_and_exit_1(tmp_path):
    r = _run("sigmma_jax.check_data", str(tmp_path / "nope"))
    assert r.returncode == 1 and r.stdout.strip() == f"{tmp_path / 'nope'}: does not exist"
    r = _run("sigmma_jax.main", "--config=configs/generic.py:demo", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: configs/generic.py needs")
    r = _run("sigmma_jax.main", "--config=configs/generic.py", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "error: weights/uni is not a converted backbone directory (no backbone.json); make one "
        "with `python -m sigmma_jax.convert --arch=... --src=... --dst=...`"
    )
