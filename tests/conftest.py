"""Shared test set-up: the repo root on sys.path (for ``fixtures``), seeded inputs, a tmp cache."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from graphopt.compare import relative_error  # noqa: F401  (max |a - b| / max |a|, for the tests)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

