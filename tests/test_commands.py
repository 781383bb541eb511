"""Every documented command starts as `python -m sigmma_jax.X` and answers in one style (absl)."""

import json
import os
import re
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
    "embed": ("Embeds a slide", "--spatialdata"),
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


def _said(stderr: str) -> list[str]:
    """What a command says on stderr besides absl's log lines (I/W/E + date)."""
    return [line for line in stderr.splitlines() if not re.match(r"[IWE]\d{4} ", line)]


def test_missing_data_is_one_line_and_exit_1(tmp_path):
    r = _run("sigmma_jax.check_data", str(tmp_path / "nope"))
    assert r.returncode == 1 and r.stdout.strip() == f"{tmp_path / 'nope'}: does not exist"
    r = _run("sigmma_jax.main", "--config=configs/generic.py:demo", f"--workdir={tmp_path / 'w'}")
    assert r.returncode == 1
    assert _said(r.stderr) == [  # no usage text before it
        "error: the generic source needs --config.data.cells=FILE.h5ad and "
        "--config.data.wsi=FILE.tif"
    ]
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
            "error: name a HEST folder, a Xenium bundle, CELLS.h5ad HE.tif, a SpatialData "
            "STORE.zarr, or --config=... (see --help)",
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
        "error: config.data.overflow = 'dorp': expected one of 'subsample', 'drop', 'keep' "
        "(did you mean 'drop'?)",
    )
    assert not workdir.exists()


TINY = [  # the demo shrunk to seconds (tests/support/configs.py's tiny_config, as flags)
    "--config=configs/demo.py",
    "--config.data.synthetic.size_um=1024",
    "--config.data.synthetic.n_genes=40",
    "--config.data.split.block_tiles=2",
    "--config.data.workers=1",
    "--config.model.vit.img_size=16",
    "--config.model.vit.width=32",
    "--config.model.vit.depth=1",
    "--config.model.vit.num_heads=2",
    "--config.model.embed_dim=32",
    "--config.model.st.hidden=32",
    "--config.train.global_batch=8",
    "--config.train.steps=30",
    "--config.train.checkpoint_every=3",
    "--config.train.log_every=1",
    "--config.evals=()",
]


def test_a_full_disk_ends_the_run_with_one_line(tmp_path):
    """Orbax writes checkpoints in the background and only logs a failed write; the run stops at
    the first one, never starts another save, and says so in one line naming the path. Before:
    training went on, then 1,401 lines with 160 tracebacks ('Event loop is closed')."""
    r = subprocess.run(
        [sys.executable, "tests/support/full_disk.py", *TINY, f"--workdir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    ckpt = tmp_path / "checkpoints"
    assert r.returncode == 1 and _said(r.stderr)[-1] == (
        f"error: {ckpt}/3.orbax-checkpoint-tmp/meta.orbax-checkpoint-tmp: cannot save the "
        "checkpoint of step 3: No space left on device"
    )
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) < 40
    assert [p.name for p in ckpt.iterdir()] == ["3.orbax-checkpoint-tmp"]  # nothing complete
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == list(range(1, len(steps) + 1)) and 3 <= len(steps) <= 6  # not past save 2
