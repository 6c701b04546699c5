"""Writing files so that a failure leaves no half-written model behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from graphopt.errors import ModelFileError


@contextlib.contextmanager
def atomic_paths(*targets: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``targets``; when the block succeeds each is renamed onto
    its target (``os.replace``, atomic per file), when it fails they are removed.

    Every file is complete before the first rename. A file the renames replace is first kept
    aside (a hard link, else a copy), so that if a later rename fails the targets already
    replaced get their old contents back: a model is never left as a new params file beside
    an old symbol. Only a crash of the process between renames could do that."""
    finals = [Path(t) for t in targets]
    temps: list[Path] = []
    try:
        for final in finals:
            temps.append(_temporary_beside(final, ".tmp"))
        yield temps
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give what open() would have
        for temp in temps:
            os.chmod(temp, mode)
        _replace_all(temps, finals)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _temporary_beside(final: Path, suffix: str) -> Path:
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    except OSError as error:
        raise ModelFileError(f"cannot write here: {error.strerror}", file=str(final)) from None
    os.close(handle)
    return Path(temp)


def _replace_all(temps: list[Path], finals: list[Path]) -> None:
    """Rename each temp onto its final; on a failure, put back what was replaced. Every final
    is kept aside before the first rename, so a failure to keep one aside changes nothing."""
    backups: dict[Path, Path | None] = {}  # final -> its old contents (None: it did not exist)
    try:
        for final in finals:
            try:
                backups[final] = _keep_aside(final)
            except OSError as error:
                raise ModelFileError(f"cannot keep the old file aside: {error.strerror}; nothing "
                                     "was changed", file=str(final)) from None
        done: list[Path] = []
        for temp, final in zip(temps, finals):
            try:
                os.replace(temp, final)
            except OSError as error:
                for replaced in done:
                    with contextlib.suppress(OSError):
                        if backups[replaced] is not None:
                            os.replace(backups[replaced], replaced)
                        else:
                            replaced.unlink()  # new, and its partner failed: remove it
                raise ModelFileError(f"cannot replace the file: {error.strerror}; nothing was "
                                     "changed", file=str(final)) from None
            done.append(final)
    finally:
        for backup in backups.values():
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    backup.unlink()


def _keep_aside(final: Path) -> Path | None:
    """A second name for ``final``'s current contents (None when it has none)."""
    if not final.is_file():
        return None
    backup = _temporary_beside(final, ".old")
    backup.unlink()
    try:
        os.link(final, backup)
    except OSError:  # a filesystem without hard links
        try:
            shutil.copy2(final, backup)
        except OSError:
            backup.unlink(missing_ok=True)
            raise
    return backup


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_paths(target) as (temp,):
        temp.write_bytes(data)
    return Path(target)
