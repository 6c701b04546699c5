"""MXNet int8: a float graph as the symbol + params that MXNet 1.9.1 runs with its oneDNN int8
kernels, the thresholds taken from graphopt's calibration.

MXNet's own machinery does the work, in the order ``mx.contrib.quantization.quantize_net_v2``
uses it; only the thresholds come from us instead of MXNet's collectors:

1. ``get_backend_symbol("MKLDNN_QUANTIZE")`` fuses Convolution [+ BatchNorm] [+ elemwise_add]
   [+ ReLU] into ``_sg_mkldnn_conv`` and FullyConnected into ``_sg_mkldnn_fully_connected``
   (float still). A BatchNorm therefore need not be folded first.
2. ``_quantize_symbol`` puts ``_contrib_quantize_v2`` / ``_contrib_requantize`` /
   ``_contrib_dequantize`` around every op MXNet has an int8 kernel for, and names the tensors
   it needs a threshold for: the graph inputs it quantizes (``data``) and the output of each
   quantized node, named after the *fused* node (``sg_mkldnn_conv_bn_act_0_output``).
3. Those names are mapped back to graphopt's tensors: a fused node computes what the last node
   of its subgraph computed (its head: ``relu0_fwd`` for conv+bn+relu), so its threshold is
   the calibrated range of ``relu0_fwd_output``. ``_calibrate_quantized_sym`` writes them as
   ``min_calib_range``/``max_calib_range`` attributes.
4. ``get_backend_symbol("MKLDNN_QUANTIZE")`` again folds each requantize into the int8 conv
   before it, and lets the last FullyConnected return float (``enable_float_output``).

MXNet's choices that stay, and that the report states:

- thresholds are per tensor; with ``quantized_dtype="auto"`` a tensor whose range starts at 0
  is uint8 over [0, hi], any other int8 over [-max|x|, max|x|] (symmetric);
- a quantized ``_sg_mkldnn_conv``/``_sg_mkldnn_fully_connected`` keeps float32 weights in the
  params file and quantizes them when it is first run: MXNet's int8 model is not smaller on
  disk (the ONNX QDQ model is). Conv weights are per output channel whatever ``granularity``
  says (oneDNN's verbose log shows per-channel output scales either way); ``granularity``
  decides for FullyConnected (measured on an AlexNet-shaped model: 31.4 dB channel-wise
  against 29.5 dB tensor-wise);
- an op without an int8 kernel in MXNet 1.9.1 (softmax, ...) runs in float between a
  dequantize and a quantize.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import mxnet as mx
from mxnet.contrib import quantization as mx_quantization

from graphopt.errors import CalibrationError, DataError, GraphoptError
from graphopt.ir.graph import Graph, Tensor
from graphopt.quantize.rule_functions import relu_ops_as_activation

QUANTIZED_DTYPES = ("auto", "int8", "uint8")
GRANULARITIES = ("tensor-wise", "channel-wise")
BACKEND = "MKLDNN_QUANTIZE"
# MXNet's plumbing between int8 and float: neither a model layer nor a float fallback.
PLUMBING_OPS = ("_contrib_quantize_v2", "_contrib_quantize", "_contrib_requantize",
                "_contrib_dequantize")
QUANTIZED_PREFIX = "quantized_"


@dataclass
class LayerPrecision:
    """How one op node of the float graph runs in the MXNet int8 model.

    ``precision`` is ``"int8"``, ``"float"``, or ``"removed"`` (MXNet's passes dropped the node:
    a Dropout, an identity at inference); ``mxnet_node`` names the node of the int8 symbol that
    computes it (a fused ``_sg_mkldnn_conv`` covers a conv, its BatchNorm and ReLU); ``reason``
    says why a float node stayed float."""
    node: str
    op: str
    precision: str
    mxnet_node: str | None
    mxnet_op: str | None
    reason: str = ""


@dataclass
class Int8Report:
    """Which nodes of the float graph run in int8 in MXNet, which stayed float and why, and
    the threshold given to each tensor MXNet quantizes."""
    layers: list[LayerPrecision]
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    """MXNet tensor name -> {"tensor": graphopt tensor name, "min": lo, "max": hi}."""
    mxnet_ops: dict[str, int] = field(default_factory=dict)
    """Op histogram of the int8 symbol."""
    quantized_dtype: str = "auto"
    granularity: str = "channel-wise"

    @property
    def int8(self) -> list[LayerPrecision]:
        return [layer for layer in self.layers if layer.precision == "int8"]

    @property
    def float(self) -> list[LayerPrecision]:
        return [layer for layer in self.layers if layer.precision == "float"]

    @property
    def removed(self) -> list[LayerPrecision]:
        return [layer for layer in self.layers if layer.precision == "removed"]

    def precision_of(self, node: str) -> str:
        for layer in self.layers:
            if layer.node == node:
                return layer.precision
        raise KeyError(f"no node {node!r} in the report")

    def as_dict(self) -> dict[str, Any]:
        return {"quantized_dtype": self.quantized_dtype, "granularity": self.granularity,
                "int8": [layer.__dict__ for layer in self.int8],
                "float": [layer.__dict__ for layer in self.float],
                "removed": [layer.__dict__ for layer in self.removed],
                "thresholds": self.thresholds, "mxnet_ops": self.mxnet_ops}

    def format(self) -> str:
        lines = [f"MXNet int8 ({self.quantized_dtype}, weights {self.granularity}): "
                 f"{len(self.int8)} node(s) int8, {len(self.float)} float"
                 + (f", {len(self.removed)} removed" if self.removed else "")]
        for layer in self.float + self.removed:
            lines.append(f"  {layer.precision:7s} {layer.node} ({layer.op}): {layer.reason}")
        return "\n".join(lines)


def to_mxnet_int8(graph: Graph, calibration, *, exclude: Iterable[str] = (),
                  exclude_first_last: bool = False, quantized_dtype: str = "auto",
                  granularity: str = "channel-wise", quantize_mode: str = "full"
                  ) -> tuple[Graph, Int8Report]:
    """The float ``graph`` as MXNet's oneDNN int8 model (a new :class:`Graph` of the quantized
    symbol and its params, which :func:`graphopt.save_mxnet` writes and ``mx.sym.load`` +
    ``SymbolBlock.imports`` run), and the report of what runs in int8.

    ``calibration``: a :class:`graphopt.quantize.Calibration` (anything with
    ``range(tensor_name, symmetric=...) -> (lo, hi)``) or a mapping ``{tensor name: (lo, hi)}``
    of observed ranges, by graphopt tensor name (``graph.tensor_name``: ``"data"``,
    ``"conv0_output"``). Every tensor MXNet
    quantizes needs a range: a missing one is a :class:`DataError` listing them all.
    ``exclude``: names of op nodes, or op types, to keep in float (a conv excluded keeps its
    fused BatchNorm and ReLU in float too); ``exclude_first_last`` also keeps in float the
    weighted layers reading the graph inputs and those writing its outputs (as :func:`quantize`).
    ``quantized_dtype``: MXNet's ``out_type`` for quantized tensors (``"auto"``: uint8 where the
    range starts at 0, else int8). ``granularity``: the FullyConnected weights' scales,
    ``"channel-wise"`` or ``"tensor-wise"`` (convs are per channel in MXNet 1.9.1 either way).
    ``quantize_mode``: MXNet's ``"full"`` (every op with an int8 kernel) or ``"smart"``.
    MXNet refusing the graph is a :class:`GraphoptError` with MXNet's message.

    ``graph`` is not modified.
    """
    if quantized_dtype not in QUANTIZED_DTYPES:
        raise ValueError(f"quantized_dtype must be one of {QUANTIZED_DTYPES}, not {quantized_dtype!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    if quantize_mode not in ("full", "smart"):
        raise ValueError(f"quantize_mode must be 'full' or 'smart', not {quantize_mode!r}")
    from graphopt.mxnet_io.infer import to_symbol

    excluded = _excluded_nodes(graph, exclude, exclude_first_last)
    arg_params, aux_params = _params(graph)
    with _mxnet_errors("fusing the graph for int8"):
        fused = to_symbol(relu_ops_as_activation(graph)).get_backend_symbol(BACKEND)
    fused_nodes = json.loads(fused.tojson())["nodes"]
    excluded_fused = [entry["name"] for entry in fused_nodes
                      if entry["op"] != "null" and _covered(entry, graph) & excluded.keys()]
    with _mxnet_errors("quantizing the graph"):
        qsymbol, calibrated_names = mx_quantization._quantize_symbol(
            fused, mx.cpu(), excluded_symbols=excluded_fused, excluded_operators=[],
            offline_params=list(arg_params), quantized_dtype=quantized_dtype,
            quantize_mode=quantize_mode, quantize_granularity=granularity)
    thresholds = _thresholds(graph, fused, fused_nodes, calibrated_names, calibration,
                             quantized_dtype)
    with _mxnet_errors("setting the calibrated thresholds"):
        qsymbol = mx_quantization._calibrate_quantized_sym(
            qsymbol, {name: (entry["min"], entry["max"]) for name, entry in thresholds.items()})
        qarg_params = mx_quantization._quantize_params(qsymbol, arg_params, {})
        qsymbol = qsymbol.get_backend_symbol(BACKEND)

    qgraph = _as_graph(graph, qsymbol, qarg_params, aux_params)
    nodes = json.loads(qsymbol.tojson())["nodes"]
    report = Int8Report(layers=_decisions(graph, nodes, excluded), thresholds=thresholds,
                        mxnet_ops=dict(Counter(e["op"] for e in nodes if e["op"] != "null")),
                        quantized_dtype=quantized_dtype, granularity=granularity)
    return qgraph, report


# --- what to keep in float ---------------------------------------------------------------------

def _excluded_nodes(graph: Graph, exclude: Iterable[str] | None, first_last: bool) -> dict[str, str]:
    """{node name: reason} of the nodes the caller keeps in float: ``exclude`` names nodes or op
    types, as for :func:`graphopt.quantize.quantize` (the same resolution, so both emitters
    keep the same layers in float)."""
    from graphopt.quantize.qdq import first_and_last_layers, resolve_exclusions

    excluded = {name: "excluded by the caller"
                for name in sorted(resolve_exclusions(graph, exclude or (), False))}
    if first_last:
        for name in sorted(first_and_last_layers(graph)):
            excluded.setdefault(name, "first or last layer (exclude_first_last)")
    return excluded


def _params(graph: Graph) -> tuple[dict[str, mx.nd.NDArray], dict[str, mx.nd.NDArray]]:
    """(arg_params, aux_params) as MXNet's quantization functions take them (no prefixes)."""
    from graphopt.mxnet_io.save import params_for_mxnet

    saved = params_for_mxnet(graph)
    return ({name[4:]: value for name, value in saved.items() if name.startswith("arg:")},
            {name[4:]: value for name, value in saved.items() if name.startswith("aux:")})


@contextlib.contextmanager
def _mxnet_errors(step: str):
    """MXNet's refusal, as a GraphoptError naming the step (not a C++ traceback)."""
    from graphopt.mxnet_io.infer import first_error_line

    try:
        yield
    except mx.MXNetError as error:
        raise GraphoptError(f"MXNet failed {step} for int8: {first_error_line(error)}") from None


# --- thresholds ----------------------------------------------------------------------------------

def _subgraph_heads(entry: dict) -> list[tuple[str, int]] | None:
    """(node name, output index) of each output of a fused node's subgraph, or None."""
    if not entry.get("subgraphs"):
        return None
    body = entry["subgraphs"][0]
    return [(body["nodes"][ref[0]]["name"], int(ref[1])) for ref in body["heads"]]


def _source_tensors(graph: Graph, fused: mx.sym.Symbol, fused_nodes: list[dict]) -> dict[str, str]:
    """MXNet output name in the fused symbol -> the graphopt tensor it equals."""
    by_name = {entry["name"]: entry for entry in fused_nodes}
    sources = {}
    index_in_node: Counter = Counter()
    for output in fused.get_internals():
        node_name = output.name
        mxnet_name = output.list_outputs()[0]
        index = index_in_node[node_name]
        index_in_node[node_name] += 1
        entry = by_name.get(node_name)
        heads = _subgraph_heads(entry) if entry is not None else None
        if heads is not None:
            node_name, index = heads[index]
        if node_name in graph:
            sources[mxnet_name] = graph.tensor_name(Tensor(node_name, index))
    return sources


def _thresholds(graph: Graph, fused: mx.sym.Symbol, fused_nodes: list[dict],
                calibrated_names: list[str], calibration, quantized_dtype: str
                ) -> dict[str, dict[str, Any]]:
    sources = _source_tensors(graph, fused, fused_nodes)
    thresholds, missing = {}, []
    for name in calibrated_names:
        tensor = sources.get(name, name)
        found = _mxnet_range(calibration, tensor, quantized_dtype)
        if found is None:
            missing.append(tensor)
            continue
        thresholds[name] = {"tensor": tensor, "min": found[0], "max": found[1]}
    if missing:
        raise DataError(f"the calibration has no range for {len(missing)} tensor(s) that MXNet "
                        f"quantizes: {missing[:10]}; calibrate the same graph (its tensor names)")
    return thresholds


def _mxnet_range(calibration, tensor: str, quantized_dtype: str) -> tuple[float, float] | None:
    """The range to give MXNet for ``tensor``. MXNet quantizes a tensor to uint8 over [0, hi]
    (``auto`` with a range starting at 0, or ``uint8``) or to int8 over [-t, t], t = max|range|:
    the calibration is asked for the range chosen for that grid (a symmetric one for int8, whose
    one-sided threshold counts 127 steps over [0, t], not 255)."""
    found = _calibrated_range(calibration, tensor, symmetric=quantized_dtype == "int8")
    if found is not None and quantized_dtype == "auto" and found[0] < 0:
        found = _calibrated_range(calibration, tensor, symmetric=True)
    return found


def _calibrated_range(calibration, tensor: str, symmetric: bool) -> tuple[float, float] | None:
    if isinstance(calibration, Mapping):
        found = calibration.get(tensor)
        if found is None:
            return None
        low, high = float(found[0]), float(found[1])
        return (-max(-low, high), max(-low, high)) if symmetric and low < 0 else (low, high)
    try:
        low, high = calibration.range(tensor, symmetric=symmetric)
    except (KeyError, CalibrationError):
        return None
    return float(low), float(high)


# --- the result ----------------------------------------------------------------------------------

def _as_graph(graph: Graph, qsymbol: mx.sym.Symbol, qarg_params: Mapping[str, mx.nd.NDArray],
              aux_params: Mapping[str, mx.nd.NDArray]) -> Graph:
    """The int8 symbol + params as a graphopt Graph, loaded as a saved file would be (the loader
    already round-trips MXNet's quantized graphs)."""
    from graphopt.mxnet_io.load import load

    arguments = set(qsymbol.list_arguments())
    saved = {f"arg:{k}": v for k, v in qarg_params.items() if k in arguments}
    saved.update({f"aux:{k}": v for k, v in aux_params.items()
                  if k in set(qsymbol.list_auxiliary_states())})
    inputs = {name: graph.node(name).shape for name in graph.input_names
              if graph.node(name).shape is not None}
    with tempfile.TemporaryDirectory(prefix="graphopt-int8-") as folder:
        prefix = Path(folder) / graph.name.replace("/", "_")
        qsymbol.save(f"{prefix}-symbol.json")
        mx.nd.save(f"{prefix}-0000.params", saved)
        qgraph = load(f"{prefix}-symbol.json", f"{prefix}-0000.params", inputs=inputs,
                      name=f"{graph.name}_int8")
    qgraph.source.update(symbol=None, params=None, quantized_from=graph.name)
    return qgraph


def _covered(entry: dict, graph: Graph) -> set[str]:
    """The op nodes of ``graph`` that the node ``entry`` of an MXNet symbol computes."""
    names = set()
    if entry.get("subgraphs"):
        for body in entry["subgraphs"]:
            for inner in body["nodes"]:
                if inner["op"] != "null":
                    names |= _covered(inner, graph)
    name = entry["name"]
    for candidate in (name, name[len(QUANTIZED_PREFIX):] if name.startswith(QUANTIZED_PREFIX) else None):
        if candidate and candidate in graph and not graph.node(candidate).is_variable:
            names.add(candidate)
    return names


def _is_int8(entry: dict) -> bool:
    attrs = entry.get("attrs") or {}
    if entry["op"].startswith("_sg_mkldnn"):
        return str(attrs.get("quantized", "false")).lower() == "true"
    return entry["op"].startswith("_contrib_quantized_")


def _decisions(graph: Graph, qnodes: list[dict], excluded: Mapping[str, str]) -> list[LayerPrecision]:
    covering = {}
    for entry in qnodes:
        if entry["op"] == "null" or entry["op"] in PLUMBING_OPS:
            continue
        for name in _covered(entry, graph):
            covering.setdefault(name, entry)
    layers = []
    for name in graph.topological_order():
        node = graph.node(name)
        if node.is_variable:
            continue
        entry = covering.get(name)
        if entry is None:  # Dropout (identity at inference), a Flatten folded into a dense...
            layers.append(LayerPrecision(name, node.op, "removed", None, None,
                                         "MXNet's fusion or quantization pass removed it"))
            continue
        if _is_int8(entry):
            layers.append(LayerPrecision(name, node.op, "int8", entry["name"], entry["op"]))
            continue
        reason = excluded.get(name) or next(
            (f"fused with {other!r}, which is {excluded[other]}"
             for other in _covered(entry, graph) if other in excluded),
            f"MXNet 1.9.1 has no int8 kernel for {_op_form(node)} (its quantization pass left "
            f"it float)")
        layers.append(LayerPrecision(name, node.op, "float", entry["name"], entry["op"], reason))
    return layers


def _op_form(node) -> str:
    """The op, with the attribute that decides whether MXNet has an int8 kernel for it
    (``Activation`` has one for relu only)."""
    kind = node.attrs.get("act_type")
    return f"{node.op}(act_type={kind})" if kind is not None else node.op
