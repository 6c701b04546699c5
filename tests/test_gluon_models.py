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
from graphopt.runtime import run_mxnet

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


def token_ids(rng: np.random.RandomState, shape: tuple) -> np.ndarray:
    return rng.randint(0, 16, shape).astype(np.float32)


def uniform(rng: np.random.RandomState, shape: tuple) -> np.ndarray:
    return rng.uniform(-1, 1, shape).astype(np.float32)


ARCHITECTURES: dict[str, tuple[Callable[[], gluon.HybridBlock], dict, Callable]] = {
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
}


def seeded_block(build: Callable[[], gluon.HybridBlock], arrays: dict) -> gluon.HybridBlock:
    """The block with Xavier weights, then BatchNorm statistics and affine terms moved away
    from 0 and 1 (so that folding them is visible in the weights)."""
    mx.random.seed(0)
    block = build()
    block.initialize(mx.init.Xavier(magnitude=2.5))
    block(*[mx.nd.array(a) for a in arrays.values()])  # deferred shapes
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
    outputs = block(*[mx.nd.array(a) for a in arrays.values()])
    return [o.asnumpy() for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]


def inputs_for(shapes: dict, fill: Callable, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {name: fill(rng, (batch, *shape[1:])) for name, shape in shapes.items()}


def batch_norms(graph: graphopt.Graph) -> int:
    return sum(1 for name in graph.live_nodes() if graph.node(name).op == "BatchNorm")


def assert_outputs_close(reference, actual, what: str) -> None:
    assert len(actual) == len(reference), what
    for index, (expected, got) in enumerate(zip(reference, actual)):
        assert got.shape == expected.shape, f"{what}, output {index}: {got.shape} vs {expected.shape}"
        error = relative_error(expected, got)
        assert error <= TOLERANCE, f"{what}, output {index}: relative error {error:.3g}"


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def exported(request):
    """(name, Gluon block, loaded graph, inputs at BATCH, inputs at OTHER_BATCH)."""
    build, shapes, fill = ARCHITECTURES[request.param]
    arrays = inputs_for(shapes, fill, BATCH, seed=2)
    block = seeded_block(build, arrays)
    graph = graphopt.from_block(block, inputs=shapes)
    return request.param, block, graph, arrays, inputs_for(shapes, fill, OTHER_BATCH, seed=3)


def test_the_loaded_graph_computes_what_the_gluon_block_computes(exported):
    name, block, graph, arrays, _ = exported
    expected = gluon_outputs(block, arrays)
    got = list(run_mxnet(graph, arrays).values())
    assert len(got) == len(expected)
    for index, (e, g) in enumerate(zip(expected, got)):
        assert np.array_equal(e, g), f"{name}, output {index}: max diff {np.abs(e - g).max()}"


def test_the_rewritten_graph_computes_what_mxnet_computes(exported):
    name, _, graph, arrays, _ = exported
    rewritten, report = graphopt.rewrite(graph)
    reference = list(run_mxnet(graph, arrays).values())
    assert_outputs_close(reference, list(run_mxnet(rewritten, arrays).values()), f"{name} rewritten")
    folded = batch_norms(graph) - batch_norms(rewritten)
    if name in ("unet", "squeeze_excite", "conv1d", "conv3d"):
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
