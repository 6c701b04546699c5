"""A user builds a Gluon model of their own, hands it to graphopt and deploys it.

The model zoo covers image classifiers; real users also export transformers, text RNNs,
segmentation nets, 1-D and 3-D convnets, squeeze-excitation blocks and models with several
inputs and outputs. Each architecture here is a small Gluon ``HybridBlock`` with seeded weights
(BatchNorm statistics and affine terms moved away from their initial values, so that folding
them changes the weights). The story of each test:

1. ``graphopt.from_block`` hybridizes and exports the block; MXNet runs the loaded graph and
   gives exactly what the Gluon block computes (bit-identical);
2. ``graphopt.rewrite`` with the built-in rules gives what MXNet computes within 1e-5;
3. ``graphopt.to_onnx`` at the default opset (dynamic batch) and at opset 13 runs in
   onnxruntime within 1e-5 of MXNet, at the exported batch size and at another one.

Tolerance: 1e-5 relative (max |MXNet - other| / max |MXNet|), as for the model zoo (issue 3).
"""

from __future__ import annotations

from typing import Callable

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon
from mxnet.gluon import nn, rnn
from mxnet.gluon.contrib import nn as contrib_nn

import graphopt
from graphopt.compare import relative_error
from graphopt.runtime import as_mxnet_model, run_onnx

TOLERANCE = 1e-5
BATCH, OTHER_BATCH = 2, 3


# --- the architectures ---------------------------------------------------------------------------

class Encoder(gluon.HybridBlock):
    """A transformer encoder layer over token ids: embeddings plus learned positions, multi-head
    self-attention written with reshapes and ``batch_dot``, LayerNorm, GELU, mean pooling."""

    def __init__(self, vocab=50, length=16, units=32, heads=4, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.scale = heads, (units // heads) ** -0.5
        with self.name_scope():
            self.embed, self.position = nn.Embedding(vocab, units), nn.Embedding(length, units)
            self.qkv = nn.Dense(3 * units, flatten=False)
            self.project = nn.Dense(units, flatten=False)
            self.norm1, self.norm2 = nn.LayerNorm(), nn.LayerNorm()
            self.hidden = nn.Dense(2 * units, flatten=False)
            self.gelu = nn.GELU()
            self.back = nn.Dense(units, flatten=False)
            self.dropout = nn.Dropout(0.1)
            self.classify = nn.Dense(5)

    def hybrid_forward(self, F, tokens):
        positions = F.contrib.arange_like(tokens, axis=1)
        x = F.broadcast_add(self.embed(tokens), F.expand_dims(self.position(positions), 0))
        q, k, v = F.split(self.qkv(x), num_outputs=3, axis=-1)

        def split_heads(t):  # (B, T, U) -> (B * heads, T, U / heads)
            t = F.transpose(F.reshape(t, shape=(0, 0, self.heads, -1)), axes=(0, 2, 1, 3))
            return F.reshape(t, shape=(-3, 0, 0))

        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        attention = F.softmax(F.batch_dot(q, k, transpose_b=True) * self.scale, axis=-1)
        heads = F.reshape(F.batch_dot(attention, v), shape=(-4, -1, self.heads, 0, 0))
        merged = F.reshape(F.transpose(heads, axes=(0, 2, 1, 3)), shape=(0, 0, -3))
        x = self.norm1(x + self.dropout(self.project(merged)))
        x = self.norm2(x + self.back(self.gelu(self.hidden(x))))
        return self.classify(F.mean(x, axis=1))


class TextRNN(gluon.HybridBlock):
    """Embedding, a two-layer bidirectional fused RNN (batch-major, default zero begin state:
    Gluon builds it with ``zeros`` whose batch size MXNet infers), a classifier."""

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        layer = {"lstm": rnn.LSTM, "gru": rnn.GRU, "rnn_tanh": rnn.RNN}[mode]
        with self.name_scope():
            self.embed = nn.Embedding(40, 16)
            self.rnn = layer(24, num_layers=2, bidirectional=True, layout="NTC")
            self.classify = nn.Dense(3)

    def hybrid_forward(self, F, tokens):
        return self.classify(self.rnn(self.embed(tokens)))


def conv_bn(channels: int, kernel: int, activation: nn.HybridBlock, **conv) -> nn.HybridSequential:
    block = nn.HybridSequential()
    block.add(nn.Conv2D(channels, kernel, padding=kernel // 2, **conv), nn.BatchNorm(), activation)
    return block


class UNet(gluon.HybridBlock):
    """One level of a U-Net: conv-BN blocks, max pooling, a transposed conv back up, a skip
    concatenation and a per-pixel sigmoid."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.down1 = conv_bn(8, 3, nn.Activation("relu"))
            self.pool = nn.MaxPool2D()
            self.down2 = conv_bn(16, 3, nn.LeakyReLU(0.1))
            self.up = nn.Conv2DTranspose(8, 4, strides=2, padding=1)
            self.fuse = conv_bn(8, 3, nn.Activation("relu"))
            self.head = nn.Conv2D(2, 1)

    def hybrid_forward(self, F, x):
        skip = self.down1(x)
        up = self.up(self.down2(self.pool(skip)))
        return F.sigmoid(self.head(self.fuse(F.concat(skip, up, dim=1))))


class SqueezeExcite(gluon.HybridBlock):
    """MobileNetV3-style: hard swish, a depthwise conv, a squeeze-excitation gate (adaptive
    pooling, 1x1 convs, hard sigmoid, broadcast multiply), global pooling, a classifier."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv, self.bn = nn.Conv2D(16, 3, padding=1), nn.BatchNorm()
            self.depthwise = nn.Conv2D(16, 3, padding=1, groups=16, use_bias=False)
            self.bn2 = nn.BatchNorm()
            self.squeeze, self.excite = nn.Conv2D(4, 1), nn.Conv2D(16, 1)
            self.classify = nn.Dense(10)

    def hybrid_forward(self, F, x):
        x = self.bn(self.conv(x))
        x = x * F.clip(x + 3, 0, 6) / 6
        y = F.relu(self.bn2(self.depthwise(x)))
        gate = F.contrib.AdaptiveAvgPooling2D(y, output_size=1)
        gate = F.hard_sigmoid(self.excite(F.relu(self.squeeze(gate))))
        y = F.broadcast_mul(y, gate)
        return self.classify(F.Pooling(y, kernel=(1, 1), global_pool=True, pool_type="avg"))


def conv1d_net() -> nn.HybridSequential:
    net = nn.HybridSequential()
    net.add(nn.Conv1D(8, 5, padding=2), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool1D(2),
            nn.Conv1D(16, 3, dilation=2), nn.BatchNorm(), nn.Activation("tanh"),
            nn.GlobalAvgPool1D(), nn.Dense(4))
    return net


def conv3d_net() -> nn.HybridSequential:
    net = nn.HybridSequential()
    net.add(nn.Conv3D(4, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.AvgPool3D(2),
            nn.Conv3DTranspose(4, 2, strides=2), nn.BatchNorm(), nn.GlobalMaxPool3D(),
            nn.Flatten(), nn.Dense(3))
    return net


def activations_net() -> nn.HybridSequential:
    """Gluon's activation and resampling layers in one stack."""
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1), nn.PReLU(), nn.Conv2D(8, 3, padding=1), nn.ELU(0.5),
            nn.SELU(), nn.Swish(), nn.ReflectionPad2D(1), nn.Conv2D(8, 3),
            nn.BatchNorm(scale=False, center=False), nn.LeakyReLU(0.2),
            contrib_nn.PixelShuffle2D(2), nn.Conv2D(4, 3, strides=2), nn.GELU(),
            nn.HybridLambda(lambda F, x: F.contrib.BilinearResize2D(x, scale_height=2.0,
                                                                   scale_width=2.0)),
            nn.HybridLambda(lambda F, x: F.UpSampling(x, scale=2, sample_type="nearest")),
            nn.AvgPool2D(3, 2, ceil_mode=True, count_include_pad=False),
            nn.Flatten(), nn.Dense(6))
    return net


class Inception(gluon.HybridBlock):
    """Parallel branches concatenated (one an identity), BatchNorm after the concat (it cannot be
    folded), a channel-last dense layer, a max over space and a softmax with a temperature."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.branches = contrib_nn.HybridConcurrent(axis=1)
            self.branches.add(nn.Conv2D(4, 1), nn.Conv2D(4, 3, padding=1), contrib_nn.Identity())
            self.bn = nn.BatchNorm()
            self.classify = nn.Dense(5, flatten=False)

    def hybrid_forward(self, F, x):
        y = F.transpose(self.bn(self.branches(x)), axes=(0, 2, 3, 1))
        return F.softmax(F.max(self.classify(y), axis=(1, 2)), temperature=2.0)


class TwoInputsThreeOutputs(gluon.HybridBlock):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.a, self.b = nn.Dense(8), nn.Dense(8)

    def hybrid_forward(self, F, x, y):
        h = F.tanh(self.a(x)) + F.Activation(self.b(y), act_type="softrelu")
        return F.log_softmax(h), F.argmax(h, axis=1), F.topk(h, k=3, ret_typ="value")


class SSDHead(gluon.HybridBlock):
    """GluonCV SSD at two scales: per-scale class and box convolutions moved channels-last and
    flattened, concatenated, a softmax over classes, anchors from ``MultiBoxPrior``, boxes
    decoded with ``box_decode``, per-class candidates (``ones_like`` ids) and ``box_nms``;
    three outputs (ids, scores, boxes) split from the kept rows."""

    def __init__(self, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        with self.name_scope():
            self.stage1 = conv_bn(8, 3, nn.Activation("relu"))
            self.stage2 = conv_bn(8, 3, nn.Activation("relu"), strides=2)
            self.class_predictors = [nn.Conv2D(2 * (classes + 1), 3, padding=1) for _ in range(2)]
            self.box_predictors = [nn.Conv2D(2 * 4, 3, padding=1) for _ in range(2)]
            for index, (c, b) in enumerate(zip(self.class_predictors, self.box_predictors)):
                self.register_child(c, f"class{index}")
                self.register_child(b, f"box{index}")

    def hybrid_forward(self, F, x):
        features = [self.stage1(x)]
        features.append(self.stage2(features[0]))
        flat = lambda t: F.flatten(F.transpose(t, axes=(0, 2, 3, 1)))
        class_predictions = F.concat(*[flat(p(f)) for p, f in zip(self.class_predictors, features)],
                                     dim=1)
        box_predictions = F.concat(*[flat(p(f)) for p, f in zip(self.box_predictors, features)],
                                   dim=1)
        anchors = F.concat(*[F.reshape(F.contrib.MultiBoxPrior(f, sizes=(0.3, 0.5), ratios=(1,)),
                                       shape=(1, -1)) for f in features], dim=1)
        anchors = F.reshape(anchors, shape=(1, -1, 4))
        scores = F.softmax(F.reshape(class_predictions, shape=(0, -1, self.classes + 1)), axis=-1)
        boxes = F.contrib.box_decode(F.reshape(box_predictions, shape=(0, -1, 4)), anchors,
                                     std0=0.1, std1=0.1, std2=0.2, std3=0.2, format="center")
        rows = []
        for index in range(self.classes):
            score = F.slice_axis(scores, axis=-1, begin=index + 1, end=index + 2)
            rows.append(F.concat(F.ones_like(score) * index, score, boxes, dim=-1))
        kept = F.contrib.box_nms(F.concat(*rows, dim=1), overlap_thresh=0.45, valid_thresh=0.01,
                                 topk=40, id_index=0, score_index=1, coord_start=2,
                                 force_suppress=False)
        kept = F.slice_axis(kept, axis=1, begin=0, end=20)
        return (F.slice_axis(kept, axis=-1, begin=0, end=1),
                F.slice_axis(kept, axis=-1, begin=1, end=2),
                F.slice_axis(kept, axis=-1, begin=2, end=None))


class YOLOHead(gluon.HybridBlock):
    """GluonCV YOLOv3 at two scales: the deep features upsampled (nearest) and concatenated
    with the shallow ones; each output reshaped to (B, cells*anchors, 5 + classes); grid
    offsets from ``arange_like`` and ``slice_like``; sigmoid centers plus offsets times the
    stride, exp sizes times anchor constants, sigmoid objectness times class scores."""

    def __init__(self, classes=2, anchors=((10, 13, 16, 30), (33, 23, 30, 61)), **kwargs):
        super().__init__(**kwargs)
        self.classes, self.strides = classes, (8, 4)
        with self.name_scope():
            self.stem = conv_bn(8, 3, nn.LeakyReLU(0.1), strides=2)
            self.deep = conv_bn(8, 3, nn.LeakyReLU(0.1), strides=2)
            self.heads = [nn.Conv2D(2 * (5 + classes), 1) for _ in range(2)]
            for index, head in enumerate(self.heads):
                self.register_child(head, f"head{index}")
            for index, sizes in enumerate(anchors):  # Gluon passes constants by attribute name
                setattr(self, f"anchors{index}", self.params.get_constant(
                    f"anchors{index}", mx.nd.array(sizes).reshape((1, 1, 2, 2))))
            grid = np.stack(np.meshgrid(np.arange(32), np.arange(32)), axis=-1)  # (y, x, [x, y])
            self.offsets = self.params.get_constant("offsets", grid.reshape((1, 1, 32, 32, 2)))

    def decode(self, F, features, head, anchors, offsets, stride):
        prediction = F.reshape(head(features), shape=(0, 2, 5 + self.classes, -1))
        prediction = F.transpose(prediction, axes=(0, 3, 1, 2))  # (B, H*W, anchors, 5 + classes)
        centers = F.broadcast_add(F.sigmoid(F.slice_axis(prediction, axis=-1, begin=0, end=2)),
                                  F.reshape(offsets, shape=(1, -1, 1, 2))) * stride
        sizes = F.broadcast_mul(F.exp(F.slice_axis(prediction, axis=-1, begin=2, end=4)), anchors)
        objectness = F.sigmoid(F.slice_axis(prediction, axis=-1, begin=4, end=5))
        class_scores = F.broadcast_mul(F.sigmoid(F.slice_axis(prediction, axis=-1, begin=5,
                                                              end=None)), objectness)
        boxes = F.concat(centers - sizes / 2, centers + sizes / 2, dim=-1)
        return F.reshape(F.concat(boxes, objectness, class_scores, dim=-1), shape=(0, -3, -1))

    def hybrid_forward(self, F, x, anchors0, anchors1, offsets):
        shallow = self.stem(x)
        deep = self.deep(shallow)
        merged = F.concat(F.UpSampling(deep, scale=2, sample_type="nearest"), shallow, dim=1)
        # the deep grid from arange_like, (H, W, 2) of (x, y); the shallow one sliced from a
        # larger constant table, as GluonCV does
        xs = F.reshape(F.contrib.arange_like(deep, axis=3), shape=(1, -1))
        ys = F.reshape(F.contrib.arange_like(deep, axis=2), shape=(-1, 1))
        deep_grid = F.stack(F.broadcast_add(xs, ys * 0), F.broadcast_add(xs * 0, ys), axis=-1)
        shallow_grid = F.slice_like(offsets, F.expand_dims(shallow * 0, axis=-1), axes=(2, 3))
        return F.concat(self.decode(F, deep, self.heads[0], anchors0, deep_grid, self.strides[0]),
                        self.decode(F, merged, self.heads[1], anchors1, shallow_grid,
                                    self.strides[1]), dim=1)


class DeepLabASPP(gluon.HybridBlock):
    """DeepLab v3: a strided backbone, ASPP (1x1, two dilated 3x3 branches and an image-pooling
    branch resized back with ``BilinearResize2D`` to a size), concat, a 1x1 projection, the
    classes resized to the input with ``mode="like"``; an FCN auxiliary head as second output."""

    def __init__(self, classes=4, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.backbone = nn.HybridSequential()
            self.backbone.add(conv_bn(8, 3, nn.Activation("relu"), strides=2),
                              nn.Conv2D(8, 3, padding=2, dilation=2), nn.BatchNorm(),
                              nn.Activation("relu"))
            self.branch1 = conv_bn(8, 1, nn.Activation("relu"))
            self.branch2 = nn.HybridSequential()
            self.branch2.add(nn.Conv2D(8, 3, padding=2, dilation=2), nn.BatchNorm(),
                             nn.Activation("relu"))
            self.branch3 = nn.HybridSequential()
            self.branch3.add(nn.Conv2D(8, 3, padding=3, dilation=3), nn.BatchNorm(),
                             nn.Activation("relu"))
            self.pool_branch = conv_bn(8, 1, nn.Activation("relu"))
            self.project = conv_bn(8, 1, nn.Activation("relu"))
            self.classify = nn.Conv2D(classes, 1)
            self.auxiliary = nn.Conv2D(classes, 3, padding=1)

    def hybrid_forward(self, F, x):
        features = self.backbone(x)
        pooled = self.pool_branch(F.contrib.AdaptiveAvgPooling2D(features, output_size=1))
        pooled = F.contrib.BilinearResize2D(pooled, height=8, width=8)
        merged = F.concat(self.branch1(features), self.branch2(features), self.branch3(features),
                          pooled, dim=1)
        out = self.classify(self.project(merged))
        auxiliary = F.contrib.BilinearResize2D(self.auxiliary(features), height=16, width=16,
                                               align_corners=False)
        return F.contrib.BilinearResize2D(out, x, mode="like"), auxiliary


class PoseHead(gluon.HybridBlock):
    """SimplePose: a strided backbone, three Deconvolution-BN-ReLU stages (no bias), a 1x1
    heatmap conv; also the argmax of each heatmap turned into (x, y, score) with integer
    arithmetic on the index (``broadcast_mod``, ``floor``)."""

    def __init__(self, joints=5, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.backbone = nn.HybridSequential()
            self.backbone.add(conv_bn(8, 3, nn.Activation("relu"), strides=2),
                              conv_bn(16, 3, nn.Activation("relu"), strides=2),
                              conv_bn(16, 3, nn.Activation("relu"), strides=2))
            self.upsample = nn.HybridSequential()
            for _ in range(3):
                self.upsample.add(nn.Conv2DTranspose(8, 4, strides=2, padding=1, use_bias=False),
                                  nn.BatchNorm(), nn.Activation("relu"))
            self.heatmap = nn.Conv2D(joints, 1)

    def hybrid_forward(self, F, x):
        heatmaps = self.heatmap(self.upsample(self.backbone(x)))
        flat = F.reshape(heatmaps, shape=(0, 0, -1))
        index = F.argmax(flat, axis=2, keepdims=True)
        width = F.slice_axis(F.shape_array(heatmaps), axis=0, begin=3, end=4).astype("float32")
        xs = F.broadcast_mod(index, width)
        ys = F.floor(F.broadcast_div(index, width))
        return heatmaps, F.concat(xs, ys, F.max(flat, axis=2, keepdims=True), dim=2)


class BERTEncoder(gluon.HybridBlock):
    """GluonNLP BERT: word, token-type and learned position embeddings (the position table
    sliced to the length), LayerNorm, time-major self-attention with the interleaved matmul
    ops, a mask from the valid lengths (``broadcast_lesser`` against ``arange_like``) applied
    with ``where``, GELU feed-forward, and a tanh pooler over the first token. Integer inputs."""

    def __init__(self, vocab=30, units=16, heads=2, max_length=12, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        with self.name_scope():
            self.word, self.token_type = nn.Embedding(vocab, units), nn.Embedding(2, units)
            self.position_weight = self.params.get("position_weight", shape=(max_length, units))
            self.embed_norm, self.norm1, self.norm2 = nn.LayerNorm(), nn.LayerNorm(), nn.LayerNorm()
            self.qkv = nn.Dense(3 * units, flatten=False)
            self.project = nn.Dense(units, flatten=False)
            self.hidden = nn.Dense(2 * units, flatten=False, activation=None)
            self.gelu = nn.GELU()
            self.back = nn.Dense(units, flatten=False)
            self.pooler = nn.Dense(units, activation="tanh", flatten=False)

    def hybrid_forward(self, F, tokens, types, valid_length, position_weight):
        x = self.word(tokens) + self.token_type(types)
        positions = F.slice_like(position_weight, F.transpose(x, axes=(1, 0, 2)), axes=(0,))
        x = self.embed_norm(F.broadcast_add(x, F.expand_dims(positions, axis=0)))
        x = F.transpose(x, axes=(1, 0, 2))  # (T, B, C)
        qkv = self.qkv(x)
        scores = F.contrib.interleaved_matmul_selfatt_qk(qkv, heads=self.heads)  # (B*h, T, T)
        steps = F.contrib.arange_like(tokens, axis=1).astype("float32")
        mask = F.broadcast_lesser(F.reshape(steps, shape=(1, -1)),
                                  F.reshape(valid_length.astype("float32"), shape=(-1, 1)))
        mask = F.broadcast_like(F.expand_dims(F.repeat(mask, repeats=self.heads, axis=0), 1),
                                scores)
        scores = F.where(mask, scores, F.ones_like(scores) * -1e18)
        attention = F.softmax(scores, axis=-1)
        context = F.contrib.interleaved_matmul_selfatt_valatt(qkv, attention, heads=self.heads)
        x = self.norm1(x + self.project(context))
        x = self.norm2(x + self.back(self.gelu(self.hidden(x))))
        x = F.transpose(x, axes=(1, 0, 2))
        pooled = self.pooler(F.squeeze(F.slice_axis(x, axis=1, begin=0, end=1), axis=1))
        return x, pooled


class Seq2SeqPieces(gluon.HybridBlock):
    """Seq2seq glue around a GRU encoder: source embedding by ``take``, ``SequenceMask`` and
    ``SequenceLast`` with the source lengths, a decoder step over ``one_hot`` previous tokens,
    log-probabilities, the target's one picked with ``pick``, and ``where`` masking finished
    rows. Token ids and lengths are int32."""

    def __init__(self, vocab=12, units=8, **kwargs):
        super().__init__(**kwargs)
        self.vocab = vocab
        with self.name_scope():
            self.embedding = self.params.get("embedding", shape=(vocab, units))
            self.encoder = rnn.GRU(units, layout="NTC")
            self.step = nn.Dense(units, flatten=False)
            self.output = nn.Dense(vocab)

    def hybrid_forward(self, F, source, lengths, previous, target, embedding):
        embedded = F.take(embedding, source)
        encoded = F.SequenceMask(self.encoder(embedded), lengths, use_sequence_length=True,
                                 axis=1, value=0.0)
        last = F.SequenceLast(encoded, lengths, use_sequence_length=True, axis=1)
        state = F.tanh(self.step(F.concat(last, F.one_hot(previous, self.vocab), dim=1)))
        log_probabilities = F.log_softmax(self.output(state))
        picked = F.pick(log_probabilities, target, axis=-1)
        finished = F.broadcast_equal(previous, F.zeros_like(previous))
        return (F.where(finished.astype("float32"), F.zeros_like(picked), picked),
                F.sum(encoded, axis=1), log_probabilities)


class WaveNet(gluon.HybridBlock):
    """WaveNet: causal dilated Conv1D (padded, then the tail sliced off), tanh * sigmoid gates,
    1x1 residual and skip convolutions, the skips summed, a softmax over the channel axis."""

    def __init__(self, channels=8, dilations=(1, 2, 4), **kwargs):
        super().__init__(**kwargs)
        self.dilations = dilations
        with self.name_scope():
            self.input = nn.Conv1D(channels, 1)
            self.filters = [nn.Conv1D(channels, 2, dilation=d, padding=d) for d in dilations]
            self.gates = [nn.Conv1D(channels, 2, dilation=d, padding=d) for d in dilations]
            self.residuals = [nn.Conv1D(channels, 1) for _ in dilations]
            self.skips = [nn.Conv1D(channels, 1) for _ in dilations]
            for index, blocks in enumerate(zip(self.filters, self.gates, self.residuals,
                                               self.skips)):
                for kind, block in zip(("filter", "gate", "residual", "skip"), blocks):
                    self.register_child(block, f"{kind}{index}")
            self.out = nn.Conv1D(6, 1)

    def hybrid_forward(self, F, x):
        x = self.input(x)
        skip = None
        for d, f, g, r, s in zip(self.dilations, self.filters, self.gates, self.residuals,
                                 self.skips):
            causal = lambda t: F.slice_axis(t, axis=2, begin=0, end=-d)
            gated = F.tanh(causal(f(x))) * F.sigmoid(causal(g(x)))
            x = x + r(gated)
            skip = s(gated) if skip is None else skip + s(gated)
        return F.softmax(self.out(F.relu(skip + x)), axis=1)


class DenseResNeXt(gluon.HybridBlock):
    """A ResNeXt bottleneck (grouped 3x3 conv, cardinality 4) with its residual add, then a
    DenseNet block (BN-ReLU-conv layers whose outputs are concatenated onto their input) and a
    transition (BN-ReLU, 1x1 conv, average pooling)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.stem = conv_bn(16, 3, nn.Activation("relu"))
            self.bottleneck = nn.HybridSequential()
            self.bottleneck.add(conv_bn(8, 1, nn.Activation("relu"), use_bias=False),
                                conv_bn(8, 3, nn.Activation("relu"), groups=4, use_bias=False),
                                nn.Conv2D(16, 1, use_bias=False), nn.BatchNorm())
            self.dense_layers = []
            for index in range(2):
                layer = nn.HybridSequential()
                layer.add(nn.BatchNorm(), nn.Activation("relu"), nn.Conv2D(4, 3, padding=1))
                self.register_child(layer, f"dense{index}")
                self.dense_layers.append(layer)
            self.transition = nn.HybridSequential()
            self.transition.add(nn.BatchNorm(), nn.Activation("relu"), nn.Conv2D(8, 1),
                                nn.AvgPool2D(2))
            self.classify = nn.Dense(4)

    def hybrid_forward(self, F, x):
        x = self.stem(x)
        x = F.relu(x + self.bottleneck(x))
        for layer in self.dense_layers:
            x = F.concat(x, layer(x), dim=1)
        return self.classify(self.transition(x))


class Float64Net(gluon.HybridBlock):
    """A float64 model (``block.cast("float64")``, as scientific users run them): conv, BatchNorm,
    softplus, average pooling, dense layers, LayerNorm, a softmax. onnxruntime has no double
    Conv, pooling or Softplus kernel."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv, self.bn = nn.Conv2D(6, 3, padding=1), nn.BatchNorm()
            self.a, self.norm, self.b = nn.Dense(12), nn.LayerNorm(), nn.Dense(4)

    def hybrid_forward(self, F, x):
        y = F.Activation(self.bn(self.conv(x)), act_type="softrelu")
        y = F.Pooling(y, kernel=(2, 2), stride=(2, 2), pool_type="avg")
        return F.softmax(self.b(F.tanh(self.norm(self.a(y)))))


class PassThroughOutputs(gluon.HybridBlock):
    """Outputs as users return them: an input itself, the same tensor twice, and a result."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.dense = nn.Dense(3)

    def hybrid_forward(self, F, x, y):
        h = self.dense(x)
        return x, h, h, F.broadcast_add(h, y), y


class CenterNetHead(gluon.HybridBlock):
    """GluonCV CenterNet: a deconvolution upsampler (grouped, bilinear-style, with ``adj``),
    heatmap / size / offset heads; decoding keeps the peaks (a 3x3 max pool equal to the
    heatmap), takes the ``topk`` over the flattened heatmap (indices and values), turns the
    float indices into class, row and column, and gathers the sizes at them."""

    def __init__(self, classes=3, top=10, **kwargs):
        super().__init__(**kwargs)
        self.top = top
        with self.name_scope():
            self.backbone = conv_bn(8, 3, nn.Activation("relu"), strides=2)
            self.up = nn.Conv2DTranspose(8, 3, strides=2, padding=1, output_padding=1, groups=8,
                                         in_channels=8,
                                         use_bias=False)
            self.up_bn = nn.BatchNorm()
            self.heatmap, self.size, self.offset = (nn.Conv2D(classes, 1), nn.Conv2D(2, 1),
                                                    nn.Conv2D(2, 1))

    def hybrid_forward(self, F, x):
        features = F.relu(self.up_bn(self.up(self.backbone(x))))
        heatmap = F.sigmoid(self.heatmap(features))
        peaks = F.broadcast_equal(F.Pooling(heatmap, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                                            pool_type="max"), heatmap)
        heatmap = heatmap * peaks
        scores, indices = F.topk(F.reshape(heatmap, shape=(0, -1)), k=self.top, ret_typ="both")
        cells = F.slice_like(F.ones_like(F.slice_axis(heatmap, axis=1, begin=0, end=1)),
                             heatmap, axes=(2, 3))
        area = F.sum(F.reshape(cells, shape=(0, -1)), axis=1, keepdims=True)  # H * W per image
        width = F.sum(F.slice_axis(cells, axis=2, begin=0, end=1), axis=(2, 3))  # W per image
        classes = F.floor(F.broadcast_div(indices, area))
        cell = F.broadcast_minus(indices, F.broadcast_mul(classes, area))
        ys, xs = F.floor(F.broadcast_div(cell, width)), F.broadcast_mod(cell, width)
        sizes = F.reshape(F.transpose(self.size(features), axes=(0, 2, 3, 1)), shape=(0, -3, 0))
        batch = F.broadcast_like(F.reshape(F.contrib.arange_like(scores, axis=0), shape=(-1, 1)),
                                 scores)
        picked = F.gather_nd(sizes, F.stack(batch, cell, axis=0))  # (B, top, 2)
        offsets = F.reshape(self.offset(features), shape=(0, 0, -1))
        return scores, classes, F.concat(F.stack(xs, ys, axis=-1), picked, dim=-1), offsets


class StyleTransfer(gluon.HybridBlock):
    """Fast neural style (GluonCV MSG-Net-like): reflection padding, InstanceNorm, a residual
    block, GroupNorm, nearest upsampling back to the input size, tanh to pixels."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.pad = nn.ReflectionPad2D(1)
            self.down = nn.Conv2D(8, 3, strides=2)
            self.norm1 = nn.InstanceNorm(center=True, scale=True)
            self.residual1, self.residual2 = nn.Conv2D(8, 3), nn.Conv2D(8, 3)
            self.norm2 = nn.GroupNorm(num_groups=2)
            self.out = nn.Conv2D(3, 3)

    def hybrid_forward(self, F, x):
        y = F.relu(self.norm1(self.down(self.pad(x))))
        y = y + self.norm2(self.residual2(self.pad(F.relu(self.residual1(self.pad(y))))))
        y = F.UpSampling(y, scale=2, sample_type="nearest")
        return F.tanh(self.out(self.pad(y))) * 127.5 + 127.5


class UnrolledCells(gluon.HybridBlock):
    """GluonNLP-style unrolled cells: a bidirectional LSTM cell and a stacked GRU cell with
    ``valid_length`` (masking, ``SequenceReverse`` and ``SequenceLast`` inside Gluon's
    ``unroll``), zero begin states built from the input."""

    def __init__(self, length=5, **kwargs):
        super().__init__(**kwargs)
        self.length = length
        with self.name_scope():
            self.embed = nn.Embedding(20, 6)
            self.bidirectional = rnn.BidirectionalCell(rnn.LSTMCell(5), rnn.LSTMCell(5))
            self.stacked = rnn.HybridSequentialRNNCell()
            self.stacked.add(rnn.GRUCell(4))
            self.stacked.add(rnn.ResidualCell(rnn.GRUCell(4)))
            self.classify = nn.Dense(3)

    def hybrid_forward(self, F, tokens, valid_length):
        x = self.embed(tokens)
        lengths = valid_length.astype("float32")
        outputs, _ = self.bidirectional.unroll(self.length, x, layout="NTC", merge_outputs=True,
                                               valid_length=lengths)
        outputs, states = self.stacked.unroll(self.length, outputs, layout="NTC",
                                              merge_outputs=True, valid_length=lengths)
        return self.classify(states[-1]), outputs


class DecoderCrossAttention(gluon.HybridBlock):
    """A transformer decoder step as GluonNLP 0.10 writes it for speed: self-attention scores
    masked with ``softmax(use_length=True)``, cross-attention with the interleaved encoder-
    decoder ops over a time-major memory, ``div_sqrt_dim`` scaling, and a padding mask from
    integer ids (``!= 0``) applied to the output."""

    def __init__(self, units=8, heads=2, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        with self.name_scope():
            self.embed = nn.Embedding(16, units)
            self.query = nn.Dense(units, flatten=False)
            self.key_value = nn.Dense(2 * units, flatten=False)
            self.self_qkv = nn.Dense(3 * units, flatten=False)
            self.norm = nn.LayerNorm()

    def hybrid_forward(self, F, tokens, memory, memory_length):
        x = F.contrib.div_sqrt_dim(self.embed(tokens))  # (B, T, C)
        time_major = F.transpose(x, axes=(1, 0, 2))
        qkv = self.self_qkv(time_major)
        scores = F.contrib.interleaved_matmul_selfatt_qk(qkv, heads=self.heads)  # (B*h, T, T)
        steps = F.contrib.arange_like(scores, axis=-1) + 1  # causal: row t sees t + 1 steps
        rows = F.reshape(F.slice_axis(scores, axis=-1, begin=0, end=1), shape=(0, 0))  # (B*h, T)
        causal = F.broadcast_like(F.reshape(steps, shape=(1, -1)), rows).astype("int32")
        attention = F.softmax(scores, causal, axis=-1, use_length=True)
        x = time_major + F.contrib.interleaved_matmul_selfatt_valatt(qkv, attention,
                                                                     heads=self.heads)
        query = self.query(x)
        key_value = self.key_value(F.transpose(memory, axes=(1, 0, 2)))
        scores = F.contrib.interleaved_matmul_encdec_qk(query, key_value, heads=self.heads)
        lengths = F.repeat(memory_length, repeats=self.heads, axis=0)
        lengths = F.broadcast_like(F.expand_dims(lengths, axis=1), rows)
        attention = F.softmax(scores, lengths, axis=-1, use_length=True)
        x = self.norm(x + F.contrib.interleaved_matmul_encdec_valatt(key_value, attention,
                                                                     heads=self.heads))
        padding = (tokens != 0).astype("float32")
        return F.broadcast_mul(F.transpose(x, axes=(1, 0, 2)), F.expand_dims(padding, axis=-1))


def token_ids(rng: np.random.RandomState, shape: tuple) -> np.ndarray:
    return rng.randint(0, 16, shape).astype(np.float32)


def uniform(rng: np.random.RandomState, shape: tuple) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(np.float32)


def uniform64(rng: np.random.RandomState, shape: tuple) -> np.ndarray:
    return rng.uniform(-1, 1, shape)


def integers(low: int, high: int) -> Callable:
    """Integer ids or lengths in [low, high), as int32 (what a deployed text model is fed)."""
    return lambda rng, shape: rng.randint(low, high, shape).astype(np.int32)


def float64_net() -> gluon.HybridBlock:
    net = Float64Net()
    net.cast("float64")
    return net


ARCHITECTURES: dict[str, tuple[Callable[[], gluon.HybridBlock], dict, Callable | dict]] = {
    "transformer_encoder": (Encoder, {"tokens": (BATCH, 16)}, token_ids),
    "bilstm": (lambda: TextRNN("lstm"), {"tokens": (BATCH, 7)}, token_ids),
    "bigru": (lambda: TextRNN("gru"), {"tokens": (BATCH, 7)}, token_ids),
    "birnn_tanh": (lambda: TextRNN("rnn_tanh"), {"tokens": (BATCH, 7)}, token_ids),
    "unet": (UNet, {"image": (BATCH, 3, 16, 16)}, uniform),
    "squeeze_excite": (SqueezeExcite, {"image": (BATCH, 3, 12, 12)}, uniform),
    "conv1d": (conv1d_net, {"signal": (BATCH, 3, 40)}, uniform),
    "conv3d": (conv3d_net, {"volume": (BATCH, 2, 8, 8, 8)}, uniform),
    "activations": (activations_net, {"image": (BATCH, 3, 16, 16)}, uniform),
    "inception": (Inception, {"image": (BATCH, 3, 8, 8)}, uniform),
    "two_inputs": (TwoInputsThreeOutputs, {"x": (BATCH, 5), "y": (BATCH, 6)}, uniform),
    "ssd": (SSDHead, {"image": (BATCH, 3, 8, 8)}, uniform),
    "yolov3": (YOLOHead, {"image": (BATCH, 3, 16, 16)}, uniform),
    "deeplab_aspp": (DeepLabASPP, {"image": (BATCH, 3, 16, 16)}, uniform),
    "simple_pose": (PoseHead, {"image": (BATCH, 3, 16, 16)}, uniform),
    "bert": (BERTEncoder, {"tokens": (BATCH, 10), "types": (BATCH, 10), "valid_length": (BATCH,)},
             {"tokens": integers(0, 30), "types": integers(0, 2), "valid_length": integers(1, 11)}),
    "seq2seq": (Seq2SeqPieces, {"source": (BATCH, 6), "lengths": (BATCH,), "previous": (BATCH,),
                                "target": (BATCH,)},
                {"source": integers(0, 12), "lengths": integers(1, 7), "previous": integers(0, 12),
                 "target": integers(0, 12)}),
    "wavenet": (WaveNet, {"signal": (BATCH, 2, 20)}, uniform),
    "resnext_densenet": (DenseResNeXt, {"image": (BATCH, 3, 8, 8)}, uniform),
    "float64": (float64_net, {"x": (BATCH, 2, 6, 6)}, uniform64),
    "pass_through_outputs": (PassThroughOutputs, {"x": (BATCH, 5), "y": (BATCH, 3)}, uniform),
    "centernet": (CenterNetHead, {"image": (BATCH, 3, 16, 16)}, uniform),
    "style_transfer": (StyleTransfer, {"image": (BATCH, 3, 16, 16)}, uniform),
    "unrolled_cells": (UnrolledCells, {"tokens": (BATCH, 5), "valid_length": (BATCH,)},
                       {"tokens": integers(0, 20), "valid_length": integers(1, 6)}),
    "decoder_cross_attention": (DecoderCrossAttention, {"tokens": (BATCH, 6),
                                                        "memory": (BATCH, 7, 8),
                                                        "memory_length": (BATCH,)},
                                {"tokens": integers(0, 16), "memory": uniform,
                                 "memory_length": integers(1, 8)}),
}


def seeded_block(build: Callable[[], gluon.HybridBlock], arrays: dict) -> gluon.HybridBlock:
    """The block with Xavier weights, then BatchNorm statistics and affine terms moved away
    from 0 and 1 (so that folding them is visible in the weights)."""
    mx.random.seed(0)
    block = build()
    block.initialize(mx.init.Xavier(magnitude=2.5))
    block(*[mx.nd.array(a, dtype=a.dtype) for a in arrays.values()])  # deferred shapes
    rng = np.random.RandomState(1)
    for param in block.collect_params().values():
        if param.name.endswith("running_var"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 2.0, param.shape)))
        elif param.name.endswith(("running_mean", "beta")):
            param.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, param.shape)))
        elif param.name.endswith("gamma"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
    return block


def gluon_outputs(block: gluon.HybridBlock, arrays: dict) -> list[np.ndarray]:
    outputs = block(*[mx.nd.array(a, dtype=a.dtype) for a in arrays.values()])
    return [o.asnumpy() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def inputs_for(shapes: dict, fill: Callable | dict, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs; ``fill`` draws one array (or, as a dict, one per input name)."""
    rng = np.random.RandomState(seed)
    fills = fill if isinstance(fill, dict) else {name: fill for name in shapes}
    return {name: fills[name](rng, (batch, *shape[1:])) for name, shape in shapes.items()}


def mxnet_outputs(graph: graphopt.Graph, arrays: dict) -> list[np.ndarray]:
    """The graph's outputs in order (a dict by name would merge an output returned twice)."""
    return as_mxnet_model(graph).forward(arrays)


def batch_norms(graph: graphopt.Graph) -> int:
    return sum(1 for name in graph.live_nodes() if graph.node(name).op == "BatchNorm")


def assert_outputs_close(reference, actual, what: str) -> None:
    assert len(actual) == len(reference), what
    for index, (expected, got) in enumerate(zip(reference, actual)):
        assert got.shape == expected.shape, f"{what}, output {index}: {got.shape} vs {expected.shape}"
        assert got.dtype == expected.dtype, f"{what}, output {index}: {got.dtype} vs {expected.dtype}"
        error = relative_error(expected, got)
        assert error <= TOLERANCE, f"{what}, output {index}: relative error {error:.3g}"


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def exported(request):
    """(name, Gluon block, loaded graph, inputs at BATCH, inputs at OTHER_BATCH)."""
    build, shapes, fill = ARCHITECTURES[request.param]
    arrays = inputs_for(shapes, fill, BATCH, seed=2)
    block = seeded_block(build, arrays)
    graph = graphopt.from_block(block, inputs=shapes,
                                dtypes={name: array.dtype.name for name, array in arrays.items()})
    return request.param, block, graph, arrays, inputs_for(shapes, fill, OTHER_BATCH, seed=3)


def test_the_loaded_graph_computes_what_the_gluon_block_computes(exported):
    name, block, graph, arrays, _ = exported
    expected = gluon_outputs(block, arrays)
    got = mxnet_outputs(graph, arrays)
    assert len(got) == len(expected)
    for index, (e, g) in enumerate(zip(expected, got)):
        assert np.array_equal(e, g), f"{name}, output {index}: max diff {np.abs(e - g).max()}"


def test_the_rewritten_graph_computes_what_mxnet_computes(exported):
    name, _, graph, arrays, _ = exported
    rewritten, report = graphopt.rewrite(graph)
    assert_outputs_close(mxnet_outputs(graph, arrays), mxnet_outputs(rewritten, arrays),
                         f"{name} rewritten")
    folded = batch_norms(graph) - batch_norms(rewritten)
    if name in ("unet", "squeeze_excite", "conv1d", "conv3d", "ssd", "yolov3", "deeplab_aspp",
                "simple_pose", "resnext_densenet", "centernet"):
        assert folded >= 2, f"{name}: {folded} BatchNorm folded\n{report}"


@pytest.mark.parametrize("opset", [None, 13])
def test_onnxruntime_computes_what_mxnet_computes_at_any_batch(exported, opset):
    name, _, graph, arrays, other = exported
    rewritten, _ = graphopt.rewrite(graph)
    model = graphopt.to_onnx(rewritten) if opset is None else graphopt.to_onnx(rewritten, opset=opset)
    for inputs in (arrays, other):
        report = graphopt.compare(graph, None, model, inputs=inputs, rtol=TOLERANCE)
        assert report.ok, report.format()
        assert report.outputs and all(o.relative_error <= TOLERANCE for o in report.outputs)
        # every output in order, an output returned twice included (compare pairs them by name)
        assert_outputs_close(mxnet_outputs(graph, inputs), list(run_onnx(model, inputs).values()),
                             f"{name} at opset {opset}, batch {len(next(iter(inputs.values())))}")


class NumpyInterfaceNet(gluon.HybridBlock):
    """A block written for MXNet's NumPy interface (``npx.set_np()``): ``_npx_``/``_np_``
    ops, and a 0-d output (the sum of everything), which exists only in NumPy shape semantics."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(4, 3, padding=1, in_channels=3)
            self.dense = nn.Dense(5, in_units=4 * 6 * 6)

    def hybrid_forward(self, F, x):
        hidden = F.np.tanh(self.conv(x))
        logits = self.dense(F.npx.relu(hidden))
        return F.npx.softmax(logits), F.np.sum(hidden)


def test_a_numpy_interface_block_from_gluon_to_onnxruntime():
    from mxnet import npx
    npx.set_np()
    try:
        mx.random.seed(0)
        block = NumpyInterfaceNet()
        block.initialize(mx.init.Xavier())
        graph = graphopt.from_block(block, inputs={"x": (BATCH, 3, 6, 6)})
        assert graph.tensor_type(graph.outputs[1]).shape == ()  # 0-d, known
        model = graphopt.to_onnx(graph)
        for batch, seed in ((BATCH, 0), (OTHER_BATCH, 1)):
            x = np.random.RandomState(seed).uniform(-1, 1, (batch, 3, 6, 6)).astype(np.float32)
            expected = [o.asnumpy() for o in block(mx.np.array(x))]
            got = list(run_onnx(model, {"x": x}).values())
            assert_outputs_close(expected, got, f"NumPy-interface block at batch {batch}")
    finally:
        npx.reset_np()


def test_per_layer_compare_of_the_optimized_onnx_finds_no_divergent_layer(exported):
    """Original MXNet model against the ONNX of the rewritten graph, layer by layer: folded and
    removed layers do not show up as divergent (a conv that absorbed a BatchNorm is paired
    with the BatchNorm), and most layers are matched by name."""
    name, _, graph, arrays, _ = exported
    rewritten, _ = graphopt.rewrite(graph)
    report = graphopt.compare(graph, None, graphopt.to_onnx(rewritten), inputs=arrays,
                              per_layer=True)
    assert report.ok and report.first_divergent is None, report.format()
    # (a fused RNN's weight reshapes and concat exist only in MXNet: its weights are initializers)
    assert len(report.layers) >= len(report.unmatched_mxnet) or name.startswith("bi"), \
        report.format()
