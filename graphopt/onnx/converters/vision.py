"""vision converters: spatial transformers (sampling grids, bilinear sampling), deformable
convolutions, box geometry, and small index and linear-algebra helpers.

MXNet's sampling grids are (N, 2, H, W), x first, normalised so that -1 and 1 are the centres
of the corner pixels, and a sample falling off the image reads zeros there: ONNX GridSample
(opset 16) with ``align_corners=1`` and ``padding_mode="zeros"`` on the grid moved to
(N, H, W, 2).
"""

from __future__ import annotations

import numpy as np

from graphopt.ir.graph import Node
from graphopt.onnx.context import ConvertContext, Unsupported, converter
from graphopt.onnx.converters.tensor import (INT64_MAX, cast, filled, input_shape, output_shape,
                                             reduce, runtime_dims, slice_value, typed, unsqueeze)

# --- sampling grids and bilinear sampling --------------------------------------------------------

GRID_SAMPLE_SINCE = 16
GRID_SAMPLE_LINEAR_SINCE = 20  # opset 20 renamed GridSample's mode "bilinear" to "linear"


def _target_grid(height: int, width: int, dtype: str) -> np.ndarray:
    """MXNet's affine target grid (3, H * W): rows x, y, 1, with x = -1 + j * (2 / (W - 1))
    (the step in double, then ``DType``, as MXNet computes it)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = [np.float64(2.0) / np.float64(size - 1) for size in (width, height)]
    dtype = np.dtype(dtype)
    columns, rows = np.meshgrid(np.arange(width, dtype=dtype), np.arange(height, dtype=dtype))
    with np.errstate(invalid="ignore"):
        x = dtype.type(-1) + columns.ravel() * dtype.type(steps[0])
        y = dtype.type(-1) + rows.ravel() * dtype.type(steps[1])
    return np.stack([x, y, np.ones_like(x)])


def _affine_grid(ctx: ConvertContext, theta: str, height: int, width: int, dtype: str,
                 output: str | None = None) -> str:
    """(N, 6) affine matrices -> (N, 2, H, W) source positions of the target pixels."""
    matrices = ctx.emit1("Reshape", [theta, ctx.int64s([-1, 2, 3], hint="shape")])
    target = ctx.constant(_target_grid(height, width, dtype), hint="target_grid")
    positions = ctx.emit1("MatMul", [matrices, target])  # (N, 2, H * W)
    return ctx.emit1("Reshape", [positions, ctx.int64s([-1, 2, height, width], hint="shape")],
                     output)


def _bilinear_sample(ctx: ConvertContext, data: str, grid: str, dtype: str, output: str) -> None:
    """Sample ``data`` (N, C, H, W) at the MXNet grid ``grid`` (N, 2, H', W'). onnxruntime's
    GridSample before opset 20 has no float64 kernel: it then samples in float32."""
    if ctx.opset < GRID_SAMPLE_SINCE:
        raise Unsupported(f"bilinear sampling needs ONNX GridSample (opset {GRID_SAMPLE_SINCE} "
                          f"or later); export at opset {GRID_SAMPLE_SINCE} or later")
    linear = ctx.opset >= GRID_SAMPLE_LINEAR_SINCE
    grid = ctx.emit1("Transpose", [grid], perm=[0, 2, 3, 1])
    in_float32 = dtype == "float64" and not linear
    if in_float32:
        data, grid = cast(ctx, data, "float32"), cast(ctx, grid, "float32")
    sampled = ctx.emit1("GridSample", [data, grid], None if in_float32 else output,
                        align_corners=1, mode="linear" if linear else "bilinear",
                        padding_mode="zeros")
    if in_float32:
        cast(ctx, sampled, dtype, output)


@converter("GridGenerator")
def grid_generator(ctx: ConvertContext, node: Node) -> None:
    """``affine``: theta (N, 6) applied to the target grid. ``warp``: (flow + pixel position)
    / ((size - 1) / 2) - 1, per axis."""
    dtype = ctx.dtype(node, 0)
    height, width = output_shape(ctx, node)[2:]
    if ctx.attr(node, "transform_type") == "affine":
        _affine_grid(ctx, ctx.input(node, 0), height, width, dtype, ctx.output(node))
        return
    columns, rows = np.meshgrid(np.arange(width), np.arange(height))
    pixels = ctx.constant(np.stack([columns, rows])[None].astype(dtype), hint="pixels")
    half_sizes = np.array([(width - 1.0) / 2.0, (height - 1.0) / 2.0]).astype(dtype)
    moved = ctx.emit1("Add", [ctx.input(node, 0), pixels])
    normalised = ctx.emit1("Div", [moved, ctx.constant(half_sizes.reshape(1, 2, 1, 1))])
    ctx.emit1("Sub", [normalised, typed(ctx, 1, dtype)], ctx.output(node))


@converter("BilinearSampler")
def bilinear_sampler(ctx: ConvertContext, node: Node) -> None:
    _bilinear_sample(ctx, ctx.input(node, 0), ctx.input(node, 1), ctx.dtype(node, 0),
                     ctx.output(node))


@converter("SpatialTransformer")
def spatial_transformer(ctx: ConvertContext, node: Node) -> None:
    """GridGenerator (affine) then BilinearSampler: the only transform and sampler MXNet has."""
    height, width = output_shape(ctx, node)[2:]
    grid = _affine_grid(ctx, ctx.input(node, 1), height, width, ctx.dtype(node, 1))
    _bilinear_sample(ctx, ctx.input(node, 0), grid, ctx.dtype(node, 0), ctx.output(node))


# --- deformable convolutions ---------------------------------------------------------------------

DEFORM_CONV_SINCE = 19


def _deformable_convolution(ctx: ConvertContext, node: Node, window: tuple, offsets: str,
                            mask: str | None, weight_slot: int) -> None:
    """ONNX DeformConv shares MXNet's layouts: offsets (N, groups * kh * kw * 2, oh, ow) as
    (dy, dx) per kernel position, the mask (N, groups * kh * kw, oh, ow) applied as given."""
    inputs = [ctx.input(node, 0), ctx.input(node, weight_slot), offsets]
    if not ctx.attr(node, "no_bias"):
        inputs.append(ctx.input(node, weight_slot + 1))
    if mask is not None:
        inputs += [""] * (4 - len(inputs)) + [mask]
    kernel, stride, dilate, pad = window
    ctx.emit1("DeformConv", inputs, ctx.output(node), kernel_shape=kernel, strides=stride,
              dilations=dilate, pads=pad + pad, group=ctx.attr(node, "num_group"),
              offset_group=ctx.attr(node, "num_deformable_group"))


def _window(ctx: ConvertContext, node: Node) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, stride, dilate, pad (MXNet's empty defaults filled in); refuses opsets without
    DeformConv and kernels that are not 2-D."""
    if ctx.opset < DEFORM_CONV_SINCE:
        raise Unsupported(f"deformable convolution needs ONNX DeformConv (opset "
                          f"{DEFORM_CONV_SINCE} or later); export at opset {DEFORM_CONV_SINCE} "
                          f"or later")
    kernel = list(ctx.attr(node, "kernel"))
    if len(kernel) != 2:
        raise Unsupported(f"deformable convolution with a {len(kernel)}-D kernel (MXNet has 2-D)")
    return (kernel, list(ctx.attr(node, "stride")) or [1, 1],
            list(ctx.attr(node, "dilate")) or [1, 1], list(ctx.attr(node, "pad")) or [0, 0])


def _sampled_rows_and_columns(kernel, stride, dilate, pad, out_height, out_width) -> np.ndarray:
    """(kh * kw, 2, oh, ow): the unshifted image row and column each kernel tap reads."""
    taps_y, taps_x = np.meshgrid(np.arange(kernel[0]), np.arange(kernel[1]), indexing="ij")
    rows = np.arange(out_height) * stride[0] - pad[0]
    columns = np.arange(out_width) * stride[1] - pad[1]
    row = rows[None, :, None] + (taps_y.reshape(-1) * dilate[0])[:, None, None]
    column = columns[None, None, :] + (taps_x.reshape(-1) * dilate[1])[:, None, None]
    shape = (row.shape[0], out_height, out_width)
    return np.stack([np.broadcast_to(row, shape), np.broadcast_to(column, shape)], axis=1)


@converter("_contrib_DeformableConvolution")
def deformable_convolution(ctx: ConvertContext, node: Node) -> None:
    """Deformable convolution v1 samples differently from DeformConv (and from MXNet's
    modulated version): a tap at row y reads zero unless 0 <= y < H, and one in [H - 1, H)
    reads row H - 1 alone (likewise for columns). So the taps outside get mask 0 and the
    offsets are clipped to H - 1 - row, which makes DeformConv read exactly the edge."""
    window = kernel, stride, dilate, pad = _window(ctx, node)
    dtype = ctx.dtype(node, 0)
    height, width = input_shape(ctx, node, 0)[2:]
    out_height, out_width = output_shape(ctx, node)[2:]
    groups, taps = ctx.attr(node, "num_deformable_group"), kernel[0] * kernel[1]
    offsets = ctx.emit1("Reshape", [ctx.input(node, 1), ctx.int64s(
        [-1, groups, taps, 2, out_height, out_width], hint="shape")])
    unshifted = _sampled_rows_and_columns(kernel, stride, dilate, pad, out_height, out_width)
    sizes = np.array([height, width]).reshape(2, 1, 1)
    positions = ctx.emit1("Add", [offsets, ctx.constant(unshifted.astype(dtype), hint="taps")])
    inside = ctx.emit1("And", [
        ctx.emit1("GreaterOrEqual", [positions, typed(ctx, 0, dtype)]),
        ctx.emit1("Less", [positions, ctx.constant(sizes.astype(dtype), hint="sizes")])])
    inside = ctx.emit1("And", [ctx.emit1("Gather", [inside, ctx.constant(np.int64(i))], axis=3)
                               for i in (0, 1)])
    mask = ctx.emit1("Reshape", [cast(ctx, inside, dtype), ctx.int64s(
        [-1, groups * taps, out_height, out_width], hint="shape")])
    headroom = ctx.constant((sizes - 1 - unshifted).astype(dtype), hint="headroom")
    clipped = ctx.emit1("Reshape", [ctx.emit1("Min", [offsets, headroom]), ctx.int64s(
        [-1, groups * taps * 2, out_height, out_width], hint="shape")])
    _deformable_convolution(ctx, node, window, clipped, mask, weight_slot=2)


@converter("_contrib_ModulatedDeformableConvolution")
def modulated_deformable_convolution(ctx: ConvertContext, node: Node) -> None:
    """Samples as DeformConv does: zeros beyond the image, blended into taps within a pixel
    of it."""
    _deformable_convolution(ctx, node, _window(ctx, node), ctx.input(node, 1), ctx.input(node, 2),
                            weight_slot=3)


# --- box geometry --------------------------------------------------------------------------------

def _column(ctx: ConvertContext, boxes: str, index: int) -> str:
    """Coordinate ``index`` of the last axis, which is dropped."""
    return ctx.emit1("Gather", [boxes, ctx.constant(np.int64(index))], axis=-1)


def _box_edges(ctx: ConvertContext, boxes: str, fmt: str, dtype: str) -> tuple[list, list]:
    """([left, top, right, bottom], [width, height]) of ``boxes`` in MXNet's arithmetic: centre
    boxes have edges x -/+ w / 2 and their stored sizes; corner boxes right - left."""
    first, second, third, fourth = (_column(ctx, boxes, i) for i in range(4))
    if fmt == "corner":
        return [first, second, third, fourth], [ctx.emit1("Sub", [third, first]),
                                                ctx.emit1("Sub", [fourth, second])]
    two = typed(ctx, 2, dtype)
    half_width, half_height = ctx.emit1("Div", [third, two]), ctx.emit1("Div", [fourth, two])
    return [ctx.emit1("Sub", [first, half_width]), ctx.emit1("Sub", [second, half_height]),
            ctx.emit1("Add", [first, half_width]), ctx.emit1("Add", [second, half_height])], \
        [third, fourth]


def _area(ctx: ConvertContext, width: str, height: str, zero: str) -> str:
    """width * height; 0 for a box with a negative side."""
    negative = ctx.emit1("Or", [ctx.emit1("Less", [width, zero]),
                                ctx.emit1("Less", [height, zero])])
    return ctx.emit1("Where", [negative, zero, ctx.emit1("Mul", [width, height])])


@converter("_contrib_box_iou")
def box_iou(ctx: ConvertContext, node: Node) -> None:
    """IoU of every lhs box with every rhs box: (*lhs[:-1], *rhs[:-1]). lhs gets size-1 axes
    before its coordinates so that broadcasting pairs them. No overlap gives 0 (so boxes
    without area give 0, not NaN)."""
    dtype, fmt = ctx.dtype(node, 0), ctx.attr(node, "format")
    right_rank = len(input_shape(ctx, node, 1))
    lhs = ctx.input(node, 0)
    if right_rank > 1:
        lhs_rank = len(input_shape(ctx, node, 0))
        lhs = unsqueeze(ctx, lhs, list(range(lhs_rank - 1, lhs_rank + right_rank - 2)))
    (l_edges, l_sizes), (r_edges, r_sizes) = (_box_edges(ctx, boxes, fmt, dtype)
                                              for boxes in (lhs, ctx.input(node, 1)))
    zero = typed(ctx, 0, dtype)
    overlaps = []
    for axis in (0, 1):
        low = ctx.emit1("Max", [l_edges[axis], r_edges[axis]])
        high = ctx.emit1("Min", [l_edges[axis + 2], r_edges[axis + 2]])
        overlaps.append(ctx.emit1("Relu", [ctx.emit1("Sub", [high, low])]))
    intersection = ctx.emit1("Mul", overlaps)
    union = ctx.emit1("Sub", [ctx.emit1("Add", [_area(ctx, *l_sizes, zero),
                                                _area(ctx, *r_sizes, zero)]), intersection])
    ratio = ctx.emit1("Div", [intersection, union])
    ctx.emit1("Where", [ctx.emit1("Greater", [intersection, zero]), ratio, zero], ctx.output(node))


@converter("_contrib_box_encode")
def box_encode(ctx: ConvertContext, node: Node) -> None:
    """Training targets of anchors (B, N, 4) against their matched refs (B, M, 4), both corner
    boxes: ((ref centre - anchor centre) / anchor size - mean) / std for x, y and
    (log(ref size / anchor size) - mean) / std for w, h, where samples > 0.5; 0 elsewhere.
    Second output: the mask (1 where samples > 0.5) repeated over the 4 coordinates."""
    dtype = ctx.dtype(node, 0)
    matches = unsqueeze(ctx, cast(ctx, ctx.input(node, 1), "int64"), [2])
    refs = ctx.emit1("GatherND", [ctx.input(node, 3), matches], batch_dims=1)
    half = typed(ctx, 0.5, dtype)
    centres_and_sizes = []
    for boxes in (refs, ctx.input(node, 2)):
        (left, top, _, _), (width, height) = _box_edges(ctx, boxes, "corner", dtype)
        centres_and_sizes.append([ctx.emit1("Add", [left, ctx.emit1("Mul", [width, half])]),
                                  ctx.emit1("Add", [top, ctx.emit1("Mul", [height, half])]),
                                  width, height])
    (ref_x, ref_y, ref_w, ref_h), (x, y, w, h) = centres_and_sizes
    raw = [ctx.emit1("Div", [ctx.emit1("Sub", [ref_x, x]), w]),
           ctx.emit1("Div", [ctx.emit1("Sub", [ref_y, y]), h]),
           ctx.emit1("Log", [ctx.emit1("Div", [ref_w, w])]),
           ctx.emit1("Log", [ctx.emit1("Div", [ref_h, h])])]
    means, stds = ctx.input(node, 4), ctx.input(node, 5)
    encoded = ctx.emit1("Div", [ctx.emit1("Sub", [
        ctx.emit1("Concat", [unsqueeze(ctx, value, [2]) for value in raw], axis=2), means]), stds])
    valid = unsqueeze(ctx, ctx.emit1("Greater", [ctx.input(node, 0), half]), [2])
    zero = typed(ctx, 0, dtype)
    ctx.emit1("Where", [valid, encoded, zero], ctx.output(node, 0))
    mask = cast(ctx, valid, dtype)
    ctx.emit1("Expand", [mask, ctx.int64s([1, 1, 4], hint="shape")], ctx.output(node, 1))


# --- SSD detection output ------------------------------------------------------------------------

def _decode_anchors(ctx: ConvertContext, node: Node, dtype: str) -> str:
    """(B, N, 4) corner boxes: anchors (1, N, 4) moved by loc_pred (B, N * 4) scaled by the
    variances, in MXNet's order of operations; clipped to [0, 1] when ``clip``."""
    anchors = [_column(ctx, ctx.input(node, 2), i) for i in range(4)]
    predictions = ctx.emit1("Reshape", [ctx.input(node, 1), ctx.int64s(
        [0, -1, 4], hint="shape")])
    shift_x, shift_y, scale_w, scale_h = (
        ctx.emit1("Mul", [_column(ctx, predictions, i), typed(ctx, variance, dtype)])
        for i, variance in enumerate(ctx.attr(node, "variances")))
    width = ctx.emit1("Sub", [anchors[2], anchors[0]])
    height = ctx.emit1("Sub", [anchors[3], anchors[1]])
    two = typed(ctx, 2, dtype)
    centre_x = ctx.emit1("Div", [ctx.emit1("Add", [anchors[0], anchors[2]]), two])
    centre_y = ctx.emit1("Div", [ctx.emit1("Add", [anchors[1], anchors[3]]), two])
    x = ctx.emit1("Add", [ctx.emit1("Mul", [shift_x, width]), centre_x])
    y = ctx.emit1("Add", [ctx.emit1("Mul", [shift_y, height]), centre_y])
    half_w = ctx.emit1("Div", [ctx.emit1("Mul", [ctx.emit1("Exp", [scale_w]), width]), two])
    half_h = ctx.emit1("Div", [ctx.emit1("Mul", [ctx.emit1("Exp", [scale_h]), height]), two])
    edges = [ctx.emit1("Sub", [x, half_w]), ctx.emit1("Sub", [y, half_h]),
             ctx.emit1("Add", [x, half_w]), ctx.emit1("Add", [y, half_h])]
    if ctx.attr(node, "clip"):
        edges = [ctx.emit1("Clip", [edge, typed(ctx, 0, dtype), typed(ctx, 1, dtype)])
                 for edge in edges]
    return ctx.emit1("Concat", [unsqueeze(ctx, edge, [2]) for edge in edges], axis=2)


def _gather_rows(ctx: ConvertContext, rows: str, order: str) -> str:
    """rows (B, N, K) reordered along N by order (B, N)."""
    return ctx.emit1("GatherND", [rows, unsqueeze(ctx, order, [2])], batch_dims=1)


def _suppressed(ctx: ConvertContext, node: Node, rows: str, candidate: str, dtype: str) -> str:
    """(B, N) bool: rows (sorted by score) that greedy NMS removes; only ``candidate`` rows take
    part, suppressing within a class unless ``force_suppress``."""
    lowest = typed(ctx, np.finfo(np.float32).min, "float32")
    boxes = cast(ctx, slice_value(ctx, rows, [2], [6], [2]), "float32")
    scores = ctx.emit1("Where", [candidate, cast(ctx, _column(ctx, rows, 1), "float32"), lowest])
    if ctx.attr(node, "force_suppress"):
        class_scores = unsqueeze(ctx, scores, [1])
    else:
        classes = input_shape(ctx, node, 0)[1] - 1
        ids = unsqueeze(ctx, _column(ctx, rows, 0), [1])
        member = ctx.emit1("Equal", [ids, ctx.constant(
            np.arange(classes).reshape(1, classes, 1).astype(dtype), hint="classes")])
        class_scores = ctx.emit1("Where", [member, unsqueeze(ctx, scores, [1]), lowest])
    count = input_shape(ctx, node, 2)[1]
    selected = ctx.emit1("NonMaxSuppression", [
        boxes, class_scores, ctx.int64s([count]),
        typed(ctx, [ctx.attr(node, "nms_threshold")], "float32"), lowest])
    batch_and_box = ctx.emit1("Gather", [selected, ctx.int64s([0, 2])], axis=1)
    nothing = filled(ctx, ctx.emit1("Shape", [scores]), 0, "bool")
    trues = filled(ctx, runtime_dims(ctx, selected, [0]), 1, "bool")
    kept = ctx.emit1("ScatterND", [nothing, batch_and_box, trues])
    return ctx.emit1("And", [candidate, ctx.emit1("Not", [kept])])


def _with_id(ctx: ConvertContext, rows: str, cleared: str, dtype: str) -> str:
    """rows with the class id set to -1 where ``cleared`` (B, N)."""
    ids = ctx.emit1("Where", [cleared, typed(ctx, -1, dtype), _column(ctx, rows, 0)])
    return ctx.emit1("Concat", [unsqueeze(ctx, ids, [2]), slice_value(ctx, rows, [1], [6], [2])],
                     axis=2)


@converter("_contrib_MultiBoxDetection")
def multibox_detection(ctx: ConvertContext, node: Node) -> None:
    """SSD's detection output, rows [class, score, x1, y1, x2, y2] per batch, as MXNet 1.9.1's
    CPU kernel writes them:

    - an anchor is a detection when its best foreground probability (first class on ties) is
      at least ``threshold``; detections come first, in anchor order, then rows of -1;
    - when 0 < ``nms_threshold`` <= 1 they are sorted by score (stably); with ``nms_topk`` only
      the first ``nms_topk`` stay sorted, the rest keep the anchor-order row at their position
      with class -1; greedy NMS among the sorted ones sets the class of suppressed rows to -1
      (their score and box stay).

    NonMaxSuppression suppresses at IoU > ``nms_threshold``, MXNet at >=: only an exactly equal
    IoU differs. Equal scores may be visited in another order by NonMaxSuppression.
    MXNet 1.9.1's CPU kernel ignores ``background_id``: class 0 is the background whatever it
    says (measured: background_id 0, 1 and 2 give the same rows), and so it is here."""
    dtype = ctx.dtype(node, 0)
    count = input_shape(ctx, node, 2)[1]
    foreground = slice_value(ctx, ctx.input(node, 0), [1], [INT64_MAX], [1])
    score = reduce(ctx, "ReduceMax", foreground, [1], keepdims=False)  # (B, N)
    ids = cast(ctx, ctx.emit1("ArgMax", [foreground], axis=1, keepdims=0), dtype)
    valid = ctx.emit1("And", [
        ctx.emit1("Greater", [score, typed(ctx, -1, dtype)]),
        ctx.emit1("Not", [ctx.emit1("Less", [score, typed(ctx, ctx.attr(node, "threshold"),
                                                            dtype)])])])
    rows = ctx.emit1("Concat", [unsqueeze(ctx, ids, [2]), unsqueeze(ctx, score, [2]),
                                _decode_anchors(ctx, node, dtype)], axis=2)
    positions = ctx.constant(np.arange(count, dtype=np.int64)[None], hint="positions")
    # detections first, in anchor order: the key count - i for them, -i for the others
    anchor_key = ctx.emit1("Where", [valid, ctx.emit1("Sub", [ctx.int64s([count]), positions]),
                                     ctx.emit1("Neg", [positions])])
    anchor_order = ctx.emit("TopK", [anchor_key, ctx.int64s([count])], 2, axis=1)[1]
    detections = reduce(ctx, "ReduceSum", cast(ctx, valid, "int64"), [1], keepdims=True)
    is_detection = ctx.emit1("Less", [positions, detections])  # (B, N) by output position
    compact = _gather_rows(ctx, rows, anchor_order)
    nms_threshold, topk = ctx.attr(node, "nms_threshold"), ctx.attr(node, "nms_topk")
    if 0 < nms_threshold <= 1:
        lowest = typed(ctx, -np.inf, dtype)
        score_order = ctx.emit("TopK", [ctx.emit1("Where", [valid, score, lowest]),
                                        ctx.int64s([count])], 2, axis=1)[1]
        ranked = _gather_rows(ctx, rows, score_order)
        in_top = is_detection
        if 0 < topk < count:
            in_top = ctx.emit1("And", [is_detection, ctx.emit1("Less", [
                positions, ctx.constant(np.int64(topk))])])
            beyond_top = ctx.emit1("Not", [in_top])
            compact = ctx.emit1("Where", [unsqueeze(ctx, in_top, [2]),
                                          _with_id(ctx, ranked, _suppressed(ctx, node, ranked,
                                                                            in_top, dtype), dtype),
                                          _with_id(ctx, compact, beyond_top, dtype)])
        else:
            compact = _with_id(ctx, ranked, _suppressed(ctx, node, ranked, in_top, dtype), dtype)
    ctx.emit1("Where", [unsqueeze(ctx, is_detection, [2]), compact, typed(ctx, -1, dtype)],
              ctx.output(node))


# --- linear algebra on the last two axes ---------------------------------------------------------

@converter("_linalg_det")
def det(ctx: ConvertContext, node: Node) -> None:
    """onnxruntime's Det has no float64 kernel: float64 matrices are reduced in float32."""
    dtype = ctx.dtype(node, 0)
    if dtype != "float64":
        ctx.emit1("Det", [ctx.input(node, 0)], ctx.output(node))
        return
    cast(ctx, ctx.emit1("Det", [cast(ctx, ctx.input(node, 0), "float32")]), dtype, ctx.output(node))


def _diagonal(ctx: ConvertContext, node: Node, offset: int, output: str | None = None) -> str:
    """Diagonal ``offset`` (above the main one when positive) of the last two axes, gathered
    from the flattened matrix (exact, whatever the other elements hold)."""
    shape = input_shape(ctx, node, 0)
    rows, columns = shape[-2:]
    starts = range(max(0, -offset), min(rows, columns - offset))
    flat = ctx.emit1("Reshape", [ctx.input(node, 0), ctx.int64s([0] * (len(shape) - 2) + [-1],
                                                                hint="shape")])
    indices = ctx.int64s([row * columns + row + offset for row in starts], hint="diagonal")
    return ctx.emit1("Gather", [flat, indices], output, axis=-1)


@converter("_linalg_extractdiag")
def extract_diagonal(ctx: ConvertContext, node: Node) -> None:
    _diagonal(ctx, node, ctx.attr(node, "offset"), ctx.output(node))


@converter("_linalg_sumlogdiag")
def sum_log_diagonal(ctx: ConvertContext, node: Node) -> None:
    log = ctx.emit1("Log", [_diagonal(ctx, node, 0)])
    reduce(ctx, "ReduceSum", log, [-1], keepdims=False, output=ctx.output(node))


@converter("_linalg_makediag")
def make_diagonal(ctx: ConvertContext, node: Node) -> None:
    """(..., n) -> (..., m, m), m = n + |offset|: element [i, j] is x[min(i, j)] on the
    diagonal j - i = offset and 0 elsewhere."""
    offset = ctx.attr(node, "offset")
    size = input_shape(ctx, node, 0)[-1] + abs(offset)
    rows, columns = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    on_diagonal = ctx.constant(columns - rows == offset, hint="on_diagonal")
    source = np.clip(np.minimum(rows, columns), 0, size - abs(offset) - 1)
    values = ctx.emit1("Gather", [ctx.input(node, 0), ctx.constant(source.astype(np.int64),
                                                                  hint="source")], axis=-1)
    ctx.emit1("Where", [on_diagonal, values, typed(ctx, 0, ctx.dtype(node, 0))], ctx.output(node))


# --- indices -------------------------------------------------------------------------------------

def _index_columns_last(ctx: ConvertContext, node: Node, slot: int) -> str:
    """Indices (M, ...) as int64 (..., M), the layout ScatterND wants."""
    rank = len(input_shape(ctx, node, slot))
    indices = cast(ctx, ctx.input(node, slot), "int64")
    return ctx.emit1("Transpose", [indices], perm=list(range(1, rank)) + [0])


@converter("scatter_nd")
def scatter_nd(ctx: ConvertContext, node: Node) -> None:
    """Zeros of ``shape`` with data[i] written at indices[:, i] (repeated indices: undefined in
    both)."""
    zeros = ctx.constant(np.zeros(ctx.attr(node, "shape"), dtype=ctx.dtype(node, 0)), hint="zeros")
    ctx.emit1("ScatterND", [zeros, _index_columns_last(ctx, node, 1), ctx.input(node, 0)],
              ctx.output(node))


@converter("_contrib_index_copy")
def index_copy(ctx: ConvertContext, node: Node) -> None:
    """old with rows index[i] replaced by new[i]."""
    indices = unsqueeze(ctx, cast(ctx, ctx.input(node, 1), "int64"), [1])
    ctx.emit1("ScatterND", [ctx.input(node, 0), indices, ctx.input(node, 2)], ctx.output(node))


def _strides(shape) -> np.ndarray:
    return np.cumprod([1, *shape[:0:-1]])[::-1].astype(np.int64)


@converter("_ravel_multi_index")
def ravel_multi_index(ctx: ConvertContext, node: Node) -> None:
    """(M, N) coordinates in ``shape`` -> N flat indices, in the input dtype (MXNet takes 2-D
    input only)."""
    strides = ctx.constant(_strides(ctx.attr(node, "shape")).reshape(-1, 1), hint="strides")
    scaled = ctx.emit1("Mul", [cast(ctx, ctx.input(node, 0), "int64"), strides])
    cast(ctx, reduce(ctx, "ReduceSum", scaled, [0], keepdims=False), ctx.dtype(node, 0),
         ctx.output(node))


@converter("_unravel_index")
def unravel_index(ctx: ConvertContext, node: Node) -> None:
    """N flat indices -> (M, N) coordinates in ``shape``: (index / stride) % size, in integers
    truncated as C++ does. MXNet 1.9.1 gives its input back, reshaped, for input of rank > 1
    (measured), so only 1-D input is converted."""
    if len(input_shape(ctx, node, 0)) != 1:
        raise Unsupported("unravel_index of an input with more than one axis (MXNet 1.9.1 "
                          "returns the input reshaped instead of coordinates)")
    shape = ctx.attr(node, "shape")
    flat = unsqueeze(ctx, cast(ctx, ctx.input(node, 0), "int64"), [0])
    strides = ctx.constant(_strides(shape).reshape(-1, 1), hint="strides")
    quotient = ctx.emit1("Div", [flat, strides])
    coordinates = ctx.emit1("Mod", [quotient, ctx.constant(
        np.asarray(shape, dtype=np.int64).reshape(-1, 1), hint="sizes")], fmod=1)
    cast(ctx, coordinates, ctx.dtype(node, 0), ctx.output(node))
