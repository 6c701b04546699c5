"""Shared test set-up: the repo root on sys.path (for ``fixtures``), seeded inputs, a tmp cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |a - b| / max |a|: the figure the issues state tolerances in."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    scale = max(float(np.max(np.abs(reference))), 1e-30)
    return float(np.max(np.abs(reference - actual))) / scale
