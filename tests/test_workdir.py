"""One run per workdir: a second is refused with one line naming the holder; a lock left by a
killed run is taken over."""

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from support.configs import REPO

from sigmma_jax import workdir
from sigmma_jax.data.readers import InputError

HOLD = (
    "import sys, time\n"
    "from sigmma_jax.workdir import lock\n"
    "with lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def _holder(directory):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_is_refused_and_a_dead_holders_lock_taken_over(tmp_path, caplog):
    holder = _holder(tmp_path / "w")
    try:
        with pytest.raises(InputError) as e:
            with workdir.lock(tmp_path / "w"):
                pass
        since = time.strftime(
            "%Y-%m-%d %H:%M:%S",
            time.localtime(json.loads((tmp_path / "w" / ".lock").read_text())["started"]),
        )
        assert str(e.value) == (
            f"{tmp_path / 'w'}: the workdir is in use by pid {holder.pid} on "
            f"{socket.gethostname()} since {since}; wait for that run, use another directory, "
            f"or delete {tmp_path / 'w' / '.lock'} if that run is gone"
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING), workdir.lock(tmp_path / "w"):
        held = json.loads((tmp_path / "w" / ".lock").read_text())
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
        with workdir.lock(tmp_path / "w"):  # re-entrant within a process
            pass
        assert (tmp_path / "w" / ".lock").read_text()  # still held
    assert f"taking over the lock of pid {holder.pid}" in caplog.text
    assert (tmp_path / "w" / ".lock").read_text() == ""  # released


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    """Filesystems without flock: a live holder on this host, or any holder on another host (its
    liveness cannot be checked), keeps the lock; a dead one on this host is taken over."""

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    d = tmp_path / "w"
    d.mkdir()
    host = socket.gethostname()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    for pid, where, refused in (
        (1, host, True),
        (1234, "elsewhere", True),
        (int(dead.stdout), host, False),
    ):
        (d / ".lock").write_text(json.dumps(dict(pid=pid, host=where, started=0)))
        if refused:
            with pytest.raises(InputError, match=f"in use by pid {pid} on {where} since"):
                with workdir.lock(d):
                    pass
        else:
            with workdir.lock(d):
                assert json.loads((d / ".lock").read_text())["pid"] == os.getpid()


def test_a_file_or_an_unwritable_directory_as_workdir(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError) as e:
        with workdir.lock(tmp_path / "f"):
            pass
    assert str(e.value) == (
        f"{tmp_path / 'f'}: a file, not a directory; the workdir must be a directory"
    )
    real_open = os.open

    def read_only(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(InputError) as e:
        with workdir.lock(tmp_path / "ro"):
            pass
    assert str(e.value) == f"{tmp_path / 'ro'}: cannot write in the workdir (Read-only file system)"


def test_the_run_refuses_a_busy_workdir_in_one_line(tmp_path):
    holder = _holder(tmp_path / "w")
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "sigmma_jax.main",
                "--config=configs/demo.py",
                f"--workdir={tmp_path / 'w'}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith(
        f"error: {tmp_path / 'w'}: the workdir is in use by pid {holder.pid} on "
    )
    assert "Traceback" not in r.stderr and not (tmp_path / "w" / "shards").exists()
