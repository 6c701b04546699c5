"""What a model is and what it costs: inputs/outputs, op histogram, parameters, MACs and FLOPs.

:func:`inspect_graph` turns a loaded :class:`~graphopt.ir.Graph` into a JSON-able report (the
numbers people compare before and after compression); :func:`format_inspection` prints it.

Shapes come from the graph (every tensor has a shape and dtype after loading) and attributes
through :func:`graphopt.schema.attr_or_default`, so an attribute missing from the JSON takes
MXNet's default, never ONNX's (Deconvolution ``no_bias`` is True, Pooling ``pooling_convention``
is ``valid``...). Stride, padding, dilation, ``pooling_convention`` and ``target_shape`` need no
formula of their own: they act through the output shape, which MXNet's shape inference computed.

Counting conventions (one MAC = one multiply and one add; one FLOP = one arithmetic operation,
a comparison counted as one; "elements" are those of output 0 unless said otherwise):

==================================  ========================================================
op                                  MACs / FLOPs
==================================  ========================================================
Convolution                         MACs = out_elems * (C_in / num_group) * prod(kernel)
                                    FLOPs = 2 * MACs + out_elems if it has a bias
Deconvolution                       MACs = in_elems * (C_out / num_group) * prod(kernel)
                                    (each input element is scattered into a C_out/g x kernel
                                    window); FLOPs = 2 * MACs + out_elems if it has a bias
FullyConnected                      MACs = rows * K * num_hidden, where ``flatten=True`` gives
                                    rows = shape[0], K = prod(shape[1:]) and ``flatten=False``
                                    rows = prod(shape[:-1]), K = shape[-1];
                                    FLOPs = 2 * MACs + rows * num_hidden if it has a bias
dot, batch_dot, linalg_gemm(2)      MACs = out_elems * K (K the contracted length);
                                    FLOPs = 2 * MACs (+ out_elems for gemm's ``+ C``)
BatchNorm (inference)               FLOPs = 2 per element: the moving statistics are
                                    constants, so it is one multiply and one add
LayerNorm, InstanceNorm, GroupNorm  FLOPs = 7 per element: mean (1), variance (subtract,
                                    square, add: 3), then (x - mean) * scale + shift (3)
L2Normalization                     FLOPs = 3 per element (square, add, divide)
LRN                                 FLOPs = (nsize + 3) per element (window sum of squares,
                                    scale, power, divide)
Pooling (max, avg, sum, lp)         FLOPs = out_elems * prod(kernel); with ``global_pool``
                                    the kernel is the whole input plane
adaptive average pooling            FLOPs = in_elems (every input element summed once)
softmax, log_softmax, SoftmaxOutput FLOPs = 3 per element (exponential, add to the sum, divide)
elementwise (Activation, relu,      FLOPs = out_elems (one per element, whatever the
 clip, elemwise_*, broadcast_*,     function); add_n of k inputs: (k - 1) * out_elems
 *_scalar, comparisons...)
reductions (sum, mean, max, norm,   FLOPs = in_elems
 argmax...)
bilinear resize                     FLOPs = 7 per output element (4 multiplies, 3 adds)
shape and data-movement ops         0 (Reshape, Flatten, transpose, Concat, slice, Pad,
 (Reshape, Concat, Dropout...)       Dropout at inference, Cast, Embedding lookups...)
==================================  ========================================================

An op with no cost model here counts 0 and is listed under ``uncounted_ops``, so a total that
misses something says so.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Callable

from graphopt.ir.graph import Graph, Node
from graphopt.schema import attr_or_default, mxnet_schema

__all__ = ["inspect_graph", "format_inspection", "compare_inspections", "format_comparison",
           "human_count", "human_bytes"]


# --- one node's view: attributes with MXNet defaults, input and output shapes ------------------

class _Layer:
    """A node seen by a cost function: ``attr`` (explicit or MXNet default), input shapes."""

    def __init__(self, graph: Graph, node: Node, op: str):
        self.node = node
        self.op = op
        self.input_shapes = [graph.tensor_type(t).shape for t in graph.inputs_of(node.name)]

    def attr(self, name: str, *fallback: Any) -> Any:
        return attr_or_default(self.op, self.node.attrs, name, *fallback)

    @property
    def shapes_known(self) -> bool:
        return self.node.shape is not None and all(s is not None for s in self.input_shapes)

    @property
    def in_elems(self) -> int:
        return _prod(self.input_shapes[0])

    @property
    def out_elems(self) -> int:
        return _prod(self.node.outputs[0].shape)

    def channel_axis(self) -> int:
        layout = self.attr("layout", None)  # Pooling_v1 has no layout: NCHW
        return layout.index("C") if layout else 1


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values)) if values is not None else 0


Cost = tuple[int, int]  # (MACs, FLOPs)
COST_FUNCTIONS: dict[str, Callable[[_Layer], Cost]] = {}


def _cost(*ops: str):
    def register(function: Callable[[_Layer], Cost]) -> Callable[[_Layer], Cost]:
        for op in ops:
            COST_FUNCTIONS[op] = function
        return function
    return register


def _with_bias(layer: _Layer, macs: int, bias_elems: int) -> Cost:
    has_bias = not layer.attr("no_bias")
    return macs, 2 * macs + (bias_elems if has_bias else 0)


# --- weighted layers: MACs -----------------------------------------------------------------------

@_cost("Convolution", "Convolution_v1", "_contrib_quantized_conv")
def convolution(layer: _Layer) -> Cost:
    in_channels = layer.input_shapes[0][layer.channel_axis()]
    per_output = in_channels // layer.attr("num_group") * _prod(layer.attr("kernel"))
    return _with_bias(layer, layer.out_elems * per_output, layer.out_elems)


@_cost("Deconvolution")
def deconvolution(layer: _Layer) -> Cost:
    per_input = layer.attr("num_filter") // layer.attr("num_group") * _prod(layer.attr("kernel"))
    return _with_bias(layer, layer.in_elems * per_input, layer.out_elems)


@_cost("FullyConnected", "_contrib_quantized_fully_connected")
def fully_connected(layer: _Layer) -> Cost:
    shape = layer.input_shapes[0]
    if layer.attr("flatten"):
        rows, depth = shape[0], _prod(shape[1:])
    else:
        rows, depth = _prod(shape[:-1]), shape[-1]
    hidden = layer.attr("num_hidden")
    return _with_bias(layer, rows * depth * hidden, rows * hidden)


@_cost("dot")
def dot(layer: _Layer) -> Cost:
    # N-D dot contracts the last axis of lhs (first, when transposed) with rhs: a tensordot.
    lhs = layer.input_shapes[0]
    contracted = lhs[0] if layer.attr("transpose_a") else lhs[-1]
    macs = layer.out_elems * contracted
    return macs, 2 * macs


@_cost("batch_dot", "_linalg_gemm2", "_linalg_gemm")
def batch_matmul(layer: _Layer) -> Cost:
    lhs = layer.input_shapes[0]
    # linalg_gemm's ``axis`` moves the row axis; the contracted one is then still -1 or -2.
    contracted = lhs[-2] if layer.attr("transpose_a") else lhs[-1]
    macs = layer.out_elems * contracted
    return macs, 2 * macs + (layer.out_elems if layer.op == "_linalg_gemm" else 0)


# --- FLOPs-only layers ---------------------------------------------------------------------------

def _per_element(flops_per_element: int, of: str = "out") -> Callable[[_Layer], Cost]:
    def cost(layer: _Layer) -> Cost:
        elems = layer.out_elems if of == "out" else layer.in_elems
        return 0, flops_per_element * elems
    return cost


for _ops, _flops in ((("BatchNorm", "BatchNorm_v1", "_contrib_SyncBatchNorm",
                       "_contrib_quantized_batch_norm"), 2),
                     (("_contrib_BatchNormWithReLU",), 3),
                     (("LayerNorm", "InstanceNorm", "GroupNorm"), 7),
                     (("L2Normalization",), 3),
                     (("softmax", "log_softmax", "softmin", "SoftmaxActivation",
                       "SoftmaxOutput"), 3),
                     (("_contrib_BilinearResize2D",), 7)):
    _cost(*_ops)(_per_element(_flops))


@_cost("LRN")
def local_response_norm(layer: _Layer) -> Cost:
    return 0, (layer.attr("nsize") + 3) * layer.out_elems


@_cost("Pooling", "Pooling_v1", "_contrib_quantized_pooling")
def pooling(layer: _Layer) -> Cost:
    if layer.attr("global_pool"):
        shape, axis = layer.input_shapes[0], layer.channel_axis()
        window = _prod(shape[axis + 1:] if axis == 1 else shape[1:axis])
    else:
        window = _prod(layer.attr("kernel"))
    return 0, layer.out_elems * window


@_cost("UpSampling")
def upsampling(layer: _Layer) -> Cost:
    if layer.attr("sample_type") != "bilinear":
        return 0, 0  # nearest: a copy
    # bilinear UpSampling is a depthwise Deconvolution with a (2s - s % 2)^2 kernel.
    scale = layer.attr("scale")
    kernel = 2 * scale - scale % 2
    return 0, 2 * layer.in_elems * kernel * kernel


ELEMENTWISE_OPS = frozenset("""
    Activation LeakyReLU relu sigmoid tanh softsign hard_sigmoid clip
    exp expm1 log log10 log2 log1p sqrt rsqrt cbrt rcbrt square reciprocal abs negative sign
    round rint ceil floor fix trunc erf erfinv gamma gammaln sin cos tan arcsin arccos arctan
    sinh cosh tanh arcsinh arccosh arctanh degrees radians logical_not smooth_l1 where
    elemwise_add elemwise_sub elemwise_mul elemwise_div
    _maximum _minimum _power _hypot _mod _equal _not_equal _greater _greater_equal _lesser
    _lesser_equal _logical_and _logical_or _logical_xor _grad_add _contrib_div_sqrt_dim
    _contrib_quantize _contrib_quantize_v2 _contrib_quantize_asym _contrib_dequantize
    _contrib_requantize _contrib_quantized_act _contrib_quantized_elemwise_add
    _contrib_quantized_elemwise_mul _contrib_round_ste _contrib_sign_ste
    _npx_relu _npx_sigmoid
""".split())
_SCALAR_OP = re.compile(r"_[a-z_]+_scalar\Z")
_BROADCAST_SHAPE_OPS = frozenset({"broadcast_to", "broadcast_like", "broadcast_axis"})

REDUCTION_OPS = frozenset("""
    sum mean max min prod nansum nanprod norm argmax argmin argmax_channel _square_sum moments
""".split())

SHAPE_OPS = frozenset("""
    Reshape Flatten transpose SwapAxis expand_dims squeeze Concat stack SliceChannel _split_v2
    slice slice_axis slice_like Crop Pad tile repeat reverse reshape_like
    broadcast_to broadcast_like broadcast_axis depth_to_space space_to_depth
    Dropout BlockGrad _copy _copyto make_loss MakeLoss Cast amp_cast amp_multicast cast_storage
    zeros_like ones_like shape_array size_array _zeros _ones _full _arange _contrib_arange_like
    Embedding take batch_take pick gather_nd one_hot SequenceLast SequenceReverse
    IdentityAttachKLSparseReg _contrib_quantized_flatten _contrib_quantized_concat
""".split())


@_cost("add_n")
def add_n(layer: _Layer) -> Cost:
    return 0, max(len(layer.input_shapes) - 1, 0) * layer.out_elems


@_cost("_contrib_AdaptiveAvgPooling2D")
def adaptive_average_pooling(layer: _Layer) -> Cost:
    return 0, layer.in_elems


def _cost_function(op: str) -> Callable[[_Layer], Cost] | None:
    if op in COST_FUNCTIONS:
        return COST_FUNCTIONS[op]
    if op in SHAPE_OPS:
        return _ZERO
    if op in ELEMENTWISE_OPS or _SCALAR_OP.match(op) or (
            op.startswith("broadcast_") and op not in _BROADCAST_SHAPE_OPS):
        return _ELEMENTWISE
    if op in REDUCTION_OPS:
        return _REDUCTION
    return None


_ZERO = _per_element(0)
_ELEMENTWISE = _per_element(1)
_REDUCTION = _per_element(1, of="in")


# --- the report ----------------------------------------------------------------------------------

def _tensor_entry(name: str, shape, dtype) -> dict:
    return {"name": name, "shape": list(shape) if shape is not None else None, "dtype": dtype}


def _parameter_totals(graph: Graph) -> dict:
    totals = {kind: {"count": 0, "bytes": 0, "tensors": 0} for kind in ("params", "aux", "total")}
    for node in graph.variables():
        if node.kind not in ("param", "aux") or node.name not in graph.params:
            continue
        array = graph.params[node.name]
        for kind in ("params" if node.kind == "param" else "aux", "total"):
            totals[kind]["count"] += int(array.size)
            totals[kind]["bytes"] += int(array.nbytes)
            totals[kind]["tensors"] += 1
    return totals


def inspect_graph(graph: Graph) -> dict:
    """A JSON-able report of ``graph``: what goes in and out, what it holds, what it costs.

    Keys: ``name``; ``inputs`` and ``outputs`` (name, shape, dtype); ``op_histogram`` (op ->
    count, most frequent first); ``parameters`` with ``params``, ``aux`` and ``total``, each
    ``count`` (elements), ``bytes`` (sum of the arrays' nbytes) and ``tensors``; ``layers``, one
    entry per op node in topological order (name, op, output shape, the parameter elements it
    reads and their bytes as ``params``/``param_bytes``, MACs, FLOPs); ``by_op`` (op -> count, MACs, FLOPs); ``totals`` (MACs, FLOPs);
    ``uncounted_ops`` (op -> count of nodes with no cost model, counted as 0);
    ``shapes_unknown`` (op -> count of nodes whose shapes are unknown, counted as 0: load the
    model with its input shapes).
    The counting conventions are in this module's docstring.
    """
    schema = mxnet_schema()
    layers, by_op, uncounted, shapes_unknown = [], {}, Counter(), Counter()
    for node in graph.nodes():
        if node.is_variable:
            continue
        op = schema.canonical(node.op)
        function = _cost_function(op)
        layer = _Layer(graph, node, op)
        if function is not None and layer.shapes_known:
            macs, flops = function(layer)
        else:
            macs, flops = 0, 0
            (uncounted if function is None else shapes_unknown)[op] += 1
        arrays = [graph.params[t.node] for t in graph.inputs_of(node.name) if t.node in graph.params]
        layers.append({"name": node.name, "op": op,
                       "output_shape": list(node.shape) if node.shape is not None else None,
                       "params": sum(int(a.size) for a in arrays),
                       "param_bytes": sum(int(a.nbytes) for a in arrays),
                       "macs": int(macs), "flops": int(flops)})
        entry = by_op.setdefault(op, {"count": 0, "macs": 0, "flops": 0})
        entry["count"] += 1
        entry["macs"] += int(macs)
        entry["flops"] += int(flops)

    histogram = dict(sorted(((op, e["count"]) for op, e in by_op.items()),
                            key=lambda item: (-item[1], item[0])))
    inputs = [_tensor_entry(n.name, n.shape, n.dtype) for n in graph.variables("input")]
    outputs = [_tensor_entry(name, graph.tensor_type(t).shape, graph.tensor_type(t).dtype)
               for name, t in zip(graph.output_names, graph.outputs)]
    return {
        "name": graph.name,
        "inputs": inputs,
        "outputs": outputs,
        "op_histogram": histogram,
        "parameters": _parameter_totals(graph),
        "layers": layers,
        "by_op": {op: by_op[op] for op in histogram},
        "totals": {"ops": len(layers), "macs": sum(l["macs"] for l in layers),
                   "flops": sum(l["flops"] for l in layers)},
        "uncounted_ops": dict(uncounted),
        "shapes_unknown": dict(shapes_unknown),
    }


# --- the text table ------------------------------------------------------------------------------

def human_count(value: float, unit: str = "") -> str:
    """``1_820_000_000`` -> ``"1.82 G"`` (three significant digits, SI prefixes)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{_three_digits(value / factor)} {prefix}{unit}"
    return f"{_three_digits(value) if value != int(value) else int(value)} {unit}".rstrip()


def human_bytes(value: float) -> str:
    """``46_760_000`` -> ``"44.6 MiB"`` (binary prefixes, as file sizes are usually shown)."""
    for factor, prefix in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if value >= factor:
            return f"{_three_digits(value / factor)} {prefix}"
    return f"{int(value)} B"


def _three_digits(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) if shape is not None else "?"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_inspection(report: dict, layers: str = "weighted") -> str:
    """A readable text version of :func:`inspect_graph`'s report, totals at the bottom.

    ``layers``: ``"weighted"`` lists the layers that have MACs (convolutions, dense layers,
    matrix products), ``"all"`` every op node, ``"none"`` no per-layer table.
    """
    totals, parameters = report["totals"], report["parameters"]
    total_flops = totals["flops"] or 1
    out = [f"Model {report['name']}: {totals['ops']} ops, "
           f"{human_count(parameters['total']['count'])} parameters", ""]

    out += _table(["input", "shape", "dtype"],
                  [[t["name"], _shape_text(t["shape"]), t["dtype"]] for t in report["inputs"]],
                  right=set())
    out.append("")
    out += _table(["output", "shape", "dtype"],
                  [[t["name"], _shape_text(t["shape"]), t["dtype"]] for t in report["outputs"]],
                  right=set())
    out.append("")

    if layers != "none":
        shown = [l for l in report["layers"] if layers == "all" or l["macs"]]
        out += _table(["layer", "op", "output", "params", "MACs", "FLOPs", "% FLOPs"],
                      [[l["name"], l["op"], _shape_text(l["output_shape"]),
                        human_count(l["params"]), human_count(l["macs"]),
                        human_count(l["flops"]), f"{100 * l['flops'] / total_flops:.1f}"]
                       for l in shown], right={3, 4, 5, 6})
        out.append("")

    out += _table(["op", "count", "MACs", "FLOPs", "% FLOPs"],
                  [[op, str(e["count"]), human_count(e["macs"]), human_count(e["flops"]),
                    f"{100 * e['flops'] / total_flops:.1f}"]
                   for op, e in report["by_op"].items()], right={1, 2, 3, 4})
    if report["uncounted_ops"]:
        listing = ", ".join(f"{op} x{n}" for op, n in report["uncounted_ops"].items())
        out += ["", f"no cost model (counted as 0): {listing}"]
    if report["shapes_unknown"]:
        listing = ", ".join(f"{op} x{n}" for op, n in report["shapes_unknown"].items())
        out += ["", f"shapes unknown (counted as 0; give the input shapes): {listing}"]
    out.append("")

    rows = [[name, human_count(parameters[key]["count"]), human_bytes(parameters[key]["bytes"]),
             str(parameters[key]["tensors"])]
            for name, key in (("parameters", "params"), ("aux states", "aux"),
                              ("total", "total"))]
    out += _table(["weights", "elements", "bytes", "arrays"], rows, right={1, 2, 3})
    out.append("")
    out.append(f"Total: {human_count(totals['macs'], 'MACs')}, "
               f"{human_count(totals['flops'], 'FLOPs')}, "
               f"{human_count(parameters['total']['count'])} parameters "
               f"({human_bytes(parameters['total']['bytes'])})")
    return "\n".join(out)


# --- two models side by side (``graphopt inspect A --compare B``) -------------------------------

COMPARED = ("params", "param_bytes", "macs", "flops")


def _ratio(before: int, after: int) -> float | None:
    return after / before if before else None


def compare_inspections(before: dict, after: dict) -> dict:
    """Two :func:`inspect_graph` reports side by side: what pruning or folding changed.

    ``layers``: one entry per op node that carries weights or MACs in either model, matched by
    name (the first model's order, then layers only the second has), each with ``op`` and, for
    ``params``, ``param_bytes``, ``macs`` and ``flops``, the pair ``[before, after]`` (``None``
    where a model lacks the layer) and ``macs_ratio`` (after / before). ``totals``: for
    parameters (elements and bytes, aux states included), MACs and FLOPs, ``before``, ``after``
    and ``ratio``.
    """
    first = {layer["name"]: layer for layer in before["layers"]}
    second = {layer["name"]: layer for layer in after["layers"]}
    names = list(first) + [name for name in second if name not in first]
    layers = []
    for name in names:
        a, b = first.get(name), second.get(name)
        if not any(layer and (layer["macs"] or layer["params"]) for layer in (a, b)):
            continue
        entry = {"name": name, "op": (a or b)["op"]}
        for key in COMPARED:
            entry[key] = [a.get(key) if a else None, b.get(key) if b else None]
        entry["macs_ratio"] = _ratio(a["macs"], b["macs"]) if a and b else None
        layers.append(entry)
    totals = {}
    for key, get in (("params", lambda r: r["parameters"]["total"]["count"]),
                     ("bytes", lambda r: r["parameters"]["total"]["bytes"]),
                     ("macs", lambda r: r["totals"]["macs"]),
                     ("flops", lambda r: r["totals"]["flops"])):
        totals[key] = {"before": get(before), "after": get(after),
                       "ratio": _ratio(get(before), get(after))}
    return {"before": before["name"], "after": after["name"], "layers": layers, "totals": totals}


def _pair_text(pair, show) -> list[str]:
    return ["-" if value is None else show(value) for value in pair]


def format_comparison(comparison: dict) -> str:
    """:func:`compare_inspections` as text: per layer params and MACs of both, totals with
    ratios (after / before)."""
    rows = []
    for layer in comparison["layers"]:
        ratio = layer["macs_ratio"]
        rows.append([layer["name"], layer["op"], *_pair_text(layer["params"], human_count),
                     *_pair_text(layer["param_bytes"], human_bytes),
                     *_pair_text(layer["macs"], human_count),
                     "-" if ratio is None else f"{ratio:.3f}"])
    out = [f"{comparison['before']} (before) vs {comparison['after']} (after)", ""]
    out += _table(["layer", "op", "params", "params after", "bytes", "bytes after", "MACs",
                   "MACs after", "ratio"], rows, right={2, 3, 4, 5, 6, 7, 8})
    out.append("")
    shows = {"params": human_count, "bytes": human_bytes, "macs": human_count,
             "flops": human_count}
    out += _table(["total", "before", "after", "after/before"],
                  [[key, shows[key](t["before"]), shows[key](t["after"]),
                    "-" if t["ratio"] is None else f"{t['ratio']:.3f}"]
                   for key, t in comparison["totals"].items()], right={1, 2, 3})
    return "\n".join(out)
