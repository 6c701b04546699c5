"""contrib converters: detection ops, sequence ops, attention helpers and small contrib math."""

from __future__ import annotations

import math

import numpy as np

from graphopt.ir.graph import Node
from graphopt.onnx.context import ConvertContext, Unsupported, converter
from graphopt.onnx.converters.tensor import (INT64_MAX, INT64_MIN, axis_length, cast, filled,
                                             input_batch_axes, input_shape, normalize_axis,
                                             output_shape, reduce, reshape_output, runtime_dims,
                                             slice_value, typed, unsqueeze)

# --- small contrib math ------------------------------------------------------------------------

@converter("_contrib_div_sqrt_dim")
def div_sqrt_dim(ctx: ConvertContext, node: Node) -> None:
    """x / sqrt(size of the last axis)."""
    dtype = ctx.dtype(node, 0)
    root = typed(ctx, math.sqrt(input_shape(ctx, node, 0)[-1]), dtype)
    ctx.emit1("Div", [ctx.input(node, 0), root], ctx.output(node))


@converter("_contrib_quadratic")
def quadratic(ctx: ConvertContext, node: Node) -> None:
    """a x^2 + b x + c, in MXNet's order of operations."""
    dtype, x = ctx.dtype(node, 0), ctx.input(node, 0)
    a, b, c = (typed(ctx, ctx.attr(node, k), dtype) for k in ("a", "b", "c"))
    square_term = ctx.emit1("Mul", [ctx.emit1("Mul", [a, x]), x])
    linear = ctx.emit1("Add", [square_term, ctx.emit1("Mul", [b, x])])
    ctx.emit1("Add", [linear, c], ctx.output(node))


# --- sequences: (time, batch, ...) with axis=0, (batch, time, ...) with axis=1 ----------------

def _lengths(ctx: ConvertContext, node: Node) -> str:
    """Sequence lengths as int64 (MXNet truncates float lengths)."""
    return cast(ctx, ctx.input(node, 1), "int64")


@converter("SequenceMask")
def sequence_mask(ctx: ConvertContext, node: Node) -> None:
    """Steps at or beyond a sequence's length become ``value``."""
    if not ctx.attr(node, "use_sequence_length"):
        ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))
        return
    rank = len(input_shape(ctx, node, 0))
    axis = normalize_axis(ctx.attr(node, "axis"), rank)
    steps = ctx.emit1("Range", [ctx.constant(np.int64(0)),
                                ctx.emit1("Squeeze", [axis_length(ctx, node, 0, axis)]),
                                ctx.constant(np.int64(1))])
    # (T, 1) against (1, B) for axis 0; (1, T) against (B, 1) for axis 1
    steps = unsqueeze(ctx, steps, [1 - axis])
    lengths = unsqueeze(ctx, _lengths(ctx, node), [axis])
    inside = ctx.emit1("Less", [steps, lengths])
    if rank > 2:
        inside = unsqueeze(ctx, inside, list(range(2, rank)))
    value = typed(ctx, ctx.attr(node, "value"), ctx.dtype(node, 0))
    ctx.emit1("Where", [inside, ctx.input(node, 0), value], ctx.output(node))


@converter("SequenceLast")
def sequence_last(ctx: ConvertContext, node: Node) -> None:
    """The last valid step of each sequence (the last step without lengths)."""
    rank = len(input_shape(ctx, node, 0))
    axis = normalize_axis(ctx.attr(node, "axis"), rank)
    data = ctx.input(node, 0)
    if not ctx.attr(node, "use_sequence_length"):
        ctx.emit1("Gather", [data, ctx.constant(np.int64(-1))], ctx.output(node), axis=axis)
        return
    if axis == 0:  # batch first, for GatherND's batch_dims
        data = ctx.emit1("Transpose", [data], perm=[1, 0] + list(range(2, rank)))
    last = ctx.emit1("Sub", [_lengths(ctx, node), ctx.constant(np.int64(1))])
    ctx.emit1("GatherND", [data, unsqueeze(ctx, last, [1])], ctx.output(node), batch_dims=1)


@converter("SequenceReverse")
def sequence_reverse(ctx: ConvertContext, node: Node) -> None:
    """Reverse the first ``length`` steps of each sequence; padding stays in place."""
    if ctx.attr(node, "axis") != 0:
        raise Unsupported(f"axis={ctx.attr(node, 'axis')}: MXNet 1.9.1 reverses along axis 0 "
                          "only (it refuses to run any other), so there is no result to match")
    data = ctx.input(node, 0)
    if ctx.attr(node, "use_sequence_length"):
        ctx.emit1("ReverseSequence", [data, _lengths(ctx, node)], ctx.output(node),
                  batch_axis=1, time_axis=0)
        return
    slice_value(ctx, data, [-1], [INT64_MIN], [0], [-1], ctx.output(node))


# --- regions of interest ---------------------------------------------------------------------

# Opset 22 re-versioned RoiAlign and MaxRoiPool (new types only); onnxruntime 1.32 has no
# kernel for either version 22 (measured: "Could not find an implementation for RoiAlign(22)"
# at load, for opsets 22 and 23), so a model would fail to load: refuse, naming the opset to use.
ROI_OPS_NEWEST_OPSET = 21


def _check_roi_opset(ctx: ConvertContext, op_type: str) -> None:
    if ctx.opset > ROI_OPS_NEWEST_OPSET:
        raise Unsupported(f"opset {ctx.opset} has {op_type} version 22, for which onnxruntime has "
                          f"no kernel (the model would not load); export at opset "
                          f"{ROI_OPS_NEWEST_OPSET} or lower")


def _roi_parts(ctx: ConvertContext, node: Node) -> tuple[str, str]:
    """(boxes (R, 4), batch indices (R,) int64) from MXNet's rois rows [batch, x1, y1, x2, y2]."""
    rois = ctx.input(node, 1)
    boxes = slice_value(ctx, rois, [1], [5], [1])
    batch = ctx.emit1("Gather", [rois, ctx.constant(np.int64(0))], axis=1)
    return boxes, cast(ctx, batch, "int64")


@converter("_contrib_ROIAlign")
def roi_align(ctx: ConvertContext, node: Node) -> None:
    """Average RoIAlign. ``aligned`` is the half-pixel convention, which ONNX has from opset 16
    (where the default changed, so the mode is always written). A negative batch index gives
    zeros, as MXNet documents (its 1.9.1 CPU kernel leaves that output uninitialised).

    ``position_sensitive``: output channel ``c``, bin ``(i, j)`` reads input channel
    ``c * ph * pw + i * pw + j``. RoiAlign pools every input channel into every bin, and the
    diagonal (channel block ``i * pw + j`` at bin ``(i, j)``) is gathered: ``ph * pw`` times the
    work of the pooling itself, for an exact result."""
    _check_roi_opset(ctx, "RoiAlign")
    aligned = ctx.attr(node, "aligned")
    if aligned and ctx.opset < 16:
        raise Unsupported("aligned ROIAlign needs opset 16 (coordinate_transformation_mode)")
    height, width = ctx.attr(node, "pooled_size")
    boxes, batch = _roi_parts(ctx, node)
    ignored = ctx.emit1("Less", [batch, ctx.constant(np.int64(0))])
    safe_batch = ctx.emit1("Max", [batch, ctx.constant(np.int64(0))])
    mode = {"coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel"} \
        if ctx.opset >= 16 else {}
    pooled = ctx.emit1("RoiAlign", [ctx.input(node, 0), boxes, safe_batch], mode="avg",
                       output_height=height, output_width=width,
                       sampling_ratio=max(ctx.attr(node, "sample_ratio"), 0),
                       spatial_scale=float(ctx.attr(node, "spatial_scale")), **mode)
    if ctx.attr(node, "position_sensitive"):
        pooled = _bin_diagonal(ctx, pooled, output_shape(ctx, node)[1], height, width)
    zero = typed(ctx, 0, ctx.output_dtype(node))
    ctx.emit1("Where", [unsqueeze(ctx, ignored, [1, 2, 3]), zero, pooled], ctx.output(node))


def _bin_diagonal(ctx: ConvertContext, pooled: str, channels: int, height: int, width: int) -> str:
    """(R, channels * bins, ph, pw) -> (R, channels, ph, pw): bin ``k`` of channel block ``k``
    (``bins = ph * pw``; flattened, block ``k`` and bin ``k`` meet at ``k * (bins + 1)``)."""
    bins = height * width
    flat = ctx.emit1("Reshape", [pooled, ctx.int64s([0, channels, bins * bins], hint="shape")])
    diagonal = ctx.emit1("Gather", [flat, ctx.int64s(range(0, bins * bins, bins + 1), hint="bins")],
                         axis=2)
    return ctx.emit1("Reshape", [diagonal, ctx.int64s([0, channels, height, width], hint="shape")])


@converter("ROIPooling")
def roi_pooling(ctx: ConvertContext, node: Node) -> None:
    """MaxRoiPool (float32 only in onnxruntime: other float types go through float32; a max
    picks one input value, so only float64 values beyond float32 precision change)."""
    _check_roi_opset(ctx, "MaxRoiPool")
    dtype, output = ctx.dtype(node, 0), ctx.output(node)
    data, rois = ctx.input(node, 0), ctx.input(node, 1)
    through_float32 = dtype != "float32"
    if through_float32:
        data, rois = cast(ctx, data, "float32"), cast(ctx, rois, "float32")
    pooled = ctx.emit1("MaxRoiPool", [data, rois], None if through_float32 else output,
                       pooled_shape=list(ctx.attr(node, "pooled_size")),
                       spatial_scale=float(ctx.attr(node, "spatial_scale")))
    if through_float32:
        cast(ctx, pooled, dtype, output)


# --- boxes -----------------------------------------------------------------------------------

def _columns(ctx: ConvertContext, value: str, start: int, count: int = 1) -> list[str]:
    """Columns ``start..start+count`` of the last axis, each keeping a size-1 last axis."""
    return [slice_value(ctx, value, [i], [i + 1], [-1]) for i in range(start, start + count)]


def _center_to_corner(ctx: ConvertContext, x, y, w, h, dtype) -> list[str]:
    two = typed(ctx, 2, dtype)
    half_w, half_h = ctx.emit1("Div", [w, two]), ctx.emit1("Div", [h, two])
    return [ctx.emit1("Sub", [x, half_w]), ctx.emit1("Sub", [y, half_h]),
            ctx.emit1("Add", [x, half_w]), ctx.emit1("Add", [y, half_h])]


def _corner_to_center(ctx: ConvertContext, left, top, right, bottom, dtype) -> list[str]:
    two = typed(ctx, 2, dtype)
    return [ctx.emit1("Div", [ctx.emit1("Add", [left, right]), two]),
            ctx.emit1("Div", [ctx.emit1("Add", [top, bottom]), two]),
            ctx.emit1("Sub", [right, left]), ctx.emit1("Sub", [bottom, top])]


@converter("_contrib_box_decode")
def box_decode(ctx: ConvertContext, node: Node) -> None:
    """Offsets (B, N, 4) against anchors (1, N, 4) -> corner boxes:
    centre = offset * std * anchor size + anchor centre, size = exp(offset * std) * anchor size,
    with the size offsets clipped to ``clip`` when it is positive."""
    dtype = ctx.dtype(node, 0)
    anchors = _columns(ctx, ctx.input(node, 1), 0, 4)
    if ctx.attr(node, "format") == "corner":
        anchors = _corner_to_center(ctx, *anchors, dtype)
    anchor_x, anchor_y, anchor_w, anchor_h = anchors
    offsets = _columns(ctx, ctx.input(node, 0), 0, 4)
    scaled = [ctx.emit1("Mul", [offset, typed(ctx, ctx.attr(node, f"std{i}"), dtype)])
              for i, offset in enumerate(offsets)]
    x = ctx.emit1("Add", [ctx.emit1("Mul", [scaled[0], anchor_w]), anchor_x])
    y = ctx.emit1("Add", [ctx.emit1("Mul", [scaled[1], anchor_h]), anchor_y])
    clip = float(ctx.attr(node, "clip"))
    sizes = []
    for offset, anchor_size in ((scaled[2], anchor_w), (scaled[3], anchor_h)):
        if clip > 0:
            offset = ctx.emit1("Min", [offset, typed(ctx, clip, dtype)])
        sizes.append(ctx.emit1("Mul", [ctx.emit1("Exp", [offset]), anchor_size]))
    ctx.emit1("Concat", _center_to_corner(ctx, x, y, *sizes, dtype), ctx.output(node), axis=-1)


@converter("_contrib_box_nms")
def box_nms(ctx: ConvertContext, node: Node) -> None:
    """Greedy NMS with MXNet's output layout: per batch, the kept rows sorted by score
    (descending, ties in input order), then rows of -1.

    Boxes are candidates when their score exceeds ``valid_thresh``, their class is not
    ``background_id`` and they are among the ``topk`` best; NonMaxSuppression runs on them, per
    class (a score column per class id present) unless ``force_suppress`` or no ``id_index``.
    As in MXNet 1.9.1: with an ``id_index``, rows whose id equals ``background_id`` are dropped
    even at its default of -1 (the id of "no detection" rows); ``topk=0`` returns the input as
    it is; classes are compared as integers (truncated ids). A box with a negative width or
    height has no area in MXNet; ONNX orders its corners instead (only such malformed boxes
    can differ)."""
    topk, dtype = ctx.attr(node, "topk"), ctx.dtype(node, 0)
    if topk == 0:  # MXNet: "topk < 1" returns its input unchanged
        ctx.emit1("Identity", [ctx.input(node, 0)], ctx.output(node))
        return
    data, count, boxes_per_batch = _boxes_by_batch(ctx, node)
    score_index, coord_start, id_index = (ctx.attr(node, k)
                                          for k in ("score_index", "coord_start", "id_index"))
    per_class = id_index >= 0 and not ctx.attr(node, "force_suppress")
    in_format, out_format = ctx.attr(node, "in_format"), ctx.attr(node, "out_format")

    scores = ctx.emit1("Gather", [data, ctx.constant(np.int64(score_index))], axis=2)  # (B, N)
    boxes = slice_value(ctx, data, [coord_start], [coord_start + 4], [2])
    lowest = typed(ctx, -np.inf, dtype)
    valid = ctx.emit1("Greater", [scores, typed(ctx, ctx.attr(node, "valid_thresh"), dtype)])
    ids = None
    if id_index >= 0:
        ids = ctx.emit1("Gather", [data, ctx.constant(np.int64(id_index))], axis=2)
        background = typed(ctx, ctx.attr(node, "background_id"), dtype)
        valid = ctx.emit1("And", [valid, ctx.emit1("Not", [ctx.emit1("Equal", [ids, background])])])
    candidates = ctx.emit1("Where", [valid, scores, lowest])
    if topk > 0 and (boxes_per_batch is None or topk < boxes_per_batch):
        candidates = _only_best(ctx, candidates, topk, count, lowest)
    overlap = float(ctx.attr(node, "overlap_thresh"))
    if overlap >= 1:  # no IoU exceeds 1: nothing is suppressed (GluonCV's FPN sorts this way)
        keep = ctx.emit1("Greater", [candidates, lowest])
    else:
        keep = _selected_by_nms(ctx, boxes, scores, candidates, ids, valid, lowest, count,
                                per_class, overlap, in_format, dtype)
    # rows sorted by kept score, others filled with -1
    order = ctx.emit("TopK", [ctx.emit1("Where", [keep, scores, lowest]), count], 2,
                     axis=1, largest=1, sorted=1)[1]
    rows = ctx.emit1("GatherND", [data, unsqueeze(ctx, order, [2])], batch_dims=1)
    if in_format != out_format:
        rows = _convert_format(ctx, rows, coord_start, input_shape(ctx, node, 0)[-1], in_format,
                               dtype)
    kept = unsqueeze(ctx, ctx.emit1("GatherElements", [keep, order], axis=1), [2])
    result = ctx.emit1("Where", [kept, rows, typed(ctx, -1, dtype)])
    reshape_output(ctx, node, result, ctx.output(node), source_slot=None)


def _selected_by_nms(ctx: ConvertContext, boxes: str, scores: str, candidates: str, ids: str | None,
                     valid: str, lowest: str, count: str, per_class: bool, overlap: float,
                     in_format: str, dtype: str) -> str:
    """(B, N) bool: the candidates greedy NMS keeps. MXNet suppresses a box whose IoU with a
    kept one exceeds ``overlap``; below 0 that is every other box (IoU >= 0), so only the best
    of each class stays: NonMaxSuppression keeping one box per class, whose own threshold must
    lie in [0, 1]."""
    if per_class:
        class_scores = _scores_per_class(ctx, candidates, ids, valid, lowest)
    else:
        class_scores = unsqueeze(ctx, candidates, [1])  # (B, 1, N)
    if dtype != "float32":  # NonMaxSuppression takes float32 only
        boxes, class_scores = cast(ctx, boxes, "float32"), cast(ctx, class_scores, "float32")
    if overlap < 0:
        count, overlap = ctx.int64s([1]), 0.0
    # non-candidates score -inf: the score threshold only has to exclude them (valid_thresh,
    # compared above in the data's type, would be compared again in float32)
    selected = ctx.emit1("NonMaxSuppression", [
        boxes, class_scores, count, typed(ctx, [overlap], "float32"),
        typed(ctx, [np.finfo(np.float32).min], "float32")],
        center_point_box=int(in_format == "center"))
    batch_and_box = ctx.emit1("Gather", [selected, ctx.int64s([0, 2])], axis=1)
    nothing = filled(ctx, ctx.emit1("Shape", [scores]), 0, "bool")
    trues = filled(ctx, runtime_dims(ctx, selected, [0]), 1, "bool")
    return ctx.emit1("ScatterND", [nothing, batch_and_box, trues])


def _boxes_by_batch(ctx: ConvertContext, node: Node) -> tuple[str, str, int | None]:
    """The input as (B, N, K) (MXNet folds every axis before the last two into B), N as a
    1-element int64 value, and N when it is static. N is read at run time when the box axis
    follows the batch (a 2-D input of a dynamic-batch export)."""
    shape = input_shape(ctx, node, 0)
    box_axis, dynamic = len(shape) - 2, input_batch_axes(ctx, node, 0)
    if box_axis not in dynamic:
        target = [-1, shape[-2], shape[-1]]
    elif not any(axis < box_axis for axis in dynamic):
        target = [int(np.prod(shape[:-2])), -1, shape[-1]]
    else:
        raise Unsupported("both the box axis and a batch axis follow the batch size; export "
                          "with dynamic_batch=False")
    data = ctx.emit1("Reshape", [ctx.input(node, 0), ctx.int64s(target, hint="shape")])
    if box_axis in dynamic:
        return data, runtime_dims(ctx, data, [1]), None
    return data, ctx.int64s([shape[-2]]), shape[-2]


def _only_best(ctx: ConvertContext, candidates: str, topk: int, count: str, lowest: str) -> str:
    """Keep the ``topk`` best scores of each batch (ties: the earlier box), others to lowest."""
    order = ctx.emit("TopK", [candidates, count], 2, axis=1, largest=1, sorted=1)[1]
    positions = ctx.emit1("Range", [ctx.constant(np.int64(0)), ctx.emit1("Squeeze", [count]),
                                    ctx.constant(np.int64(1))])
    ranks_in_order = ctx.emit1("Expand", [positions, ctx.emit1("Shape", [order])])
    # ranks[b, order[b, j]] = j; order is a permutation, so every element of the template
    # (order itself) is overwritten
    ranks = ctx.emit1("ScatterElements", [order, order, ranks_in_order], axis=1)
    best = ctx.emit1("Less", [ranks, ctx.constant(np.int64(topk))])
    return ctx.emit1("Where", [best, candidates, lowest])


def _scores_per_class(ctx: ConvertContext, candidates: str, ids: str, valid: str, lowest: str) -> str:
    """(B, C, N) scores, C = the span of class ids among valid boxes: NonMaxSuppression then
    suppresses only within a class."""
    class_ids = cast(ctx, ids, "int64")
    big = ctx.constant(np.int64(INT64_MAX))
    smallest = ctx.emit1("ReduceMin", [ctx.emit1("Where", [valid, class_ids, big])], keepdims=0)
    # no valid box at all: any id will do, but not one that overflows the shift below
    smallest = ctx.emit1("Min", [smallest, ctx.emit1("ReduceMax", [class_ids], keepdims=0)])
    shifted = ctx.emit1("Sub", [class_ids, smallest])
    count = ctx.emit1("Add", [ctx.emit1("ReduceMax", [ctx.emit1("Where", [valid, shifted,
                                                                          ctx.constant(np.int64(0))])],
                                        keepdims=0), ctx.constant(np.int64(1))])
    classes = unsqueeze(ctx, ctx.emit1("Range", [ctx.constant(np.int64(0)), count,
                                                 ctx.constant(np.int64(1))]), [0, 2])  # (1, C, 1)
    member = ctx.emit1("Equal", [unsqueeze(ctx, shifted, [1]), classes])  # (B, C, N)
    return ctx.emit1("Where", [member, unsqueeze(ctx, candidates, [1]), lowest])


def _convert_format(ctx: ConvertContext, rows: str, coord_start: int, width: int, in_format: str,
                    dtype: str) -> str:
    """Re-encode the coordinates of kept rows; like MXNet, a row whose first coordinate is
    negative is left as it is."""
    coordinates = _columns(ctx, rows, coord_start, 4)
    convert = _corner_to_center if in_format == "corner" else _center_to_corner
    converted = ctx.emit1("Concat", convert(ctx, *coordinates, dtype), axis=-1)
    untouched = ctx.emit1("Less", [coordinates[0], typed(ctx, 0, dtype)])
    original = ctx.emit1("Concat", coordinates, axis=-1)
    coordinates = ctx.emit1("Where", [untouched, original, converted])
    parts = []
    if coord_start > 0:
        parts.append(slice_value(ctx, rows, [0], [coord_start], [-1]))
    parts.append(coordinates)
    if coord_start + 4 < width:
        parts.append(slice_value(ctx, rows, [coord_start + 4], [width], [-1]))
    return ctx.emit1("Concat", parts, axis=-1) if len(parts) > 1 else coordinates


# --- region proposals (MXNet's Faster R-CNN example) -------------------------------------------

def _proposal_anchors(stride: int, ratios, scales, height: int, width: int) -> np.ndarray:
    """(H * W * A, 4) anchors as MXNet's GenerateAnchors makes them (every ratio, then every
    scale, of a stride x stride base box, arithmetic in float) shifted to each cell, in MXNet's
    order: index = (row * W + column) * A + anchor."""
    size, centre = float(stride) * stride, 0.5 * (stride - 1.0)
    base = []
    for ratio in ratios:
        for scale in scales:
            new_w = np.floor(np.sqrt(np.floor(np.float32(size / ratio))) + 0.5) * scale
            new_h = np.floor(new_w / scale * ratio + 0.5) * scale
            base.append([centre - 0.5 * (new_w - 1), centre - 0.5 * (new_h - 1),
                         centre + 0.5 * (new_w - 1), centre + 0.5 * (new_h - 1)])
    columns, rows = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
    shifts = np.stack([columns, rows, columns, rows], axis=-1).reshape(-1, 1, 4)
    return (shifts + np.asarray(base, dtype=np.float32)[None]).reshape(-1, 4).astype(np.float32)


@converter("_contrib_MultiProposal", "_contrib_Proposal")
def proposal(ctx: ConvertContext, node: Node) -> None:
    """RPN proposals as MXNet 1.9.1's CPU kernel makes them: anchors moved by the deltas
    (``iou_loss``: corners moved directly), clipped to the image ``im_info`` gives (rows
    (height, width, scale)); anchors of cells beyond the image's own size and boxes smaller
    than ``rpn_min_size * scale`` (these grown by half of it on each side) score -1; the best
    ``rpn_pre_nms_top_n`` enter greedy NMS with MXNet's +1 pixel areas (as NonMaxSuppression on
    boxes whose far corner is moved by 1), which keeps at most ``rpn_post_nms_top_n``; when
    fewer are kept, MXNet repeats them in order. Output rows [image, x1, y1, x2, y2], then the
    scores. Equal scores may be sorted differently (MXNet uses std::sort)."""
    batch_shape = input_shape(ctx, node, 0)
    anchors_per_cell, height, width = batch_shape[1] // 2, batch_shape[2], batch_shape[3]
    count = anchors_per_cell * height * width
    pre = ctx.attr(node, "rpn_pre_nms_top_n")
    pre = min(pre if pre > 0 else count, count)
    rows = ctx.attr(node, "rpn_post_nms_top_n")
    stride = ctx.attr(node, "feature_stride")
    anchors = _proposal_anchors(stride, ctx.attr(node, "ratios"), ctx.attr(node, "scales"),
                                height, width)
    scores = slice_value(ctx, ctx.input(node, 0), [anchors_per_cell], [2 * anchors_per_cell], [1])
    scores = ctx.emit1("Reshape", [ctx.emit1("Transpose", [scores], perm=[0, 2, 3, 1]),
                                   ctx.int64s([0, -1], hint="shape")])            # (B, N)
    deltas = ctx.emit1("Reshape", [ctx.input(node, 1), ctx.int64s(
        [0, anchors_per_cell, 4, height, width], hint="shape")])
    deltas = ctx.emit1("Reshape", [ctx.emit1("Transpose", [deltas], perm=[0, 3, 4, 1, 2]),
                                   ctx.int64s([0, -1, 4], hint="shape")])          # (B, N, 4)
    info = [ctx.emit1("Gather", [ctx.input(node, 2), ctx.int64s([i])], axis=1)   # (B, 1) each
            for i in range(3)]
    boxes = _proposal_boxes(ctx, node, anchors, deltas, info[0], info[1])
    cells = np.arange(count) // anchors_per_cell
    for cell, size in ((cells // width, info[0]), (cells % width, info[1])):  # padded cells
        beyond = ctx.emit1("GreaterOrEqual", [ctx.constant(cell[None].astype(np.float32)),
                                              ctx.emit1("Floor", [ctx.emit1("Div", [
                                                  size, typed(ctx, stride, "float32")])])])
        scores = ctx.emit1("Where", [beyond, typed(ctx, -1, "float32"), scores])
    boxes, scores = _filter_small(ctx, boxes, scores, ctx.emit1("Mul", [
        info[2], typed(ctx, ctx.attr(node, "rpn_min_size"), "float32")]))
    order = ctx.emit("TopK", [scores, ctx.int64s([pre])], 2, axis=1, largest=1, sorted=1)[1]
    scores = ctx.emit1("GatherElements", [scores, order], axis=1)                  # (B, pre)
    boxes = ctx.emit1("GatherND", [boxes, unsqueeze(ctx, order, [2])], batch_dims=1)
    chosen = _kept_then_repeated(ctx, boxes, scores, pre, min(rows, pre), rows,
                                 float(ctx.attr(node, "threshold")))                # (B, rows)
    picked = ctx.emit1("GatherND", [boxes, unsqueeze(ctx, chosen, [2])], batch_dims=1)
    images = cast(ctx, runtime_dims(ctx, scores, [0]), "float32")
    image_column = ctx.emit1("Range", [typed(ctx, 0, "float32"),
                                       ctx.emit1("Squeeze", [images]), typed(ctx, 1, "float32")])
    image_column = ctx.emit1("Expand", [unsqueeze(ctx, image_column, [1, 2]), ctx.emit1(
        "Concat", [runtime_dims(ctx, scores, [0]), ctx.int64s([rows, 1])], axis=0)])
    ctx.emit1("Reshape", [ctx.emit1("Concat", [image_column, picked], axis=2),
                          ctx.int64s([-1, 5], hint="shape")], ctx.output(node))
    if node.num_outputs > 1:
        kept_scores = ctx.emit1("GatherElements", [scores, chosen], axis=1)
        ctx.emit1("Reshape", [kept_scores, ctx.int64s([-1, 1], hint="shape")], ctx.output(node, 1))


def _proposal_boxes(ctx: ConvertContext, node: Node, anchors: np.ndarray, deltas: str,
                    image_height: str, image_width: str) -> list[str]:
    """[x1, y1, x2, y2], each (B, N): the anchors moved by the deltas, clipped to the image."""
    d = [ctx.emit1("Gather", [deltas, ctx.constant(np.int64(i))], axis=2) for i in range(4)]
    if ctx.attr(node, "iou_loss"):
        corners = [ctx.emit1("Add", [ctx.constant(anchors[None, :, i]), d[i]]) for i in range(4)]
    else:
        sizes = (anchors[:, 2:] - anchors[:, :2] + 1.0).astype(np.float32)
        centres = (anchors[:, :2] + 0.5 * (sizes - 1.0)).astype(np.float32)
        half, one = typed(ctx, 0.5, "float32"), typed(ctx, 1, "float32")
        corners = [None] * 4
        for axis in (0, 1):
            size = ctx.constant(sizes[None, :, axis])
            centre = ctx.emit1("Add", [ctx.emit1("Mul", [d[axis], size]),
                                       ctx.constant(centres[None, :, axis])])
            extent = ctx.emit1("Mul", [ctx.emit1("Exp", [d[axis + 2]]), size])
            half_extent = ctx.emit1("Mul", [half, ctx.emit1("Sub", [extent, one])])
            corners[axis] = ctx.emit1("Sub", [centre, half_extent])
            corners[axis + 2] = ctx.emit1("Add", [centre, half_extent])
    zero, one = typed(ctx, 0, "float32"), typed(ctx, 1, "float32")
    limits = [ctx.emit1("Sub", [size, one]) for size in (image_width, image_height)]
    return [ctx.emit1("Max", [ctx.emit1("Min", [corner, limits[i % 2]]), zero])
            for i, corner in enumerate(corners)]


def _filter_small(ctx: ConvertContext, boxes: list[str], scores: str, min_size: str
                  ) -> tuple[str, str]:
    """MXNet's FilterBox: a box narrower or lower than ``min_size`` (+1 pixel sizes) scores -1
    and grows by ``min_size / 2`` on each side. Returns boxes (B, N, 4) and scores."""
    one = typed(ctx, 1, "float32")
    small = ctx.emit1("Or", [
        ctx.emit1("Less", [ctx.emit1("Add", [ctx.emit1("Sub", [boxes[2 + axis], boxes[axis]]),
                                             one]), min_size]) for axis in (0, 1)])
    half = ctx.emit1("Div", [min_size, typed(ctx, 2, "float32")])
    grown = [ctx.emit1("Sub" if i < 2 else "Add", [box, half]) for i, box in enumerate(boxes)]
    boxes = [ctx.emit1("Where", [small, g, b]) for g, b in zip(grown, boxes)]
    scores = ctx.emit1("Where", [small, typed(ctx, -1, "float32"), scores])
    return ctx.emit1("Concat", [unsqueeze(ctx, b, [2]) for b in boxes], axis=2), scores


def _kept_then_repeated(ctx: ConvertContext, boxes: str, scores: str, count: int, keep_at_most: int,
                        rows: int, threshold: float) -> str:
    """(B, rows) positions among the sorted candidates: those greedy NMS keeps (at most
    ``keep_at_most``, in order), then repeated from the first (MXNet's ``keep[i % kept]``)."""
    far_corner = ctx.emit1("Add", [slice_value(ctx, boxes, [2], [4], [2]), typed(ctx, 1, "float32")])
    shifted = ctx.emit1("Concat", [slice_value(ctx, boxes, [0], [2], [2]), far_corner], axis=2)
    limit = 1 if threshold < 0 else keep_at_most  # below 0 every IoU suppresses: the best stays
    selected = ctx.emit1("NonMaxSuppression", [
        shifted, unsqueeze(ctx, scores, [1]), ctx.int64s([limit]),
        typed(ctx, [min(max(threshold, 0.0), 1.0)], "float32"),
        typed(ctx, [np.finfo(np.float32).min], "float32")])
    batch_and_box = ctx.emit1("Gather", [selected, ctx.int64s([0, 2])], axis=1)
    nothing = filled(ctx, ctx.emit1("Shape", [scores]), 0, "bool")
    trues = filled(ctx, runtime_dims(ctx, selected, [0]), 1, "bool")
    keep = ctx.emit1("ScatterND", [nothing, batch_and_box, trues])
    positions = ctx.constant(np.arange(count, dtype=np.int64)[None], hint="positions")
    key = ctx.emit1("Where", [keep, ctx.emit1("Sub", [ctx.int64s([count]), positions]),
                              ctx.constant(np.int64(0))])
    kept_first = ctx.emit("TopK", [key, ctx.int64s([keep_at_most])], 2, axis=1, largest=1,
                          sorted=1)[1]
    kept = reduce(ctx, "ReduceSum", cast(ctx, keep, "int64"), [1], keepdims=True)
    repeat = ctx.emit1("Mod", [ctx.constant(np.arange(rows, dtype=np.int64)[None], hint="rows"),
                               kept])
    return ctx.emit1("GatherElements", [kept_first, repeat], axis=1)


# --- attention over interleaved projections (GluonNLP) ---------------------------------------

def _heads(ctx: ConvertContext, projections: str, heads: int, parts: int, index: int,
           head_dim: int) -> str:
    """(T, B, heads * parts * D) interleaved -> part ``index`` as (B, heads, T, D)."""
    split = ctx.emit1("Reshape", [projections, ctx.int64s([0, 0, heads, parts, head_dim],
                                                          hint="shape")])
    chosen = ctx.emit1("Gather", [split, ctx.constant(np.int64(index))], axis=3)
    return ctx.emit1("Transpose", [chosen], perm=[1, 2, 0, 3])


def _shape_tail(ctx: ConvertContext, value: str, lead: list[int], start: int) -> str:
    """Reshape target: ``lead``, then the sizes of ``value`` from axis ``start`` (run time)."""
    tail = slice_value(ctx, ctx.emit1("Shape", [value]), [start], [INT64_MAX], [0])
    return ctx.emit1("Concat", [ctx.int64s(lead, hint="shape"), tail], axis=0)


def _attention_scores(ctx: ConvertContext, node: Node, queries: str, keys: str, head_dim: int) -> None:
    """(B, heads, T, D) queries / sqrt(D) @ keys^T -> (B * heads, T, S)."""
    queries = ctx.emit1("Div", [queries, typed(ctx, math.sqrt(head_dim), ctx.dtype(node, 0))])
    keys = ctx.emit1("Transpose", [keys], perm=[0, 1, 3, 2])
    scores = ctx.emit1("MatMul", [queries, keys])
    ctx.emit1("Reshape", [scores, _shape_tail(ctx, scores, [-1], 2)], ctx.output(node))


def _attend(ctx: ConvertContext, node: Node, values: str, heads: int) -> None:
    """attention (B * heads, T, S) @ values (B, heads, S, D) -> (T, B, heads * D)."""
    attention = ctx.input(node, 1)
    attention = ctx.emit1("Reshape", [attention, _shape_tail(ctx, attention, [-1, heads], 1)])
    context = ctx.emit1("Transpose", [ctx.emit1("MatMul", [attention, values])], perm=[2, 0, 1, 3])
    ctx.emit1("Reshape", [context, ctx.int64s([0, 0, -1], hint="shape")], ctx.output(node))


@converter("_contrib_interleaved_matmul_selfatt_qk")
def selfatt_qk(ctx: ConvertContext, node: Node) -> None:
    heads = ctx.attr(node, "heads")
    head_dim = input_shape(ctx, node, 0)[-1] // (3 * heads)
    qkv = ctx.input(node, 0)
    _attention_scores(ctx, node, _heads(ctx, qkv, heads, 3, 0, head_dim),
                      _heads(ctx, qkv, heads, 3, 1, head_dim), head_dim)


@converter("_contrib_interleaved_matmul_selfatt_valatt")
def selfatt_valatt(ctx: ConvertContext, node: Node) -> None:
    heads = ctx.attr(node, "heads")
    head_dim = input_shape(ctx, node, 0)[-1] // (3 * heads)
    _attend(ctx, node, _heads(ctx, ctx.input(node, 0), heads, 3, 2, head_dim), heads)


@converter("_contrib_interleaved_matmul_encdec_qk")
def encdec_qk(ctx: ConvertContext, node: Node) -> None:
    heads = ctx.attr(node, "heads")
    head_dim = input_shape(ctx, node, 0)[-1] // heads
    _attention_scores(ctx, node, _heads(ctx, ctx.input(node, 0), heads, 1, 0, head_dim),
                      _heads(ctx, ctx.input(node, 1), heads, 2, 0, head_dim), head_dim)


@converter("_contrib_interleaved_matmul_encdec_valatt")
def encdec_valatt(ctx: ConvertContext, node: Node) -> None:
    heads = ctx.attr(node, "heads")
    head_dim = input_shape(ctx, node, 0)[-1] // (2 * heads)
    _attend(ctx, node, _heads(ctx, ctx.input(node, 0), heads, 2, 1, head_dim), heads)

