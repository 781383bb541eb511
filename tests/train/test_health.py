"""A run's health, as a user meets it: `python -m sigmma_jax.main` in a real process that goes
non-finite, or is sent SIGTERM."""

import json
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from support.configs import REPO

from sigmma_jax.train import health


def _main(env, workdir, *overrides):
    cmd = [
        sys.executable,
        "-m",
        "sigmma_jax.main",
        "--config=tests/support/tiny.py",
        f"--workdir={workdir}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _checkpoints(workdir):
    with ocp.CheckpointManager((workdir / "checkpoints").absolute()) as mngr:
        return {
            s: mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            for s in mngr.all_steps()
        }


def test_a_non_finite_run_stops_naming_the_step_and_keeps_only_finite_checkpoints(
    tmp_path, process_env
):
    p = _main(
        process_env,
        tmp_path,
        "--config.train.lr=1e6",
        "--config.train.checkpoint_every=1",
    )
    _, err = p.communicate(timeout=900)
    assert p.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    m = re.match(
        r"error: step (\d+): non-finite training values: loss (\S+) \(micro \S+, meso \S+, macro \S+\)",
        last,
    )
    assert m and m.group(2) in ("nan", "inf", "-inf"), last
    step = int(m.group(1))
    saved = _checkpoints(tmp_path)
    # The last good steps are kept (keep_checkpoints = 3), and nothing of the bad one.
    assert sorted(saved) == list(range(max(1, step - 3), step)), (sorted(saved), step)
    for s, ckpt in saved.items():
        for leaf in jax.tree.leaves((ckpt["state"]["params"], ckpt["state"]["opt_state"])):
            assert np.isfinite(np.asarray(leaf)).all(), s


def test_sigterm_saves_the_current_step_exits_0_and_a_rerun_continues(tmp_path, process_env):
    args = (process_env, tmp_path, "--config.train.steps=40")
    p = _main(*args, "--config.train.checkpoint_every=1000")
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert p.poll() is None and time.time() < deadline, p.communicate()[1][-3000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    t = time.time()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert time.time() - t < 60  # the grace period: one step and a checkpoint
    step = int(re.search(r"stopped at step (\d+) with a checkpoint", err).group(1))
    assert 3 <= step < 40
    assert "parameters: backbone" in err  # counted per module at the start
    assert not (tmp_path / "results.json").exists()  # not evaluated: the run is not done
    saved = _checkpoints(tmp_path)
    assert sorted(saved) == [step] and int(saved[step]["state"]["step"]) == step
    # The rerun continues from that step to the end.
    p = _main(*args)
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    assert f"resumed from step {step}" in err
    records = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert (tmp_path / "results.json").exists()
    # The gradient norm per module: its parts make up the global norm.
    r = records[-1]
    parts = [v for k, v in r.items() if k.startswith("grad_norm/")]
    assert len(parts) == 5
    np.testing.assert_allclose(np.sqrt(np.sum(np.square(parts))), r["grad_norm"], rtol=1e-4)


def test_param_counts_are_per_top_level_module():
    params = {"backbone": {"a": np.zeros((3, 4)), "b": np.zeros(5)}, "st": {"c": np.zeros(7)}}
    assert health.param_counts(params) == {"backbone": 17, "st": 7}
