"""Preprocessing workers exit when their parent is killed (SIGKILL gives it no chance to clean up)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from support.configs import REPO


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", ["pdeathsig", "watch"])
def test_workers_exit_when_the_parent_is_killed(how):
    args = [sys.executable, str(REPO / "tests" / "support" / "orphans.py")]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    parent = subprocess.Popen(
        args + (["--watch"] if how == "watch" else []),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.time() + 20
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        parent.kill()
        parent.wait()
