"""The guards and functions ``rules/quantize.toml`` names (registered when graphopt is imported).

They read the quantization's settings from the rewrite context (``context["quantize"]``, a
:class:`QuantizeOptions`): the calibration table, the activation type, per-channel weights and
the layers left in float.

Which tensors get a quantize/dequantize pair follows what onnxruntime needs to run a layer in
int8 (PITFALLS.md, "Quantization"): every activation input of a quantized layer, its weight
(int8) and bias (int32) and every output edge. A tensor gets one pair, read by all its consumers.
A tensor that only re-arranges a quantized tensor (max pooling, Flatten, Reshape, transpose)
reuses its input's scale and zero point, so that onnxruntime runs it on the int8 data directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphopt.quantize import qparams
from graphopt.quantize.ops import is_dequantize, is_quantize
from graphopt.rewrite.match import Ref, inputs_in_slot_order
from graphopt.rewrite.registry import NoRewrite, register_function, register_guard, rewrite_context

# op -> the input slots that carry activations (None: every slot)
QUANTIZABLE_OPS: dict[str, tuple[int, ...] | None] = {
    "Convolution": (0,),
    "FullyConnected": (0,),
    "Deconvolution": (0,),
    "elemwise_add": (0, 1),
    "broadcast_add": (0, 1),
    "Concat": None,
    "Pooling": (0,),
    "batch_dot": (0, 1),
    "_contrib_interleaved_matmul_selfatt_qk": (0,),
    "_contrib_interleaved_matmul_selfatt_valatt": (0, 1),
    "_contrib_interleaved_matmul_encdec_qk": (0, 1),
    "_contrib_interleaved_matmul_encdec_valatt": (0, 1),
}
WEIGHTED_OPS = ("Convolution", "FullyConnected", "Deconvolution")
# ops whose output holds values of their input only (re-arranged or selected): the output is
# quantized with the input's scale and zero point
REARRANGING_OPS = ("Flatten", "Reshape", "transpose", "squeeze", "expand_dims", "SwapAxis",
                   "slice_axis")


@dataclass(frozen=True)
class QuantizeOptions:
    """What ``rules/quantize.toml`` reads from the rewrite context (key ``"quantize"``)."""
    calibration: Any                      # .range(name, symmetric=...) -> (lo, hi); .names
    activations: str = "uint8"            # "uint8" (asymmetric) or "int8" (symmetric)
    per_channel: bool = True
    excluded: frozenset[str] = field(default_factory=frozenset)   # node names kept in float
    mode: str = "static"                  # "static" (calibrated) or "dynamic" (weights only)
    reduce_range: bool = False            # 7-bit weights (x86 without VNNI: see qparams)


def options() -> QuantizeOptions:
    found = rewrite_context().get("quantize")
    if found is None:
        raise NoRewrite("no quantization settings in the rewrite context (use "
                        "graphopt.quantize.quantize)")
    return found


def _calibrated(tensor: Ref) -> bool:
    return tensor.graph.tensor_name(tensor.tensor) in options().calibration.names


def _rearranges(node) -> bool:
    """The op's output holds values of its input 0 only (re-arranged, or the max of some)."""
    return node.op in REARRANGING_OPS or (node.op == "Pooling" and
                                          node.attrs.get("pool_type", "max") == "max")


def _has_qparams(graph, tensor) -> bool:
    """A scale and zero point can be given to ``tensor``: it is dequantized, calibrated, a
    re-arrangement (or a ``div_sqrt_dim``) of such a tensor, or re-arranged into one."""
    node = graph.node(tensor.node)
    if is_dequantize(node) or graph.tensor_name(tensor) in options().calibration.names:
        return True
    if (_rearranges(node) or node.op == "_contrib_div_sqrt_dim") and \
            _has_qparams(graph, inputs_in_slot_order(graph, node.name)[0]):
        return True
    return _rearranged_into(graph, tensor) is not None


def _rearranged_into(graph, tensor):
    """The calibrated tensor that ``tensor`` becomes through a chain of re-arranging ops, each
    its only reader (the values, hence the range, are the same), or None."""
    from graphopt.ir.graph import Tensor
    names = options().calibration.names
    while not graph.is_output(tensor):
        readers = graph.consumers(tensor)
        if len(readers) != 1 or not _rearranges(graph.node(readers[0][0])):
            return None
        tensor = Tensor(readers[0][0], 0)
        if graph.tensor_name(tensor) in names:
            return tensor
    return None


# --- guards ------------------------------------------------------------------------------------

def _unsupported_form(layer: Ref) -> str | None:
    """Why onnxruntime could not run this layer in int8 from a QDQ model, or None."""
    op = layer.op
    if op.startswith("_contrib_interleaved_matmul"):
        # its ONNX form reshapes and transposes the heads between the dequantize and the MatMul
        return ("its ONNX form puts Reshape/Transpose between the dequantize and the MatMul, "
                "which onnxruntime does not fuse")
    if op == "batch_dot" and (layer.attr("transpose_a") or layer.attr("transpose_b")):
        return "a transposed operand puts a Transpose between the dequantize and the MatMul"
    if op == "Pooling" and layer.attr("pool_type") not in ("max", "avg"):
        return f"{layer.attr('pool_type')} pooling has no int8 kernel"
    if op in ("Convolution", "Deconvolution") and layer.attr("layout") not in (None, "NCW", "NCHW",
                                                                                 "NCDHW"):
        return f"layout {layer.attr('layout')} is not channels-first"
    if any(layer.graph.tensor_type(t).dtype != "float32"
           for t in inputs_in_slot_order(layer.graph, layer.name)
           if not is_dequantize(layer.graph.node(t.node))):
        return "an input is not float32"
    return None


_OTHER_MODE = {"static": "dynamic quantization quantizes FullyConnected weights only",
               "dynamic": "static quantization (dynamic quantization is quantize_dynamic's)"}


def _not_asked_for(layer: Ref, mode: str) -> str | None:
    """Why ``layer`` is not to be quantized in ``mode`` ("static" or "dynamic") whatever its
    form: no quantization options, the other mode, or the layer excluded."""
    try:
        settings = options()
    except NoRewrite as reason:
        return str(reason)
    if settings.mode != mode:
        return _OTHER_MODE[mode]
    if layer.name in settings.excluded:
        return f"{layer.name} is excluded from quantization"
    return None


@register_guard
def quantize_layer(layer: Ref) -> str | None:
    """The layer is to run in int8: not excluded, of a form the int8 kernels take, and every
    tensor it reads or writes was calibrated."""
    problem = _not_asked_for(layer, "static")
    if problem:
        return problem
    problem = _unsupported_form(layer)
    if problem:
        return problem
    graph = layer.graph
    for slot, tensor in _activation_inputs(layer):
        if not _has_qparams(graph, tensor):
            return f"input {graph.tensor_name(tensor)!r} was not calibrated"
    if not _has_qparams(graph, layer.tensor):
        return f"output {graph.tensor_name(layer.tensor)!r} was not calibrated"
    return None


@register_guard
def activation_folds_into_quantize(activation: Ref, producer: Ref) -> str | None:
    """``activation`` (ReLU as Activation or the relu op, or clip from 0) is the only reader of a quantized layer's output and
    its calibrated range starts at 0: quantizing with the zero point at the grid's floor clamps
    negatives to 0 as the ReLU did, so Q(relu(y)) == Q(y) and the ReLU goes."""
    if producer.op not in QUANTIZABLE_OPS:
        return f"{producer.name} ({producer.op}) is not quantized"
    reason = quantize_layer(producer)
    if reason:
        return reason
    if len(producer.readers()) != 1 or producer.graph.is_output(producer.tensor):
        return f"{producer.name}'s output has other readers"
    if not _calibrated(activation):
        return f"{activation.graph.tensor_name(activation.tensor)!r} was not calibrated"
    scale, zero_point = tensor_qparams(activation)
    floor = np.iinfo(zero_point.dtype).min
    if int(zero_point[0]) != floor:
        return "its quantization grid does not start at 0 (a signed range)"
    if activation.op == "clip":
        a_min, a_max = float(activation.attr("a_min")), float(activation.attr("a_max"))
        top = float(scale[0]) * (np.iinfo(zero_point.dtype).max - floor)
        if a_min != 0.0 or a_max < top * (1 - 1e-6):
            return f"clip({a_min}, {a_max}) is not implied by the grid [0, {top:.4g}]"
    return None


# --- functions ---------------------------------------------------------------------------------

def _activation_inputs(layer: Ref) -> list[tuple[int, Any]]:
    graph = layer.graph
    inputs = inputs_in_slot_order(graph, layer.name)
    slots = QUANTIZABLE_OPS.get(layer.op) or range(len(inputs))
    found = []
    for slot in slots:
        if slot < len(inputs):
            producer = graph.node(inputs[slot].node)
            if not (producer.is_variable and producer.kind in ("param", "aux")):
                found.append((slot, inputs[slot]))
    return found


@register_function(returns="tensor")
def unquantized_input(layer: Ref) -> Ref:
    """The first activation input of ``layer`` that no dequantize produces."""
    for slot, tensor in _activation_inputs(layer):
        if not is_dequantize(layer.graph.node(tensor.node)):
            return Ref(layer.graph, f"{layer.binding}_input{slot}", tensor)
    raise NoRewrite("every activation input is quantized")


@register_function(returns="tensor")
def unquantized_output(layer: Ref) -> Ref:
    """The layer's output, unless quantize nodes already read it all or the only reader is an
    activation that will fold into the quantize (``activation_folds_into_quantize``)."""
    uses = layer.readers()
    graph = layer.graph
    if graph.is_output(layer.tensor):
        # the model's result stays float: quantizing it would only add error (onnxruntime
        # then runs a Gemm or MatMul with int8 inputs and float output, a Conv in float)
        raise NoRewrite("its output is a graph output")
    if uses and all(is_quantize(graph.node(c)) for c, _slot in uses):
        raise NoRewrite("its output is quantized")
    if len(uses) == 1 and not graph.is_output(layer.tensor):
        reader = graph.node(uses[0][0])
        foldable = (reader.op == "Activation" and reader.attrs.get("act_type") == "relu") \
            or reader.op in ("relu", "clip")
        if foldable and activation_folds_into_quantize(
                Ref(graph, "activation", _tensor(reader.name)), layer) is None:
            raise NoRewrite(f"{reader.name} folds into the quantize of its output")
    return layer


def relu_ops_as_activation(graph):
    """``graph`` with each ``relu`` op (Gluon's F.relu) written as Activation(act_type=relu),
    the same function under the name MXNet 1.9.1's oneDNN conv/FC fusion and the equalization
    rules look for. A copy (node names kept) if there is any, else ``graph`` itself."""
    if not graph.op_nodes("relu"):
        return graph
    graph = graph.copy()
    graph.derived.clear()   # the cached symbol is the one with relu ops
    for node in graph.op_nodes("relu"):
        node.op, node.attrs, node.raw_attrs = "Activation", {"act_type": "relu"}, {}
    return graph


def _tensor(name: str):
    from graphopt.ir.graph import Tensor
    return Tensor(name, 0)


def _dequantize_params(ref: Ref, node_name: str) -> tuple[np.ndarray, np.ndarray]:
    graph = ref.graph
    inputs = inputs_in_slot_order(graph, node_name)
    return graph.params[inputs[1].node], graph.params[inputs[2].node]


@register_function(returns=("scale", "zero_point"))
def tensor_qparams(tensor: Ref) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of an activation tensor: those of its dequantized input when it
    only re-arranges one (max pooling, Flatten, Reshape...), else from its calibrated range."""
    graph, node = tensor.graph, tensor.node
    settings = options()
    if is_dequantize(node):
        return _dequantize_params(tensor, node.name)
    if _rearranges(node) or node.op == "_contrib_div_sqrt_dim":
        source = inputs_in_slot_order(graph, node.name)[0]
        if _has_qparams(graph, source):
            scale, zero_point = tensor_qparams(Ref(graph, f"{tensor.binding}_source", source))
            if node.op == "_contrib_div_sqrt_dim":   # the same grid, divided: exact
                depth = graph.tensor_type(source).shape[-1]
                scale = (scale / np.sqrt(np.float32(depth))).astype(np.float32)
            return scale, zero_point
    name = graph.tensor_name(tensor.tensor)
    if name not in settings.calibration.names:
        target = _rearranged_into(graph, tensor.tensor)
        if target is not None:
            name = graph.tensor_name(target)
    lo, hi = settings.calibration.range(name, symmetric=settings.activations == "int8")
    return qparams.activation_qparams(lo, hi, settings.activations, name)


def _weight_max(settings: QuantizeOptions) -> int:
    return qparams.REDUCED_WEIGHT_MAX if settings.reduce_range else qparams.WEIGHT_MAX


def weight_axis(layer: Ref) -> int:
    """The output-channel axis of the weight: 0 for Convolution and FullyConnected; 1 for
    Deconvolution, whose weight is (in, out / groups, ...)."""
    return 1 if layer.op == "Deconvolution" else 0


@register_function(returns=("quantized", "scale", "zero_point", "axis"))
def quantize_weight(layer: Ref, weight: Ref):
    """Symmetric int8 weight, per output channel (per tensor if the settings say so)."""
    settings = options()
    axis = weight_axis(layer) if settings.per_channel else None
    q, scale, zero_point = qparams.quantize_weight(weight.value, axis, _weight_max(settings))
    return q, scale, zero_point, axis


@register_function(returns=("quantized", "scale", "zero_point", "axis"))
def quantize_weight_for_bias(layer: Ref, weight: Ref, data: Ref, bias: Ref):
    """:func:`quantize_weight` with each weight scale at least what keeps the layer's bias within
    int32 at scale input scale x weight scale (``qparams.bias_min_weight_scale``). Deconvolution's
    scale j serves output channels j, j + out/groups, ... (its weight axis 1 is per group)."""
    settings = options()
    axis = weight_axis(layer) if settings.per_channel else None
    input_scale, _zero_point = tensor_qparams(data)   # the scale its quantize has or will have
    floor = qparams.bias_min_weight_scale(bias.value, input_scale[0])
    if axis is None:
        floor = floor.max(initial=0.0)
    else:
        slices = weight.value.shape[axis]
        floor = floor.reshape(-1, slices).max(axis=0) if floor.size % slices == 0 else floor.max()
    q, scale, zero_point = qparams.quantize_weight(weight.value, axis, _weight_max(settings),
                                                   min_scale=floor)
    return q, scale, zero_point, axis


@register_function(returns=("quantized", "scale", "zero_point"))
def quantize_bias(layer: Ref, data: Ref, bias: Ref, weight_scale: np.ndarray):
    """int32 bias with scale input scale x weight scale, per output channel. Deconvolution's
    channel c of group g uses weight scale c mod (out / groups) (its weight axis 1 is per group)."""
    per_channel = np.asarray(weight_scale, np.float32)
    channels = bias.value.shape[0]
    if per_channel.size not in (1, channels):
        per_channel = np.tile(per_channel, channels // per_channel.size)
    input_scale, _zero_point = tensor_qparams(data)   # the scale its quantize has or will have
    scale = (input_scale[0] * per_channel).astype(np.float32)
    try:
        return qparams.quantize_bias(bias.value, np.broadcast_to(scale, (channels,)))
    except ValueError as error:
        raise NoRewrite(str(error)) from None


@register_guard
def flattens_its_input(layer: Ref, data: Ref) -> str | None:
    """A FullyConnected with ``flatten`` (MXNet's default) reading a tensor of rank > 2."""
    if not layer.attr("flatten"):
        return "flatten is false"
    if data.shape is None or len(data.shape) <= 2:
        return "its input is already 2-D"
    return None


# --- dynamic quantization ------------------------------------------------------------------------

@register_guard
def quantize_dynamically(layer: Ref, data: Ref) -> str | None:
    """Dynamic quantization is asked for, the FullyConnected is not excluded and multiplies the
    last axis of a float32 input (``flatten=False``, or a 2-D input)."""
    problem = _not_asked_for(layer, "dynamic")
    if problem:
        return problem
    if data.dtype != "float32":
        return f"its input is {data.dtype}, not float32"
    if layer.attr("flatten") and (data.shape is None or len(data.shape) != 2):
        return "it flattens a tensor of rank > 2 (MatMulInteger multiplies the last axis)"
    return None


@register_function(returns=("quantized", "scale", "zero_point"))
def transposed_int8_weight(weight: Ref):
    """The FullyConnected weight (out, in) as MatMulInteger's B: int8 (in, out), symmetric, one
    scale per output column (per tensor if the settings say so), zero points 0."""
    settings = options()
    q, scale, zero_point = qparams.quantize_weight(weight.value, 0 if settings.per_channel else None,
                                                   _weight_max(settings))
    return np.ascontiguousarray(q.T), scale, zero_point


# --- attention -----------------------------------------------------------------------------------

@register_guard
def lower_attention(layer: Ref) -> str | None:
    """Static quantization is asked for and the interleaved attention op is to run in int8: it
    is written out as MXNet's own reshapes and ``batch_dot`` (its documented definition), whose
    ONNX form onnxruntime fuses into QLinearMatMul."""
    problem = _not_asked_for(layer, "static")
    if problem:
        return problem
    graph = layer.graph
    for tensor in [*inputs_in_slot_order(graph, layer.name), layer.tensor]:
        if not _has_qparams(graph, tensor):
            return f"{graph.tensor_name(tensor)!r} was not calibrated"
    return None


@register_function(returns="shape")
def interleaved_heads_shape(layer: Ref, parts: int) -> tuple:
    """(T, B, heads * parts * D) -> (T, B, heads, parts, D): Reshape codes (0, 0, heads, parts, -1)."""
    return (0, 0, int(layer.attr("heads")), int(parts), -1)


@register_function(returns="shape")
def split_heads_shape(layer: Ref) -> tuple:
    """(T, B, heads * D) -> (T, B, heads, D): Reshape codes (0, 0, heads, -1)."""
    return (0, 0, int(layer.attr("heads")), -1)


@register_function(returns="shape")
def batch_heads_shape(layer: Ref) -> tuple:
    """(B * heads, T, D) -> (B, heads, T, D): Reshape codes (-1, heads, 0, 0) read from the right."""
    return (-1, int(layer.attr("heads")), 0, 0)


def _multiplies_last_axis(layer: Ref) -> bool:
    """A FullyConnected with flatten=False on a tensor of rank > 2: ONNX's Transpose(W) + MatMul
    + Add rather than a Gemm."""
    shape = layer.node.outputs[0].shape
    return layer.op == "FullyConnected" and not layer.attr("flatten") and bool(shape) \
        and len(shape) > 2


@register_guard
def weight_read_as_is(layer: Ref) -> str | None:
    """The layer's converter reads the weight as it is (Gemm, Conv...); a FullyConnected on the
    last axis of a rank > 2 tensor transposes it (``quantize_last_axis_weights``)."""
    return "it multiplies the last axis of a rank > 2 tensor" if _multiplies_last_axis(layer) else None


@register_guard
def multiplies_last_axis(layer: Ref) -> str | None:
    """A FullyConnected with flatten=False on a tensor of rank > 2."""
    return None if _multiplies_last_axis(layer) else "it is not FullyConnected(flatten=False) on rank > 2"


@register_function(returns="axis")
def column_axis() -> int | None:
    """The axis of a transposed (in, out) weight's per-column scales: 1, or None per tensor."""
    return 1 if options().per_channel else None
