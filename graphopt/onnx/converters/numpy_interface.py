"""MXNet's NumPy interface (``npx.set_np()``, MXNet 1.6+): the ``_np_*``/``_npi_*``/``_npx_*`` ops
that a Gluon model written with ``F.np``/``F.npx`` exports (Gluon's layers still export the
legacy ops: Convolution, FullyConnected, LayerNorm...).

What differs from the legacy ops they resemble:
- operands of two dtypes are promoted (MXNet's inference gives the result's dtype), ``/`` of
  integers is float; comparisons return ``bool``;
- arrays may be 0-d: reducing every axis without ``keepdims`` gives shape ``()``, not ``(1,)``;
- ``reshape`` takes NumPy's ``newshape`` (``-1`` infers, no special codes); ``transpose`` with
  no axes reverses them; ``matmul`` is NumPy's (batched, broadcasting), which ONNX MatMul is.
"""

from __future__ import annotations

import ast
from dataclasses import replace

import numpy as np

from graphopt.ir.graph import Node
from graphopt.onnx.context import CONVERTERS, ConvertContext, Unsupported, converter
from graphopt.onnx.converters.math import OPERATIONS, apply_operation, arithmetic_dtype, in_dtype
from graphopt.onnx.converters.tensor import (cast, input_batch_axes, input_shape, normalize_axis,
                                             reduce, reshape_output, runtime_dims, slice_value,
                                             squeeze, typed, unsqueeze)

ARITHMETIC = {"add": "add", "subtract": "sub", "multiply": "mul", "true_divide": "div",
              "power": "power", "maximum": "maximum", "minimum": "minimum", "mod": "mod"}
COMPARISONS = {"equal": "equal", "not_equal": "not_equal", "greater": "greater",
               "greater_equal": "greater_equal", "less": "lesser", "less_equal": "lesser_equal"}
BINARY = {**{f"_npi_{name}": operation for name, operation in {**ARITHMETIC, **COMPARISONS}.items()},
          "_npi_hypot": "hypot"}
# op -> (operation, scalar on the left)
SCALAR = {**{f"_npi_{name}_scalar": (operation, False)
             for name, operation in {**ARITHMETIC, **COMPARISONS}.items()},
          "_npi_rsubtract_scalar": ("sub", True), "_npi_rtrue_divide_scalar": ("div", True),
          "_npi_rpower_scalar": ("power", True), "_npi_rmod_scalar": ("mod", True)}


def _operate(ctx: ConvertContext, node: Node, operation: str, a: str, b: str, work: str) -> None:
    """``operation`` on ``a`` and ``b`` (both in ``work``) into the node's output: arithmetic
    in the output dtype, comparisons giving ``bool``."""
    if operation in COMPARISONS.values():
        OPERATIONS[operation](ctx, a, b, "bool", ctx.output(node))
    else:
        apply_operation(ctx, operation, a, b, work, ctx.output(node))


@converter(*BINARY)
def binary(ctx: ConvertContext, node: Node) -> None:
    """Both operands in their promoted dtype (the output's, or for a comparison the wider of
    the two), broadcasting as NumPy and ONNX both do."""
    dtypes = [ctx.dtype(node, 0), ctx.dtype(node, 1)]
    work = ctx.output_dtype(node)
    if BINARY[node.op] in COMPARISONS.values():
        work = np.result_type(*dtypes).name
    a, b = (value if dtype == work else cast(ctx, value, work)
            for value, dtype in zip(ctx.inputs(node), dtypes))
    _operate(ctx, node, BINARY[node.op], a, b, work)


@converter(*SCALAR)
def scalar(ctx: ConvertContext, node: Node) -> None:
    """The scalar in the dtype the op computes in: the output's (a float scalar on an integer
    array gives a float array), or for a comparison the array's, float64 when a non-integer
    scalar meets integers."""
    operation, scalar_first = SCALAR[node.op]
    data, dtype = ctx.input(node, 0), ctx.dtype(node, 0)
    value = float(ctx.attr(node, "scalar"))
    work = ctx.output_dtype(node)
    if operation in COMPARISONS.values():
        work = dtype if np.dtype(dtype).kind == "f" or value.is_integer() else "float64"
    if work != dtype:
        data = cast(ctx, data, work)
    operands = [data, typed(ctx, value, work)]
    if scalar_first:
        operands.reverse()
    _operate(ctx, node, operation, *operands, work)


# NumPy name -> the legacy op (and its ONNX op) computing the same function
UNARY = {"exp": "exp", "log": "log", "sqrt": "sqrt", "absolute": "abs", "negative": "negative",
         "sin": "sin", "cos": "cos", "tanh": "tanh", "reciprocal": "reciprocal", "floor": "floor",
         "ceil": "ceil", "sign": "sign", "square": "square", "relu": "relu", "sigmoid": "sigmoid",
         **{name: name for name in (
             "log10", "log2", "log1p", "expm1", "tan", "sinh", "cosh", "arcsin", "arccos", "arctan",
             "arcsinh", "arccosh", "arctanh", "cbrt", "rint", "trunc", "fix", "degrees", "radians",
             "logical_not")}}
# legacy converters that already give the node's output dtype (bool here) from any input dtype
OUTPUT_DTYPE_AWARE = {"logical_not"}
ONNX_UNARY = {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "negative": "Neg",
              "sin": "Sin", "cos": "Cos", "tanh": "Tanh", "reciprocal": "Reciprocal",
              "floor": "Floor", "ceil": "Ceil", "sign": "Sign", "sigmoid": "Sigmoid"}


@converter(*(f"_npi_{name}" for name in UNARY if name not in ("relu", "sigmoid")),
           "_npx_relu", "_npx_sigmoid")
def unary(ctx: ConvertContext, node: Node) -> None:
    """In the input's dtype the legacy op's converter computes it as MXNet does (integers
    through float32, truncated back); a function MXNet makes float of an integer array is
    computed on the input cast to the output dtype."""
    legacy, dtype = UNARY[node.op.split("_", 2)[-1]], ctx.output_dtype(node)
    if ctx.dtype(node, 0) == dtype or legacy in OUTPUT_DTYPE_AWARE:
        CONVERTERS[legacy](ctx, replace(node, op=legacy))
        return
    if legacy not in ONNX_UNARY and legacy not in ("square", "relu"):
        raise Unsupported(f"{node.op} of {ctx.dtype(node, 0)} giving {dtype}: MXNet computes "
                          f"it in another dtype than its input's, and its lowering ({legacy}) "
                          "computes in the input's")
    value = cast(ctx, ctx.input(node, 0), dtype)
    if legacy == "square":
        ctx.emit1("Mul", [value, value], ctx.output(node))
    elif legacy == "relu":
        ctx.emit1("Max", [value, typed(ctx, 0, dtype)], ctx.output(node))
    else:
        ctx.emit1(ONNX_UNARY[legacy], [value], ctx.output(node))


def _axis_list(value, rank: int) -> list[int]:
    """An int or tuple attribute as normalized axes, in the given order."""
    return [normalize_axis(a, rank) for a in (value if isinstance(value, tuple) else (value,))]


def _axes(ctx: ConvertContext, node: Node, rank: int) -> list[int]:
    axis = ctx.attr(node, "axis")
    return list(range(rank)) if axis is None else sorted(_axis_list(axis, rank))


RESHAPE_ALLOWZERO_SINCE = 14
FLOATS = ("float16", "float32", "float64")  # the float dtypes of MXNet's NumPy interface

REDUCTIONS = {"_np_sum": "ReduceSum", "_npi_mean": "ReduceMean", "_np_max": "ReduceMax",
              "_np_min": "ReduceMin", "_np_prod": "ReduceProd"}


@converter(*REDUCTIONS)
def reduction(ctx: ConvertContext, node: Node) -> None:
    """In the output dtype (a mean of integers is float); every axis without ``keepdims``
    leaves a 0-d array. ``initial`` (a value folded into the reduction) is refused."""
    if ctx.attr(node, "initial", None) is not None:
        raise Unsupported("initial=: not lowered (ONNX reductions have no starting value)")
    value, dtype = ctx.input(node, 0), ctx.output_dtype(node)
    if ctx.dtype(node, 0) != dtype:
        value = cast(ctx, value, dtype)
    axes = _axes(ctx, node, len(input_shape(ctx, node, 0)))
    if not axes:
        ctx.emit1("Identity", [value], ctx.output(node))
        return
    op_type, keepdims = REDUCTIONS[node.op], bool(ctx.attr(node, "keepdims"))
    # 8-bit integers sum and multiply in int32 (ONNX has no 8-bit ReduceSum), wrapping back
    work = dtype if op_type in ("ReduceMax", "ReduceMin") else arithmetic_dtype(dtype)
    in_dtype(ctx, [value], dtype, work,
             lambda ctx, x, _work, out: reduce(ctx, op_type, x, axes, keepdims, out),
             ctx.output(node))


@converter("_npi_argmax", "_npi_argmin")
def argmax(ctx: ConvertContext, node: Node) -> None:
    """int64 indices; with no axis, of the flattened array (a 0-d result)."""
    op_type = "ArgMax" if node.op == "_npi_argmax" else "ArgMin"
    value, axis, keepdims = ctx.input(node, 0), ctx.attr(node, "axis"), ctx.attr(node, "keepdims")
    if axis is None:
        if keepdims:
            raise Unsupported("keepdims without an axis: not lowered (the index of the "
                              "flattened array would need the input's rank of size-1 axes)")
        flat = ctx.emit1("Reshape", [value, ctx.int64s([-1], hint="shape")])
        squeeze(ctx, ctx.emit1(op_type, [flat], axis=0, keepdims=1), [0], ctx.output(node))
        return
    ctx.emit1(op_type, [value], ctx.output(node), keepdims=int(bool(keepdims)),
              axis=normalize_axis(axis, len(input_shape(ctx, node, 0))))


@converter("_np_reshape")
def reshape(ctx: ConvertContext, node: Node) -> None:
    """NumPy's ``newshape`` is ONNX's Reshape target as it is (``-1`` infers; a 0 is a 0)."""
    if ctx.attr(node, "order") != "C":
        raise Unsupported(f"order={ctx.attr(node, 'order')}: ONNX Reshape is row-major "
                          "(order C) only")
    newshape = ctx.attr(node, "newshape")
    newshape = newshape if isinstance(newshape, tuple) else (newshape,)
    if 0 in newshape:  # a zero-size axis: ONNX's Reshape reads a 0 as "copy" before opset 14
        if ctx.opset < RESHAPE_ALLOWZERO_SINCE:
            raise Unsupported(f"a reshape to a zero-size axis needs opset "
                              f"{RESHAPE_ALLOWZERO_SINCE} or later (Reshape's allowzero)")
    ctx.emit1("Reshape", [ctx.input(node, 0), ctx.int64s(newshape, hint="shape")],
              ctx.output(node), allowzero=1 if 0 in newshape else None)


@converter("_npx_reshape")
def npx_reshape(ctx: ConvertContext, node: Node) -> None:
    """npx.reshape's codes (-2 copy, -3 drop a 1, -4 copy the rest, -5 merge, -6 split) are not
    the legacy ones; the target is MXNet's inferred shape, the batch axes read at run time."""
    reshape_output(ctx, node, ctx.input(node, 0), ctx.output(node))


@converter("_npi_zeros", "_npi_ones", "_npi_full")
def filled(ctx: ConvertContext, node: Node) -> None:
    """A constant: the shape is an attribute (no input, so no batch size to follow)."""
    value = {"_npi_zeros": 0, "_npi_ones": 1}.get(node.op)
    value = ctx.attr(node, "value") if value is None else value
    array = np.full(ctx.output_shape(node), value, dtype=ctx.output_dtype(node))
    ctx.emit1("Identity", [ctx.constant(array, hint="value")], ctx.output(node))


@converter("_npi_concatenate")
def concatenate(ctx: ConvertContext, node: Node) -> None:
    """``axis=None`` joins the flattened arrays."""
    axis, values = ctx.attr(node, "axis", 0), ctx.inputs(node)
    if axis is None:
        values = [ctx.emit1("Reshape", [v, ctx.int64s([-1], hint="shape")]) for v in values]
        axis = 0
    ctx.emit1("Concat", values, ctx.output(node),
              axis=normalize_axis(axis, len(input_shape(ctx, node, 0)) or 1))


@converter("_npi_stack")
def stack(ctx: ConvertContext, node: Node) -> None:
    axis = normalize_axis(ctx.attr(node, "axis"), len(input_shape(ctx, node, 0)) + 1)
    ctx.emit1("Concat", [unsqueeze(ctx, v, [axis]) for v in ctx.inputs(node)], ctx.output(node),
              axis=axis)


@converter("_np_squeeze")
def squeeze_op(ctx: ConvertContext, node: Node) -> None:
    """No axis: every size-1 axis of the loaded shape (NumPy's result may be 0-d)."""
    shape, axis = input_shape(ctx, node, 0), ctx.attr(node, "axis")
    if axis is None:
        axes = [i for i, size in enumerate(shape) if size == 1]
    else:
        axes = sorted(normalize_axis(a, len(shape)) for a in (axis if isinstance(axis, tuple)
                                                               else (axis,)))
    if not axes:
        ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))
    else:
        squeeze(ctx, ctx.input(node, 0), axes, ctx.output(node))


@converter("_np_copy")
def copy(ctx: ConvertContext, node: Node) -> None:
    ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))


@converter("_npi_matmul")
def matmul(ctx: ConvertContext, node: Node) -> None:
    """NumPy's matmul is ONNX's MatMul. A 1-D operand is made a matrix first (see the legacy
    ``dot``: onnxruntime mis-fuses a Transpose into a MatMul with a vector operand)."""
    lhs, rhs = ctx.input(node, 0), ctx.input(node, 1)
    lhs_vector, rhs_vector = (len(input_shape(ctx, node, s)) == 1 for s in (0, 1))
    if not (lhs_vector or rhs_vector):
        ctx.emit1("MatMul", [lhs, rhs], ctx.output(node))
        return
    product = ctx.emit1("MatMul", [unsqueeze(ctx, lhs, [0]) if lhs_vector else lhs,
                                   unsqueeze(ctx, rhs, [1]) if rhs_vector else rhs])
    dropped = ([-2] if lhs_vector else []) + ([-1] if rhs_vector else [])
    squeeze(ctx, product, dropped, ctx.output(node))


@converter("_npi_where", "_npi_where_lscalar", "_npi_where_rscalar", "_npi_where_scalar2")
def where(ctx: ConvertContext, node: Node) -> None:
    """NumPy's where broadcasts its three operands; the branches in the output dtype."""
    dtype, values = ctx.output_dtype(node), ctx.inputs(node)
    condition = values[0]
    if ctx.dtype(node, 0) != "bool":
        condition = ctx.emit1("Not", [ctx.emit1("Equal", [condition, typed(ctx, 0, ctx.dtype(node, 0))])])
    branches = {"_npi_where": [1, 2], "_npi_where_lscalar": [None, 1],
                "_npi_where_rscalar": [1, None], "_npi_where_scalar2": [None, None]}[node.op]
    keys = {"_npi_where": [], "_npi_where_scalar2": ["x", "y"]}.get(node.op, ["scalar"])
    scalars = iter([ctx.attr(node, key) for key in keys])
    operands = []
    for slot in branches:
        if slot is None:
            operands.append(typed(ctx, next(scalars), dtype))
        else:
            value = values[slot]
            operands.append(value if ctx.dtype(node, slot) == dtype else cast(ctx, value, dtype))
    ctx.emit1("Where", [condition, *operands], ctx.output(node))


@converter("_npi_full_like")
def full_like(ctx: ConvertContext, node: Node) -> None:
    """``ones_like``/``zeros_like``/``full_like``: the input's shape at run time, filled."""
    fill = typed(ctx, [ctx.attr(node, "fill_value")], ctx.output_dtype(node))
    ctx.emit1("Expand", [fill, ctx.emit1("Shape", [ctx.input(node, 0)])], ctx.output(node))


# --- element tests and rounding ----------------------------------------------------------------

def _as_float(ctx: ConvertContext, node: Node) -> str:
    """Input 0 in a dtype onnxruntime's IsNaN/IsInf take (float16 through float32)."""
    value, dtype = ctx.input(node, 0), ctx.dtype(node, 0)
    return value if dtype in ("float32", "float64") else cast(ctx, value, "float32")


def _constant_like(ctx: ConvertContext, node: Node, value, dtype: str) -> None:
    """``value`` everywhere, in the input's run-time shape."""
    ctx.emit1("Expand", [typed(ctx, value, dtype), ctx.emit1("Shape", [ctx.input(node, 0)])],
              ctx.output(node))


ELEMENT_TESTS = {"_npi_isnan": None, "_npi_isinf": (1, 1), "_npi_isposinf": (1, 0),
                 "_npi_isneginf": (0, 1), "_npi_isfinite": None}


@converter(*ELEMENT_TESTS)
def element_test(ctx: ConvertContext, node: Node) -> None:
    """``bool``; an integer array has no NaN or infinity (only ``isfinite`` is true)."""
    if ctx.dtype(node, 0) not in FLOATS:
        _constant_like(ctx, node, node.op == "_npi_isfinite", "bool")
        return
    value = _as_float(ctx, node)
    if node.op == "_npi_isnan":
        ctx.emit1("IsNaN", [value], ctx.output(node))
    elif node.op == "_npi_isfinite":
        special = ctx.emit1("Or", [ctx.emit1("IsNaN", [value]), ctx.emit1("IsInf", [value])])
        ctx.emit1("Not", [special], ctx.output(node))
    else:
        positive, negative = ELEMENT_TESTS[node.op]
        ctx.emit1("IsInf", [value], ctx.output(node), detect_positive=positive,
                  detect_negative=negative)


@converter("_npi_nan_to_num")
def nan_to_num(ctx: ConvertContext, node: Node) -> None:
    """NaN -> ``nan``, +inf -> ``posinf``, -inf -> ``neginf`` (by default the dtype's largest
    and lowest finite values); integers are left as they are."""
    dtype, data = ctx.dtype(node, 0), ctx.input(node, 0)
    if dtype not in FLOATS:
        ctx.emit1("Identity", [data], ctx.output(node))
        return
    value = _as_float(ctx, node)
    info = np.finfo(dtype)
    posinf, neginf = (ctx.attr(node, key) for key in ("posinf", "neginf"))
    replacements = [("IsNaN", {}, ctx.attr(node, "nan")),
                    ("IsInf", {"detect_negative": 0}, info.max if posinf is None else posinf),
                    ("IsInf", {"detect_positive": 0}, info.min if neginf is None else neginf)]
    result = data
    for index, (op_type, attrs, replacement) in enumerate(replacements):
        found = ctx.emit1(op_type, [value], **attrs)
        last = index == len(replacements) - 1
        result = ctx.emit1("Where", [found, typed(ctx, replacement, dtype), result],
                           ctx.output(node) if last else None)


@converter("_npi_around")
def around(ctx: ConvertContext, node: Node) -> None:
    """MXNet multiplies by 10 ``decimals`` times (or divides for negative ``decimals``), rounds
    half to even (ONNX Round), then undoes the scaling one step at a time, each step rounding
    in the dtype. Integers are kept unless ``decimals`` < 0 (refused)."""
    decimals, value, dtype = ctx.attr(node, "decimals"), ctx.input(node, 0), ctx.dtype(node, 0)
    if dtype not in FLOATS:
        if decimals < 0:
            raise Unsupported("around of integers with decimals < 0: MXNet rounds them in "
                              "integer arithmetic, which is not lowered")
        ctx.emit1("Identity", [value], ctx.output(node))
        return
    ten = typed(ctx, 10, dtype)
    scale, unscale = ("Mul", "Div") if decimals > 0 else ("Div", "Mul")
    for _ in range(abs(decimals)):
        value = ctx.emit1(scale, [value, ten])
    value = ctx.emit1("Round", [value], None if decimals else ctx.output(node))
    for step in range(abs(decimals)):
        value = ctx.emit1(unscale, [value, ten], ctx.output(node) if step == abs(decimals) - 1 else None)


@converter("_npi_bitwise_not")
def bitwise_not(ctx: ConvertContext, node: Node) -> None:
    """``~x`` = ``-x - 1`` in two's complement (8-bit integers in int32, wrapping back: the
    unsigned ones too); ``not`` of booleans."""
    dtype, value = ctx.dtype(node, 0), ctx.input(node, 0)
    if dtype == "bool":
        ctx.emit1("Not", [value], ctx.output(node))
        return
    in_dtype(ctx, [value], dtype, arithmetic_dtype(dtype), lambda ctx, x, work, out: ctx.emit1(
        "Sub", [ctx.emit1("Neg", [x]), typed(ctx, 1, work)], out), ctx.output(node))


# --- layout ------------------------------------------------------------------------------------

@converter("_np_moveaxis")
def moveaxis(ctx: ConvertContext, node: Node) -> None:
    """NumPy's order: the other axes keep theirs, the moved ones are inserted at their
    destinations in increasing destination order."""
    rank = len(input_shape(ctx, node, 0))
    sources = _axis_list(ctx.attr(node, "source"), rank)
    destinations = _axis_list(ctx.attr(node, "destination"), rank)
    order = [a for a in range(rank) if a not in sources]
    for destination, source in sorted(zip(destinations, sources)):
        order.insert(destination, source)
    ctx.emit1("Transpose", [ctx.input(node, 0)], ctx.output(node), perm=order)


INT64_MIN = np.iinfo(np.int64).min


@converter("_npi_flip")
def flip(ctx: ConvertContext, node: Node) -> None:
    """A Slice running backwards along each axis."""
    axes = _axis_list(ctx.attr(node, "axis"), len(input_shape(ctx, node, 0)))
    slice_value(ctx, ctx.input(node, 0), [-1] * len(axes), [INT64_MIN] * len(axes), axes,
                [-1] * len(axes), ctx.output(node))


@converter("_npi_broadcast_to")
def broadcast_to(ctx: ConvertContext, node: Node) -> None:
    """The legacy op's lowering: the target is MXNet's output shape."""
    CONVERTERS["broadcast_to"](ctx, node)


@converter("_npi_hsplit")
def hsplit(ctx: ConvertContext, node: Node) -> None:
    """``_split_v2`` along axis 1, axis 0 of a vector (NumPy's hsplit)."""
    attrs = dict(node.attrs)
    if len(input_shape(ctx, node, 0)) == 1:
        attrs["axis"] = 0
    CONVERTERS["_split_v2"](ctx, replace(node, op="_split_v2", attrs=attrs))


@converter("_np_roll")
def roll(ctx: ConvertContext, node: Node) -> None:
    """Per axis, the last ``shift`` elements first (a Concat of two Slices); no axis: of the
    flattened array. An axis that follows the batch is refused (its length is not fixed)."""
    shape, shift, axis = input_shape(ctx, node, 0), ctx.attr(node, "shift"), ctx.attr(node, "axis")
    value, dynamic = ctx.input(node, 0), input_batch_axes(ctx, node, 0)
    shifts = list(shift) if isinstance(shift, tuple) else [shift]
    if axis is None:
        if dynamic:
            raise Unsupported("roll without an axis of an array that follows the batch")
        value, lengths, axes = ctx.emit1("Reshape", [value, ctx.int64s([-1], hint="shape")]), \
            [int(np.prod(shape))], [0]
    else:
        axes = _axis_list(axis, len(shape))
        lengths = [shape[a] for a in axes]
        if dynamic & set(axes):
            raise Unsupported("roll along an axis that follows the batch")
    if len(shifts) == 1:
        shifts *= len(axes)
    for axis_, length, amount in zip(axes, lengths, shifts):
        amount %= length
        if amount:
            tail = slice_value(ctx, value, [length - amount], [length], [axis_])
            head = slice_value(ctx, value, [0], [length - amount], [axis_])
            value = ctx.emit1("Concat", [tail, head], axis=axis_)
    if axis is None:
        value = ctx.emit1("Reshape", [value, ctx.int64s(shape, hint="shape")])
    ctx.emit1("Identity", [value], ctx.output(node))


def _band(ctx: ConvertContext, value: str, rank: int, k: int, comparison: str) -> str:
    """A bool mask over the last two axes of ``value`` (sizes read at run time): row + k
    ``comparison`` column ("GreaterOrEqual": on or below diagonal k; "Equal": on it)."""
    sizes = [ctx.emit1("Squeeze", [runtime_dims(ctx, value, [axis])]) for axis in (rank - 2, rank - 1)]
    zero, one = ctx.constant(np.int64(0)), ctx.constant(np.int64(1))
    rows, columns = (ctx.emit1("Range", [zero, size, one]) for size in sizes)
    shifted = ctx.emit1("Add", [unsqueeze(ctx, rows, [1]), ctx.constant(np.int64(k))])
    return ctx.emit1(comparison, [shifted, columns])


@converter("_npi_tril")
def tril(ctx: ConvertContext, node: Node) -> None:
    """Zero above diagonal ``k`` of the last two axes: a mask (Trilu needs opset 14), so any
    opset and dtype."""
    rank = len(input_shape(ctx, node, 0))
    if rank < 2:
        raise Unsupported("tril of a vector")
    value = ctx.input(node, 0)
    kept = _band(ctx, value, rank, ctx.attr(node, "k"), "GreaterOrEqual")
    ctx.emit1("Where", [kept, value, typed(ctx, 0, ctx.dtype(node, 0))], ctx.output(node))


PAD_MODES = {"constant": "constant", "edge": "edge", "reflect": "reflect"}


@converter("_npi_pad")
def pad(ctx: ConvertContext, node: Node) -> None:
    """``pad_width`` is ((before, after) per axis); ONNX wants every begin, then every end.
    ``reflect`` is NumPy's (the edge not repeated), as ONNX's."""
    mode = ctx.attr(node, "mode")
    if mode not in PAD_MODES:
        raise Unsupported(f"pad mode {mode}: only {', '.join(sorted(PAD_MODES))} are lowered "
                          "(ONNX Pad's modes)")
    widths = ctx.attr(node, "pad_width")
    if isinstance(widths, str):  # (the schema has no parser for a tuple of tuples)
        widths = ast.literal_eval(widths)
    inputs = [ctx.input(node, 0), ctx.int64s([w[0] for w in widths] + [w[1] for w in widths],
                                             hint="pads")]
    if mode == "constant":
        inputs.append(typed(ctx, ctx.attr(node, "constant_value"), ctx.dtype(node, 0)))
    ctx.emit1("Pad", inputs, ctx.output(node), mode=PAD_MODES[mode])


# op -> (axis joined, the rank each input is raised to). hstack and dstack are left out: MXNet
# 1.9.1 cannot infer their shapes in a symbol, so no exported model runs them.
STACKS = {"_npi_vstack": (0, 2), "_npi_column_stack": (1, 2)}


def _raised(ctx: ConvertContext, value: str, rank: int, target: int, column: bool = False) -> str:
    """NumPy's atleast_2d / atleast_3d: (n,) -> (1, n) / (1, n, 1), (m, n) -> (m, n, 1);
    ``column``: (n,) -> (n, 1) (column_stack)."""
    if rank >= target:
        return value
    axes = {(0, 2): [0, 1], (1, 2): [1] if column else [0], (0, 3): [0, 1, 2], (1, 3): [0, 2],
            (2, 3): [2]}
    return unsqueeze(ctx, value, axes[(rank, target)])


@converter(*STACKS)
def stacks(ctx: ConvertContext, node: Node) -> None:
    """vstack raises vectors to rows, column_stack to columns, then both concatenate."""
    axis, target = STACKS[node.op]
    values = [_raised(ctx, value, len(input_shape(ctx, node, slot)), target,
                      column=node.op == "_npi_column_stack")
              for slot, value in enumerate(ctx.inputs(node))]
    ctx.emit1("Concat", values, ctx.output(node), axis=axis)


ATLEAST = {"_np_atleast_1d": 1, "_np_atleast_2d": 2, "_np_atleast_3d": 3}


@converter(*ATLEAST)
def atleast(ctx: ConvertContext, node: Node) -> None:
    """One output per input, raised to the rank (a 0-d array becomes (1,), (1, 1), (1, 1, 1))."""
    target = ATLEAST[node.op]
    for slot, value in enumerate(ctx.inputs(node)):
        rank = len(input_shape(ctx, node, slot))
        if rank == 0:
            value, rank = unsqueeze(ctx, value, [0]), 1
        if target > 1:
            value = _raised(ctx, value, rank, target)
        ctx.emit1("Identity", [value], ctx.output(node, slot))


@converter("_np_cumsum")
def cumsum(ctx: ConvertContext, node: Node) -> None:
    """In the output dtype (8-bit integers through int32, wrapping back); no axis: of the
    flattened array."""
    value, dtype = ctx.input(node, 0), ctx.output_dtype(node)
    axis = ctx.attr(node, "axis")
    if axis is None:
        value, axis = ctx.emit1("Reshape", [value, ctx.int64s([-1], hint="shape")]), 0
    else:
        axis = normalize_axis(axis, len(input_shape(ctx, node, 0)))
    if ctx.dtype(node, 0) != dtype:
        value = cast(ctx, value, dtype)
    work = "float32" if dtype == "float16" else arithmetic_dtype(dtype)
    in_dtype(ctx, [value], dtype, work, lambda ctx, x, _work, out: ctx.emit1(
        "CumSum", [x, ctx.constant(np.int64(axis))], out), ctx.output(node))


# --- contractions ------------------------------------------------------------------------------

def _einsum_dtype(dtype: str) -> str:
    """onnxruntime's Einsum kernels: float, double, int32, int64."""
    return {"float16": "float32", "bfloat16": "float32"}.get(dtype, arithmetic_dtype(dtype))


def _einsum(ctx: ConvertContext, node: Node, equation: str, values: list[str]) -> None:
    """``equation`` on ``values`` promoted to the output dtype (computed as Einsum can)."""
    dtype = ctx.output_dtype(node)
    values = [value if ctx.dtype(node, slot) == dtype else cast(ctx, value, dtype)
              for slot, value in enumerate(values)]
    in_dtype(ctx, values, dtype, _einsum_dtype(dtype),
             lambda ctx, *args: ctx.emit1("Einsum", list(args[:-2]), args[-1], equation=equation),
             ctx.output(node))


@converter("_npi_einsum")
def einsum(ctx: ConvertContext, node: Node) -> None:
    """NumPy's subscripts are ONNX Einsum's equation (implicit output, ``...`` included)."""
    _einsum(ctx, node, ctx.attr(node, "subscripts").replace(" ", ""), ctx.inputs(node))


def _contract(ctx: ConvertContext, node: Node, lhs_axes: list[int], rhs_axes: list[int]) -> None:
    """Sum the products over ``lhs_axes`` of input 0 paired with ``rhs_axes`` of input 1; the
    result's axes are input 0's free axes, then input 1's."""
    ranks = [len(input_shape(ctx, node, slot)) for slot in (0, 1)]
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs = [next(letters) for _ in range(ranks[0])]
    rhs = [next(letters) for _ in range(ranks[1])]
    for lhs_axis, rhs_axis in zip(lhs_axes, rhs_axes):
        rhs[rhs_axis] = lhs[lhs_axis]
    out = [lhs[a] for a in range(ranks[0]) if a not in lhs_axes] + \
        [rhs[a] for a in range(ranks[1]) if a not in rhs_axes]
    _einsum(ctx, node, f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}", ctx.inputs(node))


@converter("_npi_tensordot")
def tensordot(ctx: ConvertContext, node: Node) -> None:
    ranks = [len(input_shape(ctx, node, slot)) for slot in (0, 1)]
    axes = [[normalize_axis(a, rank) for a in ctx.attr(node, key)]
            for key, rank in zip(("a_axes_summed", "b_axes_summed"), ranks)]
    _contract(ctx, node, *axes)


@converter("_npi_tensordot_int_axes")
def tensordot_int_axes(ctx: ConvertContext, node: Node) -> None:
    """``axes=n``: the last n axes of ``a`` with the first n of ``b``."""
    count, rank = ctx.attr(node, "axes"), len(input_shape(ctx, node, 0))
    _contract(ctx, node, list(range(rank - count, rank)), list(range(count)))


@converter("_np_dot")
def dot(ctx: ConvertContext, node: Node) -> None:
    """NumPy's dot: a 0-d operand multiplies; otherwise the last axis of ``a`` with ``b``'s
    only axis (a vector) or its second-to-last."""
    ranks = [len(input_shape(ctx, node, slot)) for slot in (0, 1)]
    if 0 in ranks:
        binary(ctx, replace(node, op="_npi_multiply"))
        return
    _contract(ctx, node, [ranks[0] - 1], [0 if ranks[1] == 1 else ranks[1] - 2])


@converter("_np_diag")
def diag(ctx: ConvertContext, node: Node) -> None:
    """Of a vector, the matrix with it on diagonal ``k``; of a matrix, its diagonal ``k``: the
    legacy ``diag``."""
    CONVERTERS["diag"](ctx, replace(node, op="diag", attrs={"k": ctx.attr(node, "k")}))


@converter("_np_diagonal")
def diagonal(ctx: ConvertContext, node: Node) -> None:
    """The legacy ``diag`` with ``k=offset``: the diagonal becomes the last axis."""
    CONVERTERS["diag"](ctx, replace(node, op="diag", attrs={
        "k": ctx.attr(node, "offset"), "axis1": ctx.attr(node, "axis1"),
        "axis2": ctx.attr(node, "axis2")}))


@converter("_np_trace")
def trace(ctx: ConvertContext, node: Node) -> None:
    """The sum of diagonal ``offset`` of the (axis1, axis2) matrices: those axes moved last,
    everything off the diagonal zeroed, the two summed (in the output dtype)."""
    rank, dtype = len(input_shape(ctx, node, 0)), ctx.output_dtype(node)
    first, second = (normalize_axis(ctx.attr(node, key), rank) for key in ("axis1", "axis2"))
    rest = [a for a in range(rank) if a not in (first, second)]
    value = ctx.emit1("Transpose", [ctx.input(node, 0)], perm=rest + [first, second])
    if ctx.dtype(node, 0) != dtype:
        value = cast(ctx, value, dtype)
    on_diagonal = _band(ctx, value, rank, ctx.attr(node, "offset"), "Equal")
    work = arithmetic_dtype(dtype)
    in_dtype(ctx, [ctx.emit1("Where", [on_diagonal, value, typed(ctx, 0, dtype)])], dtype, work,
             lambda ctx, x, _work, out: reduce(ctx, "ReduceSum", x, [rank - 2, rank - 1], False, out),
             ctx.output(node))


# --- arrays made from nothing ------------------------------------------------------------------

@converter("_npi_arange")
def arange(ctx: ConvertContext, node: Node) -> None:
    """The legacy ``_arange`` (same attributes; the length is MXNet's inferred one)."""
    CONVERTERS["_arange"](ctx, replace(node, op="_arange"))


@converter("_npi_eye", "_npi_identity")
def eye(ctx: ConvertContext, node: Node) -> None:
    """The legacy ``_eye``: ones on diagonal ``k`` (0 for identity) of MXNet's output shape."""
    CONVERTERS["_eye"](ctx, replace(node, op="_eye", attrs={"k": ctx.attr(node, "k", 0)}))


# --- more reductions ---------------------------------------------------------------------------

@converter("_np_all", "_np_any")
def all_any(ctx: ConvertContext, node: Node) -> None:
    """``bool``: the minimum (all) or maximum (any) of ``x != 0`` as int32 (ONNX reduces no bool)."""
    value, dtype = ctx.input(node, 0), ctx.dtype(node, 0)
    if dtype != "bool":
        value = ctx.emit1("Not", [ctx.emit1("Equal", [value, typed(ctx, 0, dtype)])])
    axes = _axes(ctx, node, len(input_shape(ctx, node, 0)))
    if not axes:
        ctx.emit1("Identity", [value], ctx.output(node))
        return
    op_type = "ReduceMin" if node.op == "_np_all" else "ReduceMax"
    reduced = reduce(ctx, op_type, cast(ctx, value, "int32"), axes, bool(ctx.attr(node, "keepdims")))
    cast(ctx, reduced, "bool", ctx.output(node))


def _count(ctx: ConvertContext, value: str, axes: list[int], dtype: str) -> str:
    """The number of elements over ``axes`` of ``value`` (read at run time) in ``dtype``."""
    sizes = runtime_dims(ctx, value, axes)
    return cast(ctx, reduce(ctx, "ReduceProd", sizes, [0], True), dtype)


@converter("_npi_var", "_npi_std")
def variance(ctx: ConvertContext, node: Node) -> None:
    """Mean squared deviation from the mean, divided by ``N - ddof`` instead of ``N`` (N read at
    run time: the axes may follow the batch); std is its square root. Floats only (MXNet
    keeps an integer input's dtype)."""
    dtype = ctx.output_dtype(node)
    if dtype not in FLOATS or ctx.dtype(node, 0) != dtype:
        raise Unsupported(f"{node.op} of {ctx.dtype(node, 0)} giving {dtype}: floats only "
                          "(MXNet keeps an integer input's dtype and truncates)")
    value = ctx.input(node, 0)
    axes = _axes(ctx, node, len(input_shape(ctx, node, 0)))
    keepdims, ddof = bool(ctx.attr(node, "keepdims")), ctx.attr(node, "ddof")

    def lower(ctx: ConvertContext, x: str, work: str, out: str | None) -> str:
        deviation = ctx.emit1("Sub", [x, reduce(ctx, "ReduceMean", x, axes, True)])
        squares = ctx.emit1("Mul", [deviation, deviation])
        if ddof:
            count = _count(ctx, x, axes, work)
            total = reduce(ctx, "ReduceSum", squares, axes, keepdims)
            result = ctx.emit1("Div", [total, ctx.emit1("Sub", [count, typed(ctx, ddof, work)])],
                               None if node.op == "_npi_std" else out)
        else:
            result = reduce(ctx, "ReduceMean", squares, axes, keepdims,
                            None if node.op == "_npi_std" else out)
        return ctx.emit1("Sqrt", [result], out) if node.op == "_npi_std" else result
    in_dtype(ctx, [value], dtype, "float32" if dtype == "float16" else dtype, lower, ctx.output(node))


@converter("_npi_average")
def average(ctx: ConvertContext, node: Node) -> None:
    """``weighted=False``: the mean. Else sum(a * w) / sum(w), a 1-D ``w`` lying along the one
    reduced axis; ``returned`` adds sum(w) as a second output (0-d for 1-D weights: MXNet
    does not broadcast it as NumPy does)."""
    dtype = ctx.output_dtype(node)
    if dtype not in FLOATS:
        raise Unsupported(f"average giving {dtype}: floats only (MXNet truncates an integer "
                          "mean)")
    shape = input_shape(ctx, node, 0)
    axes = _axes(ctx, node, len(shape))
    value = ctx.input(node, 0)
    if ctx.dtype(node, 0) != dtype:
        value = cast(ctx, value, dtype)
    if not ctx.attr(node, "weighted"):
        reduce(ctx, "ReduceMean", value, axes, False, ctx.output(node))
        return
    weights = ctx.input(node, 1)
    if ctx.dtype(node, 1) != dtype:
        weights = cast(ctx, weights, dtype)
    weight_rank = len(input_shape(ctx, node, 1))
    if weight_rank != len(shape):
        if weight_rank != 1 or len(axes) != 1:
            raise Unsupported("weights of another rank than the array, along more than one axis")
        weights = unsqueeze(ctx, weights, [a for a in range(len(shape)) if a != axes[0]])
    total_weight = reduce(ctx, "ReduceSum", ctx.emit1("Expand", [weights, ctx.emit1("Shape", [value])]),
                          axes, False)
    weighted = reduce(ctx, "ReduceSum", ctx.emit1("Mul", [value, weights]), axes, False)
    ctx.emit1("Div", [weighted, total_weight], ctx.output(node))
    if not ctx.attr(node, "returned"):
        return
    if ctx.output_shape(node, 1) == ():  # MXNet's sum of 1-D weights is not broadcast
        reduce(ctx, "ReduceSum", weights, list(range(len(shape))), False, ctx.output(node, 1))
    else:
        ctx.emit1("Identity", [total_weight], ctx.output(node, 1))


@converter("_npi_norm")
def norm(ctx: ConvertContext, node: Node) -> None:
    """The square root of the sum of squares (``flag`` -2: of everything; 1: Frobenius or L2
    over ``axis``; -1: ``ord=2`` of vectors) or, ``flag`` -1 with ``ord=1``, the sum of
    magnitudes. Matrix 2-norms and nuclear norms (``flag`` 0, 2) are refused, and so are
    integers (MXNet's integer L2 norm truncates its running sum)."""
    # the schema lists no attributes for _npi_norm, so they arrive as MXNet's strings
    flag, order, axis, keepdims = (ast.literal_eval(str(ctx.attr(node, key, default))) for key, default
                                   in (("flag", -2), ("ord", 2), ("axis", None), ("keepdims", False)))
    dtype, rank = ctx.output_dtype(node), len(input_shape(ctx, node, 0))
    axes = list(range(rank)) if axis is None else sorted(_axis_list(axis, rank))
    if flag not in (-2, -1, 1) or order not in (1, 2) or (order == 1 and flag != -1) \
            or (flag == -1 and len(axes) != 1):
        raise Unsupported(f"norm with ord={order}, flag={flag}: matrix 2-norms and nuclear "
                          "norms need singular values, which ONNX has no op for")
    if dtype not in FLOATS or ctx.dtype(node, 0) != dtype:
        raise Unsupported(f"norm of {ctx.dtype(node, 0)}: MXNet's integer norm truncates its "
                          "running sum of squares (no ONNX form)")
    op_type = "ReduceL1" if order == 1 else "ReduceL2"
    in_dtype(ctx, [ctx.input(node, 0)], dtype, "float32" if dtype == "float16" else dtype,
             lambda ctx, x, _work, out: reduce(ctx, op_type, x, axes, bool(keepdims), out),
             ctx.output(node))


# --- bitwise operations ------------------------------------------------------------------------

BITWISE = {"and": ("And", "BitwiseAnd"), "or": ("Or", "BitwiseOr"), "xor": ("Xor", "BitwiseXor")}
BITWISE_SINCE = 18


@converter(*(f"_npi_bitwise_{name}{form}" for name in BITWISE for form in ("", "_scalar")))
def bitwise(ctx: ConvertContext, node: Node) -> None:
    """Of booleans, ONNX's logical ops; of integers, its Bitwise* ops (opset 18 and later),
    operands in the output dtype (the scalar truncated to it)."""
    name = node.op[len("_npi_bitwise_"):].removesuffix("_scalar")
    dtype = ctx.output_dtype(node)
    if node.op.endswith("_scalar"):
        operands = [(ctx.input(node, 0), ctx.dtype(node, 0)), (typed(ctx, ctx.attr(node, "scalar"), dtype), dtype)]
    else:
        operands = list(zip(ctx.inputs(node), (ctx.dtype(node, 0), ctx.dtype(node, 1))))
    values = [value if value_dtype == dtype else cast(ctx, value, dtype) for value, value_dtype in operands]
    logical, bitwise_op = BITWISE[name]
    if dtype == "bool":
        ctx.emit1(logical, values, ctx.output(node))
    elif ctx.opset < BITWISE_SINCE:
        raise Unsupported(f"bitwise {name} of integers needs opset {BITWISE_SINCE} or later")
    else:
        ctx.emit1(bitwise_op, values, ctx.output(node))
