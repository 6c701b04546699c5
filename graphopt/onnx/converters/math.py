"""math converters: elementwise arithmetic, comparisons, unary functions, reductions, sorting,
matrix products.

MXNet semantics kept here that ONNX does not give by itself:
- comparison and logical ops return 0/1 in the *input* dtype (ONNX returns bool);
- a scalar op's scalar is ``DType(scalar)`` (truncated for integer inputs), and the operand order
  of ``_rminus_scalar``/``_rdiv_scalar``/... comes from the op type, never the node name;
- ``mod`` has the sign of the divisor and gives 0 for a zero divisor;
- ``round`` rounds half away from zero, ``rint`` half towards -inf (ONNX Round: half to even);
- a reduction over every axis gives shape (1,), and ``exclude`` reduces the other axes;
- argmax/argmin/topk/argsort return indices in a float dtype by default;
- math functions (sqrt, exp, sin, hypot ...) of any dtype but double are computed in float32 and
  cast back (``math_functions-inl.h``): an int32 ``sqrt`` truncates ``sqrtf(float(x))``;
- a scalar op with ``is_int=False`` on an integer tensor works in float64 (its output dtype).

Where onnxruntime lacks a kernel MXNet has, the work happens in a wider type and is cast back:
8-bit integer arithmetic and sums in int32 (ONNX's Add, Mul, ReduceSum ... take no 8-bit
integers), double Tan/Asin/Erf ... in float32 (onnxruntime's CPU kernels are float only).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from graphopt.ir.graph import Node
from graphopt.onnx.context import ConvertContext, Unsupported, converter
from graphopt.onnx.converters.tensor import (cast, cast_to_bool, filled, input_batch_axes,
                                             input_shape, normalize_axis, output_batch_axes,
                                             output_shape, reduce, reshape, runtime_dims,
                                             squeeze, typed, unsqueeze)

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
NARROW_INTS = ("int8", "uint8", "int16", "uint16", "bool")  # no ONNX arithmetic on these


def arithmetic_dtype(dtype: str) -> str:
    return "int32" if dtype in NARROW_INTS else dtype


def _math_dtype(dtype: str, double_kernel: bool = True) -> str:
    """The dtype MXNet computes a math function of ``dtype`` in: double for double, float for
    every other (float16 and integers included), the result cast back to ``dtype``."""
    return "float64" if dtype == "float64" and double_kernel else "float32"


def in_dtype(ctx: ConvertContext, values: list[str], dtype: str, work: str,
              lower: Callable[..., str], output: str | None) -> str:
    """``lower(ctx, *values, work, out)`` on ``values`` cast from ``dtype`` to ``work``, the
    result cast back to ``dtype`` (nothing is cast when the two are the same)."""
    if work == dtype:
        return lower(ctx, *values, dtype, output)
    result = lower(ctx, *[cast(ctx, value, work) for value in values], work, None)
    return cast(ctx, result, dtype, output)

# --- binary ops: one lowering per operation, shared by the tensor and the scalar forms -------

Lowering = Callable[[ConvertContext, str, str, str, str], str]


def _plain(op_type: str) -> Lowering:
    return lambda ctx, a, b, dtype, out: ctx.emit1(op_type, [a, b], out)


def _comparison(op_type: str, negate: bool = False) -> Lowering:
    def lower(ctx: ConvertContext, a: str, b: str, dtype: str, out: str) -> str:
        result = ctx.emit1(op_type, [a, b])
        if negate:
            result = ctx.emit1("Not", [result])
        return cast(ctx, result, dtype, out)
    return lower


def _logical(op_type: str) -> Lowering:
    """Non-zero is true (NaN too, as in C); the result is 0/1 in ``dtype``."""
    def lower(ctx: ConvertContext, a: str, b: str, dtype: str, out: str) -> str:
        result = ctx.emit1(op_type, [cast_to_bool(ctx, a, dtype), cast_to_bool(ctx, b, dtype)])
        return cast(ctx, result, dtype, out)
    return lower


def _mod(ctx: ConvertContext, a: str, b: str, dtype: str, out: str) -> str:
    """MXNet's mod: the sign of the divisor (Python's ``%``), and 0 where the divisor is 0."""
    zero = typed(ctx, 0, dtype)
    divisor_is_zero = ctx.emit1("Equal", [b, zero])
    if dtype not in FLOAT_DTYPES:
        safe = ctx.emit1("Where", [divisor_is_zero, typed(ctx, 1, dtype), b])
        return ctx.emit1("Where", [divisor_is_zero, zero, ctx.emit1("Mod", [a, safe], fmod=0)], out)
    remainder = ctx.emit1("Mod", [a, b], fmod=1)  # C fmod: the sign of the dividend
    signs_differ = ctx.emit1("Xor", [ctx.emit1("Less", [remainder, zero]),
                                     ctx.emit1("Less", [b, zero])])
    nonzero = ctx.emit1("Not", [ctx.emit1("Equal", [remainder, zero])])
    shifted = ctx.emit1("Where", [ctx.emit1("And", [signs_differ, nonzero]),
                                  ctx.emit1("Add", [remainder, b]), remainder])
    return ctx.emit1("Where", [divisor_is_zero, zero, shifted], out)


def _hypot(ctx: ConvertContext, a: str, b: str, dtype: str, out: str) -> str:
    """Of integers: ``hypotf`` of their floats, truncated."""
    def lower(ctx: ConvertContext, a: str, b: str, dtype: str, out: str | None) -> str:
        squares = ctx.emit1("Add", [ctx.emit1("Mul", [a, a]), ctx.emit1("Mul", [b, b])])
        return ctx.emit1("Sqrt", [squares], out)
    return in_dtype(ctx, [a, b], dtype, _math_dtype(dtype), lower, out)


OPERATIONS: dict[str, Lowering] = {
    "add": _plain("Add"), "sub": _plain("Sub"), "mul": _plain("Mul"), "div": _plain("Div"),
    "power": _plain("Pow"), "maximum": _plain("Max"), "minimum": _plain("Min"),
    "mod": _mod, "hypot": _hypot,
    "equal": _comparison("Equal"), "not_equal": _comparison("Equal", negate=True),
    "greater": _comparison("Greater"), "greater_equal": _comparison("GreaterOrEqual"),
    "lesser": _comparison("Less"), "lesser_equal": _comparison("LessOrEqual"),
    "logical_and": _logical("And"), "logical_or": _logical("Or"), "logical_xor": _logical("Xor"),
}

BINARY_OPS = {
    "elemwise_add": "add", "broadcast_add": "add", "_grad_add": "add",
    "elemwise_sub": "sub", "broadcast_sub": "sub",
    "elemwise_mul": "mul", "broadcast_mul": "mul",
    "elemwise_div": "div", "broadcast_div": "div",
    "_power": "power", "broadcast_power": "power",
    "_maximum": "maximum", "broadcast_maximum": "maximum",
    "_minimum": "minimum", "broadcast_minimum": "minimum",
    "_mod": "mod", "broadcast_mod": "mod",
    "_hypot": "hypot", "broadcast_hypot": "hypot",
    **{f"{prefix}{name}": name
       for prefix in ("_", "broadcast_")
       for name in ("equal", "not_equal", "greater", "greater_equal", "lesser", "lesser_equal",
                    "logical_and", "logical_or", "logical_xor")},
}

# op -> (operation, scalar on the left)
SCALAR_OPS = {
    "_plus_scalar": ("add", False), "_minus_scalar": ("sub", False), "_rminus_scalar": ("sub", True),
    "_mul_scalar": ("mul", False), "_div_scalar": ("div", False), "_rdiv_scalar": ("div", True),
    "_power_scalar": ("power", False), "_rpower_scalar": ("power", True),
    "_maximum_scalar": ("maximum", False), "_minimum_scalar": ("minimum", False),
    "_mod_scalar": ("mod", False), "_rmod_scalar": ("mod", True), "_hypot_scalar": ("hypot", False),
    **{f"_{name}_scalar": (name, False)
       for name in ("equal", "not_equal", "greater", "greater_equal", "lesser", "lesser_equal",
                    "logical_and", "logical_or", "logical_xor")},
}


def apply_operation(ctx: ConvertContext, operation: str, a: str, b: str, dtype: str,
                    output: str) -> str:
    """``operation`` on two ``dtype`` values; 8-bit integers go through int32 (wrapping back,
    as C's arithmetic on them does)."""
    return in_dtype(ctx, [a, b], dtype, arithmetic_dtype(dtype), OPERATIONS[operation], output)


@converter(*BINARY_OPS)
def binary(ctx: ConvertContext, node: Node) -> None:
    apply_operation(ctx, BINARY_OPS[node.op], ctx.input(node, 0), ctx.input(node, 1),
                    ctx.dtype(node, 0), ctx.output(node))


@converter(*SCALAR_OPS)
def scalar(ctx: ConvertContext, node: Node) -> None:
    """The scalar is ``DType(scalar)``, except with ``is_int=False`` on an integer tensor: MXNet
    then works in its output dtype (float64) with the exact scalar."""
    operation, scalar_first = SCALAR_OPS[node.op]
    data, dtype = ctx.input(node, 0), ctx.dtype(node, 0)
    out_dtype = ctx.output_dtype(node) or dtype
    if out_dtype != dtype:
        data, dtype = cast(ctx, data, out_dtype), out_dtype
    operands = [data, typed(ctx, ctx.attr(node, "scalar"), dtype)]
    if scalar_first:
        operands.reverse()
    apply_operation(ctx, operation, *operands, dtype, ctx.output(node))


@converter("add_n")
def add_n(ctx: ConvertContext, node: Node) -> None:
    """ONNX Sum takes only floats: integers add pairwise (8-bit ones in int32)."""
    values, dtype = ctx.inputs(node), ctx.dtype(node, 0)
    if dtype in FLOAT_DTYPES or len(values) == 1:
        ctx.emit1("Sum", values, ctx.output(node))
        return

    def add_all(ctx: ConvertContext, *operands: str) -> str:
        *addends, _, output = operands  # (a lowering's arguments: values, dtype, output)
        total = addends[0]
        for addend in addends[1:-1]:
            total = ctx.emit1("Add", [total, addend])
        return ctx.emit1("Add", [total, addends[-1]], output)
    in_dtype(ctx, values, dtype, arithmetic_dtype(dtype), add_all, ctx.output(node))


# --- unary ops -------------------------------------------------------------------------------

UNARY = {
    "abs": "Abs", "negative": "Neg", "reciprocal": "Reciprocal", "sqrt": "Sqrt", "exp": "Exp",
    "log": "Log", "sin": "Sin", "cos": "Cos", "tan": "Tan", "arcsin": "Asin", "arccos": "Acos",
    "arctan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "tanh": "Tanh", "arcsinh": "Asinh",
    "arccosh": "Acosh", "arctanh": "Atanh", "sigmoid": "Sigmoid", "relu": "Relu",
    "softsign": "Softsign", "erf": "Erf", "sign": "Sign", "_contrib_sign_ste": "Sign",
}
EXACT_ON_INTEGERS = {"Abs", "Neg", "Sign", "Relu"}  # the others are float functions in MXNet
NO_DOUBLE_KERNEL = {"Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
                    "Erf", "Softsign"}  # onnxruntime's CPU kernels of these are float only
ROUNDING = {"ceil": "Ceil", "floor": "Floor"}  # identity on integers

UnaryLowering = Callable[[ConvertContext, str, str, "str | None"], str]


def _float_math(ctx: ConvertContext, node: Node, lower: UnaryLowering, *,
                double_kernel: bool = True, half_kernel: bool = False) -> str:
    """``lower(ctx, x, dtype, out)`` in MXNet's computing dtype. ``half_kernel``: a single ONNX
    op rounds once like MXNet, so float16 may stay float16; a chain of ops goes through float32."""
    dtype = ctx.dtype(node, 0)
    work = _math_dtype(dtype, double_kernel)
    if half_kernel and dtype == "float16":
        work = dtype
    return in_dtype(ctx, [ctx.input(node, 0)], dtype, work, lower, ctx.output(node))


@converter(*UNARY)
def unary(ctx: ConvertContext, node: Node) -> None:
    op_type, dtype = UNARY[node.op], ctx.dtype(node, 0)
    if op_type in EXACT_ON_INTEGERS and dtype not in FLOAT_DTYPES:
        _integer_unary(ctx, node, op_type, dtype)
        return
    _float_math(ctx, node, lambda ctx, x, dtype, out: ctx.emit1(op_type, [x], out),
                double_kernel=op_type not in NO_DOUBLE_KERNEL, half_kernel=True)


def _integer_unary(ctx: ConvertContext, node: Node, op_type: str, dtype: str) -> None:
    """Exact integer forms: ``Relu`` as ``Max(x, 0)`` (ONNX Relu takes integers only from opset
    14), ``Neg`` of unsigned values in int32 (ONNX Neg takes signed types only), wrapping back."""
    def lower(ctx: ConvertContext, x: str, dtype: str, out: str | None) -> str:
        if op_type == "Relu":
            return ctx.emit1("Max", [x, typed(ctx, 0, dtype)], out)
        return ctx.emit1(op_type, [x], out)
    work = "int32" if op_type == "Neg" and dtype.startswith("u") else dtype
    in_dtype(ctx, [ctx.input(node, 0)], dtype, work, lower, ctx.output(node))


def _integer_identity(ctx: ConvertContext, node: Node) -> bool:
    """Rounding an integer tensor changes nothing (and ONNX rounding ops take only floats)."""
    if ctx.dtype(node, 0) in FLOAT_DTYPES:
        return False
    ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))
    return True


@converter(*ROUNDING)
def rounding(ctx: ConvertContext, node: Node) -> None:
    if not _integer_identity(ctx, node):
        ctx.emit1(ROUNDING[node.op], [ctx.input(node, 0)], ctx.output(node))


@converter("round", "_contrib_round_ste")
def round_half_away(ctx: ConvertContext, node: Node) -> None:
    """round(x) = sign(x) * (floor(|x|) + (|x| - floor(|x|) >= 0.5)); floor(|x| + 0.5) would
    be wrong for 0.49999997, where the sum rounds up to 1."""
    if _integer_identity(ctx, node):
        return
    dtype, x = ctx.dtype(node, 0), ctx.input(node, 0)
    magnitude = ctx.emit1("Abs", [x])
    whole = ctx.emit1("Floor", [magnitude])
    fraction = ctx.emit1("Sub", [magnitude, whole])
    half_up = ctx.emit1("GreaterOrEqual", [fraction, typed(ctx, 0.5, dtype)])
    rounded = ctx.emit1("Add", [whole, cast(ctx, half_up, dtype)])
    ctx.emit1("Mul", [rounded, ctx.emit1("Sign", [x])], ctx.output(node))


@converter("rint")
def rint(ctx: ConvertContext, node: Node) -> None:
    """MXNet's rint takes the floor on a tie (rint(2.5) = 2, rint(-2.5) = -3)."""
    if _integer_identity(ctx, node):
        return
    dtype, x = ctx.dtype(node, 0), ctx.input(node, 0)
    whole = ctx.emit1("Floor", [x])
    up = ctx.emit1("Greater", [ctx.emit1("Sub", [x, whole]), typed(ctx, 0.5, dtype)])
    ctx.emit1("Add", [whole, cast(ctx, up, dtype)], ctx.output(node))


def _towards_zero(ctx: ConvertContext, x: str, output: str | None = None) -> str:
    """sign(x) * floor(|x|)."""
    whole = ctx.emit1("Floor", [ctx.emit1("Abs", [x])])
    return ctx.emit1("Mul", [whole, ctx.emit1("Sign", [x])], output)


@converter("fix", "trunc")
def truncate(ctx: ConvertContext, node: Node) -> None:
    if not _integer_identity(ctx, node):
        _towards_zero(ctx, ctx.input(node, 0), ctx.output(node))


@converter("rsqrt")
def rsqrt(ctx: ConvertContext, node: Node) -> None:
    _float_math(ctx, node, lambda ctx, x, dtype, out:
                ctx.emit1("Reciprocal", [ctx.emit1("Sqrt", [x])], out))


def _cube_root(ctx: ConvertContext, x: str, dtype: str, out: str | None = None) -> str:
    """Pow of a negative base to 1/3 is NaN: take the root of |x| and restore the sign."""
    root = ctx.emit1("Pow", [ctx.emit1("Abs", [x]), typed(ctx, 1 / 3, dtype)])
    return ctx.emit1("Mul", [root, ctx.emit1("Sign", [x])], out)


@converter("cbrt")
def cbrt(ctx: ConvertContext, node: Node) -> None:
    _float_math(ctx, node, _cube_root)


@converter("rcbrt")
def rcbrt(ctx: ConvertContext, node: Node) -> None:
    _float_math(ctx, node, lambda ctx, x, dtype, out:
                ctx.emit1("Reciprocal", [_cube_root(ctx, x, dtype)], out))


@converter("square")
def square(ctx: ConvertContext, node: Node) -> None:
    """``x * x`` in the input's dtype (8-bit integers through int32)."""
    dtype = ctx.dtype(node, 0)
    in_dtype(ctx, [ctx.input(node, 0)], dtype, arithmetic_dtype(dtype),
              lambda ctx, x, dtype, out: ctx.emit1("Mul", [x, x], out), ctx.output(node))


def _small(ctx: ConvertContext, x: str, dtype: str) -> str:
    return ctx.emit1("Less", [ctx.emit1("Abs", [x]), typed(ctx, 0.5, dtype)])


def _expm1(ctx: ConvertContext, x: str, dtype: str, out: str | None) -> str:
    """exp(x) - 1 cancels for small x; Kahan's form (u - 1) * x / log(u), u = exp(x), does not."""
    u = ctx.emit1("Exp", [x])
    direct = ctx.emit1("Sub", [u, typed(ctx, 1, dtype)])
    corrected = ctx.emit1("Div", [ctx.emit1("Mul", [direct, x]), ctx.emit1("Log", [u])])
    near_zero = ctx.emit1("Where", [ctx.emit1("Equal", [direct, typed(ctx, 0, dtype)]), x, corrected])
    return ctx.emit1("Where", [_small(ctx, x, dtype), near_zero, direct], out)


def _log1p(ctx: ConvertContext, x: str, dtype: str, out: str | None) -> str:
    """log(1 + x) loses x's low bits; log(u) * x / (u - 1), u = 1 + x, keeps them (Kahan)."""
    u = ctx.emit1("Add", [x, typed(ctx, 1, dtype)])
    direct = ctx.emit1("Log", [u])
    shifted = ctx.emit1("Sub", [u, typed(ctx, 1, dtype)])
    corrected = ctx.emit1("Div", [ctx.emit1("Mul", [direct, x]), shifted])
    near_zero = ctx.emit1("Where", [ctx.emit1("Equal", [shifted, typed(ctx, 0, dtype)]), x, corrected])
    return ctx.emit1("Where", [_small(ctx, x, dtype), near_zero, direct], out)


@converter("expm1")
def expm1(ctx: ConvertContext, node: Node) -> None:
    _float_math(ctx, node, _expm1)


@converter("log1p")
def log1p(ctx: ConvertContext, node: Node) -> None:
    _float_math(ctx, node, _log1p)


SCALED = {"log2": ("Log", 1 / math.log(2)), "log10": ("Log", 1 / math.log(10)),
          "degrees": (None, 180 / math.pi), "radians": (None, math.pi / 180)}


@converter(*SCALED)
def scaled(ctx: ConvertContext, node: Node) -> None:
    op_type, factor = SCALED[node.op]

    def lower(ctx: ConvertContext, x: str, dtype: str, out: str | None) -> str:
        if op_type:
            x = ctx.emit1(op_type, [x])
        return ctx.emit1("Mul", [x, typed(ctx, factor, dtype)], out)
    _float_math(ctx, node, lower)


@converter("logical_not")
def logical_not(ctx: ConvertContext, node: Node) -> None:
    dtype = ctx.dtype(node, 0)
    result = ctx.emit1("Not", [cast_to_bool(ctx, ctx.input(node, 0), dtype)])
    cast(ctx, result, ctx.output_dtype(node), ctx.output(node))


@converter("clip")
def clip(ctx: ConvertContext, node: Node) -> None:
    """MXNet compares in float and returns ``DType(bound)``: for integers, the bounds truncated
    after clamping them into the type's range (a uint8 clip to [-2.5, 300] changes nothing)."""
    dtype = ctx.dtype(node, 0)
    bounds = [float(ctx.attr(node, "a_min")), float(ctx.attr(node, "a_max"))]
    if dtype not in FLOAT_DTYPES:
        limits = np.iinfo(dtype)
        bounds = [min(max(bound, limits.min), limits.max) for bound in bounds]
    ctx.emit1("Clip", [ctx.input(node, 0), *(typed(ctx, bound, dtype) for bound in bounds)],
              ctx.output(node))


@converter("hard_sigmoid")
def hard_sigmoid(ctx: ConvertContext, node: Node) -> None:
    alpha, beta = float(ctx.attr(node, "alpha")), float(ctx.attr(node, "beta"))
    _float_math(ctx, node, lambda ctx, x, dtype, out:
                ctx.emit1("HardSigmoid", [x], out, alpha=alpha, beta=beta), double_kernel=False)


@converter("smooth_l1")
def smooth_l1(ctx: ConvertContext, node: Node) -> None:
    """0.5 (sigma x)^2 where |x| < 1/sigma^2, else |x| - 0.5/sigma^2 (sigma = ``scalar``)."""
    sigma2 = float(ctx.attr(node, "scalar", 1.0)) ** 2  # (the schema has no default; MXNet's is 1)

    def lower(ctx: ConvertContext, x: str, dtype: str, out: str | None) -> str:
        magnitude = ctx.emit1("Abs", [x])
        quadratic = ctx.emit1("Mul", [ctx.emit1("Mul", [x, x]), typed(ctx, 0.5 * sigma2, dtype)])
        linear = ctx.emit1("Sub", [magnitude, typed(ctx, 0.5 / sigma2, dtype)])
        inside = ctx.emit1("Less", [magnitude, typed(ctx, 1 / sigma2, dtype)])
        return ctx.emit1("Where", [inside, quadratic, linear], out)
    _float_math(ctx, node, lower)


def _polynomial(ctx: ConvertContext, w: str, coefficients, dtype: str) -> str:
    """Horner's scheme, highest coefficient first."""
    result = typed(ctx, coefficients[0], dtype)
    for coefficient in coefficients[1:]:
        result = ctx.emit1("Add", [ctx.emit1("Mul", [result, w]), typed(ctx, coefficient, dtype)])
    return result


# M. Giles, "Approximating the erfinv function" (GPU Computing Gems), single precision.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                   0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


@converter("erfinv")
def erfinv(ctx: ConvertContext, node: Node) -> None:
    """Giles' approximation in double, then one Newton step on erf (MXNet's result to ~1e-7)."""
    dtype = ctx.dtype(node, 0)
    x = cast(ctx, ctx.input(node, 0), "float64")
    one = typed(ctx, 1, "float64")
    w = ctx.emit1("Neg", [ctx.emit1("Log", [ctx.emit1("Mul", [ctx.emit1("Sub", [one, x]),
                                                              ctx.emit1("Add", [one, x])])])])
    central = _polynomial(ctx, ctx.emit1("Sub", [w, typed(ctx, 2.5, "float64")]), _ERFINV_CENTRAL,
                          "float64")
    tail = _polynomial(ctx, ctx.emit1("Sub", [ctx.emit1("Sqrt", [w]), typed(ctx, 3, "float64")]),
                       _ERFINV_TAIL, "float64")
    use_central = ctx.emit1("Less", [w, typed(ctx, 5, "float64")])
    y = ctx.emit1("Mul", [ctx.emit1("Where", [use_central, central, tail]), x])
    residual = ctx.emit1("Sub", [ctx.emit1("Erf", [cast(ctx, y, "float32")]), cast(ctx, x, "float32")])
    slope = ctx.emit1("Mul", [ctx.emit1("Exp", [ctx.emit1("Neg", [ctx.emit1("Mul", [y, y])])]),
                              typed(ctx, 2 / math.sqrt(math.pi), "float64")])
    step = ctx.emit1("Div", [cast(ctx, residual, "float64"), slope])
    finite = ctx.emit1("Less", [ctx.emit1("Abs", [x]), one])
    refined = ctx.emit1("Where", [finite, ctx.emit1("Sub", [y, step]), y])
    _from_double(ctx, refined, ctx.output_dtype(node), ctx.output(node))


# Lanczos approximation, g = 7, n = 9 (relative error ~1e-15 in double).
_LANCZOS_G = 7.0
_LANCZOS = (0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
            -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6,
            1.5056327351493116e-7)


def _log_gamma(ctx: ConvertContext, x: str) -> tuple[str, str]:
    """log|Gamma(x)| and sign(Gamma(x)) of a float64 ``x``, with the reflection formula below 0.5."""
    half = typed(ctx, 0.5, "float64")
    reflect = ctx.emit1("Less", [x, half])
    z = ctx.emit1("Where", [reflect, ctx.emit1("Sub", [typed(ctx, 1, "float64"), x]), x])
    z = ctx.emit1("Sub", [z, typed(ctx, 1, "float64")])
    series = typed(ctx, _LANCZOS[0], "float64")
    for i, coefficient in enumerate(_LANCZOS[1:], start=1):
        term = ctx.emit1("Div", [typed(ctx, coefficient, "float64"),
                                 ctx.emit1("Add", [z, typed(ctx, i, "float64")])])
        series = ctx.emit1("Add", [series, term])
    t = ctx.emit1("Add", [z, typed(ctx, _LANCZOS_G + 0.5, "float64")])
    log_gamma = ctx.emit1("Add", [
        ctx.emit1("Sub", [ctx.emit1("Mul", [ctx.emit1("Add", [z, half]), ctx.emit1("Log", [t])]), t]),
        ctx.emit1("Log", [ctx.emit1("Mul", [series, typed(ctx, math.sqrt(2 * math.pi), "float64")])])])
    sine = ctx.emit1("Sin", [ctx.emit1("Mul", [x, typed(ctx, math.pi, "float64")])])
    reflected = ctx.emit1("Sub", [
        ctx.emit1("Sub", [typed(ctx, math.log(math.pi), "float64"),
                          ctx.emit1("Log", [ctx.emit1("Abs", [sine])])]), log_gamma])
    sign = ctx.emit1("Where", [reflect, ctx.emit1("Sign", [sine]), typed(ctx, 1, "float64")])
    return ctx.emit1("Where", [reflect, reflected, log_gamma]), sign


def _from_double(ctx: ConvertContext, value: str, dtype: str, output: str) -> str:
    """A float64 result in ``dtype``: through float32 unless double (MXNet's result is a float
    that is then cast, so an integer gamma(5) is 24, not the truncation of 23.99999999999997).
    The float32 is truncated explicitly: onnxruntime merges Cast(double -> float) -> Cast(float
    -> int8) into one cast from double, even unoptimized."""
    if dtype in ("float32", "float64"):
        return cast(ctx, value, dtype, output)
    value = cast(ctx, value, "float32")
    if dtype not in FLOAT_DTYPES:
        value = _towards_zero(ctx, value)
    return cast(ctx, value, dtype, output)


@converter("gammaln")
def gammaln(ctx: ConvertContext, node: Node) -> None:
    log_gamma, _ = _log_gamma(ctx, cast(ctx, ctx.input(node, 0), "float64"))
    _from_double(ctx, log_gamma, ctx.output_dtype(node), ctx.output(node))


@converter("gamma")
def gamma(ctx: ConvertContext, node: Node) -> None:
    log_gamma, sign = _log_gamma(ctx, cast(ctx, ctx.input(node, 0), "float64"))
    value = ctx.emit1("Mul", [ctx.emit1("Exp", [log_gamma]), sign])
    _from_double(ctx, value, ctx.output_dtype(node), ctx.output(node))


# --- reductions ------------------------------------------------------------------------------

REDUCTIONS = {"sum": ("ReduceSum", None), "mean": ("ReduceMean", None),
              "prod": ("ReduceProd", None), "max": ("ReduceMax", None), "min": ("ReduceMin", None),
              "nansum": ("ReduceSum", 0), "nanprod": ("ReduceProd", 1)}


def reduced_axes(ctx: ConvertContext, node: Node, rank: int, exclude: bool = False) -> list[int]:
    """``axis`` None or () reduces everything (whatever ``exclude``); ``exclude`` reduces the
    axes not listed."""
    axis = ctx.attr(node, "axis")
    if axis is None or axis == ():
        return list(range(rank))
    axes = {normalize_axis(a, rank) for a in (axis if isinstance(axis, tuple) else (axis,))}
    if exclude:
        axes = set(range(rank)) - axes
    return sorted(axes)


def reduce_to_output(ctx: ConvertContext, node: Node, op_type: str, value: str, axes: list[int],
                     keepdims: bool, output: str) -> str:
    """MXNet has no 0-d arrays: reducing every axis without keepdims gives shape (1,)."""
    rank = len(input_shape(ctx, node, 0))
    if not axes:
        return ctx.emit1("Identity", [value], output)
    if keepdims or len(axes) < rank:
        return reduce(ctx, op_type, value, axes, keepdims, output)
    return reshape(ctx, reduce(ctx, op_type, value, axes, True), (1,), output=output)


@converter(*REDUCTIONS)
def reduction(ctx: ConvertContext, node: Node) -> None:
    """8-bit integers sum (and multiply) in int32, wrapping back to their type at the end, as
    MXNet's running sum in the type does; their mean is that wrapped sum over the count."""
    op_type, nan_replacement = REDUCTIONS[node.op]
    rank = len(input_shape(ctx, node, 0))
    axes = reduced_axes(ctx, node, rank, ctx.attr(node, "exclude"))
    keepdims, dtype = ctx.attr(node, "keepdims"), ctx.dtype(node, 0)

    def lower(ctx: ConvertContext, value: str, work: str, out: str | None) -> str:
        if nan_replacement is not None and work in FLOAT_DTYPES:
            value = ctx.emit1("Where", [ctx.emit1("IsNaN", [value]),
                                        typed(ctx, nan_replacement, work), value])
        if op_type != "ReduceMean" or work == dtype:
            return reduce_to_output(ctx, node, op_type, value, axes, keepdims, out)
        total = reduce_to_output(ctx, node, "ReduceSum", value, axes, keepdims, None)
        count = ctx.emit1("Div", [ctx.emit1("Size", [value]), ctx.emit1("Size", [total])])
        wrapped = cast(ctx, cast(ctx, total, dtype), work)
        return ctx.emit1("Div", [wrapped, cast(ctx, count, work)], out)
    work = dtype if op_type in ("ReduceMax", "ReduceMin") else arithmetic_dtype(dtype)
    in_dtype(ctx, [ctx.input(node, 0)], dtype, work, lower, ctx.output(node))


@converter("norm")
def norm(ctx: ConvertContext, node: Node) -> None:
    """Entrywise L1/L2 norm over ``axis`` (over everything when None), in ``out_dtype``."""
    order = ctx.attr(node, "ord")
    if order not in (1, 2):
        raise Unsupported(f"norm of order {order}: MXNet's norm has orders 1 and 2")
    rank = len(input_shape(ctx, node, 0))
    axes = reduced_axes(ctx, node, rank)
    dtype, out_dtype = ctx.dtype(node, 0), ctx.output_dtype(node)
    if order == 2 and dtype not in FLOAT_DTYPES:
        raise Unsupported(f"L2 norm of {dtype} (MXNet scales its running sum of squares by "
                          "integer division: norm([3, 4]) is 4)")
    op_type = "ReduceL1" if order == 1 else "ReduceL2"
    keepdims = ctx.attr(node, "keepdims")
    result = in_dtype(ctx, [ctx.input(node, 0)], dtype, arithmetic_dtype(dtype),
                       lambda ctx, x, work, out: reduce_to_output(ctx, node, op_type, x, axes,
                                                                  keepdims, out),
                       ctx.output(node) if out_dtype == dtype else None)
    if out_dtype != dtype:
        cast(ctx, result, out_dtype, ctx.output(node))


@converter("moments")
def moments(ctx: ConvertContext, node: Node) -> None:
    """Mean and (population) variance over ``axes`` (all when None)."""
    rank = len(input_shape(ctx, node, 0))
    axes = ctx.attr(node, "axes")
    axes = list(range(rank)) if not axes else sorted(normalize_axis(a, rank) for a in axes)
    keepdims = ctx.attr(node, "keepdims")
    x = ctx.input(node, 0)
    mean = reduce(ctx, "ReduceMean", x, axes, True)
    deviation = ctx.emit1("Sub", [x, mean])
    variance = reduce(ctx, "ReduceMean", ctx.emit1("Mul", [deviation, deviation]), axes, True)
    for index, value in enumerate((mean, variance)):
        if keepdims:
            ctx.emit1("Identity", [value], ctx.output(node, index))
        else:
            reshape(ctx, value, output_shape(ctx, node, index), output_batch_axes(ctx, node, index),
                    ctx.output(node, index))


# --- arg reductions and sorting --------------------------------------------------------------

def _flatten_if_no_axis(ctx: ConvertContext, node: Node, axis) -> tuple[str, int, bool]:
    """(data, axis, flattened): ``axis=None`` works on the flattened input."""
    data = ctx.input(node, 0)
    if axis is None:
        return reshape(ctx, data, (-1,)), 0, True
    return data, normalize_axis(axis, len(input_shape(ctx, node, 0))), False


@converter("argmax", "argmin", "argmax_channel")
def arg_reduction(ctx: ConvertContext, node: Node) -> None:
    """The first index of the extreme value, in MXNet's output dtype (the input's: float).
    ``argmax_channel`` is argmax over axis 1; a 1-D input gives shape (1,), never 0-d."""
    axis = 1 if node.op == "argmax_channel" else ctx.attr(node, "axis")
    keepdims = node.op != "argmax_channel" and ctx.attr(node, "keepdims")
    data, axis, flattened = _flatten_if_no_axis(ctx, node, axis)
    vector = len(input_shape(ctx, node, 0)) == 1
    op_type = "ArgMin" if node.op == "argmin" else "ArgMax"
    index = ctx.emit1(op_type, [data], axis=axis, keepdims=int(keepdims or flattened or vector))
    if flattened and keepdims:
        index = reshape(ctx, index, output_shape(ctx, node))
    cast(ctx, index, ctx.output_dtype(node), ctx.output(node))


def _top_k(ctx: ConvertContext, node: Node, data: str, axis: int, flattened: bool, k: int,
           largest: bool) -> tuple[str, str]:
    """TopK along ``axis``; ``k < 1`` means all (the length read at run time along the batch)."""
    shape = input_shape(ctx, node, 0)
    length = int(np.prod(shape)) if flattened else shape[axis]
    if k >= 1:
        count = ctx.int64s([min(k, length)], hint="k")
    elif not flattened and axis in input_batch_axes(ctx, node, 0):
        count = runtime_dims(ctx, data, [axis])
    elif flattened and input_batch_axes(ctx, node, 0):
        count = reshape(ctx, ctx.emit1("Size", [data]), (1,))
    else:
        count = ctx.int64s([length], hint="k")
    values, indices = ctx.emit("TopK", [data, count], 2, axis=axis, largest=int(largest), sorted=1)
    return values, indices


@converter("topk")
def topk(ctx: ConvertContext, node: Node) -> None:
    ret_typ = ctx.attr(node, "ret_typ")
    data, axis, flattened = _flatten_if_no_axis(ctx, node, ctx.attr(node, "axis"))
    values, indices = _top_k(ctx, node, data, axis, flattened, ctx.attr(node, "k"),
                             not ctx.attr(node, "is_ascend"))
    if ret_typ == "value":
        ctx.emit1("Identity", [values], ctx.output(node))
    elif ret_typ == "indices":
        cast(ctx, indices, ctx.output_dtype(node), ctx.output(node))
    elif ret_typ == "both":
        ctx.emit1("Identity", [values], ctx.output(node, 0))
        cast(ctx, indices, ctx.output_dtype(node, 1), ctx.output(node, 1))
    else:  # mask: 1 where an element is among the top k, in the input's dtype
        dtype = ctx.output_dtype(node)
        zeros = filled(ctx, ctx.emit1("Shape", [data]), 0, dtype)
        ones = filled(ctx, ctx.emit1("Shape", [indices]), 1, dtype)
        mask = ctx.emit1("ScatterElements", [zeros, indices, ones], axis=axis)
        if flattened:
            ctx.emit1("Reshape", [mask, ctx.emit1("Shape", [ctx.input(node, 0)])], ctx.output(node))
        else:
            ctx.emit1("Identity", [mask], ctx.output(node))


@converter("argsort")
def argsort(ctx: ConvertContext, node: Node) -> None:
    data, axis, flattened = _flatten_if_no_axis(ctx, node, ctx.attr(node, "axis"))
    _, indices = _top_k(ctx, node, data, axis, flattened, 0, not ctx.attr(node, "is_ascend"))
    cast(ctx, indices, ctx.output_dtype(node), ctx.output(node))


@converter("sort")
def sort(ctx: ConvertContext, node: Node) -> None:
    data, axis, flattened = _flatten_if_no_axis(ctx, node, ctx.attr(node, "axis"))
    values, _ = _top_k(ctx, node, data, axis, flattened, 0, not ctx.attr(node, "is_ascend"))
    ctx.emit1("Identity", [values], ctx.output(node))


# --- matrix products ------------------------------------------------------------------------

@converter("dot")
def dot(ctx: ConvertContext, node: Node) -> None:
    """A tensordot: the last axis of lhs (the first with ``transpose_a``) against the first axis
    of rhs (the last with ``transpose_b``); the other axes of lhs, then of rhs, make the result.

    lhs becomes (left..., K) and rhs (K, right) with right flattened: MatMul broadcasts over
    left, and a Reshape restores right's axes."""
    lhs_shape, rhs_shape = input_shape(ctx, node, 0), input_shape(ctx, node, 1)
    lhs, rhs = ctx.input(node, 0), ctx.input(node, 1)
    if ctx.attr(node, "transpose_a") and len(lhs_shape) > 1:
        lhs = ctx.emit1("Transpose", [lhs], perm=list(range(1, len(lhs_shape))) + [0])
    left_rank = max(len(lhs_shape) - 1, 0)
    if ctx.attr(node, "transpose_b") and len(rhs_shape) > 1:
        rhs = ctx.emit1("Transpose", [rhs], perm=[len(rhs_shape) - 1] + list(range(len(rhs_shape) - 1)))
    right_rank = len(rhs_shape) - 1
    if right_rank > 1:
        rhs = ctx.emit1("Reshape", [rhs, ctx.int64s([rhs_shape[0] if not ctx.attr(node, "transpose_b")
                                                     else rhs_shape[-1], -1], hint="shape")])
    out_shape = output_shape(ctx, node)
    if left_rank + right_rank == 0:  # vector . vector: a 0-d MatMul, shape (1,) in MXNet
        reshape(ctx, ctx.emit1("MatMul", [lhs, rhs]), (1,), output=ctx.output(node))
    elif right_rank == 0:
        # A vector operand is made a matrix: onnxruntime 1.32 fuses Transpose + MatMul with a
        # 1-D operand into a wrong FusedMatMul (A^T v came out as reshape(A) v), whether the
        # Transpose is this node's or the converter of an MXNet transpose before it.
        column = ctx.emit1("MatMul", [lhs, unsqueeze(ctx, rhs, [1])])
        squeeze(ctx, column, [-1], ctx.output(node))
    elif left_rank == 0:
        row = ctx.emit1("MatMul", [unsqueeze(ctx, lhs, [0]), rhs])
        if right_rank == 1:
            squeeze(ctx, row, [0], ctx.output(node))
        else:
            reshape(ctx, row, out_shape, output_batch_axes(ctx, node), ctx.output(node))
    elif right_rank == 1:
        ctx.emit1("MatMul", [lhs, rhs], ctx.output(node))
    else:
        product = ctx.emit1("MatMul", [lhs, rhs])
        dynamic = output_batch_axes(ctx, node)
        reshape(ctx, product, out_shape, dynamic, ctx.output(node),
                source_shape=out_shape[:left_rank], source_dynamic=frozenset(a for a in dynamic
                                                                             if a < left_rank))


def _last_two_swapped(ctx: ConvertContext, value: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return ctx.emit1("Transpose", [value], perm=perm)


def _batched_product(ctx: ConvertContext, node: Node, lhs: str, rhs: str,
                     output: str | None = None) -> str:
    """op(A) @ op(B) over the last two axes, the others being the batch."""
    if ctx.attr(node, "transpose_a"):
        lhs = _last_two_swapped(ctx, lhs, len(input_shape(ctx, node, 0)))
    if ctx.attr(node, "transpose_b"):
        rhs = _last_two_swapped(ctx, rhs, len(input_shape(ctx, node, 1)))
    return ctx.emit1("MatMul", [lhs, rhs], output)


@converter("batch_dot")
def batch_dot(ctx: ConvertContext, node: Node) -> None:
    _batched_product(ctx, node, ctx.input(node, 0), ctx.input(node, 1), ctx.output(node))


@converter("_linalg_gemm2", "_linalg_gemm")
def linalg_gemm(ctx: ConvertContext, node: Node) -> None:
    """alpha op(A) op(B) (+ beta C for gemm). The matrices lie on (``axis``, last axis), the
    other axes being the batch: another ``axis`` than -2 is moved next to the last one (every
    operand the same way) and moved back in the result."""
    rank = len(input_shape(ctx, node, 0))
    rows = normalize_axis(ctx.attr(node, "axis"), rank)
    perm = [a for a in range(rank) if a not in (rows, rank - 1)] + [rows, rank - 1]
    moved = perm != list(range(rank))
    operands = ctx.inputs(node)
    if moved:
        operands = [ctx.emit1("Transpose", [value], perm=perm) for value in operands]
    dtype, output = ctx.dtype(node, 0), ctx.output(node)
    alpha = float(ctx.attr(node, "alpha"))
    gemm = node.op == "_linalg_gemm"
    last = not moved and not gemm  # whether the step being emitted is the last one
    result = _batched_product(ctx, node, operands[0], operands[1],
                              output if last and alpha == 1 else None)
    if alpha != 1:
        result = ctx.emit1("Mul", [result, typed(ctx, alpha, dtype)], output if last else None)
    if gemm:
        addend = ctx.emit1("Mul", [operands[2], typed(ctx, ctx.attr(node, "beta"), dtype)])
        result = ctx.emit1("Add", [result, addend], None if moved else output)
    if moved:
        ctx.emit1("Transpose", [result], output, perm=[int(a) for a in np.argsort(perm)])
