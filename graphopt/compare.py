"""Run an MXNet model and its ONNX export on the same inputs and say whether they agree.

This is ``graphopt compare``: a deployment gate (``CompareReport.ok``) and, with
``per_layer=True``, the answer to "where does my ONNX start to differ?".

The tolerance, for every compared tensor (graph outputs and, per layer, intermediates)::

    passed  <=>  same shape and dtype  and  max|onnx - mxnet| <= atol + rtol * max|mxnet|

With the default ``atol=0`` this is "relative error <= rtol", where the relative error is
``max|onnx - mxnet| / max|mxnet|``, the figure the issues state tolerances in (1e-5). ``atol``
is a floor for tensors whose reference is (near) zero, where no relative bound can hold. A NaN
or infinity on one side only counts as an infinite error; NaN against NaN and equal infinities
count as agreement. The top-1 agreement (argmax over the class axis) is reported for floating
outputs but does not decide pass/fail: two near-tied logits may swap within any tolerance.

``CompareReport.ok`` is about the graph outputs only: every MXNet output has an ONNX output and
passes. The per-layer findings are diagnostics and never change the verdict, so adding
``--per-layer`` does not change the exit code of the command line.

Per layer: every op output of the MXNet symbol (``symbol.get_internals()``) is matched by name
with an ONNX value (graphopt's converters give each MXNet node's final ONNX value the MXNet
tensor name, e.g. ``conv0_output``), both runtimes are asked for the matched values, and the
first one in topological order of the MXNet graph that fails the tolerance is reported with its
node, op and attributes. Values present on one side only are listed as unmatched, never as
failures. To keep memory bounded, the matched tensors are fetched in groups of at most
``memory_budget`` bytes (as the IR's shapes estimate them), each group by one MXNet run and one
onnxruntime run, and dropped once compared.

Float rounding accumulates with depth, so on a deep model a faithful export can cross a tight
tolerance somewhere in the middle (resnet50_v1 at rtol 1e-5, measured). The report therefore
also names the layer of largest *error growth* (its relative error over its inputs'): about
1-5 for rounding, orders of magnitude for a layer that computes something else.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from graphopt.detection import (DEFAULT_IOU, DEFAULT_SCORE_TOLERANCE, LAYER_NOTES,
                                DetectionReport, judge_detections)
from graphopt.errors import ShapeError
from graphopt.ir.graph import Graph, Node, Tensor, default_output_names, unique_output_names
from graphopt.mxnet_io.symbol_json import format_attrs
from graphopt.runtime import (MXNetModel, inferred_dtypes, load_onnx, onnx_session, random_input,
                              run_onnx)
from graphopt.schema import attr_or_default

DEFAULT_MEMORY_BUDGET = 256 << 20
"""Bytes of intermediate tensors fetched from each runtime at once by ``per_layer``."""

ROUNDING_GROWTH = 100.0
"""A layer whose relative error is under this many times its inputs' looks like float rounding:
a faithful resnet50_v1 export peaks at 5x (its 7x7 stem convolution, measured), a converter
that adds 0.5 to one LeNet pooling layer shows 1e6x."""

TOLERANCE_RULE = "max|onnx - mxnet| <= atol + rtol * max|mxnet|"

_MXNET_OUTPUT_NAME = re.compile(r"_output\d*\Z")

InputSpec = Mapping[str, Sequence[int] | np.ndarray]
"""``{input name: shape}`` or ``{input name: array}`` (the two may be mixed)."""

# --- the report ---------------------------------------------------------------------------------

@dataclass
class TensorComparison:
    """One tensor compared: a graph output, or (per layer) an op's output."""
    name: str
    shape: tuple[int, ...]
    onnx_shape: tuple[int, ...]
    dtype: str
    onnx_dtype: str
    max_abs_error: float
    max_abs_reference: float
    relative_error: float
    allowed_error: float
    passed: bool
    top1_agreement: float | None = None
    node: str | None = None
    op: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.__dataclass_fields__}
        out["shape"], out["onnx_shape"] = list(self.shape), list(self.onnx_shape)
        for key in ("max_abs_error", "relative_error"):
            out[key] = _json_number(out[key])
        return out


def _json_number(value: Any) -> Any:
    """JSON has no infinity or NaN: write them as the strings "inf" and "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


@dataclass
class Divergence:
    """A layer singled out by the per-layer comparison, and how its inputs fared.

    ``growth`` is its relative error over the largest relative error of its matched inputs
    (floored at the dtype's machine epsilon): about 1 where float rounding accumulates, orders
    of magnitude where the layer itself computes something else."""
    layer: TensorComparison
    node: str
    op: str
    attrs: dict[str, str]
    inputs: list[dict[str, Any]]
    growth: float
    onnx_node: str | None = None
    onnx_op: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op": self.op, "attrs": self.attrs,
                "tensor": self.layer.name, "onnx_node": self.onnx_node, "onnx_op": self.onnx_op,
                "growth": _json_number(self.growth), "layer": self.layer.to_dict(),
                "inputs": [{k: _json_number(v) for k, v in entry.items()} for entry in self.inputs]}


@dataclass
class CompareReport:
    """What :func:`compare` found. ``ok`` is the verdict; ``format()`` and ``to_dict()`` show it."""
    mxnet_model: str
    onnx_model: str
    inputs: dict[str, dict[str, Any]]
    rtol: float
    atol: float
    seed: int
    outputs: list[TensorComparison]
    missing_outputs: list[str] = field(default_factory=list)
    output_note: str | None = None
    per_layer: bool = False
    layers: list[TensorComparison] = field(default_factory=list)
    first_divergent: Divergence | None = None
    largest_growth: Divergence | None = None
    unmatched_mxnet: list[dict[str, str]] = field(default_factory=list)
    unmatched_onnx: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    detection: DetectionReport | None = None
    """Detection outputs matched as detections (see graphopt.detection); these outputs are then
    judged by the matching, not element-wise."""

    @property
    def ok(self) -> bool:
        return (bool(self.outputs) and not self.missing_outputs and not self.failed_outputs
                and (self.detection is None or self.detection.ok))

    @property
    def judged_as_detections(self) -> set[str]:
        return set(self.detection.layout.names) if self.detection else set()

    @property
    def failed_outputs(self) -> list[TensorComparison]:
        """Outputs outside the tolerance (those judged as detections are judged there)."""
        judged = self.judged_as_detections
        return [o for o in self.outputs if not o.passed and o.name not in judged]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "ok": self.ok, "mxnet_model": self.mxnet_model, "onnx_model": self.onnx_model,
            "tolerance": {"rtol": self.rtol, "atol": self.atol, "rule": TOLERANCE_RULE},
            "seed": self.seed, "inputs": self.inputs,
            "outputs": [o.to_dict() for o in self.outputs],
            "missing_outputs": self.missing_outputs, "output_note": self.output_note,
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }
        if self.detection is not None:
            out["detection"] = self.detection.to_dict()
        if self.per_layer:
            out["per_layer"] = {
                "first_divergent": self.first_divergent.to_dict() if self.first_divergent else None,
                "largest_growth": self.largest_growth.to_dict() if self.largest_growth else None,
                "layers": [layer.to_dict() for layer in self.layers],
                "unmatched_mxnet": self.unmatched_mxnet,
                "unmatched_onnx": self.unmatched_onnx,
            }
        return out

    def format(self) -> str:
        lines = [f"compare {self.mxnet_model} (MXNet) with {self.onnx_model} (onnxruntime)"]
        for name, spec in self.inputs.items():
            lines.append(f"  input {name}: {spec['dtype']} {tuple(spec['shape'])}, {spec['source']}")
        lines.append(f"  pass when {TOLERANCE_RULE}   (rtol {self.rtol:g}, atol {self.atol:g})")
        lines.append("")
        lines.append(f"  {'output':<36} {'shape':<18} {'max abs err':>11} {'rel err':>9} "
                     f"{'top-1':>7}  result")
        by_detection = self.judged_as_detections
        for o in self.outputs:
            top1 = "-" if o.top1_agreement is None else f"{100 * o.top1_agreement:.1f}%"
            result = "ok" if o.passed else "FAIL"
            if o.name in by_detection:
                result = f"({'same' if o.passed else 'differs'}: judged as detections below)"
            lines.append(f"  {o.name:<36} {_shape_text(o):<18} {o.max_abs_error:>11.3g} "
                         f"{o.relative_error:>9.3g} {top1:>7}  {result}"
                         + (f"  ({o.note})" if o.note else ""))
        for name in self.missing_outputs:
            lines.append(f"  {name:<36} missing from the ONNX model's outputs  FAIL")
        if self.output_note:
            lines.append(f"  note: {self.output_note}")
        if self.detection is not None:
            lines.append("")
            lines.extend(self.detection.format())
        if self.per_layer:
            lines.append("")
            lines.extend(self._format_layers())
        lines.append("")
        if self.ok:
            lines.append(f"result: OK, {len(self.outputs)} output(s) within tolerance"
                         + (", detections matched" if self.detection else ""))
        else:
            problems = []
            failed = len(self.failed_outputs) + len(self.missing_outputs)
            if failed or not self.outputs:
                problems.append(f"{failed} of {len(self.outputs) + len(self.missing_outputs)} "
                                f"output(s) outside tolerance or missing")
            if self.detection is not None and not self.detection.ok:
                problems.append("the detections differ")
            lines.append(f"result: FAIL, {'; '.join(problems)}")
        return "\n".join(lines)

    def _format_layers(self) -> list[str]:
        failing = sum(not layer.passed for layer in self.layers)
        lines = [f"per layer: {len(self.layers)} tensors matched by name, {failing} outside "
                 f"tolerance; unmatched: {len(self.unmatched_mxnet)} MXNet-only, "
                 f"{len(self.unmatched_onnx)} ONNX-only"]
        if self.first_divergent is None:
            lines.append("  no layer diverges")
        else:
            lines.extend(_format_divergence("first divergent layer", self.first_divergent))
            growth = self.largest_growth
            if growth is not None and growth.node != self.first_divergent.node:
                lines.extend(_format_divergence("largest error growth", growth))
            if growth is not None and growth.growth < ROUNDING_GROWTH:
                lines.append(f"  no layer multiplies the error by {ROUNDING_GROWTH:g} or more: this "
                             f"looks like float rounding accumulating, not a wrong layer")
        if self.unmatched_mxnet:
            shown = ", ".join(f"{u['tensor']} ({u['op']})" for u in self.unmatched_mxnet[:8])
            more = len(self.unmatched_mxnet) - 8
            lines.append("  MXNet-only (no ONNX value of that name: folded into the next layer, "
                         "fused or renamed by the exporter):")
            lines.append(f"    {shown}" + (f" and {more} more" if more > 0 else ""))
        if self.unmatched_onnx:
            more = len(self.unmatched_onnx) - 8
            lines.append(f"  ONNX-only: {', '.join(self.unmatched_onnx[:8])}"
                         + (f" and {more} more" if more > 0 else ""))
        return lines


def _format_divergence(title: str, divergence: Divergence) -> list[str]:
    layer = divergence.layer
    lines = [f"  {title}: {divergence.node} ({divergence.op}), tensor {layer.name}",
             f"    max abs err {layer.max_abs_error:.3g}, rel err {layer.relative_error:.3g} "
             f"(allowed abs err {layer.allowed_error:.3g}), {divergence.growth:.3g}x its inputs' "
             f"rel err" + (f"  ({layer.note})" if layer.note else "")]
    if divergence.attrs:
        lines.append(f"    attrs: {', '.join(f'{k}={v}' for k, v in divergence.attrs.items())}")
    if divergence.op in LAYER_NOTES:
        lines.append(f"    note: {LAYER_NOTES[divergence.op]}")
    for entry in divergence.inputs:
        if "relative_error" in entry:
            verdict = "ok" if entry["passed"] else "FAIL"
            lines.append(f"    input {entry['tensor']}: rel err {entry['relative_error']:.3g} ({verdict})")
        else:
            lines.append(f"    input {entry['tensor']}: {entry['kind']}")
    if divergence.onnx_op is not None:
        made_by = f"node {divergence.onnx_node!r}" if divergence.onnx_node else "an unnamed node"
        lines.append(f"    ONNX value made by {made_by} ({divergence.onnx_op})")
    return lines


def _shape_text(comparison: TensorComparison) -> str:
    if comparison.shape == comparison.onnx_shape:
        return str(tuple(comparison.shape))
    return f"{tuple(comparison.shape)}/{tuple(comparison.onnx_shape)}"


# --- the numbers ------------------------------------------------------------------------------

def top1_agreement(reference: np.ndarray, actual: np.ndarray) -> float | None:
    """Fraction of positions where both argmaxes over the class axis agree: the last axis of
    an (N, C) output, axis 1 (channels) of higher ranks. ``None`` for non-float tensors, ranks
    below 2 and single-class axes, where an argmax means nothing."""
    if reference.shape != actual.shape or reference.ndim < 2 or reference.dtype.kind != "f":
        return None
    axis = 1
    if reference.shape[axis] < 2 or reference.size == 0:
        return None
    return float(np.mean(np.argmax(reference, axis=axis) == np.argmax(actual, axis=axis)))


def compare_tensors(name: str, reference: np.ndarray, actual: np.ndarray, rtol: float,
                    atol: float, with_top1: bool = False) -> TensorComparison:
    """Errors of ``actual`` (onnxruntime) against ``reference`` (MXNet) under the module's rule.
    A shape or dtype mismatch fails; values of equal size are still compared (flat) to help."""
    reference, actual = np.asarray(reference), np.asarray(actual)
    onnx_shape = tuple(actual.shape)
    notes = []
    if reference.dtype != actual.dtype:
        notes.append(f"dtype {reference.dtype} in MXNet, {actual.dtype} in ONNX")
    if reference.shape != actual.shape:
        notes.append(f"shape {reference.shape} in MXNet, {onnx_shape} in ONNX")
    max_abs_reference = _max_abs_finite(reference)
    max_abs_error = math.inf
    if reference.size == actual.size:
        max_abs_error = _max_abs_difference(reference, actual.reshape(reference.shape))
    allowed = atol + rtol * max_abs_reference
    relative = _relative(max_abs_error, max_abs_reference)
    return TensorComparison(
        name=name, shape=tuple(reference.shape), onnx_shape=onnx_shape,
        dtype=str(reference.dtype), onnx_dtype=str(actual.dtype),
        max_abs_error=max_abs_error, max_abs_reference=max_abs_reference,
        relative_error=relative, allowed_error=allowed,
        passed=not notes and max_abs_error <= allowed,
        top1_agreement=top1_agreement(reference, actual) if with_top1 else None,
        note="; ".join(notes) or None)


def _compare_defined(graph: Graph, tensor: Tensor | None, name: str, reference: np.ndarray,
                     actual: np.ndarray, rtol: float, atol: float,
                     with_top1: bool = False) -> TensorComparison:
    """:func:`compare_tensors` on the part of the tensor MXNet defines. A ``_while_loop``'s step
    outputs have ``max_iterations`` rows, and MXNet never writes those after the last step it
    ran (they hold whatever the memory held); the ONNX export writes zero rows there. So only
    the rows before the ONNX output's trailing zero rows are compared."""
    node = graph.node(tensor.node) if tensor is not None and tensor.node in graph else None
    if node is None or node.op != "_while_loop" or tensor.index >= int(
            attr_or_default(node.op, node.attrs, "num_out_data")) or np.ndim(actual) == 0 \
            or np.shape(reference) != np.shape(actual):
        return compare_tensors(name, reference, actual, rtol, atol, with_top1)
    rows = len(actual)
    written = rows
    while written and not np.any(actual[written - 1]):
        written -= 1
    comparison = compare_tensors(name, reference[:written], actual[:written], rtol, atol,
                                 with_top1)
    comparison.shape = comparison.onnx_shape = tuple(np.shape(actual))
    comparison.note = "; ".join(filter(None, [comparison.note, (
        f"rows {written}..{rows - 1} not compared: a while loop's step outputs after its last "
        "step are undefined in MXNet") if written < rows else None]))
    return comparison


def relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |actual - reference| / max |reference|, the figure tolerances are stated in
    (infinite for a shape mismatch, or NaN/infinity on one side only)."""
    reference, actual = np.asarray(reference), np.asarray(actual)
    if reference.shape != actual.shape:
        return math.inf
    return _relative(_max_abs_difference(reference, actual), _max_abs_finite(reference))


def _relative(max_abs_error: float, max_abs_reference: float) -> float:
    if max_abs_reference > 0:
        return max_abs_error / max_abs_reference
    return 0.0 if max_abs_error == 0 else math.inf


def _max_abs_finite(array: np.ndarray) -> float:
    if array.size == 0:
        return 0.0
    magnitude = np.abs(array.astype(np.float64, copy=False))
    if not np.isfinite(magnitude).all():
        magnitude = magnitude[np.isfinite(magnitude)]
    return float(magnitude.max()) if magnitude.size else 0.0


def _max_abs_difference(reference: np.ndarray, actual: np.ndarray) -> float:
    """max |a - b| in float64; NaN or infinity on one side only is an infinite difference."""
    if reference.size == 0:
        return 0.0
    a = reference.astype(np.float64, copy=False)
    b = actual.astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN, handled below
        difference = np.abs(a - b)
    if not np.isfinite(difference).all():
        agree = (a == b) | (np.isnan(a) & np.isnan(b))
        difference[agree] = 0.0
        difference[np.isnan(difference)] = math.inf
    return float(difference.max())


# --- inputs -----------------------------------------------------------------------------------

def _read_data(data: str | os.PathLike | Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if data is None:
        return {}
    if isinstance(data, Mapping):
        return {name: np.asarray(value) for name, value in data.items()}
    path = Path(data)
    if not path.is_file():
        raise ShapeError("input data file not found", file=str(path))
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _onnx_input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Declared ONNX input shapes with symbolic dimensions (a dynamic batch) set to 1."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers or not value.type.tensor_type.HasField("shape"):
            continue
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else 1
                                   for d in value.type.tensor_type.shape.dim)
    return shapes


def _make_inputs(graph: Graph, inputs: InputSpec | None, data, model: onnx.ModelProto,
                 seed: int, dtypes: Mapping[str, str] | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """The input arrays, and a description of each (shape, dtype, where it came from).

    Arrays come from ``data`` (an .npz path or a dict; an archive holding one array feeds a
    one-input graph whatever its key), then from arrays in ``inputs``; the other inputs are
    random with shapes from ``inputs``, else the graph, else the ONNX model's declaration, and
    the dtype from ``dtypes``, else the graph's.
    """
    names = graph.input_names
    given = _read_data(data)
    source = {name: f"from {data}" if not isinstance(data, Mapping) else "given" for name in given}
    if len(given) == 1 and len(names) == 1 and names[0] not in given:
        (key, value), = given.items()
        given, source = {names[0]: value}, {names[0]: f"array {key!r} of {data}"}
    shapes = {}
    for name, value in (inputs or {}).items():
        if isinstance(value, np.ndarray):
            given.setdefault(name, value)
            source.setdefault(name, "given")
        else:
            shapes[name] = tuple(int(d) for d in value)
    dtypes = dict(dtypes or {})
    unknown = sorted(name for name in {*given, *shapes, *dtypes} if name not in names)
    if unknown:
        raise ShapeError(f"no graph input named {unknown}; the graph's inputs are {names}")
    declared = _onnx_input_shapes(model)
    rng = np.random.RandomState(seed)
    arrays, described = {}, {}
    for name in names:
        node = graph.node(name)
        dtype = np.dtype(dtypes.get(name) or node.dtype or "float32")
        if name in given:
            arrays[name] = np.asarray(given[name])
            if arrays[name].dtype != dtype:
                source[name] += f", cast from {arrays[name].dtype} to the graph's {dtype}"
                arrays[name] = arrays[name].astype(dtype)
        else:
            shape = shapes.get(name) or node.shape or declared.get(name)
            if shape is None:
                raise ShapeError(f"the shape of input {name!r} is unknown: give it, e.g. "
                                 f"inputs={{{name!r}: (1, 3, 224, 224)}}", node=name)
            arrays[name] = random_input(graph, name, tuple(shape), dtype, rng)
            source[name] = f"random (seed {seed})"
        described[name] = {"shape": list(arrays[name].shape), "dtype": str(arrays[name].dtype),
                           "source": source[name]}
    return arrays, described


# --- the models -------------------------------------------------------------------------------

def _load_graph(symbol_json, params, inputs: InputSpec | None = None, data=None
                ) -> tuple[Graph, MXNetModel, str]:
    """The IR (for names, ops, attributes, dtypes and shapes) and the MXNet model to run.
    From files, MXNet runs the symbol file itself, so the reference never depends on the IR.
    Some graphs cannot be loaded without input shapes (MXNet's partial shape inference fails
    on a ``topk`` over a reshape of unknown rank, as in GluonCV's CenterNet): they are loaded
    again with the shapes ``inputs`` and ``data`` give."""
    if isinstance(symbol_json, Graph):
        if params is not None:
            raise ValueError("a Graph holds its parameters: pass params=None with it")
        return symbol_json, MXNetModel.from_graph(symbol_json), symbol_json.name
    from graphopt.mxnet_io.load import load
    try:
        graph = load(symbol_json, params)
    except ShapeError:
        shapes = {name: np.shape(value) for name, value in _read_data(data).items()}
        shapes.update({name: np.shape(value) if isinstance(value, np.ndarray) else tuple(value)
                       for name, value in (inputs or {}).items()})
        if not shapes:
            raise
        graph = load(symbol_json, params, inputs=shapes)
    return graph, MXNetModel.from_files(symbol_json, params, graph), str(symbol_json)


def _with_shapes(graph: Graph, arrays: Mapping[str, np.ndarray], owned: bool) -> Graph:
    """``graph`` with every tensor's shape inferred for ``arrays`` (a copy if not ``owned``)."""
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    dtypes = {name: str(a.dtype) for name, a in arrays.items()}
    if all(graph.node(n).shape == s and graph.node(n).dtype == dtypes[n] for n, s in shapes.items()):
        return graph
    graph = graph if owned else graph.copy()
    graph.infer_shapes(shapes, dtypes)
    return graph


# --- compare --------------------------------------------------------------------------------

def compare(symbol_json: str | os.PathLike | Graph, params: str | os.PathLike | None,
            onnx_model: str | os.PathLike | onnx.ModelProto, inputs: InputSpec | None = None,
            data: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
            per_layer: bool = False, rtol: float = 1e-5, atol: float = 0.0, seed: int = 0,
            threads: int | None = None, dtypes: Mapping[str, str] | None = None,
            memory_budget: int = DEFAULT_MEMORY_BUDGET, detection: bool | None = None,
            iou: float = DEFAULT_IOU,
            score_tolerance: float = DEFAULT_SCORE_TOLERANCE) -> CompareReport:
    """Run the MXNet model and the ONNX model on the same inputs and compare their outputs.

    ``symbol_json``/``params``: the MXNet model's files, or a loaded :class:`Graph` (``params``
    then ``None``). ``onnx_model``: a path or a ``ModelProto``. ``inputs`` maps input names to
    shapes (``{"data": (1, 3, 224, 224)}``) or arrays; ``data`` is an .npz file or a dict of
    arrays. Inputs without an array are drawn from ``np.random.RandomState(seed)`` in the
    graph's input order, with the dtype ``dtypes`` gives, else the graph's. Tolerance: see the module docstring.
    ``per_layer`` also compares every intermediate tensor matched by name and reports the
    first divergent layer. ``threads`` sets onnxruntime's intra-op threads.
    ``detection``: compare detection outputs as detections (:mod:`graphopt.detection`, with
    ``iou`` and ``score_tolerance``): ``None`` does when the model sorts by score (box_nms,
    topk...) and its outputs have a detection layout, ``True`` insists, ``False`` never does.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    graph, mxnet_model, mxnet_label = _load_graph(symbol_json, params, inputs, data)
    model = load_onnx(onnx_model)
    onnx_label = (f"ONNX graph {model.graph.name!r}" if isinstance(onnx_model, onnx.ModelProto)
                  else str(onnx_model))
    arrays, described = _make_inputs(graph, inputs, data, model, seed, dtypes)
    graph = _with_shapes(graph, arrays, owned=not isinstance(symbol_json, Graph))
    seconds["load"] = time.perf_counter() - started

    started = time.perf_counter()
    reference = mxnet_model.run(arrays, "graph")
    seconds["mxnet"] = time.perf_counter() - started
    started = time.perf_counter()
    # from a path, onnxruntime reads the file itself (and any external data beside it)
    actual = run_onnx(onnx_session(model if isinstance(onnx_model, onnx.ModelProto)
                                   else onnx_model, threads), arrays)
    seconds["onnxruntime"] = time.perf_counter() - started

    pairs, missing, note = _pair_outputs(list(reference), list(actual))
    by_name = dict(zip(unique_output_names(graph.output_names), graph.outputs))
    outputs = [_compare_defined(graph, by_name.get(name), name, reference[name], actual[onnx_name],
                                rtol, atol, with_top1=True)
               for name, onnx_name in pairs]
    for comparison, (name, onnx_name) in zip(outputs, pairs):
        if onnx_name != name:
            comparison.note = "; ".join(filter(None, [comparison.note, f"ONNX output {onnx_name!r}"]))
    detections = judge_detections(graph, reference, {name: actual[onnx_name]
                                                     for name, onnx_name in pairs},
                                  detection, iou, score_tolerance)
    del reference, actual
    report = CompareReport(mxnet_model=mxnet_label, onnx_model=onnx_label, inputs=described,
                           rtol=rtol, atol=atol, seed=seed, outputs=outputs,
                           missing_outputs=missing, output_note=note, seconds=seconds,
                           detection=detections)
    if per_layer:
        started = time.perf_counter()
        _compare_layers(report, graph, mxnet_model, model, arrays, threads, memory_budget)
        seconds["per_layer"] = time.perf_counter() - started
    return report


def _pair_outputs(mxnet_names: list[str], onnx_names: list[str]):
    """Pair outputs by name; if names differ but the unpaired counts agree (an ONNX file from
    another exporter), pair the rest by position and say so."""
    pairs = [(name, name) for name in mxnet_names if name in onnx_names]
    left = [name for name in mxnet_names if name not in onnx_names]
    spare = [name for name in onnx_names if name not in mxnet_names]
    if left and len(left) == len(spare):
        pairs += list(zip(left, spare))
        return pairs, [], f"outputs {left} paired by position with ONNX outputs {spare}"
    return pairs, left, None


def _compare_layers(report: CompareReport, graph: Graph, mxnet_model: MXNetModel,
                    model: onnx.ModelProto, arrays: Mapping[str, np.ndarray],
                    threads: int | None, memory_budget: int) -> None:
    # A tensor is named in the ONNX model by the graph's output names, and in MXNet after its
    # node (the two differ for a node a rewrite made compute a removed node's value: a conv
    # with a BatchNorm folded in is ``bn_output`` in the ONNX, ``conv_output`` in MXNet).
    producers, in_mxnet_as = {}, {}
    in_mxnet = set(mxnet_model.internal_names)
    for node in graph.nodes():
        if not node.is_variable:
            mxnet_names = _mxnet_output_names(node, in_mxnet)
            for index, name in enumerate(node.output_names or mxnet_names):
                producers[name] = Tensor(node.name, index)
                in_mxnet_as[name] = mxnet_names[index]
    order = [name for name in producers if in_mxnet_as[name] in in_mxnet]
    covered = {in_mxnet_as[name] for name in order}
    order += [name for name in mxnet_model.internal_names if name not in covered]
    in_mxnet_as.update({name: name for name in order if name not in in_mxnet_as})
    onnx_producers = {value: node for node in model.graph.node for value in node.output}
    matched = [name for name in order if name in onnx_producers]
    report.per_layer = True
    report.unmatched_mxnet = [{"tensor": name, **_where(graph, producers.get(name))}
                              for name in order if name not in onnx_producers]
    named = set(order) | set(unique_output_names(graph.output_names))  # (x_1: a repeated output)
    report.unmatched_onnx = [value for value in onnx_producers  # ("a/b/..": inside a loop's body)
                             if value not in named and "/" not in value
                             and (_MXNET_OUTPUT_NAME.search(value)
                                                        or value in _onnx_outputs(model))]
    # the ONNX model's own types first: declaring the IR's type for a value that the ONNX
    # computes in another type would make onnxruntime refuse the model
    dtypes = {name: graph.tensor_type(producers[name]).dtype for name in matched
              if name in producers and graph.tensor_type(producers[name]).dtype}
    dtypes.update(inferred_dtypes(model))
    for group in _groups(matched, graph, producers, memory_budget):
        reference = mxnet_model.run(arrays, [in_mxnet_as[name] for name in group])
        reference = {name: reference.pop(in_mxnet_as[name]) for name in group}
        actual = run_onnx(model, arrays, outputs=group, threads=threads, dtypes=dtypes)
        for name in group:
            comparison = _compare_defined(graph, producers.get(name), name, reference.pop(name),
                                          actual.pop(name), report.rtol, report.atol)
            where = _where(graph, producers.get(name))
            comparison.node, comparison.op = where["node"], where["op"]
            report.layers.append(comparison)
    failing = [layer for layer in report.layers if not layer.passed]
    if failing:
        by_name = {layer.name: layer for layer in report.layers}
        growths = [_growth(layer, graph, by_name) for layer in report.layers]
        steepest = report.layers[int(np.argmax(growths))]
        for attribute, layer in (("first_divergent", failing[0]), ("largest_growth", steepest)):
            setattr(report, attribute, _divergence(layer, graph, by_name,
                                                   onnx_producers.get(layer.name)))


def _mxnet_output_names(node: Node, in_mxnet: set[str]) -> list[str]:
    """MXNet's names of the node's outputs. MXNet numbers them (``_output0``) when the op has
    more than one output counting its hidden ones (``box_nms`` has two, one visible) or names
    them itself (``SliceChannel`` always numbers): the numbered form is taken when only it
    exists."""
    names = default_output_names(node.name, node.op, node.num_outputs)
    numbered = [f"{node.name}_output{index}" for index in range(node.num_outputs)]
    if not any(name in in_mxnet for name in names) and any(name in in_mxnet for name in numbered):
        return numbered
    return names


def _onnx_outputs(model: onnx.ModelProto) -> set[str]:
    return {value.name for value in model.graph.output}


def _where(graph: Graph, tensor: Tensor | None) -> dict[str, str | None]:
    if tensor is None:
        return {"node": None, "op": None}
    return {"node": tensor.node, "op": graph.node(tensor.node).op}


def _groups(names: list[str], graph: Graph, producers: Mapping[str, Tensor],
            budget: int) -> list[list[str]]:
    """Consecutive groups of ``names`` whose estimated bytes stay within ``budget`` (a tensor
    bigger than the budget gets a group of its own)."""
    groups, current, used = [], [], 0
    for name in names:
        size = _estimated_bytes(graph, producers.get(name))
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        groups.append(current)
    return groups


def _estimated_bytes(graph: Graph, tensor: Tensor | None) -> int:
    tensor_type = None if tensor is None else graph.tensor_type(tensor)
    if tensor_type is None or tensor_type.shape is None:
        return 0
    itemsize = np.dtype(tensor_type.dtype or "float32").itemsize
    return int(np.prod(tensor_type.shape, dtype=np.int64)) * itemsize


def _input_names(graph: Graph, layer: TensorComparison) -> list[str]:
    if layer.node is None:
        return []
    return [graph.tensor_name(tensor) for tensor in graph.inputs_of(layer.node)]


def _growth(layer: TensorComparison, graph: Graph,
            by_name: Mapping[str, TensorComparison]) -> float:
    """``layer``'s relative error over its matched inputs' largest (see :class:`Divergence`)."""
    inherited = max((by_name[name].relative_error for name in _input_names(graph, layer)
                     if name in by_name), default=0.0)
    dtype = np.dtype(layer.dtype)
    floor = float(np.finfo(dtype).eps) if dtype.kind == "f" else float(np.finfo(np.float32).eps)
    if math.isinf(layer.relative_error):
        return 0.0 if math.isinf(inherited) else math.inf
    return layer.relative_error / max(inherited, floor)


def _divergence(layer: TensorComparison, graph: Graph, by_name: Mapping[str, TensorComparison],
                onnx_node: onnx.NodeProto | None) -> Divergence:
    inputs = []
    for tensor, name in zip(graph.inputs_of(layer.node) if layer.node else [],
                            _input_names(graph, layer)):
        if name in by_name:
            matched = by_name[name]
            inputs.append({"tensor": name, "relative_error": matched.relative_error,
                           "max_abs_error": matched.max_abs_error, "passed": matched.passed})
        else:
            kind = {"param": "parameter", "aux": "auxiliary state", "input": "graph input",
                    "label": "label"}.get(graph.node(tensor.node).kind, "not matched in ONNX")
            inputs.append({"tensor": name, "kind": kind})
    node = graph.node(layer.node) if layer.node else Node(name=layer.name, op="?")
    attrs = {k: v for k, v in format_attrs(node).items() if not k.startswith("__")}
    return Divergence(layer=layer, node=node.name, op=node.op, attrs=attrs, inputs=inputs,
                      growth=_growth(layer, graph, by_name),
                      onnx_node=onnx_node.name if onnx_node is not None else None,
                      onnx_op=onnx_node.op_type if onnx_node is not None else None)
