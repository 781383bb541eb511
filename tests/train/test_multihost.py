"""Two processes on this machine train as one: `jax.distributed` with a localhost coordinator, four
CPU devices each, the mesh interleaving the two processes' devices (as a pod may) on a 2 x 4 (data,
fsdp) mesh, so the parameters are split across both processes, against one process with eight
devices in id order, data-parallel."""

import json
import socket
import subprocess
import sys

import numpy as np
from support.configs import REPO

from sigmma_jax.tools.bench.recovery import numbers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(env, args, devices):
    env = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "support" / "multihost.py"), *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_processes_with_interleaved_devices_train_as_one_process(
    tiny_shards, tmp_path, process_env
):
    config, _ = tiny_shards
    shard_dir, port = config.data.shard_dir, _free_port()
    procs = [
        _start(process_env, [i, 2, port, tmp_path / "two", shard_dir, "interleaved", 4], 4)
        for i in range(2)
    ]
    procs.append(_start(process_env, [0, 1, 0, tmp_path / "one", shard_dir, "ids", 1], 8))
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    read = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    one, two = read(tmp_path / "one"), read(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(one, two):
        for k in ("loss", "loss_micro", "loss_meso", "loss_macro", "grad_norm"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=k)
    # The evaluation of the initial model: every number, tile for tile.
    init = lambda d: numbers(json.loads((d / "results_initial.json").read_text()))
    a, b = init(tmp_path / "one"), init(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
