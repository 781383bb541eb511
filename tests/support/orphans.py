"""Run as a script: a parent with a pool of 2 preprocessing workers busy on long tasks; prints the
workers' pids, then waits to be killed. `--watch` makes the workers use the portable parent watch
instead of PR_SET_PDEATHSIG."""

import functools
import sys
import time

from sigmma_jax.data import workers


def main() -> None:
    pool = workers.pool(2)
    if "--watch" in sys.argv:  # the same pool, with the fallback initializer
        pool._initializer = functools.partial(workers.die_with_parent, prctl=False, every_s=0.2)
    futures = [pool.submit(time.sleep, 600) for _ in range(2)]
    while len(pool._processes) < 2:
        time.sleep(0.05)
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(600)
    del futures


if __name__ == "__main__":
    main()
