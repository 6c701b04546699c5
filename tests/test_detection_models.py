"""A user deploys a two-stage detector or a CenterNet written with Gluon, as GluonCV writes them.

The models are small (a 32x32 image, 8-channel convolutions, 3 classes) but keep the op
structure of GluonCV 0.10's inference graphs, copied from its source:

- Faster R-CNN (``faster_rcnn_resnet50_v1b_voc``): anchors from a constant table cut with
  ``slice_like``, an RPN head (sigmoid scores, box offsets), proposals decoded with
  ``box_decode`` (corner format, clipped), clipped to the image through ``shape_array`` /
  ``reverse`` / ``tile`` / ``broadcast_minimum``, too-small boxes set to -1 with ``where`` and
  ``broadcast_axis``, ``box_nms`` (scores only, force_suppress) and a cut to the best proposals,
  ROIs with ``arange``/``repeat`` batch indices, ``ROIAlign``, a box head, per-class ids from
  ``arange`` and ``where``, per-class ``box_decode`` against the proposals, ``box_nms`` per class,
  ``stack`` and three outputs (ids, scores, boxes);
- its FPN form (``faster_rcnn_fpn_resnet50_v1b_coco``): anchors and proposals per level with a
  ``box_nms`` each, one sorting ``box_nms`` over the levels, and each ROI pooled from the level
  its area picks (``log2``, ``floor``, ``clip``, ``ROIAlign`` per level, the other levels' rows
  zeroed with ``where``, ``ElementWiseSum``);
- MXNet's own Faster R-CNN example: ``_contrib_Proposal`` on softmaxed RPN scores with the
  image size as an input, ``ROIPooling`` and the head;
- CenterNet (``center_net_resnet18_v1b_voc``, and ``..._dcnv2_voc`` with a modulated deformable
  convolution in the upsampler): heatmap sigmoid, 3x3 max-pool peaks kept with
  ``broadcast_equal``, ``topk`` over the flattened heatmap, int64 index arithmetic
  (``shape_array``, ``split``, ``broadcast_div``/``broadcast_mod``), ``arange(256)`` cut with
  ``slice_like`` and ``tile``d to batch indices, ``gather_nd`` of offsets and sizes, box assembly.

The story: the loaded graph computes what Gluon computes, the rewritten graph converts at the
default opset, and onnxruntime finds the same detections as MXNet, element-wise within 1e-5
(weights are seeded so that no two scores tie: with ties, only the detection comparison can
agree, see tests/test_compare_detection.py) and as detections with ``graphopt.compare``.
"""

from __future__ import annotations

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn
from mxnet.gluon.contrib.cnn import ModulatedDeformableConvolution

import graphopt
from graphopt.errors import UnsupportedOpError
from graphopt.runtime import run_onnx
from test_gluon_models import (assert_outputs_close, conv_bn, gluon_outputs, inputs_for,
                               mxnet_outputs, seeded_block, uniform)

IMAGE = (1, 3, 32, 32)  # GluonCV's Faster R-CNN runs one image at a time (batch ids arange(0, 1))


def _relu() -> nn.Activation:
    return nn.Activation("relu")


def _anchor_table(stride: int, sizes: tuple, ratios: tuple, alloc: int) -> np.ndarray:
    """GluonCV's RPNAnchorGenerator: corner anchors of every size and ratio centred on each
    cell of an ``alloc`` x ``alloc`` grid, as (1, 1, alloc, alloc, anchors * 4)."""
    centre = (stride - 1) * 0.5
    base = []
    for ratio in ratios:
        for size in sizes:
            width = np.round(np.sqrt(size * size / ratio))
            half_w, half_h = (width - 1) * 0.5, (np.round(width * ratio) - 1) * 0.5
            base.append([centre - half_w, centre - half_h, centre + half_w, centre + half_h])
    offsets = np.arange(0, alloc * stride, stride)
    x, y = np.meshgrid(offsets, offsets)
    shifts = np.stack([x.ravel(), y.ravel(), x.ravel(), y.ravel()], axis=1)
    anchors = np.array(base).reshape(1, -1, 4) + shifts.reshape(-1, 1, 4)
    return anchors.reshape(1, 1, alloc, alloc, -1).astype(np.float32)


class RPNLevel(gluon.HybridBlock):
    """One RPN level: head convolutions, anchors cut to the feature size, proposals decoded,
    clipped to the image and the too-small ones set to -1 (GluonCV's RPNProposal)."""

    def __init__(self, stride: int, sizes=(8, 16), ratios=(0.5, 1.0), min_size=2, **kwargs):
        super().__init__(**kwargs)
        self.min_size, count = min_size, len(sizes) * len(ratios)
        with self.name_scope():
            self.anchor_ = self.params.get_constant("anchor_", _anchor_table(stride, sizes, ratios,
                                                                               16))
            self.conv = nn.HybridSequential()
            self.conv.add(nn.Conv2D(8, 3, padding=1), _relu())
            self.score = nn.Conv2D(count, 1)
            self.loc = nn.Conv2D(count * 4, 1)

    def hybrid_forward(self, F, image, features, anchor_):
        anchors = F.reshape(F.slice_like(anchor_, features, axes=(2, 3)), shape=(1, -1, 4))
        x = self.conv(features)
        scores = F.sigmoid(F.reshape(F.transpose(self.score(x), axes=(0, 2, 3, 1)), (0, -1, 1)))
        offsets = F.reshape(F.transpose(self.loc(x), axes=(0, 2, 3, 1)), (0, -1, 4))
        boxes = F.contrib.box_decode(offsets, anchors, 1.0, 1.0, 1.0, 1.0, clip=math.log(1000 / 16),
                                     format="corner")
        window = F.expand_dims(F.slice_axis(F.shape_array(image), axis=0, begin=2, end=None), 0)
        limits = F.reshape(F.tile(F.reverse(window, axis=1), reps=(2,)), shape=(0, -4, 1, -1))
        boxes = F.broadcast_minimum(F.maximum(boxes, 0.0), F.cast(limits, dtype="float32"))
        left, top, right, bottom = F.split(boxes, axis=-1, num_outputs=4)
        invalid = ((right - left + 1.0) < self.min_size) + ((bottom - top + 1.0) < self.min_size)
        scores = F.where(invalid, F.ones_like(invalid) * -1, scores)
        boxes = F.where(F.broadcast_axes(invalid, axis=2, size=4), F.ones_like(boxes) * -1, boxes)
        return F.concat(scores, boxes, dim=-1)


class FasterRCNN(gluon.HybridBlock):
    """GluonCV's Faster R-CNN at inference, single level (stride 4) or FPN (strides 4 and 8)."""

    def __init__(self, classes=3, fpn=False, proposals=16, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.fpn, self.proposals = classes, fpn, proposals
        self.strides = (4, 8) if fpn else (4,)
        with self.name_scope():
            self.stem = nn.HybridSequential()
            self.stem.add(conv_bn(8, 3, _relu(), strides=2), conv_bn(8, 3, _relu(), strides=2))
            self.deeper = conv_bn(8, 3, _relu(), strides=2)
            self.levels = [RPNLevel(stride) for stride in self.strides]
            for index, level in enumerate(self.levels):
                self.register_child(level, f"rpn{index}")
            self.top = conv_bn(8, 3, _relu())
            self.class_predictor = nn.Dense(classes + 1)
            self.box_predictor = nn.Dense(classes * 4)

    def hybrid_forward(self, F, image):
        features = [self.stem(image)]
        if self.fpn:
            features.append(self.deeper(features[0]))
        proposals = []
        for level, feature in zip(self.levels, features):
            level_proposals = level(image, feature)
            if self.fpn:  # per-level NMS
                level_proposals = F.contrib.box_nms(level_proposals, overlap_thresh=0.7, topk=48,
                                                    coord_start=1, score_index=0, id_index=-1)
            proposals.append(level_proposals)
        proposals = F.concat(*proposals, dim=1) if self.fpn else proposals[0]
        kept = F.contrib.box_nms(proposals, overlap_thresh=2.0 if self.fpn else 0.7, topk=64,
                                 coord_start=1, score_index=0, id_index=-1, force_suppress=True)
        rpn_boxes = F.slice_axis(F.slice_axis(kept, axis=1, begin=0, end=self.proposals),
                                 axis=-1, begin=1, end=None)
        batch_ids = F.repeat(F.arange(0, 1), self.proposals)
        rois = F.stop_gradient(F.concat(F.reshape(batch_ids, (-1, 1)),
                                        F.reshape(rpn_boxes, (-1, 4)), dim=-1))
        pooled = self._pool(F, features, rois)
        box_features = F.contrib.AdaptiveAvgPooling2D(self.top(pooled), output_size=1)
        class_scores = F.softmax(F.reshape(self.class_predictor(box_features),
                                           (1, self.proposals, self.classes + 1)), axis=-1)
        box_offsets = F.reshape(self.box_predictor(box_features),
                                (1, self.proposals, self.classes, 4))
        ids, scores = self._per_class(F, class_scores)
        ids = F.reshape(F.transpose(ids, axes=(0, 2, 1)), (0, 0, 0, 1))
        scores = F.reshape(F.transpose(scores, axes=(0, 2, 1)), (0, 0, 0, 1))
        box_offsets = F.transpose(box_offsets, axes=(0, 2, 1, 3))
        ids, scores = F.split(ids, axis=0, num_outputs=1, squeeze_axis=True), \
            F.split(scores, axis=0, num_outputs=1, squeeze_axis=True)
        box_offsets = F.split(box_offsets, axis=0, num_outputs=1, squeeze_axis=True)
        boxes = F.contrib.box_decode(box_offsets, rpn_boxes, 0.1, 0.1, 0.2, 0.2, format="corner")
        rows = F.contrib.box_nms(F.concat(ids, scores, boxes, dim=-1), overlap_thresh=0.3,
                                 topk=40, valid_thresh=0.0001, id_index=0, score_index=1,
                                 coord_start=2, force_suppress=False)
        result = F.stack(F.reshape(rows, (-3, 0)), axis=0)
        return (F.slice_axis(result, axis=-1, begin=0, end=1),
                F.slice_axis(result, axis=-1, begin=1, end=2),
                F.slice_axis(result, axis=-1, begin=2, end=6))

    def _pool(self, F, features, rois):
        """ROIAlign on the one level, or on the level each ROI's area picks (GluonCV's
        ``_pyramid_roi_feats``). GluonCV 0.10 masks the ROIs of other levels to -1 before
        ``ROIAlign``, which MXNet documents as pooling zeros, but MXNet 1.9.1's CPU kernel skips
        such ROIs and leaves their output unwritten (measured: values such as 32.0 where zeros
        belong, varying with what the memory held), so that model has no defined MXNet reference
        on CPU. Here each level pools every ROI and ``where`` zeroes the other levels' rows:
        GluonCV's own form for MXNet builds without ``box_encode``, with a defined result."""
        if not self.fpn:
            return F.contrib.ROIAlign(features[0], rois, (4, 4), 1.0 / self.strides[0],
                                      sample_ratio=2)
        _, left, top, right, bottom = F.split(rois, axis=-1, num_outputs=5)
        area = (bottom - top + 1) * (right - left + 1)
        level = F.squeeze(F.clip(F.floor(4 + F.log2(F.sqrt(area) / 32.0 + 1e-6)), 3, 4))
        pooled = []
        for index, (feature, stride) in enumerate(zip(features, self.strides)):
            pooled_level = F.contrib.ROIAlign(feature, rois, (4, 4), 1.0 / stride, sample_ratio=2)
            pooled.append(F.where(level == 3 + index, pooled_level, F.zeros_like(pooled_level)))
        return F.ElementWiseSum(*pooled)

    def _per_class(self, F, class_scores):
        """GluonCV's MultiPerClassDecoder: foreground scores above 0.01 with their class id."""
        scores = F.slice_axis(class_scores, axis=-1, begin=1, end=None)
        template = F.zeros_like(F.slice_axis(class_scores, axis=-1, begin=0, end=1))
        ids = F.broadcast_add(template, F.reshape(F.arange(self.classes),
                                                  shape=(1, 1, self.classes)))
        mask = scores > 0.01
        return (F.where(mask, ids, F.ones_like(ids) * -1),
                F.where(mask, scores, F.zeros_like(scores)))


class CenterNet(gluon.HybridBlock):
    """GluonCV's CenterNet: a strided backbone, an upsampler (3x3 conv, or a modulated
    deformable conv with ``dcn``; BatchNorm, ReLU, a transposed conv), three heads and
    GluonCV's CenterNetDecoder verbatim."""

    def __init__(self, classes=3, top=12, dcn=False, **kwargs):
        super().__init__(**kwargs)
        self.top = top
        with self.name_scope():
            self.backbone = conv_bn(8, 3, _relu(), strides=2)
            self.upsampler = nn.HybridSequential()
            self.upsampler.add(ModulatedDeformableConvolution(8, 3, padding=1, in_channels=8)
                               if dcn else nn.Conv2D(8, 3, padding=1, in_channels=8),
                               nn.BatchNorm(), _relu(),
                               nn.Conv2DTranspose(8, 4, strides=2, padding=1, use_bias=False,
                                                  in_channels=8),
                               nn.BatchNorm(), _relu())
            self.heads = []
            for name, outputs in (("heatmap", classes), ("wh", 2), ("reg", 2)):
                head = nn.HybridSequential()
                head.add(nn.Conv2D(8, 3, padding=1), _relu(), nn.Conv2D(outputs, 1))
                self.register_child(head, name)
                self.heads.append(head)

    def hybrid_forward(self, F, image):
        features = self.upsampler(self.backbone(image))
        heatmap, wh, reg = [head(features) for head in self.heads]
        heatmap = F.sigmoid(heatmap)
        peaks = F.broadcast_equal(F.Pooling(heatmap, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                                            pool_type="max"), heatmap)
        return self._decode(F, peaks * heatmap, wh, reg)

    def _decode(self, F, x, wh, reg, scale=4.0):
        _, _, out_h, out_w = F.split(F.shape_array(x), num_outputs=4, axis=0)
        scores, indices = F.topk(F.reshape(x, (0, -1)), k=self.top, ret_typ="both")
        indices = F.cast(indices, "int64")
        classes = F.cast(F.broadcast_div(indices, out_h * out_w), "float32")
        cells = F.broadcast_mod(indices, out_h * out_w)
        ys, xs = F.broadcast_div(cells, out_w), F.broadcast_mod(cells, out_w)
        center = F.reshape(F.transpose(reg, axes=(0, 2, 3, 1)), (0, -1, 2))
        wh = F.reshape(F.transpose(wh, axes=(0, 2, 3, 1)), (0, -1, 2))
        batch = F.cast(F.tile(F.expand_dims(F.slice_like(F.arange(256), center, axes=(0,)), -1),
                              reps=(1, self.top)), "int64")
        first, second = F.zeros_like(batch, dtype="int64"), F.ones_like(batch, dtype="int64")
        at_x = F.reshape(F.concat(batch, cells, first, dim=0), (3, -1))
        at_y = F.reshape(F.concat(batch, cells, second, dim=0), (3, -1))
        gather = lambda table, at: F.cast(F.reshape(F.gather_nd(table, at), (-1, self.top)),
                                          "float32")
        xs = F.cast(xs, "float32") + gather(center, at_x)
        ys = F.cast(ys, "float32") + gather(center, at_y)
        half_w, half_h = gather(wh, at_x) / 2, gather(wh, at_y) / 2
        corners = [xs - half_w, ys - half_h, xs + half_w, ys + half_h]
        boxes = F.concat(*[F.expand_dims(c, -1) for c in corners], dim=-1)
        return classes, scores, boxes * scale


class ProposalRCNN(gluon.HybridBlock):
    """MXNet's own Faster R-CNN example (example/rcnn) at inference: RPN scores through a
    two-way channel softmax, ``_contrib_Proposal`` with the image size and scale as an input,
    ``ROIPooling``, and the class probabilities and per-class box offsets of each ROI."""

    def __init__(self, classes=3, anchors=6, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.anchors = classes, anchors
        with self.name_scope():
            self.stem = nn.HybridSequential()
            self.stem.add(conv_bn(8, 3, _relu(), strides=2), conv_bn(8, 3, _relu(), strides=2))
            self.rpn = nn.HybridSequential()
            self.rpn.add(nn.Conv2D(8, 3, padding=1), _relu())
            self.score = nn.Conv2D(2 * anchors, 1)
            self.offsets = nn.Conv2D(4 * anchors, 1)
            self.head = nn.Dense(16, activation="relu")
            self.class_predictor = nn.Dense(classes + 1)
            self.box_predictor = nn.Dense(4 * (classes + 1))

    def hybrid_forward(self, F, image, im_info):
        features = self.stem(image)
        x = self.rpn(features)
        scores = F.reshape(self.score(x), shape=(0, 2, -1, 0))
        probabilities = F.reshape(F.SoftmaxActivation(scores, mode="channel"),
                                  shape=(0, 2 * self.anchors, -1, 0))
        rois = F.contrib.Proposal(probabilities, self.offsets(x), im_info, feature_stride=4,
                                  scales=(2, 4), ratios=(0.5, 1, 2), rpn_pre_nms_top_n=60,
                                  rpn_post_nms_top_n=16, threshold=0.7, rpn_min_size=2)
        pooled = F.ROIPooling(features, rois, pooled_size=(3, 3), spatial_scale=0.25)
        hidden = self.head(pooled)
        class_probabilities = F.reshape(F.softmax(self.class_predictor(hidden)),
                                        shape=(1, -1, self.classes + 1))
        box_offsets = F.reshape(self.box_predictor(hidden), shape=(1, -1, 4 * (self.classes + 1)))
        return rois, class_probabilities, box_offsets


def test_mxnets_own_faster_rcnn_with_proposal_and_roi_pooling_matches_mxnet():
    """No NMS on the classes in this graph (the example does it in Python), so onnxruntime's
    outputs are compared element-wise: the ROIs, then what the head computes on them."""
    arrays = inputs_for({"image": IMAGE}, uniform, 1, seed=2)
    arrays["im_info"] = np.array([[32, 30, 1.0]], dtype=np.float32)  # a 32x30 image in the pad
    block = seeded_block(ProposalRCNN, arrays)
    graph = graphopt.from_block(block, inputs={"image": IMAGE, "im_info": (1, 3)})
    expected = mxnet_outputs(graph, arrays)
    rewritten, _ = graphopt.rewrite(graph)
    assert_outputs_close(expected, list(run_onnx(graphopt.to_onnx(rewritten), arrays).values()),
                         "Proposal R-CNN")
    assert len(np.unique(expected[0], axis=0)) > 1  # distinct proposals, not one repeated


DETECTORS = {
    "faster_rcnn": (lambda: FasterRCNN(), IMAGE),
    "faster_rcnn_fpn": (lambda: FasterRCNN(fpn=True), IMAGE),
    "center_net": (lambda: CenterNet(), (2, 3, 32, 32)),
    "center_net_dcnv2": (lambda: CenterNet(dcn=True), (2, 3, 32, 32)),
}


def spread_heatmap(block: CenterNet, arrays: dict) -> None:
    """Rescale the heatmap's last convolution so that each class's logits on these inputs have
    mean -3 and standard deviation 1.5 (peaks then score about 0.5-0.8). Seeded Xavier
    weights give logits within 0.1 of each other (measured), so the top scores came within 1e-5
    of each other, closer than rounding can be trusted to keep them apart."""
    features = block.upsampler(block.backbone(mx.nd.array(arrays["image"])))
    logits = block.heads[0](features).asnumpy()
    last = block.heads[0][-1]
    mean, std = logits.mean(axis=(0, 2, 3)), logits.std(axis=(0, 2, 3))
    scale = 1.5 / std
    last.weight.set_data(last.weight.data() * mx.nd.array(scale).reshape((-1, 1, 1, 1)))
    last.bias.set_data(mx.nd.array((last.bias.data().asnumpy() - mean) * scale - 3.0))


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def detector(request):
    """(name, Gluon block, loaded graph, input arrays)."""
    build, shape = DETECTORS[request.param]
    arrays = inputs_for({"image": shape}, uniform, shape[0], seed=2)
    block = seeded_block(build, arrays)
    if isinstance(block, CenterNet):
        spread_heatmap(block, arrays)
    graph = graphopt.from_block(block, inputs={"image": shape})
    return request.param, block, graph, arrays


def test_the_loaded_detector_computes_what_gluon_computes(detector):
    name, block, graph, arrays = detector
    for index, (expected, got) in enumerate(zip(gluon_outputs(block, arrays),
                                                mxnet_outputs(graph, arrays))):
        assert np.array_equal(expected, got), f"{name}, output {index}"


def test_onnxruntime_finds_the_detections_mxnet_finds(detector):
    name, _, graph, arrays = detector
    rewritten, _ = graphopt.rewrite(graph)
    model = graphopt.to_onnx(rewritten)  # the default opset (21) has DeformConv with a mask
    expected = mxnet_outputs(graph, arrays)
    assert_outputs_close(expected, list(run_onnx(model, arrays).values()), name)
    report = graphopt.compare(graph, None, model, inputs=arrays)
    assert report.ok and report.detection is not None, report.format()
    detections = report.detection
    # a detector that finds nothing would agree trivially: these seeds find some in each image
    assert detections.matched == detections.mxnet_detections >= arrays["image"].shape[0]
    assert detections.tied_mxnet == detections.tied_onnx == 0
    if arrays["image"].shape[0] > 1:  # CenterNet keeps its batch dynamic (Faster R-CNN: one image)
        other = inputs_for({"image": arrays["image"].shape}, uniform, 3, seed=3)
        assert_outputs_close(mxnet_outputs(graph, other), list(run_onnx(model, other).values()),
                             f"{name} at batch 3")


def test_a_modulated_deformable_convolution_below_opset_19_is_refused_with_the_reason():
    """GluonCV's ``center_net_resnet18_v1b_dcnv2_voc`` was refused at the old default opset 17;
    the default is now 21, and an older opset asked for says what it lacks."""
    shape = DETECTORS["center_net_dcnv2"][1]
    arrays = inputs_for({"image": shape}, uniform, shape[0], seed=2)
    graph = graphopt.from_block(seeded_block(lambda: CenterNet(dcn=True), arrays),
                                inputs={"image": shape})
    with pytest.raises(UnsupportedOpError) as error:
        graphopt.to_onnx(graph, opset=17)
    assert "_contrib_ModulatedDeformableConvolution" in str(error.value)
    assert "DeformConv (opset 19 or later)" in str(error.value)
