"""Per-layer sensitivity: how much the model's output degrades when one layer alone is quantized,
and the greedy float fallback built on it.

    ranking = sensitivity(graph, calibration, {"data": x})         # most sensitive first
    print(format_sensitivity(ranking))
    result = fallback_until(graph, calibration, {"data": x}, min_sqnr=35.0)
    result.graph, result.excluded                                   # the QDQ graph, layers kept float

A layer is quantized alone by :func:`graphopt.quantize.quantize` with every other quantizable
layer excluded: its inputs and output get their quantize/dequantize pairs, its weights int8, and
nothing else changes. The graph outputs are compared with the float model's on the same
inputs, in the same runtime:

- ``sqnr``: 10 log10(sum ref^2 / sum (ref - q)^2) over every graph output, in dB (infinite when
  the outputs are identical);
- ``relative_error``: max |ref - q| / max |ref| (:func:`graphopt.compare.relative_error`);
- ``top1_agreement``: the fraction of samples whose argmax over axis 1 of the first output is
  unchanged (for classifiers; ``None`` when that output has no class axis).

The runtime is onnxruntime (the QDQ graph exported by :func:`graphopt.to_onnx`, where single
quantized layers run as QLinearConv/QLinearMatMul) or MXNet (the QDQ graph's Custom ops, a float
simulation with the same quantize/dequantize arithmetic). With ``emit="mxnet"`` the model
measured is MXNet's own int8 model (:func:`graphopt.quantize.to_mxnet_int8`, oneDNN kernels),
whose error differs from the QDQ model's (see the README), so a budget meant for MXNet is
checked on MXNet.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from graphopt._progress import progress
from graphopt.compare import relative_error
from graphopt.errors import DataError
from graphopt.ir.graph import Graph
from graphopt.quantize.qdq import resolve_exclusions
from graphopt.quantize.recipe import Prepared, Quantized, RecipeOptions, quantize_with
from graphopt.quantize.rule_functions import QUANTIZABLE_OPS, WEIGHTED_OPS

RUNTIMES = ("onnxruntime", "mxnet")
EMITTERS = ("qdq", "mxnet")


@dataclass
class LayerSensitivity:
    """The model's output error with only ``layer`` quantized."""
    layer: str
    op: str
    sqnr: float
    relative_error: float
    top1_agreement: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OutputError:
    """A quantized model's outputs against float's (see the module docstring); ``accuracy`` is
    top-1 on labels, when given."""
    sqnr: float
    relative_error: float
    top1_agreement: float | None
    accuracy: float | None = None


def sqnr_db(reference: Sequence[np.ndarray], quantized: Sequence[np.ndarray]) -> float:
    """10 log10(sum ref^2 / sum (ref - q)^2) over all the arrays, in dB."""
    signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in reference)
    noise = sum(float(np.sum(np.square(np.asarray(r, np.float64) - np.asarray(q, np.float64))))
                for r, q in zip(reference, quantized))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def output_error(reference: Sequence[np.ndarray], quantized: Sequence[np.ndarray],
                 labels: np.ndarray | None = None) -> OutputError:
    """SQNR, relative error and top-1 agreement of ``quantized`` against ``reference`` (lists of
    graph outputs), and the accuracy of ``quantized`` against ``labels`` if given."""
    first, first_q = reference[0], quantized[0]
    classes = first.ndim >= 2 and first.shape[1] > 1
    agreement = float(np.mean(first.argmax(1) == first_q.argmax(1))) if classes else None
    accuracy = float(np.mean(first_q.argmax(1) == labels)) if classes and labels is not None else None
    return OutputError(sqnr_db(reference, quantized),
                       max(relative_error(r, q) for r, q in zip(reference, quantized)),
                       agreement, accuracy)


class _Runner:
    """Runs graphs on the fixed inputs in one runtime, outputs as a list in graph order."""

    def __init__(self, inputs: Mapping[str, np.ndarray], runtime: str):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        self.inputs, self.runtime = dict(inputs), runtime

    def __call__(self, graph: Graph) -> list[np.ndarray]:
        if self.runtime == "mxnet":
            from graphopt.runtime import MXNetModel
            return MXNetModel.from_graph(graph).forward(self.inputs)
        from graphopt.onnx import to_onnx
        from graphopt.runtime import run_onnx
        return list(run_onnx(to_onnx(graph), self.inputs).values())


def _inputs(graph: Graph, data) -> dict[str, np.ndarray]:
    if isinstance(data, Mapping):
        inputs = {name: np.asarray(value) for name, value in data.items()}
    elif len(graph.input_names) == 1:
        inputs = {graph.input_names[0]: np.asarray(data)}
    else:
        raise DataError(f"the graph has {len(graph.input_names)} inputs {graph.input_names}: give "
                        f"the data as {{input name: array}}")
    absent = [name for name in graph.input_names if name not in inputs]
    if absent or any(value.size == 0 for value in inputs.values()):
        raise DataError(f"no data for input(s) {absent or list(inputs)} (or an empty batch)")
    return inputs


def _quantizer(emit: str, graph: Graph, calibration, activations: str, per_channel: bool,
               bias_data: Any = None, reduce_range: bool | None = None
               ) -> Callable[[Iterable[str]], Quantized]:
    """``exclude -> Quantized``: ``graph`` quantized by the emitter ``emit``, but ``exclude``.
    For ``"qdq"`` the recipe's :func:`~graphopt.quantize.recipe.quantize_with` (biases corrected
    on ``bias_data`` when given, as ``graphopt quantize`` does; the float graph run over it once),
    for ``"mxnet"`` MXNet's int8 model (its Int8Report as the report)."""
    if emit == "qdq":
        prepared = Prepared(graph, calibration, bias_data)
        options = RecipeOptions(activations=activations, per_channel=per_channel,
                                reduce_range=reduce_range, bias_correction=bias_data is not None)
        return lambda exclude: quantize_with(prepared, options.excluding(exclude))
    if emit == "mxnet":
        from graphopt.quantize.mxnet_int8 import to_mxnet_int8
        return lambda exclude: Quantized(*to_mxnet_int8(
            graph, calibration, exclude=list(exclude),
            granularity="channel-wise" if per_channel else "tensor-wise"))
    raise ValueError(f"emit must be one of {EMITTERS}, not {emit!r}")


def _runtime_for(emit: str, runtime: str) -> str:
    return "mxnet" if emit == "mxnet" else runtime  # MXNet's int8 symbol runs in MXNet only


def quantizable_layers(graph: Graph, calibration, *, exclude: Iterable[str] = (),
                       emit: str = "qdq", activations: str = "uint8",
                       per_channel: bool = True) -> list[str]:
    """The layers the emitter puts in int8 when every layer may be quantized, but those in
    ``exclude``: the candidates of the sensitivity analysis, in graph order. For MXNet, a
    layer fused into a conv's oneDNN node (its add, its pooling never: pooling is its own node)
    is not a candidate of its own: it is int8 exactly when its conv is."""
    excluded = sorted(resolve_exclusions(graph, exclude, False))
    report = _quantizer(emit, graph, calibration, activations, per_channel)(excluded).report
    if emit == "qdq":
        return list(report.quantized)
    weighted_nodes = {layer.mxnet_node for layer in report.int8 if layer.op in WEIGHTED_OPS}
    return [layer.node for layer in report.int8 if layer.op in QUANTIZABLE_OPS
            and (layer.op in WEIGHTED_OPS or layer.mxnet_node not in weighted_nodes)]


def sensitivity(graph: Graph, calibration, data, *, layers: Iterable[str] | None = None,
                exclude: Iterable[str] = (), runtime: str = "onnxruntime", emit: str = "qdq",
                activations: str = "uint8", per_channel: bool = True, bias_data: Any = None,
                reduce_range: bool | None = None) -> list[LayerSensitivity]:
    """One :class:`LayerSensitivity` per layer, the most sensitive (lowest SQNR) first.

    ``data``: an array for a single-input graph, or ``{input name: array}``; a few batches'
    worth is enough (the ranking, not the absolute figures, is what matters). ``layers``: the
    layers to measure (default: :func:`quantizable_layers`, but ``exclude``). ``emit``:
    ``"qdq"`` (:func:`graphopt.quantize.quantize`, run in ``runtime``) or ``"mxnet"``
    (:func:`graphopt.quantize.to_mxnet_int8`, run in MXNet). ``activations``/``per_channel``
    as :func:`quantize`. ``bias_data``: the calibration data, to correct the biases of every
    model measured as ``graphopt quantize`` does (:mod:`graphopt.quantize.recipe`; QDQ only).
    One quantized run per layer.
    """
    inputs = _inputs(graph, data)
    run = _Runner(inputs, _runtime_for(emit, runtime))
    quantizer = _quantizer(emit, graph, calibration, activations, per_channel, bias_data,
                           reduce_range)
    candidates = quantizable_layers(graph, calibration, exclude=exclude, emit=emit,
                                    activations=activations, per_channel=per_channel)
    chosen = candidates if layers is None else list(layers)
    unknown = [name for name in chosen if name not in candidates]
    if unknown:
        raise DataError(f"cannot measure {unknown}: not layers quantize() puts in int8 here; "
                        f"those are {candidates}")
    reference = run(graph)
    results = []
    for layer in progress(chosen, desc="sensitivity", unit="layer"):
        others = [name for name in candidates if name != layer] + list(exclude)
        error = output_error(reference, run(quantizer(others).graph))
        results.append(LayerSensitivity(layer, graph.node(layer).op, error.sqnr,
                                        error.relative_error, error.top1_agreement))
    results.sort(key=lambda item: (item.sqnr, -item.relative_error))
    return results


def format_sensitivity(ranking: Sequence[LayerSensitivity]) -> str:
    lines = [f"{'layer':40s} {'op':16s} {'SQNR dB':>8s} {'rel.err':>9s} {'top-1':>6s}"]
    for item in ranking:
        agreement = "" if item.top1_agreement is None else f"{item.top1_agreement:6.3f}"
        lines.append(f"{item.layer:40s} {item.op:16s} {item.sqnr:8.2f} "
                     f"{item.relative_error:9.2e} {agreement:>6s}")
    return "\n".join(lines)


# --- the greedy float fallback ---------------------------------------------------------------

@dataclass
class FallbackResult:
    """The best quantized graph tried (:func:`best_step`: the first that met the budget, else
    the most accurate), the layers it keeps in float (most sensitive first), and every step's
    measured error (``steps[k]``: with the first ``k`` ranked layers in float)."""
    graph: Graph
    report: Any             # QuantizeReport (emit "qdq") or Int8Report (emit "mxnet")
    excluded: list[str]
    met: bool
    steps: list[OutputError] = field(default_factory=list)
    ranking: list[LayerSensitivity] = field(default_factory=list)
    bias_correction: Any = None   # the BiasCorrectionReport of ``graph``, if biases were corrected

    @property
    def best(self) -> int:
        """The index in ``steps`` of the model returned (= the number of layers it keeps float
        beyond ``exclude``)."""
        return len(self.excluded)


def best_step(steps: Sequence[OutputError], met: bool) -> int:
    """The index of the best model tried: the last one if the budget was met (the first that
    meets it), else the most accurate, then the highest SQNR, then the fewest layers in float."""
    if met:
        return len(steps) - 1
    def score(k):
        error = steps[k]
        return (error.accuracy if error.accuracy is not None else -1.0, error.sqnr, -k)
    return max(range(len(steps)), key=score)


def fallback_until(graph: Graph, calibration, data, *, min_sqnr: float | None = None,
                   max_accuracy_drop: float | None = None, labels: np.ndarray | None = None,
                   exclude: Iterable[str] = (), runtime: str = "onnxruntime", emit: str = "qdq",
                   activations: str = "uint8", per_channel: bool = True, bias_data: Any = None,
                   reduce_range: bool | None = None,
                   ranking: Sequence[LayerSensitivity] | None = None) -> FallbackResult:
    """Quantize everything, then keep the most sensitive layers in float one at a time (in the
    order of :func:`sensitivity`) until the budget holds: the outputs' SQNR against float
    at least ``min_sqnr`` dB and/or top-1 accuracy on ``labels`` at most ``max_accuracy_drop``
    (a fraction: 0.005 is half a point) below float's. ``met`` is False if even the last
    step (every ranked layer in float) misses it. ``ranking`` reuses a computed sensitivity.
    ``emit="mxnet"`` measures (and returns) MXNet's int8 model, with its Int8Report.
    ``bias_data``: as :func:`sensitivity`. The model returned is the best tried
    (:func:`best_step`), kept as it was measured: not rebuilt.
    """
    if min_sqnr is None and max_accuracy_drop is None:
        raise ValueError("give a budget: min_sqnr and/or max_accuracy_drop")
    if max_accuracy_drop is not None and labels is None:
        raise ValueError("max_accuracy_drop needs the labels of the data")
    inputs = _inputs(graph, data)
    run = _Runner(inputs, _runtime_for(emit, runtime))
    quantizer = _quantizer(emit, graph, calibration, activations, per_channel, bias_data,
                           reduce_range)
    if ranking is None:
        ranking = sensitivity(graph, calibration, inputs, exclude=exclude, runtime=runtime,
                              emit=emit, activations=activations, per_channel=per_channel,
                              bias_data=bias_data, reduce_range=reduce_range)
    reference = run(graph)
    float_accuracy = None
    if labels is not None:
        float_accuracy = output_error(reference, reference, np.asarray(labels)).accuracy

    def holds(error: OutputError) -> bool:
        return ((min_sqnr is None or error.sqnr >= min_sqnr) and
                (max_accuracy_drop is None or error.accuracy is None or float_accuracy is None
                 or error.accuracy >= float_accuracy - max_accuracy_drop - 1e-12))

    steps: list[OutputError] = []
    order = [item.layer for item in ranking]
    best: Quantized | None = None
    for k in range(len(order) + 1):
        quantized = quantizer(order[:k] + list(exclude))
        error = output_error(reference, run(quantized.graph),
                             None if labels is None else np.asarray(labels))
        steps.append(error)
        met = holds(error)
        if best_step(steps, met) == k:
            best = quantized
        if met:
            break
    chosen = best_step(steps, met)
    return FallbackResult(best.graph, best.report, order[:chosen], met, steps, list(ranking),
                          best.bias_correction)
