"""Writing files so that a failure leaves no half-written model behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``targets``; when the block succeeds each is renamed onto
    its target (``os.replace``, atomic per file), when it fails they are removed."""
    finals = [Path(t) for t in targets]
    temps = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(handle)
            temps.append(Path(temp))
        yield temps
        for temp, final in zip(temps, finals):
            os.replace(temp, final)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_paths(target) as (temp,):
        temp.write_bytes(data)
    return Path(target)
