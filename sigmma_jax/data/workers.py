"""Preprocessing worker processes that never outlive their parent.

Workers are spawned (forking after JAX has started threads is unsafe). A spawned worker does not
notice when its parent is killed (SIGKILL, the out-of-memory killer, a scheduler): it would keep its
slide's counts in memory and keep running. Each worker therefore asks the kernel for SIGKILL when
its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`), or, where that is unavailable, watches its
parent's pid from a thread and exits when it changes.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int, every_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def die_with_parent(parent: int, every_s: float = 1.0, prctl: bool = True) -> None:
    """Worker initializer: the worker ends when process `parent` ends, however it ends.

    PR_SET_PDEATHSIG fires when the thread that started the worker exits; the pool starts its
    workers from the thread that submits work, the thread that waits for the results. `prctl`
    False takes the portable way (a thread watching the parent's pid) on Linux too."""
    if prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_watch_parent, args=(parent, every_s), daemon=True).start()


def pool(workers: int) -> cf.ProcessPoolExecutor:
    """A pool of `workers` spawned processes that exit with this one."""
    return cf.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(os.getpid(),),
    )
