"""The post-training int8 recipe, in one place: every path that quantizes a model
(``graphopt quantize``, the pipeline's quantize step, :func:`~graphopt.quantize.sensitivity` and
:func:`~graphopt.quantize.fallback_until`) calls these two functions, so the same options give
the same model whichever path made it.

    options = RecipeOptions(method="entropy", equalize=True, bias_correction=True)
    prepared = prepare(graph, "calib.npz", options)          # fold, equalize, calibrate
    quantized = quantize_with(prepared, options)              # QDQ, then bias correction
    quantized.graph, quantized.report, quantized.bias_correction

:func:`prepare` works on the float model: the cleanup and fold rules (the int8 kernels want one
conv, not a conv and a BatchNorm), cross-layer equalization of conv -> (ReLU) -> conv pairs
(:func:`graphopt.quantize.equalize`), then calibration. :func:`quantize_with` inserts the
quantize/dequantize pairs (:func:`graphopt.quantize.quantize`) and folds the mean error of the
rounded weights on the calibration data into the int32 biases
(:func:`graphopt.quantize.correct_bias`). A calibration table (``.json`` of ``graphopt
calibrate``) was computed on a graph that was not equalized, and carries no data to correct biases
with: with a table both steps are skipped (``Prepared.data`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from graphopt.ir.graph import Graph


@dataclass(frozen=True)
class RecipeOptions:
    """The recipe's settings; the defaults are ``graphopt quantize``'s. ``exclude``: node names
    or op types kept in float; ``reduce_range``: 7-bit weights (None: if this CPU needs them)."""
    method: str = "entropy"
    num_samples: int | None = None
    activations: str = "uint8"
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    exclude_first_last: bool = False
    reduce_range: bool | None = None
    fold: bool = True
    equalize: bool = True
    bias_correction: bool = True

    def excluding(self, names: Iterable[str]) -> "RecipeOptions":
        """These options with ``names`` kept in float as well (the float fallback's steps)."""
        return replace(self, exclude=tuple(names) + tuple(self.exclude))


@dataclass
class Prepared:
    """The float graph the int8 model is made from (folded, equalized), its calibration, and
    the calibration data (None for a calibration table: then no bias correction)."""
    graph: Graph
    calibration: Any
    data: Any
    equalize_rewrites: int | None = None     # conv pairs equalized (None: not run)
    # num_samples -> input_means of every weighted layer: the float graph is run over the data
    # once, however many models are bias-corrected (sensitivity, the fallback's steps)
    _input_means: dict = field(default_factory=dict, repr=False)

    def input_means(self, num_samples: int | None):
        """:func:`graphopt.quantize.bias_correction.input_means` of every weighted layer."""
        if num_samples not in self._input_means:
            from graphopt.quantize.bias_correction import input_means
            from graphopt.quantize.rule_functions import WEIGHTED_OPS
            layers = [node.name for node in self.graph.op_nodes() if node.op in WEIGHTED_OPS]
            self._input_means[num_samples] = input_means(self.graph, self.data, layers,
                                                         num_samples=num_samples)
        return self._input_means[num_samples]


@dataclass
class Quantized:
    """A QDQ graph, its QuantizeReport and, when biases were corrected, the BiasCorrectionReport."""
    graph: Graph
    report: Any
    bias_correction: Any = None

    def to_dict(self) -> dict:
        summary = self.report.to_dict()
        if self.bias_correction is not None:
            summary["bias_correction"] = self.bias_correction.to_dict()
        return summary


def is_table(source: Any) -> bool:
    """``source`` is a calibration table written by ``graphopt calibrate``."""
    return isinstance(source, str) and source.endswith(".json")


def load_calibration(graph: Graph, source: Any, method: str, num_samples: int | None):
    """A calibration table read from ``source`` (``.json``) or computed over it."""
    from graphopt.quantize.calibrate import Calibration, calibrate
    if is_table(source):
        table = Calibration.load(source)
        return table if table.method == method else table.with_method(method)
    return calibrate(graph, source, method=method, num_samples=num_samples)


def prepare(graph: Graph, source: Any, options: RecipeOptions = RecipeOptions()) -> Prepared:
    """Fold (``options.fold``), equalize (``options.equalize``, not with a table) and calibrate
    ``graph`` on ``source`` (anything :func:`graphopt.quantize.calibrate` takes, or a table
    ``.json``). ``source`` None: dynamic quantization, nothing calibrated (only the fold).
    ``graph`` is not changed."""
    import graphopt
    if options.fold:
        graph, _ = graphopt.rewrite(graph)
    if source is None:
        return Prepared(graph, None, None)
    from_data = not is_table(source)
    equalized = None
    if options.equalize and from_data:
        from graphopt.quantize.equalize import equalize
        graph, equalize_report = equalize(graph)
        equalized = sum(attempt.outcome == "applied" for attempt in equalize_report.attempts)
    calibration = load_calibration(graph, source, options.method, options.num_samples)
    return Prepared(graph, calibration, source if from_data else None, equalized)


def quantize_with(prepared: Prepared, options: RecipeOptions = RecipeOptions()) -> Quantized:
    """The QDQ model of ``prepared.graph`` (:func:`graphopt.quantize.quantize` with the
    options), its biases corrected on ``prepared.data`` when ``options.bias_correction`` and
    there is data; without a calibration, :func:`graphopt.quantize.quantize_dynamic`'s model.
    Neither graph is changed."""
    from graphopt.quantize.qdq import quantize, quantize_dynamic
    if prepared.calibration is None:
        return Quantized(*quantize_dynamic(prepared.graph, per_channel=options.per_channel,
                                           exclude=options.exclude,
                                           reduce_range=options.reduce_range))
    qgraph, report = quantize(prepared.graph, prepared.calibration,
                              activations=options.activations, per_channel=options.per_channel,
                              exclude=options.exclude,
                              exclude_first_last=options.exclude_first_last,
                              reduce_range=options.reduce_range)
    bias_report = None
    if options.bias_correction and prepared.data is not None:
        from graphopt.quantize.bias_correction import correct_bias
        qgraph, bias_report = correct_bias(qgraph, prepared.graph, prepared.data,
                                           num_samples=options.num_samples,
                                           means=prepared.input_means(options.num_samples))
    return Quantized(qgraph, report, bias_report)


__all__ = ["RecipeOptions", "Prepared", "Quantized", "prepare", "quantize_with",
           "load_calibration", "is_table"]
