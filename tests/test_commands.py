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


@pytest.mark.parametrize(
    "args,line",
    [
        (
            ["--config=configs/demo.py", "--config.data.nodes_budget=3", "x"],
            "error: --config.data.nodes_budget=3: the config has no field 'nodes_budget' "
            "(did you mean 'node_budget'?)",
        ),
        (
            ["--config=configs/demo.py", "--config.train.steps=many", "x"],
            "error: flag --config.train.steps=many: invalid literal for int() with base 10: 'many'",
        ),
        (
            ["--config=configs/nope.py", "x"],
            "error: --config: cannot load the config file: [Errno 2] No such file or directory: "
            "'configs/nope.py'",
        ),
        (["--bogus", "x"], "error: Unknown command line flag 'bogus'"),
        (
            [],
            "error: name a HEST folder, a Xenium bundle, CELLS.h5ad HE.tif, or --config=... "
            "(see --help)",
        ),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(args, line):
    r = _run("sigmma_jax.check_data", *args)
    assert (r.returncode, r.stderr.strip(), r.stdout) == (2, line, "")


def test_a_bad_config_value_stops_the_run_before_any_work(tmp_path):
    workdir = tmp_path / "w"
    r = _run(
        "sigmma_jax.main",
        "--config=configs/demo.py",
        "--config.data.overflow=dorp",
        f"--workdir={workdir}",
    )
    assert (r.returncode, r.stderr.strip()) == (
        2,
        "error: config.data.overflow = 'dorp': expected one of 'subsample', 'drop' "
        "(did you mean 'drop'?)",
    )
    assert not workdir.exists()
