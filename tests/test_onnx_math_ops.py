"""A user exports a model using MXNet's math ops to ONNX and gets what MXNet computes.

Each case builds a small symbol, writes it to disk with its params, loads it with graphopt,
exports it at opsets 13 and 17 (and the newest, where the ONNX form of the op changed), runs it
in onnxruntime and compares with MXNet: max |diff| / max |MXNet| <= 1e-5 (onnx_op_harness).
PITFALLS.md lines cited: "Comparison and logical ops return 0/1 in the *input* dtype ...",
"`_rminus_scalar` is `s - x`, `_rdiv_scalar` is `s / x`: decide by op type, never by node name",
"Reductions have `exclude` ...", "N-D `dot` is a tensordot ... `batch_dot` is the batched one".
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from graphopt.errors import UnsupportedOpError
from onnx_op_harness import NEWEST_OPSET, check, load, op_types

x = mx.sym.var("x")
y = mx.sym.var("y")
RNG = np.random.default_rng(7)


def normal(*shape, dtype="float32", scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(dtype)


def uniform(low, high, *shape, dtype="float32"):
    return RNG.uniform(low, high, shape).astype(dtype)


# --- binary ops --------------------------------------------------------------------------------

BINARY = [
    ("elemwise_add", mx.sym.elemwise_add), ("elemwise_sub", mx.sym.elemwise_sub),
    ("elemwise_mul", mx.sym.elemwise_mul), ("elemwise_div", mx.sym.elemwise_div),
    ("_maximum", mx.sym._internal._maximum), ("_minimum", mx.sym._internal._minimum),
    ("_hypot", mx.sym._internal._hypot), ("_grad_add", mx.sym._internal._grad_add),
    ("_equal", mx.sym._internal._equal), ("_not_equal", mx.sym._internal._not_equal),
    ("_greater", mx.sym._internal._greater), ("_greater_equal", mx.sym._internal._greater_equal),
    ("_lesser", mx.sym._internal._lesser), ("_lesser_equal", mx.sym._internal._lesser_equal),
    ("_logical_and", mx.sym._internal._logical_and), ("_logical_or", mx.sym._internal._logical_or),
    ("_logical_xor", mx.sym._internal._logical_xor),
]

BROADCAST = ["broadcast_add", "broadcast_sub", "broadcast_mul", "broadcast_div", "broadcast_mod",
             "broadcast_power", "broadcast_maximum", "broadcast_minimum", "broadcast_hypot",
             "broadcast_equal", "broadcast_not_equal", "broadcast_greater",
             "broadcast_greater_equal", "broadcast_lesser", "broadcast_lesser_equal",
             "broadcast_logical_and", "broadcast_logical_or", "broadcast_logical_xor"]


def _comparable_pair(shape_a, shape_b, dtype="float32"):
    """Values from a small set, so that equal elements (and zeros, for the logical ops) occur."""
    a = RNG.integers(-2, 3, shape_a).astype(dtype)
    b = RNG.integers(-2, 3, shape_b).astype(dtype)
    return a, b


@pytest.mark.parametrize("name,function", BINARY, ids=[b[0] for b in BINARY])
def test_elementwise_binary_ops_match_mxnet(name, function, tmp_path):
    a, b = _comparable_pair((2, 3, 4), (2, 3, 4))
    check(function(x, y), tmp_path, {"x": a, "y": b})


@pytest.mark.parametrize("name", BROADCAST)
def test_broadcast_ops_match_mxnet_and_keep_the_batch_dynamic(name, tmp_path):
    a, b = _comparable_pair((1, 3, 4), (1, 1, 4))
    if name in ("broadcast_power",):
        a = np.abs(a) + 0.5
    a3, b3 = _comparable_pair((3, 3, 4), (3, 1, 4))
    if name == "broadcast_power":
        a3 = np.abs(a3) + 0.5
    check(getattr(mx.sym, name)(x, y), tmp_path, {"x": a, "y": b}, other_batch={"x": a3, "y": b3})


def test_comparisons_on_float_inputs_return_float_zero_one(tmp_path):
    """PITFALLS: comparison ops return 0/1 in the *input* dtype, not bool."""
    a, b = _comparable_pair((4, 5), (4, 5))
    models = check(mx.sym.broadcast_greater(x, y), tmp_path, {"x": a, "y": b})
    for model in models.values():
        assert op_types(model)[-1] == "Cast"


@pytest.mark.parametrize("dtype", ["int32", "int64", "float64"])
@pytest.mark.parametrize("name", ["broadcast_equal", "broadcast_lesser_equal", "broadcast_logical_xor",
                                  "broadcast_add", "broadcast_mul", "broadcast_maximum"])
def test_binary_ops_keep_integer_and_double_dtypes(name, dtype, tmp_path):
    a, b = _comparable_pair((3, 4), (3, 4), dtype)
    check(getattr(mx.sym, name)(x, y), tmp_path, {"x": a, "y": b})


def test_broadcast_mod_has_the_sign_of_the_divisor_and_zero_for_a_zero_divisor(tmp_path):
    a = np.array([[5, -5, 5.5, -5.5, 3, 0, 7.25, -7.25]], dtype="float32")
    b = np.array([[3, 3, -3, -3, 0, 2, -0.5, 2.5]], dtype="float32")
    check(mx.sym.broadcast_mod(x, y), tmp_path, {"x": a, "y": b})


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_integer_mod_and_division_match_mxnet(dtype, tmp_path):
    """MXNet integer division truncates towards zero; integer mod is Python's, 0 for a zero divisor."""
    a = np.array([[7, -7, 7, -7, 5, 0]], dtype=dtype)
    b = np.array([[2, 2, -2, -2, 0, 3]], dtype=dtype)
    check(mx.sym.broadcast_mod(x, y), tmp_path, {"x": a, "y": b})
    b_nonzero = np.array([[2, 2, -2, -2, 3, 3]], dtype=dtype)
    check(mx.sym.broadcast_div(x, y), tmp_path, {"x": a, "y": b_nonzero})


def test_add_n_sums_any_number_of_inputs(tmp_path):
    z = mx.sym.var("z")
    check(mx.sym.add_n(x, y, z), tmp_path,
          {"x": normal(2, 3), "y": normal(2, 3), "z": normal(2, 3)})


def test_add_n_of_integers(tmp_path):
    z = mx.sym.var("z")
    ints = {k: RNG.integers(-9, 9, (2, 3)).astype("int32") for k in "xyz"}
    check(mx.sym.add_n(x, y, z), tmp_path, ints)


# --- scalar ops --------------------------------------------------------------------------------

SCALAR = ["_plus_scalar", "_minus_scalar", "_rminus_scalar", "_mul_scalar", "_div_scalar",
          "_rdiv_scalar", "_power_scalar", "_rpower_scalar", "_maximum_scalar", "_minimum_scalar",
          "_mod_scalar", "_rmod_scalar", "_hypot_scalar", "_equal_scalar", "_not_equal_scalar",
          "_greater_scalar", "_greater_equal_scalar", "_lesser_scalar", "_lesser_equal_scalar",
          "_logical_and_scalar", "_logical_or_scalar", "_logical_xor_scalar"]


def _scalar_input(op, dtype="float32"):
    if op in ("_power_scalar",):
        return uniform(0.5, 2, 2, 5, dtype=dtype)
    if op in ("_rdiv_scalar", "_rmod_scalar"):
        return (RNG.integers(1, 4, (2, 5)) * RNG.choice([-1, 1], (2, 5))).astype(dtype)
    return RNG.integers(-3, 4, (2, 5)).astype(dtype)


@pytest.mark.parametrize("scalar_value", [2.0, -1.5, 0.0])
@pytest.mark.parametrize("op", SCALAR)
def test_scalar_ops_match_mxnet(op, scalar_value, tmp_path):
    if op in ("_div_scalar", "_mod_scalar") and scalar_value == 0:
        pytest.skip("division by a zero scalar")
    if op == "_rpower_scalar" and scalar_value <= 0:
        scalar_value = 1.5
    function = getattr(mx.sym._internal, op)
    check(function(x, scalar=scalar_value), tmp_path, {"x": _scalar_input(op)})


@pytest.mark.parametrize("op", ["_rminus_scalar", "_rdiv_scalar", "_rpower_scalar", "_rmod_scalar"])
def test_reversed_scalar_ops_follow_the_op_type_not_the_node_name(op, tmp_path):
    """PITFALLS: `_rminus_scalar` is `s - x` whatever the node is called (the bundled exporter
    reads the order from the name, so a node named 'sub' is reversed wrongly there)."""
    function = getattr(mx.sym._internal, op)
    symbol = function(x, scalar=3.0, name="sub")
    check(symbol, tmp_path, {"x": _scalar_input(op)})
    # and a forward op whose name looks reversed stays forward
    forward = mx.sym._internal._minus_scalar(x, scalar=3.0, name="_rminusscalar7")
    check(forward, tmp_path, {"x": _scalar_input(op)})


@pytest.mark.parametrize("op", ["_plus_scalar", "_mul_scalar", "_div_scalar", "_greater_equal_scalar",
                                "_rdiv_scalar", "_power_scalar"])
def test_scalar_ops_on_integers_truncate_the_scalar(op, tmp_path):
    """MXNet applies ``DType(scalar)``: int32 x + 2.5 adds 2, and x >= 1.5 compares with 1."""
    data = np.array([[1, 2, -3, 4]], dtype="int32")
    check(getattr(mx.sym._internal, op)(x, scalar=2.5), tmp_path, {"x": data})


def test_scalar_ops_keep_float16(tmp_path):
    data = normal(2, 4, dtype="float16")
    check(mx.sym._internal._plus_scalar(x, scalar=0.1) * 3, tmp_path, {"x": data}, tolerance=1e-3)


# --- unary ops ---------------------------------------------------------------------------------

# op -> input domain (low, high) where MXNet's result is finite
UNARY = {
    "abs": (-3, 3), "negative": (-3, 3), "reciprocal": (0.5, 3), "sqrt": (0, 4), "rsqrt": (0.2, 4),
    "cbrt": (-8, 8), "rcbrt": (0.3, 8), "square": (-3, 3), "exp": (-3, 3), "expm1": (-3, 3),
    "log": (0.1, 5), "log1p": (-0.9, 5), "log2": (0.1, 5), "log10": (0.1, 5), "sin": (-3, 3),
    "cos": (-3, 3), "tan": (-1.2, 1.2), "arcsin": (-0.99, 0.99), "arccos": (-0.99, 0.99),
    "arctan": (-3, 3), "sinh": (-3, 3), "cosh": (-3, 3), "tanh": (-3, 3), "arcsinh": (-3, 3),
    "arccosh": (1.01, 5), "arctanh": (-0.95, 0.95), "sigmoid": (-5, 5), "relu": (-3, 3),
    "softsign": (-3, 3), "erf": (-2, 2), "erfinv": (-0.999, 0.999), "ceil": (-3, 3),
    "floor": (-3, 3), "trunc": (-3, 3), "fix": (-3, 3), "sign": (-3, 3), "round": (-3, 3),
    "rint": (-3, 3), "degrees": (-3, 3), "radians": (-180, 180), "gamma": (-3.5, 6),
    "gammaln": (0.05, 20), "logical_not": (-1, 1),
}


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_ops_match_mxnet(op, tmp_path):
    low, high = UNARY[op]
    data = uniform(low, high, 1, 4, 25)
    if op == "logical_not":
        data = RNG.integers(-1, 2, (1, 4, 25)).astype("float32")
    if op == "gamma":  # away from the poles at non-positive integers
        data = np.where(np.abs(data - np.round(data)) < 0.05, data + 0.1, data).astype("float32")
    other = uniform(low, high, 3, 4, 25)
    if op == "logical_not":
        other = RNG.integers(-1, 2, (3, 4, 25)).astype("float32")
    if op == "gamma":
        other = np.where(np.abs(other - np.round(other)) < 0.05, other + 0.1, other).astype("float32")
    check(getattr(mx.sym, op)(x), tmp_path, {"x": data}, other_batch={"x": other})


def test_expm1_and_log1p_are_accurate_near_zero(tmp_path):
    """exp(x) - 1 in float32 has relative error ~1e-3 at x ~ 1e-4; Kahan's forms do not."""
    data = (uniform(-1, 1, 2, 50) * np.float32(1e-4)).astype("float32")
    check(mx.sym.expm1(x), tmp_path, {"x": data})
    check(mx.sym.log1p(x), tmp_path, {"x": data})


@pytest.mark.parametrize("op", ["round", "rint", "fix", "trunc", "ceil", "floor"])
def test_rounding_at_ties_matches_mxnet(op, tmp_path):
    """MXNet rounds half away from zero (round) and half down (rint); ONNX Round is half-even."""
    ties = np.array([[-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, 0.49999997, -0.49999997,
                      2.4999998, 8388609.0, -8388609.0, 0.0, 1e-8]], dtype="float32")
    check(getattr(mx.sym, op)(x), tmp_path, {"x": ties})


@pytest.mark.parametrize("op", ["round", "rint", "ceil", "floor", "fix", "abs", "sign", "negative",
                                "square"])
def test_unary_ops_on_integers(op, tmp_path):
    check(getattr(mx.sym, op)(x), tmp_path, {"x": RNG.integers(-5, 6, (3, 4)).astype("int32")})


@pytest.mark.parametrize("a_min,a_max", [(-0.5, 0.5), (0.0, 10.0), (-1.0, -1.0)])
def test_clip(a_min, a_max, tmp_path):
    check(mx.sym.clip(x, a_min=a_min, a_max=a_max), tmp_path, {"x": normal(2, 10)})


def test_clip_on_integers_truncates_the_bounds(tmp_path):
    data = RNG.integers(-5, 6, (2, 10)).astype("int32")
    check(mx.sym.clip(x, a_min=-2.7, a_max=3.9), tmp_path, {"x": data})


@pytest.mark.parametrize("attrs", [{}, {"alpha": 0.3, "beta": 0.4}])
def test_hard_sigmoid(attrs, tmp_path):
    check(mx.sym.hard_sigmoid(x, **attrs), tmp_path, {"x": normal(2, 30, scale=4)})


@pytest.mark.parametrize("sigma", [1.0, 2.0, 0.5])
def test_smooth_l1(sigma, tmp_path):
    check(mx.sym.smooth_l1(x, scalar=sigma), tmp_path, {"x": normal(2, 30, scale=2)})


# --- reductions ---------------------------------------------------------------------------------

REDUCE_ATTRS = [
    {}, {"axis": 1}, {"axis": -1}, {"axis": (0, 2)}, {"axis": ()}, {"keepdims": True},
    {"axis": 1, "keepdims": True}, {"axis": 1, "exclude": True}, {"axis": (0, 2), "exclude": True},
    {"axis": (1,), "exclude": True, "keepdims": True}, {"exclude": True}, {"axis": (0, 1, 2)},
]


@pytest.mark.parametrize("attrs", REDUCE_ATTRS, ids=str)
@pytest.mark.parametrize("op", ["sum", "mean", "prod", "max", "min", "nansum", "nanprod"])
def test_reductions_over_the_attribute_space(op, attrs, tmp_path):
    data = uniform(0.5, 1.5, 2, 3, 4) * RNG.choice([-1, 1], (2, 3, 4)).astype("float32")
    if op.startswith("nan"):
        data[0, 1, 2] = np.nan
        data[1, 0, 0] = np.nan
    opsets = (13, 17, NEWEST_OPSET)
    check(getattr(mx.sym, op)(x, **attrs), tmp_path, {"x": data}, opsets=opsets)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "prod"])
def test_reductions_keep_the_batch_dynamic(op, tmp_path):
    symbol = getattr(mx.sym, op)(x, axis=0, exclude=True)
    check(symbol, tmp_path, {"x": normal(1, 3, 4)}, other_batch={"x": normal(3, 3, 4)})


@pytest.mark.parametrize("dtype", ["int32", "int64"])
@pytest.mark.parametrize("op", ["sum", "mean", "max", "min", "prod"])
def test_integer_reductions(op, dtype, tmp_path):
    data = RNG.integers(-4, 5, (2, 3, 4)).astype(dtype)
    check(getattr(mx.sym, op)(x, axis=1), tmp_path, {"x": data})


@pytest.mark.parametrize("attrs", [{}, {"ord": 1}, {"axis": 1}, {"axis": (0, 2), "ord": 1},
                                   {"axis": -1, "keepdims": True}, {"keepdims": True},
                                   {"axis": 1, "out_dtype": "float32"}], ids=str)
def test_norm(attrs, tmp_path):
    """(An ``out_dtype`` other than the input's fails in MXNet 1.9.1 itself: 'data type do not
    match'; only the explicit same dtype is checked.)"""
    check(mx.sym.norm(x, **attrs), tmp_path, {"x": normal(2, 3, 4)}, opsets=(13, 17, NEWEST_OPSET))


@pytest.mark.parametrize("attrs", [{"axes": (1,)}, {"axes": (0, 2), "keepdims": True}, {"axes": (2,)}],
                         ids=str)
def test_moments(attrs, tmp_path):
    mean, variance = mx.sym.moments(x, **attrs)
    check(mx.sym.Group([mean, variance]), tmp_path, {"x": normal(2, 3, 4)},
          opsets=(13, 17, NEWEST_OPSET))


# --- arg reductions and sorting -----------------------------------------------------------------

def _with_ties(*shape):
    """Small integers, so that ties occur. MXNet sorts each row with std::sort, which keeps ties
    in index order (as ONNX TopK does) only for rows of at most 16 elements (insertion sort):
    the rows here are that short. argmax/argmin always take the first index."""
    return RNG.integers(0, 4, shape).astype("float32")


def _distinct(*shape):
    """Values without ties, for sorts over the flattened input (longer than 16 elements)."""
    return RNG.permutation(int(np.prod(shape))).reshape(shape).astype("float32")


@pytest.mark.parametrize("attrs", [{}, {"axis": 1}, {"axis": -1, "keepdims": True}, {"axis": 0},
                                   {"keepdims": True}], ids=str)
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_argmax_argmin_return_float_first_indices(op, attrs, tmp_path):
    check(getattr(mx.sym, op)(x, **attrs), tmp_path, {"x": _with_ties(2, 3, 5)})


def test_argmax_keeps_the_input_dtype_and_the_batch_dynamic(tmp_path):
    check(mx.sym.argmax(x, axis=1), tmp_path, {"x": RNG.integers(0, 9, (1, 6)).astype("int32")},
          other_batch={"x": RNG.integers(0, 9, (3, 6)).astype("int32")})


def test_argmax_channel(tmp_path):
    check(mx.sym.argmax_channel(x), tmp_path, {"x": _with_ties(3, 5)})


TOPK_ATTRS = [
    {}, {"k": 2}, {"k": 2, "ret_typ": "value"}, {"k": 2, "ret_typ": "both"},
    {"k": 3, "ret_typ": "mask"}, {"k": 2, "is_ascend": True, "ret_typ": "both"},
    {"k": 0, "ret_typ": "both"}, {"k": 2, "axis": 1, "ret_typ": "both"},
    {"k": 3, "axis": None, "ret_typ": "both"}, {"k": 2, "dtype": "int32"},
    {"k": 2, "dtype": "float16"}, {"k": 2, "axis": 0, "ret_typ": "mask"},
    {"k": 4, "axis": None, "ret_typ": "mask"},
]


@pytest.mark.parametrize("attrs", TOPK_ATTRS, ids=str)
def test_topk_over_the_attribute_space(attrs, tmp_path):
    outputs = mx.sym.topk(x, **attrs)
    symbol = mx.sym.Group(list(outputs)) if attrs.get("ret_typ") == "both" else outputs
    data = _distinct(2, 3, 6) if "axis" in attrs and attrs["axis"] is None else _with_ties(2, 3, 6)
    check(symbol, tmp_path, {"x": data})


@pytest.mark.parametrize("attrs", [{}, {"is_ascend": False}, {"axis": 1}, {"axis": None},
                                   {"dtype": "int64"}], ids=str)
def test_argsort(attrs, tmp_path):
    data = _distinct(2, 3, 6) if "axis" in attrs and attrs["axis"] is None else _with_ties(2, 3, 6)
    check(mx.sym.argsort(x, **attrs), tmp_path, {"x": data})


@pytest.mark.parametrize("attrs", [{}, {"is_ascend": False}, {"axis": 0}, {"axis": None}], ids=str)
def test_sort(attrs, tmp_path):
    check(mx.sym.sort(x, **attrs), tmp_path, {"x": normal(2, 3, 6)})


def test_sort_along_the_batch_axis_stays_dynamic(tmp_path):
    check(mx.sym.sort(x, axis=0), tmp_path, {"x": normal(2, 5)}, other_batch={"x": normal(4, 5)})


# --- matrix products ---------------------------------------------------------------------------

DOT_CASES = [
    ((3, 4), (4, 5), {}), ((4, 3), (4, 5), {"transpose_a": True}),
    ((3, 4), (5, 4), {"transpose_b": True}),
    ((4, 3), (5, 4), {"transpose_a": True, "transpose_b": True}),
    ((4,), (4,), {}), ((4,), (4, 5), {}), ((3, 4), (4,), {}),
    ((2, 3, 4), (4, 5), {}),  # the N-D case: a tensordot, not a batched matmul
    ((2, 3, 4), (4, 5, 6), {}), ((3, 4), (4, 5, 6), {}),
    ((4, 2, 3), (4, 5), {"transpose_a": True}), ((2, 3, 4), (5, 6, 4), {"transpose_b": True}),
    ((4, 2, 3), (6, 5, 4), {"transpose_a": True, "transpose_b": True}),
]


@pytest.mark.parametrize("lhs_shape,rhs_shape,attrs", DOT_CASES, ids=str)
def test_dot_is_a_tensordot(lhs_shape, rhs_shape, attrs, tmp_path):
    check(mx.sym.dot(x, y, **attrs), tmp_path, {"x": normal(*lhs_shape), "y": normal(*rhs_shape)})


@pytest.mark.parametrize("rhs_shape", [(4, 5), (4, 5, 6)])
def test_dot_keeps_the_batch_dynamic(rhs_shape, tmp_path):
    weight = mx.sym.var("w")
    check(mx.sym.dot(x, weight), tmp_path, {"x": normal(1, 3, 4)}, {"w": normal(*rhs_shape)},
          other_batch={"x": normal(3, 3, 4)})


@pytest.mark.parametrize("attrs", [{}, {"transpose_a": True}, {"transpose_b": True},
                                   {"transpose_a": True, "transpose_b": True}], ids=str)
def test_batch_dot(attrs, tmp_path):
    lhs = (2, 4, 3) if attrs.get("transpose_a") else (2, 3, 4)
    rhs = (2, 5, 4) if attrs.get("transpose_b") else (2, 4, 5)
    check(mx.sym.batch_dot(x, y, **attrs), tmp_path, {"x": normal(*lhs), "y": normal(*rhs)},
          other_batch={"x": normal(3, *lhs[1:]), "y": normal(3, *rhs[1:])})


@pytest.mark.parametrize("attrs", [{}, {"transpose_a": True, "alpha": 2.5}, {"transpose_b": True}],
                         ids=str)
def test_linalg_gemm2(attrs, tmp_path):
    lhs = (2, 4, 3) if attrs.get("transpose_a") else (2, 3, 4)
    rhs = (2, 5, 4) if attrs.get("transpose_b") else (2, 4, 5)
    check(mx.sym.linalg.gemm2(x, y, **attrs), tmp_path, {"x": normal(*lhs), "y": normal(*rhs)})


def test_linalg_gemm(tmp_path):
    c = mx.sym.var("c")
    check(mx.sym.linalg.gemm(x, y, c, alpha=0.5, beta=2.0, transpose_b=True), tmp_path,
          {"x": normal(2, 3, 4), "y": normal(2, 5, 4), "c": normal(2, 3, 5)})


@pytest.mark.parametrize("lhs,rhs,out,attrs", [
    ((3, 2, 4), (4, 2, 5), (3, 2, 5), {"axis": -3}),
    ((3, 2, 2, 4), (4, 2, 2, 5), (3, 2, 2, 5), {"axis": 0, "transpose_b": True}),
    ((2, 3, 2, 4), (2, 4, 2, 5), (2, 3, 2, 5), {"axis": 1, "alpha": 0.5, "beta": 2.0}),
], ids=str)
def test_linalg_gemm_with_rows_on_another_axis(lhs, rhs, out, attrs, tmp_path):
    """``axis`` names the rows' axis, the columns being the last; the other axes are the batch."""
    c = mx.sym.var("c")
    if attrs.get("transpose_b"):
        rhs = rhs[-1:] + rhs[1:-1] + rhs[:1]  # (5, ..., 4): rows and columns swapped
    inputs = {"x": normal(*lhs), "y": normal(*rhs)}
    gemm2_attrs = {k: v for k, v in attrs.items() if k != "beta"}
    check(mx.sym.linalg.gemm2(x, y, **gemm2_attrs), tmp_path, inputs)
    check(mx.sym.linalg.gemm(x, y, c, **attrs), tmp_path, {**inputs, "c": normal(*out)})


@pytest.mark.parametrize("lhs_shape,rhs_shape,attrs", [
    ((4, 3), (4,), {"transpose_a": True}), ((4,), (5, 4), {"transpose_b": True}),
    ((4, 3), (5, 4), {"transpose_a": True, "transpose_b": True}),
], ids=str)
def test_dot_of_a_transposed_matrix_and_a_vector(lhs_shape, rhs_shape, attrs, tmp_path):
    """onnxruntime 1.32 fuses Transpose + MatMul with a 1-D operand into a wrong product (A^T v
    came out as reshape(A, (3, 4)) v): the converter never gives MatMul a 1-D operand."""
    check(mx.sym.dot(x, y, **attrs), tmp_path, {"x": normal(*lhs_shape), "y": normal(*rhs_shape)})


@pytest.mark.parametrize("build,lhs_shape,rhs_shape", [
    (lambda: mx.sym.dot(mx.sym.transpose(x), y), (4, 3), (4,)),
    (lambda: mx.sym.dot(mx.sym.SwapAxis(x, dim1=0, dim2=1), y), (4, 3), (4,)),
    (lambda: mx.sym.dot(y, mx.sym.transpose(x)), (3, 4), (4,)),
    (lambda: mx.sym.dot(mx.sym.transpose(x, axes=(0, 2, 1)), y), (2, 4, 3), (4,)),
], ids=["transpose-vector", "swapaxis-vector", "vector-transpose", "3d-transpose-vector"])
def test_dot_of_a_vector_and_a_transpose_from_another_op(build, lhs_shape, rhs_shape, tmp_path):
    """The same onnxruntime fusion, where the Transpose comes from the converter of the MXNet
    op before the dot (a user's transpose or SwapAxis)."""
    check(build(), tmp_path, {"x": normal(*lhs_shape), "y": normal(*rhs_shape)})


# --- every dtype MXNet takes ---------------------------------------------------------------------
# MXNet computes its math functions of any dtype but double in float32 and casts the result back
# (src/operator/math_functions-inl.h): sqrt of an int32 is the truncated sqrtf. onnxruntime has no
# 8-bit integer Add/Mul/ReduceSum and no double Tan/Asin/Erf...: the converter widens those.

def _integer_domain(op, dtype, shape=(2, 3, 5)):
    """Integers where MXNet's float result is finite (then truncated to ``dtype``)."""
    low, high = UNARY[op]
    low = max(int(np.floor(low)), 0 if dtype == "uint8" else -128)
    high = min(int(np.ceil(high)), 127)
    if op in ("log", "log2", "log10", "rsqrt", "reciprocal", "rcbrt", "arccosh", "gamma",
              "gammaln"):
        low = max(low, 1)  # (0 and negatives give inf or NaN, which an integer cannot hold)
    if op in ("arctanh", "erfinv"):
        low, high = 0, 0
    return RNG.integers(low, high + 1, shape).astype(dtype)


@pytest.mark.parametrize("op", sorted(set(UNARY) - {"logical_not"}))
def test_unary_ops_on_int32_compute_in_float_and_truncate(op, tmp_path):
    check(getattr(mx.sym, op)(x), tmp_path, {"x": _integer_domain(op, "int32")})


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("op", ["sqrt", "exp", "log1p", "cbrt", "degrees", "square", "negative",
                                "relu", "abs", "sigmoid", "round"])
def test_unary_ops_on_8_bit_integers(op, dtype, tmp_path):
    data = _integer_domain(op, dtype)
    if op in ("square", "negative", "degrees", "exp"):  # values that wrap around in the type
        data = RNG.integers(0 if dtype == "uint8" else -20, 21, (2, 3, 5)).astype(dtype)
        if op == "exp":
            data = np.clip(data, 0, 5).astype(dtype)
    check(getattr(mx.sym, op)(x), tmp_path, {"x": data})


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_ops_on_float64(op, tmp_path):
    """onnxruntime's CPU Tan, Asin, Sinh, Erf, Softsign ... are float only: those go through float32
    (relative error ~1e-7, well inside the tolerance)."""
    low, high = UNARY[op]
    data = RNG.uniform(low, high, (2, 25))
    if op == "gamma":  # away from the poles
        data = np.where(np.abs(data - np.round(data)) < 0.05, data + 0.1, data)
    if op == "logical_not":
        data = RNG.integers(-1, 2, (2, 25)).astype("float64")
    check(getattr(mx.sym, op)(x), tmp_path, {"x": data})


@pytest.mark.parametrize("op", ["expm1", "log1p", "rsqrt", "cbrt", "rcbrt", "erfinv", "gammaln",
                                "log2", "smooth_l1", "hard_sigmoid", "sigmoid"])
def test_float16_math_is_computed_in_float32(op, tmp_path):
    """A chain of float16 ops rounds at every step; MXNet rounds once. Tolerance 1e-3: float16's
    step is 2^-10 ~ 1e-3 relative, and one rounding may fall either side."""
    low, high = UNARY.get(op, (-3, 3))
    data = uniform(max(low, -3), min(high, 3), 2, 40, dtype="float16")
    check(getattr(mx.sym, op)(x), tmp_path, {"x": data}, tolerance=1e-3)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("name", BROADCAST)
def test_binary_ops_on_8_bit_integers_wrap_like_mxnet(name, dtype, tmp_path):
    """ONNX Add/Mul/Div take no 8-bit integers before opset 14 (onnxruntime none at all): int32,
    then a wrapping Cast back, as C's arithmetic on int8 does (100 + 100 is -56)."""
    low = 0 if dtype == "uint8" else -100
    a = RNG.integers(low, 101, (2, 3, 4)).astype(dtype)
    b = RNG.integers(low, 101, (1, 3, 1)).astype(dtype)
    if name in ("broadcast_div", "broadcast_mod", "broadcast_power"):
        b = RNG.integers(1, 4, (1, 3, 1)).astype(dtype)
    if name == "broadcast_power":
        a = RNG.integers(0 if dtype == "uint8" else -4, 5, (2, 3, 4)).astype(dtype)
    check(getattr(mx.sym, name)(x, y), tmp_path, {"x": a, "y": b})


def test_hypot_of_integers_truncates_the_float_result(tmp_path):
    a = np.array([[3, 5, -8, 1, 0, 7]], dtype="int32")
    b = np.array([[4, 12, 6, 1, 0, -2]], dtype="int32")
    check(mx.sym.broadcast_hypot(x, y), tmp_path, {"x": a, "y": b})
    check(mx.sym._internal._hypot_scalar(x, scalar=2.5), tmp_path, {"x": a})


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8"])
@pytest.mark.parametrize("op", SCALAR)
def test_scalar_ops_with_is_int_false_work_in_float64(op, dtype, tmp_path):
    """``is_int=False`` (written by MXNet's numpy front end) on an integer tensor: the scalar is
    not truncated and the output is float64."""
    data = RNG.integers(1, 6, (2, 5)).astype(dtype)
    symbol = getattr(mx.sym._internal, op)(x, scalar=2.5, is_int=False)
    check(symbol, tmp_path, {"x": data})


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("op", ["_plus_scalar", "_rminus_scalar", "_mul_scalar", "_div_scalar",
                                "_rdiv_scalar", "_power_scalar", "_mod_scalar", "_hypot_scalar",
                                "_greater_scalar"])
def test_scalar_ops_on_8_bit_integers(op, dtype, tmp_path):
    data = RNG.integers(1, 120, (2, 5)).astype(dtype)
    if op == "_power_scalar":
        data = RNG.integers(1, 6, (2, 5)).astype(dtype)
    check(getattr(mx.sym._internal, op)(x, scalar=3.7), tmp_path, {"x": data})


def test_add_n_of_8_bit_integers_wraps(tmp_path):
    inputs = {"x": np.array([[100, -100, 127]], dtype="int8"),
              "y": np.array([[100, -100, 1]], dtype="int8")}
    check(mx.sym.add_n(x, y, x), tmp_path, inputs)


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("op", ["sum", "mean", "prod", "nansum", "nanprod", "max", "min"])
def test_8_bit_integer_reductions_wrap_like_mxnet(op, dtype, tmp_path):
    """MXNet sums in the type: int8 [100, 100, 100, -7] sums to 37 (293 wrapped), and the mean
    is that wrapped sum over the count (9)."""
    data = np.array([[100, 100, 100, 7], [120, 3, 90, 5], [1, 2, 3, 4]], dtype=dtype)
    if dtype == "int8":
        data[0, 3], data[1, 1] = -7, -3
    check(getattr(mx.sym, op)(x, axis=1), tmp_path, {"x": data})
    if "prod" not in op:  # (the product of all 12 overflows int32, where the converter works)
        check(getattr(mx.sym, op)(x), tmp_path, {"x": data})


def test_float16_sums_match_mxnet(tmp_path):
    """4096 ones: a float16 running sum would stop at 2048."""
    data = np.ones((2, 4096), dtype="float16")
    check(mx.sym.sum(x, axis=1), tmp_path, {"x": data})
    check(mx.sym.mean(x, axis=1), tmp_path, {"x": uniform(0, 1, 2, 4096, dtype="float16")},
          tolerance=1e-3)


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8"])
def test_l1_norm_of_integers(dtype, tmp_path):
    data = RNG.integers(0 if dtype == "uint8" else -100, 101, (2, 3, 4)).astype(dtype)
    check(mx.sym.norm(x, ord=1, axis=1), tmp_path, {"x": data})


def test_l2_norm_of_integers_is_refused(tmp_path):
    """MXNet's integer L2 norm scales its running sum by integer division (norm of int32 [3, 4]
    is 4, not 5), which is not worth copying: refused, not silently different."""
    from graphopt.onnx.context import CONVERTERS, ConvertContext, Unsupported
    data = np.array([[3, 4]], dtype="int32")
    graph = load(mx.sym.norm(x, axis=1), tmp_path, {"x": data})
    node = graph.op_nodes("norm")[0]
    with pytest.raises(Unsupported, match="L2 norm of int32"):
        CONVERTERS[node.op](ConvertContext(graph, 17), node)


@pytest.mark.parametrize("dtype", ["int32", "int8", "uint8", "float16"])
def test_clip_bounds_outside_the_integer_range(dtype, tmp_path):
    """MXNet compares in float: a uint8 clip to [-2.5, 300] keeps every value (DType(-2.5) would
    wrap to 254)."""
    low = 0 if dtype == "uint8" else -100
    data = RNG.integers(low, 101, (2, 10)).astype(dtype)
    check(mx.sym.clip(x, a_min=-2.5, a_max=300), tmp_path, {"x": data})
    check(mx.sym.clip(x, a_min=-300, a_max=3.5), tmp_path, {"x": data})


def test_smooth_l1_without_scalar_uses_sigma_one(tmp_path):
    check(mx.sym.smooth_l1(x), tmp_path, {"x": normal(2, 30, scale=2)})


@pytest.mark.parametrize("dtype", ["int32", "int8"])
def test_gamma_of_integers_truncates_the_float32_result(dtype, tmp_path):
    """MXNet's gamma(5) of an integer is 24: tgammaf gives 24.000002, truncated. Through float64
    the same Lanczos sum gives 23.99999999 and truncates to 23; the converter rounds to float32
    first."""
    data = np.array([[1, 2, 3, 4, 5]], dtype=dtype)
    check(mx.sym.gamma(x), tmp_path, {"x": data})


# --- shapes MXNet gives that ONNX does not ----------------------------------------------------

@pytest.mark.parametrize("attrs", [{"axis": 0}, {"axis": -1, "keepdims": True}, {}], ids=str)
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_arg_reduction_of_a_vector_has_shape_one(op, attrs, tmp_path):
    """MXNet has no 0-d arrays: argmax of a (6,) vector over axis 0 is (1,)."""
    check(getattr(mx.sym, op)(x, **attrs), tmp_path, {"x": _with_ties(6)})


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 4, 5), (4, 6)])
def test_argmax_channel_reduces_axis_one(shape, tmp_path):
    """argmax_channel of (2, 3, 4) is (2, 4): axis 1, not the last one."""
    check(mx.sym.argmax_channel(x), tmp_path, {"x": _with_ties(*shape)})


# --- MXNet's NumPy interface (npx.set_np()) ------------------------------------------------------
# A Gluon model written with F.np / F.npx exports _np_* / _npi_* / _npx_* ops, whose rules differ
# from the legacy ops': operands of two dtypes are promoted, integer / integer is float,
# comparisons give bool, matmul is NumPy's; functions of integers are computed as the legacy ops
# compute them.

def numpy_symbol(build) -> mx.sym.Symbol:
    """The symbol ``build(np, npx, x, y)`` makes in NumPy mode, as ``export`` writes it."""
    with mx.util.np_shape(True), mx.util.np_array(True):
        a, b = mx.sym.var("x").as_np_ndarray(), mx.sym.var("y").as_np_ndarray()
        outputs = build(mx.sym.np, mx.sym.npx, a, b)
        return mx.sym.Group([o.as_nd_ndarray() for o in outputs])


def integers_and_floats(batch):
    return {"x": RNG.integers(-4, 5, (batch, 3)).astype("int32"),
            "y": uniform(0.5, 2, batch, 3)}


def test_numpy_interface_arithmetic_promotes_and_compares_to_bool(tmp_path):
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        a + b, a * b - b, a / b, a / a, b / 2, 2 / b, 3 - a, a ** 2, np_.minimum(b, 1.5), a > 0,
        b >= b / 2, b != 1.0, a == 1, np_.power(b, b)])
    check(symbol, tmp_path, integers_and_floats(2), other_batch=integers_and_floats(3))


def test_numpy_interface_functions_reductions_argmax(tmp_path):
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        np_.exp(b), np_.log(b), np_.sqrt(a * a), np_.abs(a), -b, np_.square(a), np_.tanh(b),
        npx.relu(a), npx.sigmoid(b), np_.sum(a, axis=1), np_.mean(a, axis=0, keepdims=True),
        np_.max(b, axis=-1), np_.min(a, axis=(0, 1), keepdims=True), np_.prod(b, axis=1),
        np_.argmax(b, axis=1), np_.argmin(a, axis=0)])
    check(symbol, tmp_path, integers_and_floats(2), other_batch=integers_and_floats(3))


def test_numpy_interface_shapes_matmul_where(tmp_path):
    def build(np_, npx, a, b):
        c = np_.reshape(b, (-1, 3, 1))
        return [c, np_.transpose(c), np_.transpose(c, (1, 0, 2)), np_.squeeze(c, axis=2),
                np_.concatenate([b, c[:, :, 0]], axis=1), np_.stack([b, b], axis=1),
                np_.matmul(b, np_.transpose(b)), np_.matmul(c, np_.ones((1, 4))),
                np_.matmul(b, np_.ones((3,))), np_.where(a > 0, b, b * 2), np_.where(b > 1, b, 0.0),
                np_.where(a > 0, 1.0, b), np_.ones_like(a), np_.full_like(b, 2.5), np_.copy(a),
                npx.reshape(c, (-2, -5)), b + np_.zeros((3,)) + np_.full((1, 3), 2.0)]
    check(numpy_symbol(build), tmp_path, integers_and_floats(2), other_batch=integers_and_floats(3))


def test_numpy_interface_8bit_reductions_and_0d_results(tmp_path):
    """int8 sums and products wrap like MXNet's (ONNX has no 8-bit ReduceSum: int32, then back);
    a reduction over every axis is 0-d, a shape NumPy semantics give it."""
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        np_.sum(a, axis=1), np_.prod(a, axis=1), np_.max(a, axis=0), np_.sum(b), np_.mean(a)])
    inputs = {"x": RNG.integers(-100, 100, (2, 3)).astype("int8"), "y": uniform(0.5, 2, 2, 3)}
    check(symbol, tmp_path, inputs)


def test_numpy_interface_reshape_to_a_zero_size_axis_needs_opset_14(tmp_path):
    symbol = numpy_symbol(lambda np_, npx, a, b: [np_.reshape(b, (0, 6))])
    inputs = {"y": np.zeros((0, 3), np.float32)}
    check(symbol, tmp_path, inputs, opsets=(14, 17))
    with pytest.raises(UnsupportedOpError, match="opset 14"):
        check(symbol, tmp_path, inputs, opsets=(13,))


def positive_integers_and_floats(batch):
    return {"x": RNG.integers(1, 9, (batch, 3)).astype("int32"), "y": uniform(0.2, 0.9, batch, 3)}


def test_numpy_interface_more_functions_keep_mxnet_dtypes(tmp_path):
    """MXNet 1.9.1 keeps an integer input's dtype for these (log10 of int32 is int32, computed
    in float and truncated); logical_not gives bool."""
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        np_.log10(b), np_.log2(a), np_.log1p(b), np_.expm1(b), np_.tan(b), np_.sinh(a),
        np_.cosh(b), np_.arcsin(b), np_.arccos(b), np_.arctan(a), np_.arcsinh(b),
        np_.arccosh(b + 1), np_.arctanh(b), np_.cbrt(a), np_.rint(b * 4), np_.trunc(b * 4 - 2),
        np_.fix(a), np_.degrees(b), np_.radians(a), np_.logical_not(a - 2), np_.logical_not(b)])
    check(symbol, tmp_path, positive_integers_and_floats(2), other_batch=positive_integers_and_floats(3))


def test_numpy_interface_nan_inf_tests_and_nan_to_num(tmp_path):
    def build(np_, npx, a, b):
        c = np_.log(b)  # NaN for b < 0, -inf for b == 0, +inf after 1 / 0
        special = np_.concatenate([c, 1 / b], axis=1)
        return [np_.isnan(special), np_.isinf(special), np_.isposinf(special),
                np_.isneginf(special), np_.isfinite(special), np_.isnan(a), np_.isfinite(a),
                np_.nan_to_num(special), np_.nan_to_num(special, nan=1.5, posinf=9.0, neginf=-9.0),
                np_.nan_to_num(a)]

    def inputs(batch):
        y = uniform(-1, 1, batch, 3)
        y[0, 0] = 0.0
        return {"x": RNG.integers(-4, 5, (batch, 3)).astype("int32"), "y": y}
    check(numpy_symbol(build), tmp_path, inputs(2), other_batch=inputs(3))


def test_numpy_interface_around_rounds_half_to_even(tmp_path):
    """MXNet's around scales by 10 step by step and rounds ties to even (0.5 -> 0, 2.5 -> 2)."""
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        np_.around(b), np_.around(b, 1), np_.around(b * 100, -1), np_.around(a), np_.round(b, 2)])

    def inputs(batch):
        ties = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.25, 1.35, 15.0, 25.0], np.float32)
        y = np.concatenate([ties, uniform(-30, 30, batch * 3 - 9 + 9)])[:batch * 3]
        return {"x": RNG.integers(-9, 9, (batch, 3)).astype("int32"), "y": y.reshape(batch, 3)}
    check(symbol, tmp_path, inputs(3), other_batch=inputs(4))


@pytest.mark.parametrize("dtype", ["int32", "int64", "int8", "uint8", "bool"])
def test_numpy_interface_bitwise_not(dtype, tmp_path):
    symbol = numpy_symbol(lambda np_, npx, a, b: [np_.bitwise_not(a), np_.invert(a)])
    values = lambda batch: {"x": RNG.integers(0 if dtype in ("uint8", "bool") else -100,
                                              2 if dtype == "bool" else 100, (batch, 3)).astype(dtype)}
    check(symbol, tmp_path, values(2), other_batch=values(3))


def test_numpy_interface_layout_ops(tmp_path):
    def build(np_, npx, a, b):
        c = np_.reshape(b, (-1, 2, 3))
        return [np_.moveaxis(c, 0, -1), np_.moveaxis(c, (0, 2), (2, 0)), np_.flip(c, 1),
                np_.flip(c, (0, 2)), *np_.hsplit(c, 2), np_.roll(c, 1, axis=2),
                np_.roll(c, (1, -1), axis=(1, 2)), np_.tril(c), np_.tril(c, -1), np_.tril(b, 2),
                np_.pad(c, ((0, 0), (1, 2), (2, 1))), np_.pad(c, ((0, 0), (1, 1), (0, 2)), mode="edge"),
                np_.pad(c, ((0, 0), (1, 1), (2, 2)), mode="reflect"),
                np_.pad(a, ((1, 0), (0, 1)), constant_values=7), *np_.atleast_2d(b, c),
                *np_.atleast_3d(b, c)]
    inputs = lambda batch: {"x": RNG.integers(-4, 5, (batch, 6)).astype("int32"),
                            "y": normal(batch, 6)}
    check(numpy_symbol(build), tmp_path, inputs(2), other_batch=inputs(4))


def test_numpy_interface_layout_ops_on_vectors(tmp_path):
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        np_.broadcast_to(b[0], (4, 6)), *np_.hsplit(b[0], 2), np_.roll(b[0], 4),
        *np_.atleast_1d(b[0, 0], b), *np_.atleast_2d(b[0], b), *np_.atleast_3d(b[0], b)])
    check(symbol, tmp_path, {"y": normal(2, 6)})


@pytest.mark.parametrize("stack", ["vstack", "column_stack"])
def test_numpy_interface_stacks(stack, tmp_path):
    """One kind per graph: MXNet 1.9.1's own shape inference fails on a vstack and a dstack of
    the same input, on stacks of vectors, and on any hstack or dstack (so those have no
    converter)."""
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        getattr(np_, stack)([b, b, b]), getattr(np_, stack)([np_.reshape(b * 2, (-1, 2, 3))] * 2)])
    check(symbol, tmp_path, {"y": normal(2, 6)}, other_batch={"y": normal(3, 6)})


@pytest.mark.parametrize("dtype", ["float32", "int32", "int8"])
def test_numpy_interface_cumsum(dtype, tmp_path):
    """8-bit integers wrap like MXNet's (the sum runs in int32 in ONNX)."""
    symbol = numpy_symbol(lambda np_, npx, a, b: [np_.cumsum(a, axis=1), np_.cumsum(a, axis=0),
                                                  np_.cumsum(a[0]), np_.cumsum(a, dtype="float64")])
    values = lambda batch: {"x": (RNG.integers(-100, 100, (batch, 5)) if dtype != "float32"
                                  else normal(batch, 5)).astype(dtype)}
    check(symbol, tmp_path, values(2), other_batch=values(3))


def test_numpy_interface_contractions(tmp_path):
    """dot of N-D arrays pairs the last axis of a with the second-to-last of b (not matmul's
    batching); tensordot and einsum as NumPy's (MXNet's dot takes floats of one dtype only)."""
    def build(np_, npx, a, b):
        c = np_.reshape(b, (-1, 2, 3))
        m = np_.reshape(np_.arange(12), (3, 4)) * 0.1
        w = np_.reshape(np_.arange(24), (6, 4)) * 0.1
        return [np_.dot(b, w), np_.dot(c, m), np_.dot(c, np_.ones((4, 3, 2))), np_.dot(b[0], b[1]),
                np_.dot(c, b[0, :3]), np_.dot(b, b[0, 0]),
                np_.tensordot(c, c, axes=([1, 2], [1, 2])), np_.tensordot(c, m, axes=1),
                np_.tensordot(b, w, axes=([1], [0])),
                np_.einsum("nij,jk->nik", c, m), np_.einsum("nij,nij->n", c, c),
                np_.einsum("ij", b), np_.einsum("...j,jk", c, m), np_.einsum("nii->n", c[:, :, :2])]
    check(numpy_symbol(build), tmp_path, {"y": normal(2, 6)}, other_batch={"y": normal(3, 6)})


def test_numpy_interface_diagonals_and_trace(tmp_path):
    def build(np_, npx, a, b):
        c = np_.reshape(b, (-1, 2, 3))
        return [np_.diag(b), np_.diag(b, 1), np_.diag(b, -1), np_.diag(b[0]), np_.diag(b[0], -2),
                np_.diagonal(c), np_.diagonal(c, 1, 1, 2), np_.diagonal(c, -1, 2, 0),
                np_.trace(b), np_.trace(c, axis1=1, axis2=2), np_.trace(c, 1, 2, 1),
                np_.trace(a, -1)]
    inputs = lambda batch: {"x": RNG.integers(-4, 5, (batch, 6)).astype("int32"),
                            "y": normal(batch, 6)}
    check(numpy_symbol(build), tmp_path, inputs(2), other_batch=inputs(4))


def test_numpy_interface_arange_eye_identity(tmp_path):
    symbol = numpy_symbol(lambda np_, npx, a, b: [
        b + np_.arange(3), b * np_.arange(1, 2.5, 0.5), np_.arange(2, dtype="int32") + a[:, :2],
        np_.eye(3, k=1) + 1, np_.eye(2, 3, dtype="int32"), np_.identity(3) * 2])
    check(symbol, tmp_path, integers_and_floats(2), other_batch=integers_and_floats(3))


def test_numpy_interface_all_any_std_var_average_norm(tmp_path):
    def build(np_, npx, a, b):
        c = np_.reshape(b, (-1, 2, 3))
        return [np_.all(a, axis=1), np_.any(a, axis=0, keepdims=True), np_.all(b > 0),
                np_.any(c > 1, axis=(1, 2)), np_.std(b, axis=1), np_.var(c, axis=(0, 2), keepdims=True),
                np_.var(b), np_.std(c, axis=2, ddof=1), np_.var(b, axis=0, ddof=1),
                np_.average(b, axis=1), np_.average(c), np_.average(c, axis=2, weights=c * c),
                np_.average(b, axis=1, weights=np_.arange(1, 7)),
                *np_.average(c, axis=1, weights=np_.ones(2) * 2, returned=True),
                np_.linalg.norm(b), np_.linalg.norm(c, axis=2), np_.linalg.norm(c, axis=(1, 2)),
                np_.linalg.norm(b, ord=1, axis=1), np_.linalg.norm(b, ord=2, axis=0, keepdims=True)]
    inputs = lambda batch: {"x": RNG.integers(-1, 2, (batch, 6)).astype("int32"),
                            "y": normal(batch, 6)}
    check(numpy_symbol(build), tmp_path, inputs(2), other_batch=inputs(3))


def test_numpy_interface_hypot(tmp_path):
    """(MXNet's hypot takes floats of one dtype only.)"""
    symbol = numpy_symbol(lambda np_, npx, a, b: [np_.hypot(b, b * 2), np_.hypot(b, -b[0])])
    check(symbol, tmp_path, {"y": normal(2, 3)}, other_batch={"y": normal(3, 3)})


@pytest.mark.parametrize("dtype", ["int32", "int64", "int8", "uint8", "bool"])
def test_numpy_interface_bitwise_ops(dtype, tmp_path):
    """Integers need opset 18 (ONNX's Bitwise* ops); booleans take the logical ops."""
    def build(np_, npx, a, b):
        outputs = [np_.bitwise_and(a, b), np_.bitwise_or(a, b), np_.bitwise_xor(a, b)]
        if dtype != "bool":  # (MXNet refuses a scalar with a boolean array)
            outputs += [np_.bitwise_and(a, 6), np_.bitwise_or(a, 3), np_.bitwise_xor(a, -1 if dtype != "uint8" else 255)]
        return outputs
    low, high = {"uint8": (0, 256), "bool": (0, 2)}.get(dtype, (-100, 100))
    values = lambda batch: {name: RNG.integers(low, high, (batch, 3)).astype(dtype) for name in "xy"}
    opsets = (13, 18) if dtype == "bool" else (18,)
    check(numpy_symbol(build), tmp_path, values(2), other_batch=values(3), opsets=opsets)
    if dtype != "bool":
        with pytest.raises(UnsupportedOpError, match="opset 18"):
            check(numpy_symbol(build), tmp_path, values(2), opsets=(17,))
