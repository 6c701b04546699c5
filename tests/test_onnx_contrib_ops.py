"""A user exports a model using MXNet's contrib and detection-style ops to ONNX and gets what
MXNet computes: NMS, ROIAlign/ROIPooling, box decoding, sequence ops, attention helpers.

Tolerance and opsets: see onnx_op_harness (1e-5 relative; opsets 13 and 17, and the newest where
the ONNX form changed: RoiAlign's coordinate mode at 16, PITFALLS.md "opset 16 changed
ROIAlign's default coordinate mode").
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

from graphopt.errors import UnsupportedOpError
from graphopt.onnx.converters.contrib import ROI_OPS_NEWEST_OPSET
from conftest import relative_error
from onnx_op_harness import check, export, load, run_mxnet, run_onnx

x = mx.sym.var("x")
y = mx.sym.var("y")
RNG = np.random.default_rng(5)


def normal(*shape, dtype="float32"):
    return RNG.standard_normal(shape).astype(dtype)


# --- small contrib math ------------------------------------------------------------------------

def test_div_sqrt_dim(tmp_path):
    check(mx.sym.contrib.div_sqrt_dim(x), tmp_path, {"x": normal(1, 3, 8)},
          other_batch={"x": normal(3, 3, 8)})


@pytest.mark.parametrize("attrs", [{}, {"a": 2.0, "b": -1.5, "c": 0.25}, {"b": 3.0}], ids=str)
def test_quadratic(attrs, tmp_path):
    check(mx.sym.contrib.quadratic(x, **attrs) + x, tmp_path, {"x": normal(2, 5)})


# --- sequences ---------------------------------------------------------------------------------

SEQUENCE_CASES = [  # data shape, axis, lengths
    ((5, 3, 2), 0, [2, 5, 1]), ((3, 5, 2), 1, [2, 5, 1]), ((5, 3), 0, [3, 0, 4.7]),
    ((3, 5, 2, 2), 1, [1, 1, 5]),
]


@pytest.mark.parametrize("shape,axis,lengths", SEQUENCE_CASES, ids=str)
@pytest.mark.parametrize("value", [0.0, -7.5])
def test_sequence_mask(shape, axis, lengths, value, tmp_path):
    lengths = np.array(lengths, dtype="float32")
    symbol = mx.sym.SequenceMask(x, y, use_sequence_length=True, axis=axis, value=value)
    check(symbol, tmp_path, {"x": normal(*shape), "y": lengths})


@pytest.mark.parametrize("dtype", ["int32", "int64", "float64"])
@pytest.mark.parametrize("axis", [0, 1])
def test_sequence_ops_take_lengths_of_any_type(dtype, axis, tmp_path):
    """MXNet reads the lengths in their own type (float ones truncated); the data stays float32."""
    lengths = np.array([2, 5, 1], dtype=dtype)
    shape = (5, 3, 2) if axis == 0 else (3, 5, 2)
    outputs = [mx.sym.SequenceMask(x, y, use_sequence_length=True, axis=axis, value=2.5),
               mx.sym.SequenceLast(x, y, use_sequence_length=True, axis=axis)]
    if axis == 0:  # SequenceReverse: "Only 0 is currently supported"
        outputs.append(mx.sym.SequenceReverse(x, y, use_sequence_length=True))
    check(mx.sym.Group(outputs), tmp_path, {"x": normal(*shape), "y": lengths})


@pytest.mark.parametrize("op", ["SequenceMask", "SequenceLast", "SequenceReverse"])
def test_sequence_ops_without_lengths(op, tmp_path):
    check(getattr(mx.sym, op)(x), tmp_path, {"x": normal(4, 3, 2)})


@pytest.mark.parametrize("shape,axis,lengths", SEQUENCE_CASES, ids=str)
def test_sequence_last(shape, axis, lengths, tmp_path):
    lengths = np.array([max(1, length) for length in lengths], dtype="float32")
    symbol = mx.sym.SequenceLast(x, y, use_sequence_length=True, axis=axis)
    check(symbol, tmp_path, {"x": normal(*shape), "y": lengths})


def test_sequence_last_on_axis_1_without_lengths(tmp_path):
    check(mx.sym.SequenceLast(x, axis=1), tmp_path, {"x": normal(2, 4, 3)})


def test_sequence_ops_keep_the_batch_dynamic(tmp_path):
    """Batch first (axis=1): the data and the lengths follow the batch together."""
    mask = mx.sym.SequenceMask(x, y, use_sequence_length=True, axis=1)
    last = mx.sym.SequenceLast(x, y, use_sequence_length=True, axis=1)
    check(mx.sym.Group([mask, last]), tmp_path,
          {"x": normal(1, 4, 2), "y": np.array([3], dtype="float32")},
          other_batch={"x": normal(3, 4, 2), "y": np.array([1, 4, 2], dtype="float32")})


@pytest.mark.parametrize("lengths", [[2, 5, 1], [5, 5, 5], [0, 3, 4], [2.7, 4.2, 0.5]])
@pytest.mark.parametrize("shape", [(5, 3, 2), (5, 3), (5, 3, 2, 2)], ids=str)
def test_sequence_reverse_keeps_padding_in_place(lengths, shape, tmp_path):
    symbol = mx.sym.SequenceReverse(x, y, use_sequence_length=True)
    check(symbol, tmp_path, {"x": normal(*shape), "y": np.array(lengths, dtype="float32")})


def test_sequence_reverse_without_lengths_keeps_the_batch_dynamic(tmp_path):
    check(mx.sym.SequenceReverse(x), tmp_path, {"x": normal(5, 3, 2)},
          other_batch={"x": normal(7, 3, 2)})


# --- regions of interest ---------------------------------------------------------------------

ROIS = np.array([[0, 1.0, 1.0, 6.0, 5.0], [1, 0.5, 2.25, 7.5, 7.0], [0, 3.0, 3.0, 3.4, 3.2],
                 [1, -1.0, -2.0, 9.0, 4.0]], dtype="float32")


def _rois(count, size, batch, seed=1):
    """Rows [batch, x1, y1, x2, y2], some reaching outside a ``size`` x ``size`` image."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-2, size, (count, 2))
    extent = rng.uniform(0.3, 0.8 * size, (count, 2))
    index = rng.integers(0, batch, (count, 1))
    return np.concatenate([index, corner, corner + extent], axis=1).astype("float32")


@pytest.mark.parametrize("attrs", [
    {"pooled_size": (2, 2), "spatial_scale": 1.0},
    {"pooled_size": (3, 2), "spatial_scale": 0.5, "sample_ratio": 2},
    {"pooled_size": (2, 3), "spatial_scale": 1.0, "sample_ratio": 1},
    {"pooled_size": (7, 7), "spatial_scale": 1.0, "sample_ratio": 0},  # adaptive, as -1
    {"pooled_size": (3, 5), "spatial_scale": 0.25, "sample_ratio": 3},
], ids=str)
def test_roi_align(attrs, tmp_path):
    rois = mx.sym.var("rois")
    check(mx.sym.contrib.ROIAlign(x, rois, **attrs), tmp_path,
          {"x": normal(2, 3, 8, 8), "rois": ROIS}, opsets=(13, 17, ROI_OPS_NEWEST_OPSET))


def test_roi_align_gives_zeros_for_a_negative_batch_index(tmp_path):
    """MXNet documents zeros for such a roi; MXNet 1.9.1's CPU kernel instead leaves that roi's
    output uninitialised and zeroes one element of roi 0 (measured: [0, 0, 1, 0] becomes 0), so
    the comparison is with MXNet on the other rois and with zeros on this one."""
    rois = mx.sym.var("rois")
    symbol = mx.sym.contrib.ROIAlign(x, rois, pooled_size=(2, 2), spatial_scale=1.0)
    data = normal(2, 3, 8, 8)
    with_negative = np.concatenate([ROIS, [[-1, 1.0, 1.0, 4.0, 4.0]]]).astype("float32")
    graph = load(symbol, tmp_path, {"x": data, "rois": with_negative})
    expected = run_mxnet(symbol, {"x": data, "rois": ROIS}, {})[0]
    for opset in (13, 17):
        (result,) = run_onnx(export(graph, opset), {"x": data, "rois": with_negative})
        assert relative_error(expected, result[:-1]) <= 1e-5
        assert not result[-1].any()


@pytest.mark.parametrize("attrs", [{"pooled_size": (2, 2), "spatial_scale": 1.0},
                                   {"pooled_size": (3, 3), "spatial_scale": 0.5, "sample_ratio": 2}],
                         ids=str)
def test_roi_align_aligned_needs_opset_16(attrs, tmp_path):
    rois = mx.sym.var("rois")
    symbol = mx.sym.contrib.ROIAlign(x, rois, aligned=True, **attrs)
    inputs = {"x": normal(2, 3, 8, 8), "rois": ROIS}
    check(symbol, tmp_path, inputs, opsets=(16, 17, ROI_OPS_NEWEST_OPSET))
    with pytest.raises(UnsupportedOpError, match="opset 16"):
        export(load(symbol, tmp_path, inputs), 13)


@pytest.mark.parametrize("attrs", [
    {"pooled_size": (2, 2), "spatial_scale": 1.0},
    {"pooled_size": (3, 3), "spatial_scale": 0.5, "sample_ratio": 2},
    {"pooled_size": (2, 3), "spatial_scale": 0.5, "aligned": True},
], ids=str)
def test_position_sensitive_roi_align(attrs, tmp_path):
    """Output channel c, bin (i, j) pools input channel c * ph * pw + i * pw + j (R-FCN style)."""
    height, width = attrs["pooled_size"]
    rois = mx.sym.var("rois")
    symbol = mx.sym.contrib.ROIAlign(x, rois, position_sensitive=True, **attrs)
    check(symbol, tmp_path, {"x": normal(2, 2 * height * width, 16, 16), "rois": _rois(7, 16, 2)},
          opsets=(16, ROI_OPS_NEWEST_OPSET),
          other_batch={"x": normal(3, 2 * height * width, 16, 16), "rois": _rois(9, 16, 3)})


@pytest.mark.parametrize("attrs", [{"pooled_size": (2, 2), "spatial_scale": 1.0},
                                   {"pooled_size": (3, 2), "spatial_scale": 0.5}], ids=str)
def test_roi_pooling(attrs, tmp_path):
    rois = mx.sym.var("rois")
    check(mx.sym.ROIPooling(x, rois, **attrs), tmp_path,
          {"x": normal(2, 3, 8, 8), "rois": ROIS}, opsets=(13, 17, ROI_OPS_NEWEST_OPSET))


def test_roi_pooling_in_float64(tmp_path):
    """onnxruntime's MaxRoiPool is float32 only: float64 goes through float32 (a max picks an
    input value, so only its precision beyond float32 is lost: 1e-5 holds)."""
    rois = mx.sym.var("rois")
    check(mx.sym.ROIPooling(x, rois, pooled_size=(7, 7), spatial_scale=0.5), tmp_path,
          {"x": normal(2, 3, 16, 16, dtype="float64"), "rois": _rois(7, 16, 2).astype("float64")})


@pytest.mark.parametrize("symbol", [
    mx.sym.ROIPooling(x, mx.sym.var("rois"), pooled_size=(2, 2), spatial_scale=1.0),
    mx.sym.contrib.ROIAlign(x, mx.sym.var("rois"), pooled_size=(2, 2), spatial_scale=1.0)])
def test_roi_ops_refuse_opsets_onnxruntime_cannot_run(symbol, tmp_path):
    """Opset 22 re-versioned RoiAlign and MaxRoiPool; onnxruntime 1.32 has no kernel for them."""
    graph = load(symbol, tmp_path, {"x": normal(2, 3, 8, 8), "rois": ROIS})
    with pytest.raises(UnsupportedOpError, match=f"opset {ROI_OPS_NEWEST_OPSET} or lower"):
        export(graph, ROI_OPS_NEWEST_OPSET + 1)


# --- boxes -------------------------------------------------------------------------------------

def _anchors(count, fmt):
    centers = RNG.uniform(2, 10, (1, count, 2))
    sizes = RNG.uniform(1, 4, (1, count, 2))
    if fmt == "center":
        return np.concatenate([centers, sizes], axis=-1).astype("float32")
    return np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=-1).astype("float32")


@pytest.mark.parametrize("attrs", [{}, {"format": "corner"},
                                   {"std0": 0.1, "std1": 0.1, "std2": 0.2, "std3": 0.2},
                                   {"clip": 0.5, "format": "corner"}], ids=str)
def test_box_decode(attrs, tmp_path):
    anchors = mx.sym.var("anchors")
    offsets = normal(2, 6, 4)
    check(mx.sym.contrib.box_decode(x, anchors, **attrs), tmp_path,
          {"x": offsets}, {"anchors": _anchors(6, attrs.get("format", "center"))},
          other_batch={"x": normal(3, 6, 4)})


def _detections(batch, count, classes=3, width=6, seed=0, tied=False):
    """Rows [id, score, x1, y1, x2, y2] of overlapping boxes with distinct scores (``tied``:
    three score levels shared by many boxes)."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 6, (batch, count, 2))
    size = rng.uniform(2, 5, (batch, count, 2))
    ids = rng.integers(0, classes, (batch, count, 1))
    scores = rng.permutation(batch * count).reshape(batch, count, 1) / (batch * count) + 0.01
    if tied:
        scores = rng.integers(1, 4, (batch, count, 1)) / 4
    rows = [ids, scores, corner, corner + size]
    if width > 6:
        rows.append(rng.standard_normal((batch, count, width - 6)))
    return np.concatenate(rows, axis=-1).astype("float32")


NMS_CASES = [
    {},
    {"overlap_thresh": 0.3},
    {"id_index": 0},
    {"id_index": 0, "force_suppress": True},
    {"id_index": 0, "background_id": 1},
    {"topk": 4},
    {"topk": 3, "id_index": 0, "overlap_thresh": 0.2},
    {"valid_thresh": 0.4},
    {"out_format": "center"},
    {"id_index": 0, "overlap_thresh": 0.1, "valid_thresh": 0.2, "topk": 6},
    {"topk": 0},  # MXNet: "topk < 1" returns the input unchanged
    {"topk": 25, "id_index": 0},  # more than there are boxes
    {"id_index": 0, "background_id": 2, "force_suppress": True},
    {"overlap_thresh": 0.0},
    {"valid_thresh": -0.5, "overlap_thresh": 1.0},
    {"overlap_thresh": 2.0, "topk": 6},  # GluonCV's FPN: sort and cut, suppress nothing
    {"overlap_thresh": 1.5, "id_index": 0},
    {"overlap_thresh": -0.1, "id_index": 0},  # every IoU exceeds it: the best of each class
    {"overlap_thresh": -0.1, "force_suppress": True},
]


@pytest.mark.parametrize("attrs", NMS_CASES, ids=str)
def test_box_nms(attrs, tmp_path):
    check(mx.sym.contrib.box_nms(x, **attrs), tmp_path, {"x": _detections(2, 10)},
          other_batch={"x": _detections(5, 10, seed=1)})


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_box_nms_in_other_float_types(dtype, tmp_path):
    """NonMaxSuppression takes float32 only: boxes and scores are cast for it, rows are not.
    (1e-3: float16 rows.)"""
    data = _detections(2, 6).astype(dtype)
    check(mx.sym.contrib.box_nms(x, id_index=0), tmp_path, {"x": data}, tolerance=1e-3)


@pytest.mark.parametrize("attrs", [{}, {"id_index": 0}, {"id_index": 0, "topk": 5}], ids=str)
def test_box_nms_with_tied_scores(attrs, tmp_path):
    """MXNet sorts with a stable sort: of equal scores, the earlier box comes first, suppresses
    and is kept by topk."""
    check(mx.sym.contrib.box_nms(x, **attrs), tmp_path, {"x": _detections(2, 12, tied=True)})


@pytest.mark.parametrize("attrs", [{"id_index": 0}, {"id_index": 0, "force_suppress": True},
                                   {"id_index": 0, "background_id": 0}], ids=str)
def test_box_nms_drops_the_background_class_even_at_its_default(attrs, tmp_path):
    """MXNet 1.9.1 drops rows whose id equals background_id (float equality: 1.5 is not 1) as
    soon as there is an id_index, even at the default background_id=-1, the id MultiBoxDetection
    gives rows without a detection (measured: ids [-1, -2, 0, 1.5, 1, -0.5, 2] keep all but -1)."""
    data = _detections(2, 12)
    data[:, ::3, 0] = -1
    data[:, 1::4, 0] += 0.5
    check(mx.sym.contrib.box_nms(x, **attrs), tmp_path, {"x": data})


def test_box_nms_on_2d_input_follows_the_number_of_boxes(tmp_path):
    """A 2-D (N, K) input: its first axis, the number of boxes, follows the batch size of a
    dynamic-batch export, so NMS must take N at run time."""
    check(mx.sym.contrib.box_nms(x, id_index=0, topk=8), tmp_path, {"x": _detections(1, 10)[0]},
          other_batch={"x": _detections(1, 14, seed=2)[0]})


def test_box_nms_as_a_region_proposal_network_uses_it(tmp_path):
    """Faster R-CNN proposals: rows [score, x1, y1, x2, y2], no class, topk before NMS."""
    data = _detections(2, 12)[..., 1:]
    symbol = mx.sym.contrib.box_nms(x, overlap_thresh=0.7, topk=6, coord_start=1, score_index=0,
                                    id_index=-1, force_suppress=True)
    check(symbol, tmp_path, {"x": data}, other_batch={"x": _detections(3, 12, seed=4)[..., 1:]})


def test_box_nms_center_format_and_other_columns(tmp_path):
    data = _detections(1, 8, width=8)
    center = data.copy()
    center[..., 2:4] = (data[..., 2:4] + data[..., 4:6]) / 2
    center[..., 4:6] = data[..., 4:6] - data[..., 2:4]
    symbol = mx.sym.contrib.box_nms(x, in_format="center", out_format="corner", id_index=0)
    check(symbol, tmp_path, {"x": center})
    check(mx.sym.contrib.box_nms(x, in_format="center"), tmp_path, {"x": center})


def test_box_nms_with_columns_in_another_order(tmp_path):
    data = _detections(1, 8)[..., [2, 3, 4, 5, 1, 0]]  # x1 y1 x2 y2 score id
    symbol = mx.sym.contrib.box_nms(x, coord_start=0, score_index=4, id_index=5)
    check(symbol, tmp_path, {"x": data})


def test_box_nms_over_several_batch_axes(tmp_path):
    data = _detections(6, 7).reshape(2, 3, 7, 6)
    check(mx.sym.contrib.box_nms(x, overlap_thresh=0.4), tmp_path, {"x": data})


# --- attention over interleaved projections ----------------------------------------------------

@pytest.mark.parametrize("heads,head_dim,batch", [(2, 3, 2), (1, 4, 1), (4, 2, 3)])
def test_self_attention_from_interleaved_projections(heads, head_dim, batch, tmp_path):
    time = 4
    qkv = normal(time, batch, heads * 3 * head_dim)
    scores = mx.sym.contrib.interleaved_matmul_selfatt_qk(x, heads=heads)
    attention = mx.sym.softmax(scores, axis=-1)
    context = mx.sym.contrib.interleaved_matmul_selfatt_valatt(x, attention, heads=heads)
    check(mx.sym.Group([scores, context]), tmp_path, {"x": qkv},
          other_batch={"x": normal(2 * time, batch, heads * 3 * head_dim)})


@pytest.mark.parametrize("heads,head_dim,batch", [(2, 3, 2), (1, 4, 1), (4, 2, 3)])
def test_encoder_decoder_attention_from_interleaved_projections(heads, head_dim, batch, tmp_path):
    queries = normal(4, batch, heads * head_dim)
    keys_values = normal(5, batch, heads * 2 * head_dim)
    scores = mx.sym.contrib.interleaved_matmul_encdec_qk(x, y, heads=heads)
    context = mx.sym.contrib.interleaved_matmul_encdec_valatt(y, mx.sym.softmax(scores, axis=-1),
                                                              heads=heads)
    check(mx.sym.Group([scores, context]), tmp_path, {"x": queries, "y": keys_values},
          other_batch={"x": normal(8, batch, heads * head_dim),
                       "y": normal(10, batch, heads * 2 * head_dim)})


def test_every_refused_node_is_listed_with_its_reason(tmp_path):
    """One error lists every node that cannot be converted, each line ending in why (the op, its
    attributes, then a reason a user can act on), here at an opset above RoiAlign's newest
    kernel, with an LSTM projection (GPU-only in MXNet) beside it."""
    rois = mx.sym.var("rois")
    pooled = mx.sym.contrib.ROIAlign(x, rois, pooled_size=(2, 2), spatial_scale=1.0, name="roi")
    sequence = mx.sym.var("sequence")
    projected = mx.sym.RNN(sequence, mx.sym.var("weights"), mx.sym.var("state"),
                           mx.sym.var("cell"), state_size=4, projection_size=2, num_layers=1,
                           mode="lstm", name="lstmp")
    inputs = {"x": normal(2, 3, 8, 8), "rois": ROIS, "sequence": normal(3, 2, 5)}
    graph = load(mx.sym.Group([pooled, projected]), tmp_path, inputs,
                 {"weights": normal(4 * 4 * (5 + 2) + 2 * 4 * 4 + 4 * 2),
                  "state": normal(1, 2, 2), "cell": normal(1, 2, 4)})
    with pytest.raises(UnsupportedOpError) as raised:
        export(graph, ROI_OPS_NEWEST_OPSET + 1)
    lines = str(raised.value).splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["roi", "lstmp"]
    reasons = [line.split("): ", 1)[1] for line in lines]
    assert "no kernel" in reasons[0] and f"opset {ROI_OPS_NEWEST_OPSET} or lower" in reasons[0]
    assert "projection_size=2" in reasons[1] and "only on GPU" in reasons[1]


def _rpn_outputs(batch, anchors=6, size=6, seed=0):
    """cls_prob (B, 2A, H, W) with distinct foreground scores, small deltas, and im_info rows
    (height, width, scale) of images that cover 5 and 6 of the 6 cells (stride 4)."""
    rng = np.random.default_rng(seed)
    foreground = rng.permutation(batch * anchors * size * size).reshape(
        batch, anchors, size, size) / (batch * anchors * size * size)
    probabilities = np.concatenate([1 - foreground, foreground], axis=1)
    deltas = rng.normal(0, 0.3, (batch, 4 * anchors, size, size))
    info = np.array([[22.0, 24.0, 1.0], [24.0, 21.0, 0.5]] * batch)[:batch]
    return {"x": probabilities.astype("float32"), "y": deltas.astype("float32"),
            "info": info.astype("float32")}


PROPOSAL_CASES = [
    {},
    {"threshold": 0.5, "rpn_min_size": 3},
    {"rpn_pre_nms_top_n": 40, "rpn_post_nms_top_n": 30, "threshold": 0.3},  # repeats kept rows
    {"iou_loss": True, "output_score": True},
    {"rpn_pre_nms_top_n": -1, "threshold": 1.0},
]


@pytest.mark.parametrize("attrs", PROPOSAL_CASES, ids=str)
@pytest.mark.parametrize("op", ["MultiProposal", "Proposal"])
def test_region_proposals(op, attrs, tmp_path):
    """MXNet's Faster R-CNN example's RPN proposals (scales 2 and 4 of a 4-pixel stride, three
    ratios, six anchors per cell). Proposal takes one image, MultiProposal any number."""
    attrs = {"rpn_pre_nms_top_n": 100, "rpn_post_nms_top_n": 12, "rpn_min_size": 2,
             "scales": (2, 4), "ratios": (0.5, 1, 2), "feature_stride": 4, **attrs}
    symbol = getattr(mx.sym.contrib, op)(x, y, mx.sym.var("info"), **attrs)
    if op == "MultiProposal":
        check(symbol, tmp_path, _rpn_outputs(2), other_batch=_rpn_outputs(3, seed=1))
    else:
        check(symbol, tmp_path, _rpn_outputs(1), other_batch=None)
