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
    its target (``os.replace``, atomic per file), when it fails they are removed. Every file is
    complete before the first rename, so only a failure between renames (a crash, not an
    exception of the writer) could pair a new file with an old one."""
    finals = [Path(t) for t in targets]
    temps = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(handle)
            temps.append(Path(temp))
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give what open() would have
        for temp, final in zip(temps, finals):
            os.chmod(temp, mode)
            os.replace(temp, final)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_paths(target) as (temp,):
        temp.write_bytes(data)
    return Path(target)
