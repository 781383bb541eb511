"""One run per directory: a lock file in the workdir (and in a shard directory while it is being
written) that names its holder, `{"pid", "host", "started"}`.

A second run on the same directory is refused with one line naming the holder. The lock is a
`flock` on the file, which the kernel releases when its holder dies however it dies, so a lock left
by a killed run is taken over (and the takeover logged); where the filesystem has no `flock`, the
pid decides: a holder on this host that is no longer running is taken over, one on another host
is not (its liveness cannot be checked), and the message says which file to delete.

In a multi-host run only process 0 takes the lock: the other processes share the run's workdir and
write nothing in it of their own (checkpoints are written through Orbax by every process
together).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import socket
import time
from typing import Iterator

from sigmma_jax.errors import InputError

LOCK = ".lock"
_held: dict[str, list] = {}  # resolved directory -> [fd, depth]: nested locks of one process


def prepare(directory: str | os.PathLike, what: str = "workdir") -> pathlib.Path:
    """`directory`, created if needed; one line when it cannot be (a file, no permission)."""
    path = pathlib.Path(directory)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: a file, not a directory; the {what} must be a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot create the {what} ({e.strerror})") from e
    return path


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _busy(path: pathlib.Path, holder: dict, what: str) -> InputError:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return InputError(
        f"{path.parent}: the {what} is in use by pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')} since {since}; wait for that run, use another directory, or "
        f"delete {path} if that run is gone"
    )


def _acquire(path: pathlib.Path, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(f"{path.parent}: cannot write in the {what} ({e.strerror})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocked = True
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise _busy(path, holder, what) from None
    except OSError:  # no flock on this filesystem: the holder's pid decides
        flocked = False
    holder, host = _holder(fd), socket.gethostname()
    if holder.get("pid") is not None and (holder.get("pid"), holder.get("host")) != (
        os.getpid(),
        host,
    ):
        same_host = holder.get("host") == host
        if not flocked and (not same_host or _alive(int(holder["pid"]))):
            os.close(fd)
            raise _busy(path, holder, what)
        logging.warning(
            "%s: taking over the lock of pid %s on %s, which is no longer running",
            path.parent,
            holder["pid"],
            holder.get("host"),
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(dict(pid=os.getpid(), host=host, started=time.time())).encode(), 0)
    os.fsync(fd)
    return fd


@contextlib.contextmanager
def lock(directory: str | os.PathLike, what: str = "workdir") -> Iterator[pathlib.Path]:
    """Holds `directory` (created if needed) for this process; re-entrant within the process."""
    path = prepare(directory, what)
    key = str(path.resolve())
    if key not in _held:
        _held[key] = [_acquire(path / LOCK, what), 0]
    _held[key][1] += 1
    try:
        yield path
    finally:
        _held[key][1] -= 1
        if not _held[key][1]:
            fd = _held.pop(key)[0]
            os.ftruncate(fd, 0)  # empty: nobody holds it (the file stays; removing it would race)
            os.close(fd)  # releases the flock
