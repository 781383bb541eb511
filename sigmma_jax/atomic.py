"""Atomic writes: a file appears under its final name complete, or not at all.

Every writer of the project (shards, sidecars, manifests, the synthetic slide, results, metrics)
goes through `atomic_path`, so a crash leaves at most a hidden temp file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Any, Iterator


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


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    write_bytes(path, json.dumps(obj, indent=indent).encode())
