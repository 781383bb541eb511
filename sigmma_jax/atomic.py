"""Atomic writes: a file appears under its final name complete, or not at all.

Every writer of the project (shards, sidecars, manifests, the synthetic slide, results, plots,
metrics, converted weights' metadata) goes through this module, so a crash leaves at most a hidden
temp file, never a half-written one. Data is fsynced before the rename: results are what people keep.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
from typing import IO, Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temp path beside `path`; renamed onto it if the block succeeds, removed otherwise."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """`open(path, mode)` whose content replaces `path` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with open_atomic(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def jsonable(x: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays become numbers and lists, NaN and inf become null
    (bare NaN is not JSON and breaks strict readers), tuples lists, anything else its str()."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False))
