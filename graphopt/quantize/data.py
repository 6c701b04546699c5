"""Calibration data as a stream of input batches, checked against the graph's inputs.

:func:`input_batches` accepts

- a numpy array (a one-input graph) or a ``{input name: array}`` dict: split along axis 0;
- an ``.npz`` path (its arrays by input name; an archive of one array feeds a one-input graph);
- an image folder (``.jpg``/``.jpeg``/``.png``/``.bmp``, sorted by path) with a declared
  :class:`ImagePreprocessing`; images are decoded with ``mx.image.imread`` (MXNet's bundled
  OpenCV: no new dependency);
- any iterable of batches: arrays, dicts, ``mx.nd.NDArray``, or ``(data, label)`` tuples as a
  Gluon ``DataLoader`` yields (the data is taken, the label ignored).

and yields ``{input name: array}`` batches of ``batch_size`` samples (the last may be smaller),
at most ``num_samples`` in all. Only one batch (plus one incoming chunk) is held at a time.
Every batch is checked before the model runs: a wrong shape (any axis but the batch axis) or
a dtype of another kind than the input's (integers for a float input...) is a
:class:`~graphopt.errors.DataError` naming the input; floats of another precision are cast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from graphopt.errors import DataError
from graphopt.ir.graph import Graph

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How the images of a folder become a model input, in this order: decode (RGB, or
    grayscale with ``channels=1``), resize the shorter side to ``resize`` (keeping the aspect),
    centre-crop ``crop`` (an int or ``(height, width)``), scale to [0, 1] when ``scale`` (else keep
    0..255), subtract ``mean`` and divide by ``std`` per channel, lay out as ``NCHW`` or ``NHWC``.
    The defaults are the ImageNet ones of the MXNet model zoo."""

    resize: int | None = 256
    crop: int | tuple[int, int] | None = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    scale: bool = True
    layout: str = "NCHW"
    channels: int = 3

    def __post_init__(self):
        if self.layout not in ("NCHW", "NHWC"):
            raise DataError(f"image layout must be NCHW or NHWC, got {self.layout!r}")
        if self.channels not in (1, 3):
            raise DataError(f"images have 1 or 3 channels, got {self.channels}")

    def apply(self, path: Path) -> np.ndarray:
        """One image as a float32 (C, H, W) or (H, W, C) array."""
        import mxnet as mx
        try:
            image = mx.image.imread(str(path), flag=1 if self.channels == 3 else 0)
        except mx.MXNetError as error:
            raise DataError(f"cannot decode the image: {str(error).splitlines()[0]}",
                            file=str(path)) from None
        if self.resize:
            image = mx.image.resize_short(image, self.resize)
        if self.crop:
            height, width = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
            if image.shape[0] < height or image.shape[1] < width:
                raise DataError(f"image of {image.shape[1]}x{image.shape[0]} is smaller than the "
                                f"crop {width}x{height}; give a resize", file=str(path))
            image, _ = mx.image.center_crop(image, (width, height))
        pixels = image.asnumpy().astype(np.float32)
        if self.scale:
            pixels /= 255.0
        pixels = (pixels - np.asarray(self.mean, np.float32)[:self.channels]) \
            / np.asarray(self.std, np.float32)[:self.channels]
        return pixels.transpose(2, 0, 1) if self.layout == "NCHW" else pixels


def image_files(folder: Path) -> list[Path]:
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder", file=str(folder))
    return files


def input_batches(graph: Graph, data: Any, batch_size: int | Callable[[dict], int],
                  num_samples: int | None = None,
                  preprocessing: ImagePreprocessing | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` samples from ``data`` (see the module docstring), checked.

    ``batch_size`` may be a function of the first chunk's ``{input: sample shape}``, called once
    before the first batch (a default that depends on the size of the samples)."""
    if isinstance(batch_size, int) and batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    chunks = _chunks(graph, data, preprocessing)
    return _rebatched(graph, chunks, batch_size, num_samples)


def sample_count(graph: Graph, data: Any) -> int | None:
    """The number of samples ``data`` holds, when known without reading it (for the progress bar)."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return len(image_files(path))
        return None
    if isinstance(data, np.ndarray):
        return len(data) if data.ndim else None
    if isinstance(data, Mapping):
        lengths = {len(np.asarray(value)) for value in data.values() if np.ndim(value)}
        return lengths.pop() if len(lengths) == 1 else None
    return None


def _chunks(graph: Graph, data: Any,
            preprocessing: ImagePreprocessing | None) -> Iterator[dict[str, np.ndarray]]:
    """``data`` as a stream of ``{input: array}`` chunks of any sizes."""
    names = graph.input_names
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if path.is_dir():
            return _image_chunks(graph, path, preprocessing)
        if not path.is_file():
            raise DataError("calibration data not found", file=str(path))
        return iter([_named(graph, _read_npz(path), f"file {path}")])
    if isinstance(data, (np.ndarray, Mapping)):
        return iter([_named(graph, data, "the data")])
    if isinstance(data, Iterable):
        return (_named(graph, item, f"batch {i}") for i, item in enumerate(data))
    raise DataError(f"cannot calibrate on a {type(data).__name__}: give a numpy array, a dict of "
                    f"arrays by input name ({names}), an .npz path, an image folder, or an "
                    "iterable of batches (a Gluon DataLoader)")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the calibration data as .npz: {error}", file=str(path)) from None


def _image_chunks(graph: Graph, folder: Path,
                  preprocessing: ImagePreprocessing | None) -> Iterator[dict[str, np.ndarray]]:
    if preprocessing is None:
        raise DataError("an image folder needs its preprocessing declared: "
                        "preprocessing=ImagePreprocessing(resize=..., crop=..., mean=..., std=..., "
                        "layout=...)", file=str(folder))
    names = graph.input_names
    if len(names) != 1:
        raise DataError(f"an image folder feeds a one-input graph; this one has inputs {names}",
                        file=str(folder))
    files = image_files(folder)

    def generate():
        for path in files:
            yield {names[0]: preprocessing.apply(path)[np.newaxis]}
    return generate()


def _named(graph: Graph, item: Any, where: str) -> dict[str, np.ndarray]:
    """One chunk of data as ``{input name: numpy array}``."""
    names = graph.input_names
    if isinstance(item, (tuple, list)) and item and not isinstance(item[0], (int, float)):
        item = item[0]                      # (data, label) from a DataLoader
    if isinstance(item, Mapping):
        arrays = {str(name): _as_numpy(value) for name, value in item.items()}
        if len(arrays) == 1 and len(names) == 1 and names[0] not in arrays:
            arrays = {names[0]: next(iter(arrays.values()))}
        unknown = sorted(set(arrays) - set(names))
        missing = [name for name in names if name not in arrays]
        if unknown or missing:
            raise DataError(f"{where}: the arrays are named {sorted(arrays)} but the graph's "
                            f"inputs are {names}" + (f" (missing {missing})" if missing else ""))
        return arrays
    if len(names) != 1:
        raise DataError(f"{where}: the graph has inputs {names}; give a dict of arrays by name")
    return {names[0]: _as_numpy(item)}


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "asnumpy"):
        return value.asnumpy()
    return np.asarray(value)


def _checked(graph: Graph, chunk: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    lengths = set()
    for name, array in chunk.items():
        node = graph.node(name)
        expected_dtype = np.dtype(node.dtype or "float32")
        if array.dtype != expected_dtype:
            if array.dtype.kind == "f" and expected_dtype.kind == "f":
                array = chunk[name] = array.astype(expected_dtype)
            else:
                raise DataError(f"{where}: input {name!r} is {array.dtype} but the model takes "
                                f"{expected_dtype}", node=name)
        if array.ndim == 0:
            raise DataError(f"{where}: input {name!r} is a scalar; it needs a batch axis", node=name)
        expected = node.shape
        if expected is not None and tuple(array.shape[1:]) != tuple(expected[1:]):
            raise DataError(f"{where}: input {name!r} has samples of shape {tuple(array.shape[1:])} "
                            f"but the model takes {tuple(expected[1:])} (shape {tuple(expected)} "
                            "with the batch axis first)", node=name)
        lengths.add(len(array))
    if len(lengths) > 1:
        raise DataError(f"{where}: the inputs hold different numbers of samples: "
                        f"{ {name: len(a) for name, a in chunk.items()} }")
    return chunk


def _rebatched(graph: Graph, chunks: Iterator[dict[str, np.ndarray]],
               batch_size: int | Callable[[dict], int],
               num_samples: int | None) -> Iterator[dict[str, np.ndarray]]:
    pending: list[dict[str, np.ndarray]] = []
    pending_count = 0
    emitted = 0
    for index, chunk in enumerate(chunks):
        chunk = _checked(graph, chunk, f"calibration data (chunk {index})")
        if not isinstance(batch_size, int):
            batch_size = batch_size({name: array.shape[1:] for name, array in chunk.items()})
        pending.append(chunk)
        pending_count += len(next(iter(chunk.values())))
        while pending_count >= batch_size:
            batch, pending, pending_count = _take(pending, batch_size)
            if num_samples is not None:
                batch = {n: a[:num_samples - emitted] for n, a in batch.items()}
            emitted += len(next(iter(batch.values())))
            yield batch
            if num_samples is not None and emitted >= num_samples:
                return
    if pending_count:
        batch, _, _ = _take(pending, pending_count)
        if num_samples is not None:
            batch = {n: a[:num_samples - emitted] for n, a in batch.items()}
        if len(next(iter(batch.values()))):
            yield batch


def _take(pending: list[dict[str, np.ndarray]], size: int):
    """The first ``size`` samples of the pending chunks, and what is left."""
    taken, left, need = [], [], size
    for chunk in pending:
        length = len(next(iter(chunk.values())))
        if need == 0:
            left.append(chunk)
        elif length <= need:
            taken.append(chunk)
            need -= length
        else:
            taken.append({n: a[:need] for n, a in chunk.items()})
            left.append({n: a[need:] for n, a in chunk.items()})
            need = 0
    names = list(taken[0])
    batch = {n: taken[0][n] if len(taken) == 1 else np.concatenate([c[n] for c in taken])
             for n in names}
    return batch, left, sum(len(next(iter(c.values()))) for c in left)
