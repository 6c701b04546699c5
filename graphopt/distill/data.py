"""The data a student trains and is validated on, in any of the forms users have it.

- ``"digits"``: the handwritten digits of ``fixtures/digits.npz`` as ``fixtures.build.
  digits_split()`` prepares them (28x28 NCHW float32 in [0, 1]); the training split for
  ``train_data``, the held-out 20% for ``val_data`` (see :func:`digits`).
- a ``.npz`` file: the inputs under ``data`` (or ``x``), the labels, if any, under ``label``
  (or ``y``) as integer class indices.
- ``(x, y)`` or ``x`` numpy arrays (``y`` may be None: unlabelled data, for ``alpha = 0``).
- a Gluon ``DataLoader`` (any iterable of batches) yielding ``(x, y)`` or ``x`` batches:
  it is iterated as it is, once per epoch, so its own shuffling and augmentation apply.

:func:`as_training_data` turns each into :class:`ArrayData` or :class:`LoaderData`, checking
what can be checked before training starts (an empty set, labels that are not class indices).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import mxnet as mx
import numpy as np

from graphopt.errors import DataError

REPO = Path(__file__).resolve().parents[2]
DIGITS_NAME = "digits"


@dataclass
class ArrayData:
    """Inputs ``x`` (N, ...) float32 and labels ``y`` (N,) int64 or None, held in memory."""
    x: np.ndarray
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, order: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """``(x, y, indices)`` per batch, in ``order`` (default: as stored)."""
        order = np.arange(len(self.x)) if order is None else order
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            yield self.x[indices], None if self.y is None else self.y[indices], indices

    def count_batches(self, batch_size: int) -> int:
        return -(-len(self.x) // batch_size)


@dataclass
class LoaderData:
    """A DataLoader (or any re-iterable of batches), read batch by batch each epoch."""
    loader: Iterable
    source: str

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for index, batch in enumerate(self.loader):
            x, y = _split_batch(batch, f"{self.source}, batch {index}")
            yield x, y

    def count_batches(self) -> int | None:
        try:
            return len(self.loader)
        except TypeError:
            return None


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_heldout, y_heldout)`` of the bundled digits (``fixtures.build``)."""
    if not (REPO / "fixtures" / "build.py").is_file():
        raise DataError("the bundled digits need the repository's fixtures/ folder, which this "
                        "installation does not have; give the data as a .npz file instead",
                        file=str(REPO / "fixtures"))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from fixtures.build import digits_split
    return digits_split()


def as_training_data(data: Any, role: str = "train_data") -> ArrayData | LoaderData:
    """``data`` in any of the module's forms as :class:`ArrayData` or :class:`LoaderData`.
    ``role`` is ``"train_data"`` or ``"val_data"`` (which split of the digits, and the name
    used in errors)."""
    if isinstance(data, str) and data == DIGITS_NAME:
        x_train, y_train, x_heldout, y_heldout = digits()
        x, y = (x_train, y_train) if role == "train_data" else (x_heldout, y_heldout)
        split = "training" if role == "train_data" else "held-out"
        return _checked_arrays(x, y, f"digits ({split} split)")
    if isinstance(data, (str, os.PathLike)):
        return _read_npz(Path(data))
    if isinstance(data, np.ndarray) or isinstance(data, mx.nd.NDArray):
        return _checked_arrays(data, None, role)
    if isinstance(data, tuple) and len(data) == 2:
        return _checked_arrays(data[0], data[1], role)
    if hasattr(data, "__iter__") and not isinstance(data, (dict, list)):
        if iter(data) is data:
            raise DataError(f"{role}: a one-shot iterator (a generator, say) cannot be read once "
                            f"per epoch; give a DataLoader or another re-iterable of batches")
        return LoaderData(data, role)
    raise DataError(f"{role}: expected 'digits', a .npz path, an array x, a pair (x, y) or a "
                    f"DataLoader, got {type(data).__name__}")


def _read_npz(path: Path) -> ArrayData:
    if path.suffix != ".npz":
        raise DataError(f"expected 'digits' or a .npz file, got {str(path)!r}", file=str(path))
    try:
        with np.load(path, allow_pickle=False) as arrays:
            stored = {key: arrays[key] for key in arrays.files}
    except FileNotFoundError:
        raise DataError("no such data file", file=str(path)) from None
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the data file: {error}", file=str(path)) from None
    x = _first_present(stored, ("data", "x"))
    if x is None:
        raise DataError(f"the data file has no 'data' (or 'x') array; it holds {sorted(stored)}",
                        file=str(path))
    return _checked_arrays(x, _first_present(stored, ("label", "y")), str(path))


def _first_present(arrays: dict, keys: tuple[str, ...]):
    return next((arrays[key] for key in keys if key in arrays), None)


def _checked_arrays(x, y, source: str) -> ArrayData:
    x = _numpy(x)
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{source}: the data set is empty (inputs of shape {x.shape})")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{source}: inputs must be numbers, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if y is not None:
        y = _labels(_numpy(y), source)
        if len(y) != len(x):
            raise DataError(f"{source}: {len(x)} inputs but {len(y)} labels")
    return ArrayData(x, y, source)


def _labels(y: np.ndarray, source: str) -> np.ndarray:
    """Labels as int64 class indices (N,); floats are accepted when they are whole numbers."""
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be class indices of shape (N,), got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{source}: labels must be whole class indices; found "
                            f"{y[~(np.isfinite(y) & (y == np.round(y)))][:3].tolist()}")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{source}: labels must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


def check_label_range(y: np.ndarray | None, classes: int, source: str) -> None:
    """Refuse labels outside ``0 .. classes - 1``, naming the first offending ones."""
    if y is None or len(y) == 0:
        return
    bad = (y < 0) | (y >= classes)
    if np.any(bad):
        raise DataError(f"{source}: labels must lie in 0..{classes - 1} (the models have "
                        f"{classes} classes); found {sorted(set(y[bad].tolist()))[:5]} at "
                        f"positions {np.flatnonzero(bad)[:5].tolist()}")


def _split_batch(batch, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(batch, (tuple, list)):
        if len(batch) != 2:
            raise DataError(f"{where}: a batch must be x or (x, y), got {len(batch)} items")
        x, y = _numpy(batch[0]), _numpy(batch[1])
        return x.astype(np.float32, copy=False), _labels(y, where)
    return _numpy(batch).astype(np.float32, copy=False), None


def _numpy(value) -> np.ndarray:
    if isinstance(value, mx.nd.NDArray):
        return value.asnumpy()
    return np.asarray(value)
