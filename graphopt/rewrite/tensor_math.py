"""Built-in tensor math for the rules. Per-channel factors are computed in float64 and rounded
once to the weight's dtype; results have the dtype of the weight they replace.

MXNet's BatchNorm at inference (src/operator/nn/batch_norm.cc):
    y = (x - moving_mean) / sqrt(moving_var + eps) * gamma + beta
with gamma taken as 1 when ``fix_gamma`` (the default!) whatever value is stored, and eps
defaulting to 1e-3 (PITFALLS.md, "BatchNorm"). Both come from the op schema, never from here.
"""

from __future__ import annotations

import numpy as np

from graphopt.rewrite.match import Ref
from graphopt.rewrite.registry import NoRewrite, register_function


def _value(x: Ref | np.ndarray | None) -> np.ndarray | None:
    if x is None:
        return None
    return x.value if isinstance(x, Ref) else np.asarray(x)


class _Arena:
    """Hands out new weight arrays as slices of 32 MB blocks.

    Writing a fresh array costs a page fault per 4 KB page, which in this VM made resnet152_v1's
    58M folded weights take 0.39 s instead of 0.10 s; numpy asks the kernel for huge pages for a
    block this big. The arrays are read-only, so sharing a block is safe; a block is freed when
    its last array is (a small array kept alive can keep up to 32 MB alive)."""

    BLOCK_BYTES = 32 << 20
    SMALLEST = 64 << 10   # smaller arrays are allocated as usual

    def __init__(self):
        self.block: np.ndarray | None = None
        self.used = 0

    def empty(self, shape: tuple, dtype: np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not self.SMALLEST <= size <= self.BLOCK_BYTES:
            return np.empty(shape, dtype)
        if self.block is None or self.used + size > self.block.size:
            self.block, self.used = np.empty(self.BLOCK_BYTES, np.uint8), 0
        view = self.block[self.used:self.used + size].view(dtype).reshape(shape)
        self.used += -(-size // 64) * 64  # keep every array 64-byte aligned
        return view


_ARENA = _Arena()


def _scaled(values: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``values * factors`` in ``values``' dtype, the factors rounded to it first: the rounding
    MXNet's float32 BatchNorm applies to its scale. Measured against the float32 originals this
    is as close as float64 products rounded once (resnet50_v1 9.5e-6 vs 1.2e-5, resnet152_v1
    1.4e-4 vs 2.2e-4: both at the nets' own float32 noise) and 5x faster on resnet152_v1's 58M
    weights. The result is read-only, so the graph keeps it without another copy."""
    out = _ARENA.empty(values.shape, values.dtype)
    np.multiply(values, factors.astype(values.dtype), out=out)
    out.flags.writeable = False
    return out


@register_function(returns=("scale", "shift"))
def batchnorm_scale_shift(bn: Ref, gamma: Ref, beta: Ref, mean: Ref, var: Ref):
    """Per-channel ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale`` of an
    inference BatchNorm (float64; gamma = 1 when fix_gamma)."""
    eps = float(bn.attr("eps"))
    variance = _value(var).astype(np.float64)
    gamma_values = (np.ones_like(variance) if bn.attr("fix_gamma")
                    else _value(gamma).astype(np.float64))
    scale = gamma_values / np.sqrt(variance + eps)
    shift = _value(beta).astype(np.float64) - _value(mean).astype(np.float64) * scale
    return scale, shift


@register_function(returns="weight")
def scale_filters(weight: Ref, scale: np.ndarray) -> np.ndarray:
    """``weight`` with filter ``o`` (axis 0: Convolution's (O, I/g, kh, kw), FullyConnected's
    (out, in)) multiplied by ``scale[o]``."""
    values = _value(weight)
    if values.shape[0] != scale.shape[0]:
        raise NoRewrite(f"{weight.name} has {values.shape[0]} filters, the scale {scale.shape[0]}")
    return _scaled(values, scale.reshape((-1,) + (1,) * (values.ndim - 1)))


@register_function(returns="weight")
def scale_deconvolution_filters(weight: Ref, scale: np.ndarray, deconvolution: Ref) -> np.ndarray:
    """Deconvolution's weight (C_in, C_out/g, kh, kw) with output channel ``o`` scaled by
    ``scale[o]``: the output channels are axis 1 *within each group* of input channels."""
    values = _value(weight)
    groups = int(deconvolution.attr("num_group"))
    in_channels, out_per_group = values.shape[0], values.shape[1]
    if in_channels % groups or out_per_group * groups != scale.shape[0]:
        raise NoRewrite(f"{weight.name} {values.shape} does not fit {groups} groups of "
                        f"{scale.shape[0]} output channels")
    kernel = values.shape[2:]
    grouped = values.reshape((groups, in_channels // groups, out_per_group) + kernel)
    factors = scale.reshape((groups, 1, out_per_group) + (1,) * len(kernel))
    return _scaled(grouped, factors).reshape(values.shape)


@register_function(returns="bias")
def folded_bias(bias: Ref | None, scale: np.ndarray, shift: np.ndarray, like: Ref) -> np.ndarray:
    """``bias * scale + shift`` (a missing bias counts as zeros), in ``like``'s dtype."""
    values = _value(bias)
    base = np.zeros_like(scale) if values is None else values.astype(np.float64)
    return (base * scale + shift).astype(_value(like).dtype)


@register_function(returns="vector")
def along_channel_axis(vector: np.ndarray, bn: Ref) -> np.ndarray:
    """``vector`` (C,) shaped to broadcast along ``bn``'s axis, e.g. (1, C, 1, 1), in ``bn``'s
    dtype: the operand of a broadcast_mul/broadcast_add standing for a BatchNorm."""
    rank = len(bn.shape)
    axis = int(bn.attr("axis")) % rank
    shape = [1] * rank
    shape[axis] = vector.shape[0]
    return vector.reshape(shape).astype(bn.dtype)


def _reshape_codes(node: Ref) -> tuple[int, ...] | None:
    """The ``shape`` codes of a Reshape ((0, -1) for a Flatten), or None if it uses ``reverse``
    or the legacy ``target_shape``."""
    if node.op == "Flatten":
        return (0, -1)
    if node.attr("reverse") or node.attr("target_shape"):
        return None
    return tuple(node.attr("shape") or ())


@register_function(returns="shape")
def merged_reshape_shape(outer: Ref, inner: Ref) -> tuple[int, ...]:
    """The codes ``s`` with ``Reshape(x, s) == outer(inner(x))`` for every batch size.

    Codes walk a cursor over the input (PITFALLS.md, "Ops"): positive values and -1 do not look at
    the input, so they carry over; a 0 at position i copies the inner result's axis i, which is
    the inner code at i when that is positive, or x's axis i when it is 0 (provided no -2/-3/-4
    came before it). Anything else is left alone.
    """
    outer_codes, inner_codes = _reshape_codes(outer), _reshape_codes(inner)
    if outer_codes is None:
        raise NoRewrite(f"{outer.name} uses reverse or the legacy target_shape")
    if any(code < -1 for code in outer_codes):
        raise NoRewrite(f"{outer.name}'s codes {outer_codes} refer to {inner.name}'s axes")
    merged = []
    for i, code in enumerate(outer_codes):
        if code != 0:
            merged.append(code)
            continue
        if inner_codes is None or i >= len(inner_codes) or any(c < -1 for c in inner_codes[:i + 1]):
            raise NoRewrite(f"{outer.name} copies axis {i} of {inner.name}, whose codes "
                            f"{inner_codes} do not say it plainly")
        if inner_codes[i] == -1:
            raise NoRewrite(f"{outer.name} copies axis {i} of {inner.name}, which is inferred (-1)")
        merged.append(inner_codes[i])
    return tuple(merged)
