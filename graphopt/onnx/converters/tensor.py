"""tensor converters: shapes, layout, indexing, creation.

Also home of the lowering helpers the other families share (shapes that stay dynamic along the
batch, the opset-dependent Reduce form, typed constants, slices); they come first.

Shapes written into the model (a Reshape target, an Expand shape, a Split size) are computed
statically from MXNet's own shape inference, except along the axes that follow the batch size
when the model is exported with a dynamic batch: those are left to the runtime (``-1``, ``0``,
or a ``Shape``/``Gather`` of a tensor that has them). See :func:`batch_axes`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from onnx import TensorProto, numpy_helper

from graphopt.ir.graph import Node, Tensor
from graphopt.onnx.context import ConvertContext, Unsupported, converter, onnx_dtype

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min

# --- shapes and the dynamic batch -------------------------------------------------------------


def batch_axes(ctx: ConvertContext, tensor: Tensor) -> frozenset[int]:
    """Axes of ``tensor`` whose size follows the batch size of a dynamic-batch export.

    Found by MXNet itself: run its shape inference again with axis 0 of every input doubled
    and see which axes change. Empty for a static export or a model that only runs at its own
    batch size."""
    shape = ctx.graph.tensor_type(tensor).shape
    other = ctx.other_batch_shapes.get(tensor)
    if shape is None or other is None or len(other) != len(shape):
        return frozenset()
    return frozenset(i for i, (a, b) in enumerate(zip(shape, other)) if a != b)


def input_batch_axes(ctx: ConvertContext, node: Node, slot: int) -> frozenset[int]:
    return batch_axes(ctx, ctx.source(node, slot))


def output_batch_axes(ctx: ConvertContext, node: Node, index: int = 0) -> frozenset[int]:
    return batch_axes(ctx, Tensor(node.name, index))


def input_shape(ctx: ConvertContext, node: Node, slot: int) -> tuple[int, ...]:
    shape = ctx.shape(node, slot)
    if shape is None:
        raise Unsupported(f"the shape of input {slot} is unknown (load the model with input shapes)")
    return tuple(shape)


def output_shape(ctx: ConvertContext, node: Node, index: int = 0) -> tuple[int, ...]:
    shape = ctx.output_shape(node, index)
    if shape is None:
        raise Unsupported(f"the shape of output {index} is unknown (load the model with input shapes)")
    return tuple(shape)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def reshape_target(ctx: ConvertContext, shape: Sequence[int], dynamic: frozenset[int],
                   source_shape: Sequence[int] = (), source_dynamic: frozenset[int] = frozenset()
                   ) -> str:
    """An ONNX Reshape target for the static ``shape`` whose ``dynamic`` axes follow the batch:
    ``0`` where the axis is the source's axis at the same position, ``-1`` for one other."""
    target = list(shape)
    rest = []
    for axis in sorted(dynamic):
        if axis < len(source_shape) and axis in source_dynamic and source_shape[axis] == shape[axis]:
            target[axis] = 0
        else:
            rest.append(axis)
    if len(rest) > 1:
        raise Unsupported(f"the result has {len(rest)} axes that follow the batch size in "
                          f"different ways; export with dynamic_batch=False")
    for axis in rest:
        target[axis] = -1
    return ctx.int64s(target, hint="shape")


def reshape(ctx: ConvertContext, value: str, shape: Sequence[int],
            dynamic: frozenset[int] = frozenset(), output: str | None = None, source_shape: Sequence[int] = (),
            source_dynamic: frozenset[int] = frozenset()) -> str:
    target = reshape_target(ctx, shape, dynamic, source_shape, source_dynamic)
    return ctx.emit1("Reshape", [value, target], output)


def reshape_output(ctx: ConvertContext, node: Node, value: str, output: str | None = None,
                   index: int = 0, source_slot: int | None = 0) -> str:
    """Reshape ``value`` to the static output shape of ``node`` (dynamic along the batch)."""
    source_shape, source_dynamic = (), frozenset()
    if source_slot is not None:
        source_shape, source_dynamic = input_shape(ctx, node, source_slot), \
            input_batch_axes(ctx, node, source_slot)
    return reshape(ctx, value, output_shape(ctx, node, index), output_batch_axes(ctx, node, index),
                   output, source_shape, source_dynamic)


def runtime_dims(ctx: ConvertContext, value: str, axes: Sequence[int]) -> str:
    """The sizes of ``axes`` of ``value`` as a 1-D int64 value read at run time."""
    return ctx.emit1("Gather", [ctx.emit1("Shape", [value]), ctx.int64s(list(axes), hint="axes")],
                     axis=0)


def dims(ctx: ConvertContext, value: str, shape: Sequence[int], dynamic: frozenset[int],
         axes: Sequence[int]) -> str:
    """The sizes of ``axes`` of ``value`` as a 1-D int64 value: constants, unless one of them
    follows the batch, in which case read at run time."""
    if not any(axis in dynamic for axis in axes):
        return ctx.int64s([shape[axis] for axis in axes], hint="dims")
    return runtime_dims(ctx, value, axes)


def expand_target(ctx: ConvertContext, shape: Sequence[int], dynamic: frozenset[int]) -> str:
    """An ONNX Expand shape: static sizes, ``1`` (keep the input's size) along the batch axes.
    Only right when the input itself holds the batch-sized axes."""
    return ctx.int64s([1 if axis in dynamic else size for axis, size in enumerate(shape)],
                      hint="shape")


def slice_value(ctx: ConvertContext, value: str, starts: Sequence[int], ends: Sequence[int],
                axes: Sequence[int], steps: Sequence[int] | None = None,
                output: str | None = None) -> str:
    """ONNX Slice with constant starts/ends/axes (and steps)."""
    inputs = [value, ctx.int64s(starts, hint="starts"), ctx.int64s(ends, hint="ends"),
              ctx.int64s(axes, hint="axes")]
    if steps is not None:
        inputs.append(ctx.int64s(steps, hint="steps"))
    return ctx.emit1("Slice", inputs, output)


def unsqueeze(ctx: ConvertContext, value: str, axes: Sequence[int], output: str | None = None) -> str:
    return ctx.emit1("Unsqueeze", [value, ctx.int64s(list(axes), hint="axes")], output)


def squeeze(ctx: ConvertContext, value: str, axes: Sequence[int], output: str | None = None) -> str:
    return ctx.emit1("Squeeze", [value, ctx.int64s(list(axes), hint="axes")], output)


def cast(ctx: ConvertContext, value: str, dtype: str | np.dtype, output: str | None = None) -> str:
    return ctx.emit1("Cast", [value], output, to=onnx_dtype(dtype))


def cast_to_bool(ctx: ConvertContext, value: str, dtype: str | None) -> str:
    return value if dtype == "bool" else ctx.emit1("Cast", [value], to=TensorProto.BOOL)


def typed(ctx: ConvertContext, value, dtype: str | np.dtype, hint: str = "scalar") -> str:
    """A constant in ``dtype``, converted as MXNet does (``DType(value)``: truncation to ints)."""
    return ctx.constant(np.asarray(value, dtype=np.float64).astype(np.dtype(dtype)), hint=hint)


_AXES_INPUT_SINCE = {"ReduceSum": 13}  # every other Reduce* took axes as an input in opset 18


def reduce(ctx: ConvertContext, op_type: str, value: str, axes: Sequence[int], keepdims: bool,
           output: str | None = None) -> str:
    """``op_type`` (ReduceSum, ReduceMax ...) over ``axes``, in the form the opset wants."""
    if ctx.opset >= _AXES_INPUT_SINCE.get(op_type, 18):
        return ctx.emit1(op_type, [value, ctx.int64s(list(axes), hint="axes")], output,
                         keepdims=int(keepdims))
    return ctx.emit1(op_type, [value], output, axes=list(axes), keepdims=int(keepdims))


def axis_length(ctx: ConvertContext, node: Node, slot: int, axis: int) -> str:
    """The size of ``axis`` of input ``slot`` as a 1-element int64 value (static when it can be)."""
    return dims(ctx, ctx.input(node, slot), input_shape(ctx, node, slot),
                input_batch_axes(ctx, node, slot), [axis])


# --- reshaping and layout --------------------------------------------------------------------

@converter("Reshape")
def reshape_op(ctx: ConvertContext, node: Node) -> None:
    """Every code (0, -1, -2, -3, -4, ``reverse``, the deprecated ``target_shape``) is already
    resolved by MXNet's inference into the static output shape; only the batch stays dynamic."""
    reshape_output(ctx, node, ctx.input(node, 0), ctx.output(node))


@converter("reshape_like")
def reshape_like(ctx: ConvertContext, node: Node) -> None:
    ranges = [ctx.attr(node, k) for k in ("lhs_begin", "lhs_end", "rhs_begin", "rhs_end")]
    if all(r is None for r in ranges) and output_batch_axes(ctx, node):
        ctx.emit1("Reshape", [ctx.input(node, 0), ctx.emit1("Shape", [ctx.input(node, 1)])],
                  ctx.output(node))
        return
    reshape_output(ctx, node, ctx.input(node, 0), ctx.output(node))


@converter("transpose", "_np_transpose")
def transpose(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    axes = ctx.attr(node, "axes") or tuple(reversed(range(rank)))
    ctx.emit1("Transpose", [ctx.input(node, 0)], ctx.output(node),
              perm=[normalize_axis(a, rank) for a in axes])


@converter("SwapAxis")
def swap_axis(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    first, second = (normalize_axis(ctx.attr(node, k), rank) for k in ("dim1", "dim2"))
    perm = list(range(rank))
    perm[first], perm[second] = perm[second], perm[first]
    ctx.emit1("Transpose", [ctx.input(node, 0)], ctx.output(node), perm=perm)


@converter("expand_dims")
def expand_dims(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0)) + 1
    unsqueeze(ctx, ctx.input(node, 0), [normalize_axis(ctx.attr(node, "axis"), rank)], ctx.output(node))


@converter("squeeze")
def squeeze_op(ctx: ConvertContext, node: Node) -> None:
    """``axis=None`` drops every size-1 axis of the loaded shape, a batch axis of size 1 too:
    MXNet's result then has another rank at other batch sizes, and the export follows MXNet at
    the loaded one (onnxruntime refuses to squeeze a batch axis that is not 1). Squeezing every
    axis leaves shape (1,), as MXNet has no 0-d arrays."""
    shape = input_shape(ctx, node, 0)
    axis = ctx.attr(node, "axis")
    if axis is None:
        axes = [i for i, size in enumerate(shape) if size == 1]
    else:
        axis = axis if isinstance(axis, tuple) else (axis,)
        axes = sorted(normalize_axis(a, len(shape)) for a in axis)
    if len(axes) == len(shape):
        reshape(ctx, ctx.input(node, 0), (1,), output=ctx.output(node))
    elif not axes:
        ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))
    else:
        squeeze(ctx, ctx.input(node, 0), axes, ctx.output(node))


@converter("Concat", "_rnn_param_concat")
def concat(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    ctx.emit1("Concat", ctx.inputs(node), ctx.output(node),
              axis=normalize_axis(ctx.attr(node, "dim"), rank))


@converter("stack")
def stack(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0)) + 1
    axis = normalize_axis(ctx.attr(node, "axis"), rank)
    parts = [unsqueeze(ctx, value, [axis]) for value in ctx.inputs(node)]
    ctx.emit1("Concat", parts, ctx.output(node), axis=axis)


def _split_equal(ctx: ConvertContext, node: Node, count: int, axis: int, squeeze_axis: bool) -> None:
    """Equal parts: Split without sizes (opset 18 wants their number as ``num_outputs``)."""
    outputs = [ctx.output(node, i) for i in range(count)]
    parts = outputs if not squeeze_axis else [ctx.fresh(f"part{i}") for i in range(count)]
    ctx.emit("Split", [ctx.input(node, 0)], parts, axis=axis,
             num_outputs=count if ctx.opset >= 18 else None)
    if squeeze_axis:
        for part, output in zip(parts, outputs):
            squeeze(ctx, part, [axis], output)


@converter("SliceChannel")
def slice_channel(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    _split_equal(ctx, node, ctx.attr(node, "num_outputs"), normalize_axis(ctx.attr(node, "axis"), rank),
                 ctx.attr(node, "squeeze_axis"))


@converter("_split_v2")
def split_v2(ctx: ConvertContext, node: Node) -> None:
    """``sections`` > 0: equal parts; else ``indices`` are the start of each part."""
    shape = input_shape(ctx, node, 0)
    axis = normalize_axis(ctx.attr(node, "axis"), len(shape))
    squeeze_axis = ctx.attr(node, "squeeze_axis")
    sections = ctx.attr(node, "sections")
    if sections > 0:
        _split_equal(ctx, node, sections, axis, squeeze_axis)
        return
    starts = list(ctx.attr(node, "indices"))
    ends = starts[1:] + [INT64_MAX]
    for index, (start, end) in enumerate(zip(starts, ends)):
        output = ctx.output(node, index)
        part = slice_value(ctx, ctx.input(node, 0), [start], [end], [axis],
                           output=None if squeeze_axis else output)
        if squeeze_axis:
            squeeze(ctx, part, [axis], output)


@converter("slice")
def slice_op(ctx: ConvertContext, node: Node) -> None:
    """Python slicing per axis: ``None`` begin/end are the ends the step runs from/to."""
    begin, end = ctx.attr(node, "begin"), ctx.attr(node, "end")
    step = ctx.attr(node, "step") or ()
    starts, ends, axes, steps = [], [], [], []
    for axis, (b, e) in enumerate(zip(begin, end)):
        s = step[axis] if axis < len(step) and step[axis] is not None else 1
        if s == 0:
            raise Unsupported("slice step 0: MXNet refuses to run it and ONNX Slice forbids it")
        starts.append(b if b is not None else (0 if s > 0 else INT64_MAX))
        ends.append(e if e is not None else (INT64_MAX if s > 0 else INT64_MIN))
        axes.append(axis)
        steps.append(s)
    slice_value(ctx, ctx.input(node, 0), starts, ends, axes, steps, ctx.output(node))


@converter("slice_axis")
def slice_axis(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    end = ctx.attr(node, "end")
    slice_value(ctx, ctx.input(node, 0), [ctx.attr(node, "begin")], [INT64_MAX if end is None else end],
           [normalize_axis(ctx.attr(node, "axis"), rank)], output=ctx.output(node))


@converter("slice_like")
def slice_like(ctx: ConvertContext, node: Node) -> None:
    """Slice from 0 to the size of ``shape_like`` along ``axes`` (default: all of its axes)."""
    rank = len(input_shape(ctx, node, 0))
    like_rank = len(input_shape(ctx, node, 1))
    axes = ctx.attr(node, "axes") or tuple(range(min(rank, like_rank)))
    axes = [normalize_axis(a, rank) for a in axes]
    ends = dims(ctx, ctx.input(node, 1), input_shape(ctx, node, 1), input_batch_axes(ctx, node, 1),
                axes)
    starts = ctx.int64s([0] * len(axes), hint="starts")
    ctx.emit1("Slice", [ctx.input(node, 0), starts, ends, ctx.int64s(axes, hint="axes")],
              ctx.output(node))


@converter("Crop")
def crop(ctx: ConvertContext, node: Node) -> None:
    """Legacy NCHW crop to ``h_w`` (or to the second input's size), at ``offset`` or centred."""
    height, width = input_shape(ctx, node, 0)[2:4]
    out_height, out_width = output_shape(ctx, node)[2:4]
    if ctx.attr(node, "center_crop"):
        top, left = (height - out_height) // 2, (width - out_width) // 2
    else:
        top, left = ctx.attr(node, "offset")
    slice_value(ctx, ctx.input(node, 0), [top, left], [top + out_height, left + out_width], [2, 3],
           output=ctx.output(node))


# --- indexing --------------------------------------------------------------------------------

def _index(ctx: ConvertContext, node: Node, slot: int, length: str, mode: str) -> str:
    """Float or int indices as int64, clipped to [0, length) or wrapped (``mode``)."""
    index = ctx.input(node, slot)
    if ctx.dtype(node, slot) != "int64":
        index = cast(ctx, index, "int64")
    if mode == "clip":
        high = ctx.emit1("Sub", [length, ctx.int64s([1])])
        index = ctx.emit1("Max", [ctx.emit1("Min", [index, high]), ctx.int64s([0])])
    elif mode == "wrap":
        index = ctx.emit1("Mod", [index, length], fmod=0)
    return index


@converter("take")
def take(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    axis = normalize_axis(ctx.attr(node, "axis"), rank)
    index = _index(ctx, node, 1, axis_length(ctx, node, 0, axis), ctx.attr(node, "mode"))
    ctx.emit1("Gather", [ctx.input(node, 0), index], ctx.output(node), axis=axis)


@converter("pick")
def pick(ctx: ConvertContext, node: Node) -> None:
    """``out[..] = data[.., index[..], ..]`` along ``axis`` (MXNet refuses ``axis=None``)."""
    shape = input_shape(ctx, node, 0)
    axis = normalize_axis(ctx.attr(node, "axis"), len(shape))
    data = ctx.input(node, 0)
    index = _index(ctx, node, 1, axis_length(ctx, node, 0, axis), ctx.attr(node, "mode"))
    if len(input_shape(ctx, node, 1)) < len(shape):
        index = unsqueeze(ctx, index, [axis])
    if ctx.attr(node, "keepdims") or len(shape) == 1:  # MXNet has no 0-d result: (1,)
        ctx.emit1("GatherElements", [data, index], ctx.output(node), axis=axis)
    else:
        squeeze(ctx, ctx.emit1("GatherElements", [data, index], axis=axis), [axis], ctx.output(node))


@converter("batch_take")
def batch_take(ctx: ConvertContext, node: Node) -> None:
    """``out.flat[i] = a[i, indices.flat[i]]`` for a 2-D ``a``, indices clipped; the output has
    the indices' shape (any shape of ``a.shape[0]`` elements). MXNet reads past its buffer for
    an N-D ``a``, which is not lowered."""
    if len(input_shape(ctx, node, 0)) != 2:
        raise Unsupported("batch_take of an array that is not 2-D (MXNet reads past its buffer)")
    index = _index(ctx, node, 1, axis_length(ctx, node, 0, 1), "clip")
    column = ctx.emit1("Reshape", [index, ctx.int64s([-1, 1], hint="shape")])
    picked = ctx.emit1("GatherElements", [ctx.input(node, 0), column], axis=1)
    ctx.emit1("Reshape", [picked, ctx.emit1("Shape", [ctx.input(node, 1)])], ctx.output(node))


@converter("gather_nd")
def gather_nd(ctx: ConvertContext, node: Node) -> None:
    """MXNet's index tuples run along axis 0 of ``indices``; ONNX's along the last axis. MXNet
    reads ``int(index + size) % size``: a float index is shifted before it is truncated, which
    differs from truncating first for a negative fraction."""
    shape = input_shape(ctx, node, 1)
    index = ctx.input(node, 1)
    if np.dtype(ctx.dtype(node, 1)).kind == "f":
        sizes = unsqueeze(ctx, dims(ctx, ctx.input(node, 0), input_shape(ctx, node, 0),
                                    input_batch_axes(ctx, node, 0), range(shape[0])),
                          list(range(1, len(shape))))
        shifted = ctx.emit1("Add", [index, cast(ctx, sizes, ctx.dtype(node, 1))])
        index = ctx.emit1("Mod", [cast(ctx, shifted, "int64"), sizes], fmod=0)
    elif ctx.dtype(node, 1) != "int64":
        index = cast(ctx, index, "int64")
    index = ctx.emit1("Transpose", [index], perm=list(range(1, len(shape))) + [0])
    ctx.emit1("GatherND", [ctx.input(node, 0), index], ctx.output(node))


@converter("one_hot")
def one_hot(ctx: ConvertContext, node: Node) -> None:
    """``Equal`` against 0..depth-1: an index outside [0, depth) gives all ``off_value``, as in
    MXNet (ONNX OneHot would wrap negative indices)."""
    dtype = ctx.output_dtype(node)
    index = ctx.input(node, 0)
    if ctx.dtype(node, 0) != "int64":
        index = cast(ctx, index, "int64")
    positions = ctx.constant(np.arange(ctx.attr(node, "depth"), dtype=np.int64), hint="depth")
    hot = ctx.emit1("Equal", [unsqueeze(ctx, index, [-1]), positions])
    ctx.emit1("Where", [hot, typed(ctx, ctx.attr(node, "on_value"), dtype),
                        typed(ctx, ctx.attr(node, "off_value"), dtype)], ctx.output(node))


@converter("where")
def where(ctx: ConvertContext, node: Node) -> None:
    """A 1-D condition selects whole rows of ``x``/``y``."""
    condition = cast_to_bool(ctx, ctx.input(node, 0), ctx.dtype(node, 0))
    rank = len(input_shape(ctx, node, 1))
    if len(input_shape(ctx, node, 0)) == 1 and rank > 1:
        condition = unsqueeze(ctx, condition, list(range(1, rank)))
    ctx.emit1("Where", [condition, ctx.input(node, 1), ctx.input(node, 2)], ctx.output(node))


@converter("_contrib_boolean_mask")
def boolean_mask(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    mask = cast_to_bool(ctx, ctx.input(node, 1), ctx.dtype(node, 1))
    ctx.emit1("Compress", [ctx.input(node, 0), mask], ctx.output(node),
              axis=normalize_axis(ctx.attr(node, "axis"), rank))


# --- broadcasting and repetition -------------------------------------------------------------

@converter("tile")
def tile(ctx: ConvertContext, node: Node) -> None:
    """numpy's rule: short ``reps`` get leading 1s, a short input gets leading axes."""
    rank = len(input_shape(ctx, node, 0))
    reps = list(ctx.attr(node, "reps"))
    data = ctx.input(node, 0)
    if len(reps) > rank:
        data = unsqueeze(ctx, data, list(range(len(reps) - rank)))
    reps = [1] * (rank - len(reps)) + reps
    ctx.emit1("Tile", [data, ctx.int64s(reps, hint="reps")], ctx.output(node))


@converter("repeat")
def repeat(ctx: ConvertContext, node: Node) -> None:
    """Each element ``repeats`` times along ``axis`` (``None``: of the flattened input)."""
    shape = input_shape(ctx, node, 0)
    repeats, axis = ctx.attr(node, "repeats"), ctx.attr(node, "axis")
    data = ctx.input(node, 0)
    if axis is None:
        data, axis = reshape(ctx, data, (-1,)), 0
        shape = (int(np.prod(shape)),)
    axis = normalize_axis(axis, len(shape))
    spread = unsqueeze(ctx, data, [axis + 1])
    reps = [1] * (len(shape) + 1)
    reps[axis + 1] = repeats
    tiled = ctx.emit1("Tile", [spread, ctx.int64s(reps, hint="reps")])
    reshape_output(ctx, node, tiled, ctx.output(node), source_slot=None)


@converter("broadcast_to")
def broadcast_to(ctx: ConvertContext, node: Node) -> None:
    shape = output_shape(ctx, node)
    ctx.emit1("Expand", [ctx.input(node, 0), expand_target(ctx, shape, output_batch_axes(ctx, node))],
              ctx.output(node))


@converter("broadcast_axis")
def broadcast_axis(ctx: ConvertContext, node: Node) -> None:
    broadcast_to(ctx, node)


@converter("broadcast_like")
def broadcast_like(ctx: ConvertContext, node: Node) -> None:
    """To the shape of ``rhs`` (or its ``rhs_axes`` in place of ``lhs_axes``), read at run time
    where that shape follows the batch."""
    lhs_axes, rhs_axes = ctx.attr(node, "lhs_axes"), ctx.attr(node, "rhs_axes")
    shape = output_shape(ctx, node)
    dynamic = output_batch_axes(ctx, node)
    if not dynamic:
        target = ctx.int64s(shape, hint="shape")
    elif lhs_axes is None:
        target = ctx.emit1("Shape", [ctx.input(node, 1)])
    else:
        rank, rhs_rank = len(shape), len(input_shape(ctx, node, 1))
        taken = {normalize_axis(lhs, rank): normalize_axis(rhs, rhs_rank)
                 for lhs, rhs in zip(lhs_axes, rhs_axes)}
        rhs_sizes = ctx.emit1("Shape", [ctx.input(node, 1)])
        lhs_sizes = ctx.emit1("Shape", [ctx.input(node, 0)])
        parts = []
        for axis in range(rank):
            source, at = (rhs_sizes, taken[axis]) if axis in taken else (lhs_sizes, axis)
            parts.append(ctx.emit1("Gather", [source, ctx.int64s([at], hint="axis")], axis=0))
        target = ctx.emit1("Concat", parts, axis=0)
    ctx.emit1("Expand", [ctx.input(node, 0), target], ctx.output(node))


@converter("Pad")
def pad(ctx: ConvertContext, node: Node) -> None:
    """``pad_width`` is (before0, after0, before1, after1, ...); ONNX wants begins, then ends."""
    widths = list(ctx.attr(node, "pad_width"))
    mode = ctx.attr(node, "mode")
    inputs = [ctx.input(node, 0), ctx.int64s(widths[0::2] + widths[1::2], hint="pads")]
    if mode == "constant":
        inputs.append(typed(ctx, ctx.attr(node, "constant_value"), ctx.dtype(node, 0)))
    ctx.emit1("Pad", inputs, ctx.output(node), mode=mode)


# --- types and shapes as values ------------------------------------------------------------

@converter("Cast", "amp_cast")
def cast_op(ctx: ConvertContext, node: Node) -> None:
    cast(ctx, ctx.input(node, 0), ctx.output_dtype(node), ctx.output(node))


@converter("amp_multicast")
def amp_multicast(ctx: ConvertContext, node: Node) -> None:
    """Each input to the dtype MXNet chose for its output (the widest, or the narrowest)."""
    for index, value in enumerate(ctx.inputs(node)):
        cast(ctx, value, ctx.output_dtype(node, index), ctx.output(node, index))


@converter("_identity_with_attr_like_rhs", "cast_storage", "_contrib_gradientmultiplier")
def identity(ctx: ConvertContext, node: Node) -> None:
    """Ops that compute nothing at inference (dense storage, gradient-only effects)."""
    ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))


def filled(ctx: ConvertContext, shape: str, value: float, dtype: str, output: str | None = None) -> str:
    """A tensor of 1-D int64 ``shape`` holding ``value`` in ``dtype``."""
    fill = numpy_helper.from_array(np.asarray([value], dtype=np.float64).astype(dtype), "value")
    return ctx.emit1("ConstantOfShape", [shape], output, value=fill)


def _filled_like(ctx: ConvertContext, node: Node, value: float) -> None:
    filled(ctx, ctx.emit1("Shape", [ctx.input(node, 0)]), value, ctx.output_dtype(node),
           ctx.output(node))


@converter("zeros_like")
def zeros_like(ctx: ConvertContext, node: Node) -> None:
    _filled_like(ctx, node, 0)


@converter("ones_like")
def ones_like(ctx: ConvertContext, node: Node) -> None:
    _filled_like(ctx, node, 1)


@converter("shape_array")
def shape_array(ctx: ConvertContext, node: Node) -> None:
    ctx.emit1("Shape", [ctx.input(node, 0)], ctx.output(node))


@converter("size_array")
def size_array(ctx: ConvertContext, node: Node) -> None:
    """MXNet has no 0-d arrays: the size comes as shape (1,)."""
    reshape(ctx, ctx.emit1("Size", [ctx.input(node, 0)]), (1,), output=ctx.output(node))


# --- creation --------------------------------------------------------------------------------

def arange_values(ctx: ConvertContext, count: str, start: float, step: float, repeat: int,
                  dtype: str, output: str) -> str:
    """``start + (i // repeat) * step`` for i < count, with MXNet's arithmetic (``range_fwd``):
    ``start`` and ``step`` become ``dtype`` first, through int64 for the types C++ does not
    call signed (unsigned ones and float16's ``half_t``: truncated); integers are computed in
    int64 and wrapped into ``dtype``; float16 rounds the product, then the sum."""
    kind = np.dtype(dtype)
    if kind.kind == "u" or kind == np.float16:
        start, step = np.int64(start), np.int64(step)
    start, step = (np.asarray(v).astype(kind).item() for v in (start, step))
    positions = ctx.emit1("Range", [ctx.constant(np.int64(0)), ctx.emit1("Squeeze", [count]),
                                    ctx.constant(np.int64(1))])
    if repeat != 1:
        positions = ctx.emit1("Div", [positions, ctx.constant(np.int64(repeat))])
    if kind.kind == "f":
        compute = "float32" if kind == np.float16 else dtype
        positions = cast(ctx, positions, compute)
    else:
        compute = "int64"
    values = ctx.emit1("Mul", [positions, typed(ctx, step, compute)])
    if kind == np.float16:  # half_t(float(i / repeat) * float(step)), then a half_t sum
        values = cast(ctx, cast(ctx, values, dtype), compute)
    if compute == dtype:
        return ctx.emit1("Add", [values, typed(ctx, start, compute)], output)
    return cast(ctx, ctx.emit1("Add", [values, typed(ctx, start, compute)]), dtype, output)


@converter("_arange")
def arange(ctx: ConvertContext, node: Node) -> None:
    """range(start, stop, step), each value ``repeat`` times; without ``stop`` (and without
    ``infer_range``) it is range(0, start). The length is MXNet's inferred output length."""
    start = ctx.attr(node, "start")
    if ctx.attr(node, "stop") is None and not ctx.attr(node, "infer_range"):
        start = 0.0
    count = ctx.int64s([output_shape(ctx, node)[0]], hint="count")
    arange_values(ctx, count, start, ctx.attr(node, "step"), ctx.attr(node, "repeat"),
                  ctx.output_dtype(node), ctx.output(node))


@converter("_contrib_arange_like")
def arange_like(ctx: ConvertContext, node: Node) -> None:
    """An arange shaped like the input (or like its ``axis``), its length read at run time."""
    data, axis = ctx.input(node, 0), ctx.attr(node, "axis")
    start, step, repeat = (ctx.attr(node, k) for k in ("start", "step", "repeat"))
    dtype = ctx.output_dtype(node)
    if axis is not None:
        count = axis_length(ctx, node, 0, normalize_axis(axis, len(input_shape(ctx, node, 0))))
        arange_values(ctx, count, start, step, repeat, dtype, ctx.output(node))
        return
    count = reshape(ctx, ctx.emit1("Size", [data]), (1,))
    values = arange_values(ctx, count, start, step, repeat, dtype, ctx.fresh("flat"))
    ctx.emit1("Reshape", [values, ctx.emit1("Shape", [data])], ctx.output(node))


def created_shape(ctx: ConvertContext, node: Node, index: int = 0) -> str:
    """The run-time shape (1-D int64 value) of an output an op makes from nothing: zeros, ones,
    full, eye, random draws. Its shape attribute may leave axes to MXNet's inference (a 0),
    which fills them from elsewhere in the graph: a Gluon RNN layer's begin state is
    ``zeros(shape=(layers, 0, units))`` and its 0 is the batch. With a dynamic batch, the axes
    that follow it are computed from the batch size at run time."""
    tensor = Tensor(node.name, index)
    output_shape(ctx, node, index)  # (refuses an unknown shape)
    return ctx.runtime_shape(tensor, output_batch_axes(ctx, node, index),
                             ctx.other_batch_shapes.get(tensor))


@converter("_zeros", "_zeros_without_dtype")
def zeros(ctx: ConvertContext, node: Node) -> None:
    filled(ctx, created_shape(ctx, node), 0, ctx.output_dtype(node), ctx.output(node))


@converter("_ones")
def ones(ctx: ConvertContext, node: Node) -> None:
    filled(ctx, created_shape(ctx, node), 1, ctx.output_dtype(node), ctx.output(node))


@converter("_full")
def full(ctx: ConvertContext, node: Node) -> None:
    filled(ctx, created_shape(ctx, node), ctx.attr(node, "value"), ctx.output_dtype(node),
           ctx.output(node))


_EYE_LIKE_TYPES = ("float32", "float64", "int32", "int64")  # onnxruntime's EyeLike kernels


@converter("_eye")
def eye(ctx: ConvertContext, node: Node) -> None:
    """Ones on diagonal ``k`` (``M=0``: as many columns as rows, already in the shape); other
    dtypes (int8, uint8, float16 ...) are made in float32 and cast."""
    dtype = ctx.output_dtype(node)
    compute = dtype if dtype in _EYE_LIKE_TYPES else "float32"
    zero = filled(ctx, created_shape(ctx, node), 0, compute)
    if compute == dtype:
        ctx.emit1("EyeLike", [zero], ctx.output(node), k=ctx.attr(node, "k"))
    else:
        cast(ctx, ctx.emit1("EyeLike", [zero], k=ctx.attr(node, "k")), dtype, ctx.output(node))


def _drawn_dtype(ctx: ConvertContext, node: Node) -> str:
    """onnxruntime draws float32 and float64 only: float16 is drawn (and computed) in float32."""
    dtype = ctx.output_dtype(node)
    return dtype if dtype in ("float32", "float64") else "float32"


RANDOM_KERNELS_UNTIL = 21  # onnxruntime 1.32 has no kernel for the random ops' version 22


def _random_opset_check(ctx: ConvertContext, op_type: str) -> None:
    if ctx.opset > RANDOM_KERNELS_UNTIL:
        raise Unsupported(f"at opset {ctx.opset} {op_type} is its version 22, for which the pinned "
                          f"onnxruntime has no kernel; export at opset {RANDOM_KERNELS_UNTIL} "
                          "or lower")


def _draw(ctx: ConvertContext, node: Node, op_type: str, dtype: str | None = None, **attrs) -> str:
    """A Random* node, or its *Like form: shaped like input 0 for a ``_like`` op, or like a
    tensor of the run-time shape when the output follows a dynamic batch."""
    _random_opset_check(ctx, op_type)
    dtype = onnx_dtype(dtype or _drawn_dtype(ctx, node))
    if node.op.endswith("_like"):
        return ctx.emit1(f"{op_type}Like", [ctx.input(node, 0)], dtype=dtype, **attrs)
    if output_batch_axes(ctx, node):
        shaped = filled(ctx, created_shape(ctx, node), 0, "float32")
        return ctx.emit1(f"{op_type}Like", [shaped], dtype=dtype, **attrs)
    return ctx.emit1(op_type, [], dtype=dtype, shape=list(output_shape(ctx, node)), **attrs)


def _drawn_output(ctx: ConvertContext, node: Node, value: str) -> None:
    """``value``, in the drawn dtype, as the node's output in its own dtype."""
    if ctx.output_dtype(node) == _drawn_dtype(ctx, node):
        ctx.emit1("Identity", [value], ctx.output(node))
    else:
        cast(ctx, value, ctx.output_dtype(node), ctx.output(node))


@converter("_random_uniform", "_random_uniform_like")
def random_uniform(ctx: ConvertContext, node: Node) -> None:
    _drawn_output(ctx, node, _draw(ctx, node, "RandomUniform", low=float(ctx.attr(node, "low")),
                                   high=float(ctx.attr(node, "high"))))


@converter("_random_normal", "_random_normal_like")
def random_normal(ctx: ConvertContext, node: Node) -> None:
    _drawn_output(ctx, node, _draw(ctx, node, "RandomNormal", mean=float(ctx.attr(node, "loc")),
                                   scale=float(ctx.attr(node, "scale"))))


@converter("_random_exponential", "_random_exponential_like")
def random_exponential(ctx: ConvertContext, node: Node) -> None:
    """-log(1 - u) / lam for u uniform in [0, 1)."""
    dtype = _drawn_dtype(ctx, node)
    uniform = _draw(ctx, node, "RandomUniform")
    log = ctx.emit1("Log", [ctx.emit1("Sub", [typed(ctx, 1, dtype), uniform])])
    _drawn_output(ctx, node, ctx.emit1("Div", [log, typed(ctx, -ctx.attr(node, "lam"), dtype)]))


@converter("_random_randint")
def random_randint(ctx: ConvertContext, node: Node) -> None:
    """Integers in [low, high): the floor of a float64 draw in that range."""
    low, high = ctx.attr(node, "low"), ctx.attr(node, "high")
    drawn = _draw(ctx, node, "RandomUniform", "float64", low=float(low), high=float(high))
    cast(ctx, ctx.emit1("Floor", [drawn]), ctx.output_dtype(node), ctx.output(node))


@converter("_sample_multinomial")
def sample_multinomial(ctx: ConvertContext, node: Node) -> None:
    """MXNet samples from probabilities, ONNX from log-probabilities; ``shape`` is the number
    of samples per distribution (``()``: one, without an axis for it)."""
    _random_opset_check(ctx, "Multinomial")
    samples_shape = tuple(ctx.attr(node, "shape") or ())
    if len(samples_shape) > 1:
        raise Unsupported(f"sample shape {samples_shape} has more than one axis: ONNX "
                          "Multinomial draws one row of samples per distribution")
    count = samples_shape[0] if samples_shape else 1
    data_rank = len(input_shape(ctx, node, 0))
    if data_rank > 2:
        raise Unsupported("multinomial over more than one batch axis: ONNX Multinomial takes "
                          "(batch, classes) probabilities")
    log_probabilities = ctx.emit1("Log", [ctx.input(node, 0)])
    if data_rank == 1:
        log_probabilities = unsqueeze(ctx, log_probabilities, [0])
    samples = ctx.emit1("Multinomial", [log_probabilities], sample_size=count,
                        dtype=onnx_dtype(ctx.output_dtype(node)))
    extra_axes = ([0] if data_rank == 1 else []) + ([] if samples_shape else [1])
    _drop_axes(ctx, samples, extra_axes, ctx.output(node))
    if node.num_outputs > 1:  # the log-probability of each sample (``get_prob``)
        picked = ctx.emit1("GatherElements", [log_probabilities, cast(ctx, samples, "int64")], axis=1)
        _drop_axes(ctx, picked, extra_axes, ctx.output(node, 1))


def _drop_axes(ctx: ConvertContext, value: str, axes: Sequence[int], output: str) -> str:
    if not axes:
        return ctx.emit1("Identity", [value], output)
    return squeeze(ctx, value, axes, output)


# --- reordering ------------------------------------------------------------------------------

@converter("reverse")
def reverse(ctx: ConvertContext, node: Node) -> None:
    rank = len(input_shape(ctx, node, 0))
    axis = ctx.attr(node, "axis")
    axes = [normalize_axis(a, rank) for a in (axis if isinstance(axis, tuple) else (axis,))]
    slice_value(ctx, ctx.input(node, 0), [-1] * len(axes), [INT64_MIN] * len(axes), axes,
           [-1] * len(axes), ctx.output(node))


def _blocks_moved(ctx: ConvertContext, node: Node, blocks: Sequence[int],
                  perm: Sequence[int]) -> None:
    """The reshape-transpose-reshape that DepthToSpace and SpaceToDepth are, for the dtypes
    onnxruntime has no kernel for (int32, int64, bool)."""
    dynamic = input_batch_axes(ctx, node, 0)
    if dynamic - {0}:
        raise Unsupported("an axis other than 0 follows the batch; export with dynamic_batch=False")
    blocked = reshape(ctx, ctx.input(node, 0), blocks, dynamic, source_shape=input_shape(ctx, node, 0),
                      source_dynamic=dynamic)
    moved = ctx.emit1("Transpose", [blocked], perm=list(perm))
    reshape_output(ctx, node, moved, ctx.output(node))


_DEPTH_SPACE_TYPES = ("float32", "float64", "float16")


@converter("depth_to_space")
def depth_to_space(ctx: ConvertContext, node: Node) -> None:
    """MXNet's order is ONNX's DCR (depth, column, row)."""
    block = ctx.attr(node, "block_size")
    if ctx.dtype(node, 0) in _DEPTH_SPACE_TYPES:
        ctx.emit1("DepthToSpace", [ctx.input(node, 0)], ctx.output(node), blocksize=block, mode="DCR")
        return
    batch, channels, height, width = input_shape(ctx, node, 0)
    _blocks_moved(ctx, node, (batch, block, block, channels // block ** 2, height, width),
                  (0, 3, 4, 1, 5, 2))


@converter("space_to_depth")
def space_to_depth(ctx: ConvertContext, node: Node) -> None:
    block = ctx.attr(node, "block_size")
    if ctx.dtype(node, 0) in _DEPTH_SPACE_TYPES:
        ctx.emit1("SpaceToDepth", [ctx.input(node, 0)], ctx.output(node), blocksize=block)
        return
    batch, channels, height, width = input_shape(ctx, node, 0)
    _blocks_moved(ctx, node, (batch, channels, height // block, block, width // block, block),
                  (0, 3, 5, 1, 2, 4))


@converter("diag")
def diag(ctx: ConvertContext, node: Node) -> None:
    """1-D: the square matrix with the input on diagonal ``k``. N-D: diagonal ``k`` of the
    (axis1, axis2) matrices, appended as the last axis."""
    shape = input_shape(ctx, node, 0)
    k = ctx.attr(node, "k")
    if len(shape) == 1:
        _diag_matrix(ctx, node, k)
        return
    first, second = (normalize_axis(ctx.attr(node, a), len(shape)) for a in ("axis1", "axis2"))
    rest = [a for a in range(len(shape)) if a not in (first, second)]
    matrices = ctx.emit1("Transpose", [ctx.input(node, 0)], perm=rest + [first, second])
    flat = ctx.emit1("Reshape", [matrices, ctx.int64s([0] * len(rest) + [-1], hint="shape")])
    # positions (row0 + i) * columns + column0 + i, i < min(rows - row0, columns - column0),
    # from the sizes at run time: either axis may follow the batch
    rows, columns = (ctx.emit1("Squeeze", [runtime_dims(ctx, matrices, [len(rest) + i])])
                     for i in (0, 1))
    row0, column0 = (ctx.constant(np.int64(v)) for v in ((0, k) if k >= 0 else (-k, 0)))
    length = ctx.emit1("Min", [ctx.emit1("Sub", [rows, row0]), ctx.emit1("Sub", [columns, column0])])
    steps = ctx.emit1("Range", [ctx.constant(np.int64(0)), length, ctx.constant(np.int64(1))])
    starts = ctx.emit1("Add", [ctx.emit1("Mul", [ctx.emit1("Add", [steps, row0]), columns]), column0])
    ctx.emit1("Gather", [flat, ctx.emit1("Add", [starts, steps])], ctx.output(node), axis=len(rest))


def _diag_matrix(ctx: ConvertContext, node: Node, k: int) -> None:
    """Row i holds x[i] on diagonal k >= 0, column j holds x[j] below; the matrix side is read
    at run time (the vector may follow the batch)."""
    padded = ctx.emit1("Pad", [ctx.input(node, 0), ctx.int64s([0, abs(k)], hint="pads")])
    side = runtime_dims(ctx, padded, [0])
    zeros = filled(ctx, ctx.emit1("Concat", [side, side], axis=0), 0, "float32")
    on_diagonal = cast_to_bool(ctx, ctx.emit1("EyeLike", [zeros], k=k), "float32")
    values = unsqueeze(ctx, padded, [1] if k >= 0 else [0])
    zero = typed(ctx, 0, ctx.output_dtype(node))
    ctx.emit1("Where", [on_diagonal, values, zero], ctx.output(node))
