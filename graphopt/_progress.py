"""Progress bars for the long steps (calibration, evaluation, training), one switch for all.

``progress(iterable, desc=..., total=...)`` wraps ``tqdm`` (the one progress-bar dependency), and
draws nothing when progress is off: under ``--quiet`` or ``--json`` (:func:`set_enabled`), when
``GRAPHOPT_PROGRESS=0``, or when standard error is not a terminal (CI logs, tests).
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")

_enabled: bool | None = None  # None: decide from the environment and the terminal


def set_enabled(enabled: bool | None) -> None:
    """Force progress bars on or off (``None``: back to the default)."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    if os.environ.get("GRAPHOPT_PROGRESS", "").strip() in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None,
             unit: str = "it", **kwargs) -> Iterable[T]:
    """``iterable``, drawing a progress bar on standard error while it is consumed."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled(),
                leave=False, dynamic_ncols=True, **kwargs)
