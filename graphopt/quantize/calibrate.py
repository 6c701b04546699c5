"""Post-training calibration: run the model on sample data, keep per-tensor statistics, choose ranges.

    cal = graphopt.calibrate(graph, data, method="entropy")     # runs MXNet once over the data
    cal.range("conv0_output")                  # (lo, hi) for an asymmetric uint8 grid
    cal.range("conv0_output", symmetric=True)  # (-t, t) for symmetric int8
    cal.with_method("mse").range(...)          # other ranges from the same histograms, no rerun
    cal.save("table.json"); graphopt.quantize.Calibration.load("table.json")

The model runs in MXNet unfused (:class:`graphopt.runtime.MXNetModel`, as ``compare`` does: a
fused node's intermediates are not the graph's), at the data's batch size, and every float
tensor it computes (by default the graph inputs and every op output) goes through a
:class:`~graphopt.quantize.histogram.TensorHistogram`: exact min/max plus a histogram on a
power-of-two grid whose counts do not depend on the batching. Memory is the model, one batch of
activations and a fixed-size histogram per tensor, whatever the number of samples (onnxruntime's
entropy and percentile calibrators keep every activation of every sample).

Bad data: a wrong shape or dtype is a :class:`~graphopt.errors.DataError` naming the input before
the model runs; no sample at all is a DataError; fewer than :data:`FEW_SAMPLES` samples is a
:class:`CalibrationWarning`; NaN or infinity in a tensor is a
:class:`~graphopt.errors.CalibrationError` naming the tensor and the batch; a tensor that is
constant over the data (a dead ReLU, scale 0) is a CalibrationWarning and gets a safe range.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from graphopt._files import atomic_write_bytes
from graphopt._progress import progress
from graphopt.errors import CalibrationError, DataError, ShapeError
from graphopt.ir.graph import Graph, Tensor, default_output_names
from graphopt.quantize import ranges
from graphopt.quantize.data import ImagePreprocessing, input_batches, sample_count
from graphopt.quantize.histogram import DEFAULT_BINS_PER_SIDE, TensorHistogram

METHODS = ranges.METHODS
FEW_SAMPLES = 32          # below this, ranges rarely represent the data: warn
BATCH_BYTES = 128 << 20   # default batch size: about this many bytes of activations per batch
MAX_DEFAULT_BATCH = 64
CONSTANT_RANGE = (0.0, 1.0)  # a tensor that was 0 everywhere: any hi > 0 keeps 0 exact
FORMAT = "graphopt-calibration"
FORMAT_VERSION = 1


class CalibrationWarning(UserWarning):
    """Calibration ran, but some ranges may not serve: too few samples, constant tensors."""


@dataclass
class Calibration:
    """Per-tensor statistics of a calibration run and the ranges chosen from them.

    ``method`` chooses the ranges (:data:`METHODS`); ``options`` holds the method's settings
    (``percentile``). Tensors are keyed by MXNet name (``graph.tensor_name``)."""

    method: str
    histograms: dict[str, TensorHistogram]
    options: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    batch_size: int | None = None
    _ranges: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.method not in METHODS:
            raise CalibrationError(f"unknown calibration method {self.method!r}; choose one of "
                                   f"{', '.join(METHODS)}")
        if self.method != "minmax" and any(h.counts is None and h.count and h.minimum < h.maximum
                                           for h in self.histograms.values()):
            raise CalibrationError(f"method {self.method!r} needs histograms, and this table was "
                                   "calibrated with minmax only: calibrate again with "
                                   "histograms=True (or another method)")

    @property
    def names(self) -> list[str]:
        """The tensors calibrated, in the model's order."""
        return list(self.histograms)

    def _histogram(self, name: str) -> TensorHistogram:
        try:
            return self.histograms[name]
        except KeyError:
            close = [n for n in self.histograms if name in n or n in name][:5]
            raise CalibrationError(f"no calibrated tensor named {name!r}"
                                   + (f"; similar: {close}" if close else
                                      f"; the table holds {len(self.histograms)} tensors such as "
                                      f"{self.names[:3]}"), node=name) from None

    def range(self, name: str, symmetric: bool = False,
              steps: float | None = None) -> tuple[float, float]:
        """The clipping range ``(lo, hi)`` of tensor ``name``, chosen by :attr:`method`.

        ``lo <= 0 <= hi`` always (zero must be exact on the grid); ``lo == 0.0`` for a
        one-sided tensor. ``symmetric``: for a symmetric int8 grid, ``(-t, t)`` with ``t``
        chosen for 127 steps per side; else for an asymmetric uint8 grid over ``[lo, hi]``.
        ``steps`` overrides the steps a one-sided or symmetric range has over ``[0, t]``
        (255 by default one-sided; 127 suits a one-sided tensor on a symmetric int8 grid)."""
        key = (name, bool(symmetric), steps)
        found = self._ranges.get(key)
        if found is None:
            found = self._ranges[key] = self._choose(name, bool(symmetric), steps)
        return found

    def _choose(self, name: str, symmetric: bool, steps: float | None) -> tuple[float, float]:
        histogram = self._histogram(name)
        if histogram.count == 0:
            return CONSTANT_RANGE
        if histogram.minimum == histogram.maximum:
            value = histogram.minimum
            if value == 0.0:
                return CONSTANT_RANGE
            if value > 0.0:
                return 0.0, float(value)
            return (float(value), -float(value)) if symmetric else (float(value), 0.0)
        lo, hi = ranges.choose_range(histogram, self.method, symmetric,
                                     percentile=self.options.get("percentile",
                                                                 ranges.DEFAULT_PERCENTILE),
                                     steps=steps)
        return float(lo), float(hi)

    def stats(self, name: str) -> dict[str, Any]:
        """What was observed of tensor ``name``: min, max, one_sided, constant, count of values,
        zeros, nan_count, inf_count, and the histogram's bin width."""
        histogram = self._histogram(name)
        return {"min": histogram.minimum if histogram.count else None,
                "max": histogram.maximum if histogram.count else None,
                "one_sided": histogram.one_sided,
                "constant": histogram.count > 0 and histogram.minimum == histogram.maximum,
                "count": histogram.count, "zeros": histogram.zeros,
                "nan_count": histogram.nan_count, "inf_count": histogram.inf_count,
                "bin_width": histogram.bin_width if histogram.exponent is not None else None}

    def with_method(self, method: str, **options) -> "Calibration":
        """The same statistics with ranges chosen by ``method`` (and ``percentile=...``);
        the model does not run again."""
        return Calibration(method, self.histograms, {**self.options, **options},
                           self.samples, self.batch_size)

    # --- the JSON table ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        tensors = {}
        for name, histogram in self.histograms.items():
            tensors[name] = {"range": list(self.range(name)),
                             "symmetric_range": list(self.range(name, symmetric=True)),
                             "histogram": histogram.to_dict()}
        return {"format": FORMAT, "version": FORMAT_VERSION, "method": self.method,
                "options": self.options, "samples": self.samples, "batch_size": self.batch_size,
                "tensors": tensors}

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON (atomically: a failure leaves no half file). Ranges and the
        histograms are both written, so :meth:`load` gives the same ranges and ``with_method``
        still works on a loaded table."""
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        atomic_write_bytes(path, text.encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        try:
            with open(path, "rb") as handle:
                record = json.loads(handle.read())
        except FileNotFoundError:
            raise CalibrationError("calibration table not found", file=str(path)) from None
        except (OSError, ValueError) as error:
            raise CalibrationError(f"cannot read the calibration table: {error}",
                                   file=str(path)) from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise CalibrationError(f"not a graphopt calibration table (no \"format\": \"{FORMAT}\")",
                                   file=str(path))
        if record.get("version") != FORMAT_VERSION:
            raise CalibrationError(f"calibration table version {record.get('version')} is not "
                                   f"the one this graphopt reads ({FORMAT_VERSION})", file=str(path))
        try:
            histograms = {name: TensorHistogram.from_dict(entry["histogram"])
                          for name, entry in record["tensors"].items()}
            table = cls(record["method"], histograms, dict(record.get("options") or {}),
                        int(record.get("samples") or 0), record.get("batch_size"))
            for name, entry in record["tensors"].items():
                table._ranges[(name, False, None)] = tuple(float(v) for v in entry["range"])
                table._ranges[(name, True, None)] = tuple(float(v) for v in entry["symmetric_range"])
        except (KeyError, TypeError, ValueError) as error:
            raise CalibrationError(f"malformed calibration table: {error!r}", file=str(path)) from None
        return table


# --- running the model ---------------------------------------------------------------------------

def calibrate(graph: Graph, data: Any, method: str = "entropy", *, batch_size: int | None = None,
              num_samples: int | None = None, tensors: Iterable[str] | None = None,
              percentile: float = ranges.DEFAULT_PERCENTILE, num_bins: int = 2 * DEFAULT_BINS_PER_SIDE,
              histograms: bool | None = None,
              preprocessing: ImagePreprocessing | None = None) -> Calibration:
    """Run ``graph`` in MXNet over ``data`` and return the :class:`Calibration` table.

    ``data``: a numpy array, a dict of arrays by input name, an ``.npz`` path, an image folder
    (with ``preprocessing``), or an iterable of batches (a Gluon DataLoader); see
    :mod:`graphopt.quantize.data`. ``batch_size``: samples per MXNet run (default: as many as
    keep about 128 MB of activations, at most 64). The statistics of given values do not depend
    on it (exact min/max, bit-identical histograms); MXNet's own FullyConnected (GEMM) rounds
    differently at batch sizes below about 32, so tensors computed from one can differ in their
    last bits (measured on the digits models: minmax within 1e-6, other ranges within one bin).
    ``num_samples``: stop after this many. ``tensors``: MXNet names to calibrate (default: the
    float graph inputs and every float op output). ``num_bins``: bins of each histogram (a power
    of two; see :mod:`graphopt.quantize.histogram`). ``histograms``: keep histograms (default: for
    every method but minmax; needed to switch to another method with :meth:`Calibration.with_method`).
    """
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of "
                               f"{', '.join(METHODS)}")
    if not 0.0 < percentile <= 100.0:
        raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
    if num_bins < 4 or num_bins & (num_bins - 1):
        raise CalibrationError(f"num_bins must be a power of two >= 4, got {num_bins}")
    if num_samples is not None and num_samples < 1:
        raise DataError(f"num_samples must be at least 1, got {num_samples}")
    from graphopt.runtime import MXNetModel
    keep_histograms = method != "minmax" if histograms is None else histograms
    model = MXNetModel.from_graph(graph)
    names = _tensor_names(graph, model, tensors)
    mxnet_names = _mxnet_names(graph)
    graphopt_names = {mxnet: name for name, mxnet in mxnet_names.items()}
    chosen_batch_size = batch_size
    if batch_size is None:
        def batch_size(sample_shapes):
            nonlocal chosen_batch_size
            chosen_batch_size = _default_batch_size(model, mxnet_names, names, sample_shapes)
            return chosen_batch_size
    inputs = [name for name in names if name in graph.input_names]
    outputs = [name for name in names if name not in graph.input_names]
    statistics = {name: TensorHistogram(bins_per_side=num_bins // 2) for name in names}
    known = sample_count(graph, data)
    if known is not None and num_samples is not None:
        known = min(known, num_samples)
    batches = input_batches(graph, data, batch_size, num_samples, preprocessing)
    samples = 0
    bar = progress(batches, desc="calibrate", total=known, unit="sample")
    for index, batch in enumerate(bar):
        values = _run(model, batch, [mxnet_names.get(n, n) for n in outputs]) if outputs else {}
        values = {graphopt_names.get(n, n): v for n, v in values.items()}
        values.update({name: batch[name] for name in inputs})
        first_sample = samples
        samples += len(next(iter(batch.values())))
        bar.update(samples - first_sample - 1)   # counted in samples (tqdm counts 1 per batch)
        for name in names:
            array = values[name]
            histogram = statistics[name]
            if not histogram.add_extremes(array):
                raise CalibrationError(
                    f"tensor {name!r} holds {histogram.nan_count} NaN and {histogram.inf_count} "
                    f"infinite values in batch {index} (samples {first_sample}.."
                    f"{samples - 1}); check the data and the weights feeding it",
                    node=_node_of(graph, name))
            if keep_histograms:
                histogram.add_histogram(array)
        values = array = None   # freed before the next batch runs: one batch in memory
    if samples == 0:
        raise DataError("no calibration samples: the data is empty")
    if samples < FEW_SAMPLES:
        warnings.warn(f"calibrating on {samples} samples; ranges from fewer than {FEW_SAMPLES} "
                      "rarely represent the data (100 to 1000 are usual)", CalibrationWarning,
                      stacklevel=2)
    constant = [name for name, h in statistics.items() if h.count and h.minimum == h.maximum]
    if constant:
        warnings.warn(f"{len(constant)} tensor(s) were constant over the calibration data "
                      f"(scale 0 if quantized from their range; zero ones get range "
                      f"{CONSTANT_RANGE}): {constant[:10]}", CalibrationWarning, stacklevel=2)
    return Calibration(method, statistics, {"percentile": percentile}, samples, chosen_batch_size)


def _run(model, batch: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    """MXNet's values of ``outputs`` on ``batch``. Inputs that do not fit the model (whose
    input shapes were not declared, so could not be checked before) are a DataError."""
    try:
        return model.run(batch, outputs)
    except ShapeError as error:
        shapes = {name: tuple(array.shape) for name, array in batch.items()}
        if len(shapes) == 1:
            (name, shape), = shapes.items()
            given, node = f"input {name!r} of shape {shape} does not", name
        else:
            given, node = f"inputs of shapes {shapes} do not", None
        raise DataError(f"calibration data: {given} fit the model: {error.message}",
                        node=node) from None


def _mxnet_names(graph: Graph) -> dict[str, str]:
    """graphopt tensor name -> MXNet's name of that output in ``to_symbol(graph)``: MXNet names
    an output after its node, while a rewrite keeps the name of the tensor a node now computes
    (a conv with a BatchNorm folded in writes ``bn_output``)."""
    return {graph.tensor_name(Tensor(node.name, i)): default_output_names(node.name, node.op,
                                                                          node.num_outputs)[i]
            for node in graph.op_nodes() for i in range(node.num_outputs)}


def _tensor_names(graph: Graph, model, tensors: Iterable[str] | None) -> list[str]:
    """The float tensors to calibrate (graphopt names), in the model's order."""
    types = _float_tensors(graph)
    graphopt_name = {mxnet: name for name, mxnet in _mxnet_names(graph).items()}
    internal = {graphopt_name.get(name, name) for name in model.internal_names}
    default = [name for name in graph.input_names if name in types] + \
              [graphopt_name.get(name, name) for name in model.internal_names
               if graphopt_name.get(name, name) in types]
    if tensors is None:
        return default
    wanted = list(dict.fromkeys(tensors))
    unknown = [name for name in wanted if name not in internal and name not in graph.input_names]
    if unknown:
        raise CalibrationError(f"the model computes no tensor named {unknown[:5]}; its tensors "
                               f"are named like {default[:3]}")
    not_float = [name for name in wanted if name not in types]
    if not_float:
        raise CalibrationError(f"tensors {not_float[:5]} are not float: only float tensors are "
                               "calibrated")
    return wanted


def _float_tensors(graph: Graph) -> dict[str, tuple]:
    """MXNet name -> shape of every float tensor the graph computes or takes as input."""
    found = {}
    for node in graph.nodes():
        if node.is_variable and node.kind != "input":
            continue
        for index, tensor_type in enumerate(node.outputs):
            if tensor_type.dtype is None or np.dtype(tensor_type.dtype).kind == "f":
                found[graph.tensor_name(Tensor(node.name, index))] = tensor_type.shape
    return found


def _default_batch_size(model, mxnet_names: dict[str, str], names: list[str],
                        sample_shapes: dict[str, tuple]) -> int:
    """As many samples as keep the activations of a batch near :data:`BATCH_BYTES` (counted
    twice: MXNet's arrays and their numpy copies); the sizes come from MXNet's shape inference
    at batch 1 with the data's sample shapes (the graph may not know its input shapes)."""
    internals = model.symbol.get_internals()
    try:
        _, shapes, _ = internals.infer_shape_partial(
            **{name: (1, *shape) for name, shape in sample_shapes.items()})
    except Exception:   # MXNet's own error types; the first run says what is wrong
        return 1
    wanted = {mxnet_names.get(name, name) for name in names}
    per_sample = sum(4 * int(np.prod(shape, dtype=np.int64))
                     for name, shape in zip(internals.list_outputs(), shapes)
                     if name in wanted and shape)
    return int(max(1, min(MAX_DEFAULT_BATCH, BATCH_BYTES // max(1, 2 * per_sample))))


def _node_of(graph: Graph, name: str) -> str | None:
    for node in graph.nodes():
        for index in range(node.num_outputs):
            if graph.tensor_name(Tensor(node.name, index)) == name:
                return node.name
    return None
