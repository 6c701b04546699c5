"""Quantize and dequantize as MXNet ops with ONNX's semantics (``Custom`` ops graphopt registers).

How a quantize/dequantize pair lives in the IR (the design decision of issue 8)
---------------------------------------------------------------------------------
The IR holds MXNet ops, every rewrite is validated by MXNet's own shape inference, ``save_mxnet``
must write something MXNet runs, and ``compare`` runs MXNet against onnxruntime. Three ways were
weighed:

(a) MXNet's ``_contrib_quantize_v2`` / ``_contrib_dequantize``: MXNet runs them, but they know
    only symmetric int8 and zero-based uint8, per tensor, with min/max outputs instead of a
    scale and zero point. Asymmetric uint8 activations (onnxruntime's U8S8 format) and
    per-channel weights cannot be said at all, and every pair would need a translation policy
    in the ONNX emitter.
(b) ``Custom`` ops registered here, with ONNX's semantics (``QuantizeLinear`` /
    ``DequantizeLinear``: inputs data, scale, zero_point; attribute ``axis`` for per-channel
    scales). MXNet infers their shapes and dtypes (the quantized dtype is the zero point's) and
    runs them (numpy, so a QDQ graph runs in MXNet as a float simulation of the int8 model);
    the ONNX converter maps each 1:1; int8 weights are int8 parameters (the params file and the
    ONNX file get ~4x smaller).
(c) graphopt-owned ops lowered to MXNet composites when building the symbol: the IR would hold
    ops MXNet's schema and inference do not know, and every consumer of the IR would need the
    lowering.

(b) is used. Its costs: a saved QDQ model needs ``import graphopt`` (which registers the ops)
before MXNet can load it, and MXNet runs the pair in Python (fine for checking, not for speed;
MXNet's fast int8 path is ``graphopt/quantize/mxnet_int8.py``'s job).

In the IR::

    x (float32) -> Custom(op_type="graphopt_quantize_linear")(x, scale, zero_point) -> q (uint8|int8)
    q -> Custom(op_type="graphopt_dequantize_linear", axis=0)(q, scale, zero_point) -> float32

``scale`` is a float32 parameter of shape (1,) per tensor or (C,) per channel (then ``axis``
says which axis of the data it runs along); ``zero_point`` a parameter of the same shape in the
quantized dtype (uint8, int8, or int32 for a bias). A dynamic quantize
(``graphopt_dynamic_quantize_linear``, ONNX ``DynamicQuantizeLinear``) has three outputs:
the uint8 data, its scale and zero point. ``graphopt_matmul_integer`` (ONNX ``MatMulInteger``:
``(a - a_zero_point) @ (b - b_zero_point)`` in int32, ``a`` of any rank, ``b`` 2-D) completes
dynamic quantization: onnxruntime fuses DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul
into its int8 ``DynamicQuantizeMatMul``.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np

QUANTIZE = "graphopt_quantize_linear"
DEQUANTIZE = "graphopt_dequantize_linear"
DYNAMIC_QUANTIZE = "graphopt_dynamic_quantize_linear"
MATMUL_INTEGER = "graphopt_matmul_integer"
OP_TYPES = (QUANTIZE, DEQUANTIZE, DYNAMIC_QUANTIZE, MATMUL_INTEGER)


def _broadcast(values: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """Per-tensor values (``axis`` None) as a scalar, per-channel ones shaped to run along ``axis``."""
    if axis is None:
        return values.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return values.reshape(shape)


def quantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                    axis: int | None = None) -> np.ndarray:
    """ONNX QuantizeLinear: ``saturate(round_half_to_even(x / scale) + zero_point)`` in the zero
    point's dtype."""
    scale, zero_point = np.asarray(scale, np.float32), np.asarray(zero_point)
    s = _broadcast(scale, x.ndim, axis)
    z = _broadcast(zero_point, x.ndim, axis).astype(np.float64)
    info = np.iinfo(zero_point.dtype)
    q = np.rint(x.astype(np.float32) / s).astype(np.float64) + z
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                      axis: int | None = None) -> np.ndarray:
    """ONNX DequantizeLinear: ``(q - zero_point) * scale`` in float32."""
    scale, zero_point = np.asarray(scale, np.float32), np.asarray(zero_point)
    s = _broadcast(scale, q.ndim, axis)
    z = _broadcast(zero_point, q.ndim, axis)
    return ((q.astype(np.int64) - z.astype(np.int64)).astype(np.float32) * s).astype(np.float32)


def dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX DynamicQuantizeLinear: uint8 over the range of ``x`` widened to hold 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zero_point = np.uint8(np.clip(np.rint(-lo / scale), 0, 255))
    q = quantize_linear(x, np.asarray([scale]), np.asarray([zero_point]))
    return q, np.asarray([scale], np.float32), np.asarray([zero_point], np.uint8)


# --- the MXNet ops ------------------------------------------------------------------------------

def _parse_axis(axis) -> int | None:
    return None if axis in (None, "None", "") else int(axis)


class _QuantizeLinear(mx.operator.CustomOp):
    def __init__(self, axis: int | None):
        super().__init__()
        self.axis = axis

    def forward(self, is_train, req, in_data, out_data, aux):
        x, scale, zero_point = (a.asnumpy() for a in in_data)
        q = quantize_linear(x, scale, zero_point, self.axis)
        self.assign(out_data[0], req[0], mx.nd.array(q, dtype=q.dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        raise NotImplementedError("graphopt's quantize ops are for inference")


class _DequantizeLinear(_QuantizeLinear):
    def forward(self, is_train, req, in_data, out_data, aux):
        q, scale, zero_point = (a.asnumpy() for a in in_data)
        x = dequantize_linear(q, scale, zero_point, self.axis)
        self.assign(out_data[0], req[0], mx.nd.array(x, dtype=np.float32))


class _DynamicQuantizeLinear(_QuantizeLinear):
    def forward(self, is_train, req, in_data, out_data, aux):
        for i, value in enumerate(dynamic_quantize_linear(in_data[0].asnumpy())):
            self.assign(out_data[i], req[i], mx.nd.array(value, dtype=value.dtype))


class _Prop(mx.operator.CustomOpProp):
    def __init__(self, axis=None):
        super().__init__(need_top_grad=False)
        self.axis = _parse_axis(axis)

    def list_arguments(self):
        return ["data", "scale", "zero_point"]

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[0]], []


@mx.operator.register(QUANTIZE)
class QuantizeLinearProp(_Prop):
    """x (float), scale (float32), zero_point (uint8|int8|int32) -> x quantized (zero point's dtype)."""

    def infer_type(self, in_type):
        return in_type, [in_type[2]], []

    def create_operator(self, ctx, shapes, dtypes):
        return _QuantizeLinear(self.axis)


@mx.operator.register(DEQUANTIZE)
class DequantizeLinearProp(_Prop):
    """q (uint8|int8|int32), scale (float32), zero_point (q's dtype) -> float32."""

    def infer_type(self, in_type):
        return in_type, [np.float32], []

    def create_operator(self, ctx, shapes, dtypes):
        return _DequantizeLinear(self.axis)


@mx.operator.register(DYNAMIC_QUANTIZE)
class DynamicQuantizeLinearProp(_Prop):
    """x (float32) -> (uint8 data, float32 scale (1,), uint8 zero point (1,))."""

    def list_arguments(self):
        return ["data"]

    def list_outputs(self):  # MXNet then names them NODE_output0..2, as its own multi-output ops
        return ["output0", "output1", "output2"]

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[0], [1], [1]], []

    def infer_type(self, in_type):
        return in_type, [np.uint8, np.float32, np.uint8], []

    def create_operator(self, ctx, shapes, dtypes):
        return _DynamicQuantizeLinear(None)


def matmul_integer(a: np.ndarray, b: np.ndarray, a_zero_point: np.ndarray,
                   b_zero_point: np.ndarray) -> np.ndarray:
    """ONNX MatMulInteger with a per-tensor ``a_zero_point`` and a per-tensor or per-column
    ``b_zero_point``."""
    left = a.astype(np.int64) - np.asarray(a_zero_point, np.int64).reshape(())
    right = b.astype(np.int64) - np.asarray(b_zero_point, np.int64).reshape(1, -1)
    return np.matmul(left, right).astype(np.int32)


class _MatMulInteger(mx.operator.CustomOp):
    def forward(self, is_train, req, in_data, out_data, aux):
        product = matmul_integer(*(a.asnumpy() for a in in_data))
        self.assign(out_data[0], req[0], mx.nd.array(product, dtype=np.int32))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        raise NotImplementedError("graphopt's quantize ops are for inference")


@mx.operator.register(MATMUL_INTEGER)
class MatMulIntegerProp(mx.operator.CustomOpProp):
    """a (..., K) uint8|int8, b (K, N) int8, a_zero_point (1,), b_zero_point (1,)|(N,) -> int32 (..., N)."""

    def __init__(self):
        super().__init__(need_top_grad=False)

    def list_arguments(self):
        return ["a", "b", "a_zero_point", "b_zero_point"]

    def infer_shape(self, in_shape):
        return in_shape, [list(in_shape[0][:-1]) + [in_shape[1][1]]], []

    def infer_type(self, in_type):
        return in_type, [np.int32], []

    def create_operator(self, ctx, shapes, dtypes):
        return _MatMulInteger()


def custom_op_type(node) -> str | None:
    """The op_type of a ``Custom`` node (``None`` for any other op)."""
    return node.attrs.get("op_type") if node.op == "Custom" else None


def is_quantize(node) -> bool:
    return custom_op_type(node) == QUANTIZE


def is_dequantize(node) -> bool:
    return custom_op_type(node) == DEQUANTIZE


def node_axis(node) -> int | None:
    return _parse_axis(node.attrs.get("axis"))
