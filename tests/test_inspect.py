"""`graphopt inspect`'s numbers: MACs and FLOPs checked against counts worked out by hand.

Every model is built with ``mx.sym``, saved as MXNet files and loaded with ``graphopt.load``,
as a user's model would be. The counting conventions are in graphopt/analysis/inspect.py.
"""

from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest

import graphopt
from graphopt.analysis import format_inspection, human_bytes, human_count, inspect_graph
from graphopt.mxnet_io import save_symbol


def load_symbol(symbol: mx.sym.Symbol, folder, **input_shapes) -> graphopt.Graph:
    """Save ``symbol`` with random parameters (``arg:``/``aux:`` names) and load it back."""
    rng = np.random.default_rng(0)

    def value(kind: str, _name: str, shape: tuple) -> np.ndarray:
        drawn = rng.uniform(0.5, 1.5, shape) if kind == "aux" else rng.normal(size=shape)
        return drawn.astype(np.float32)
    symbol_path, params_path = save_symbol(symbol, folder / "model", input_shapes, value)
    return graphopt.load(symbol_path, params_path, inputs=input_shapes)


def layer(report: dict, name: str) -> dict:
    return next(entry for entry in report["layers"] if entry["name"] == name)


def lenet() -> mx.sym.Symbol:
    """The walkthrough's LeNet: Conv 20 k5, MaxPool 2, Conv 50 k3, MaxPool 2, Dense 128, Dense 10."""
    x = mx.sym.var("data")
    x = mx.sym.Convolution(x, num_filter=20, kernel=(5, 5), name="conv0")
    x = mx.sym.Activation(x, act_type="relu", name="relu0")
    x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool0")
    x = mx.sym.Convolution(x, num_filter=50, kernel=(3, 3), name="conv1")
    x = mx.sym.Activation(x, act_type="relu", name="relu1")
    x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool1")
    x = mx.sym.Flatten(x, name="flatten0")
    x = mx.sym.FullyConnected(x, num_hidden=128, name="fc0")
    x = mx.sym.Activation(x, act_type="relu", name="relu2")
    x = mx.sym.FullyConnected(x, num_hidden=10, name="fc1")
    return mx.sym.softmax(x, name="prob")


def test_lenet_macs_and_flops_per_layer(tmp_path):
    report = inspect_graph(load_symbol(lenet(), tmp_path, data=(1, 1, 28, 28)))
    # conv0: 20 x 24 x 24 outputs (28 - 5 + 1), each 1 input channel x 5 x 5 taps
    assert layer(report, "conv0")["macs"] == 20 * 24 * 24 * 25 == 288_000
    # no_bias is absent from the JSON: MXNet's default is False, so a bias add per output
    assert layer(report, "conv0")["flops"] == 2 * 288_000 + 20 * 24 * 24
    # pool0: 20 x 12 x 12 outputs, each the max of a 2 x 2 window
    assert layer(report, "pool0")["flops"] == 20 * 12 * 12 * 4
    assert layer(report, "relu0")["flops"] == 20 * 24 * 24
    # conv1: 50 x 10 x 10 outputs (12 - 3 + 1), each 20 channels x 3 x 3 taps
    assert layer(report, "conv1")["macs"] == 50 * 10 * 10 * 20 * 9 == 900_000
    # fc0 reads the 50 x 5 x 5 = 1250 flattened features
    assert layer(report, "fc0")["macs"] == 1250 * 128
    assert layer(report, "fc0")["flops"] == 2 * 1250 * 128 + 128
    assert layer(report, "fc1")["macs"] == 128 * 10
    assert layer(report, "flatten0")["flops"] == 0
    assert layer(report, "prob")["flops"] == 3 * 10
    assert report["totals"]["macs"] == 288_000 + 900_000 + 160_000 + 1_280
    assert report["totals"]["flops"] == sum(entry["flops"] for entry in report["layers"])
    assert report["op_histogram"] == {"Activation": 3, "Convolution": 2, "FullyConnected": 2,
                                      "Pooling": 2, "Flatten": 1, "softmax": 1}
    assert report["uncounted_ops"] == {}
    # weights: conv0 20*1*5*5 + 20, conv1 50*20*3*3 + 50, fc0 1250*128 + 128, fc1 128*10 + 10
    assert report["parameters"]["total"]["count"] == 520 + 9050 + 160_128 + 1290
    assert report["parameters"]["aux"]["count"] == 0
    assert layer(report, "conv1")["params"] == 9050
    assert report["inputs"] == [{"name": "data", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert report["outputs"] == [{"name": "prob_output", "shape": [1, 10], "dtype": "float32"}]


def test_grouped_strided_dilated_convolution(tmp_path):
    x = mx.sym.var("data")
    grouped = mx.sym.Convolution(x, num_filter=16, kernel=(3, 3), pad=(1, 1), stride=(2, 2),
                                 dilate=(2, 2), num_group=4, no_bias=True, name="grouped")
    depthwise = mx.sym.Convolution(x, num_filter=8, kernel=(3, 3), pad=(1, 1), num_group=8,
                                   name="depthwise")
    report = inspect_graph(load_symbol(mx.sym.Group([grouped, depthwise]), tmp_path,
                                       data=(1, 8, 10, 10)))
    # grouped: output (10 + 2 - 2*(3-1) - 1) // 2 + 1 = 4 per side; each output reads
    # 8/4 = 2 channels x 3 x 3 taps: dilation spreads the taps, it does not add any
    assert layer(report, "grouped")["output_shape"] == [1, 16, 4, 4]
    assert layer(report, "grouped")["macs"] == 16 * 4 * 4 * 2 * 9
    assert layer(report, "grouped")["flops"] == 2 * 16 * 4 * 4 * 2 * 9  # no_bias=True
    # depthwise: one input channel per output, 8 x 10 x 10 outputs, plus the bias
    assert layer(report, "depthwise")["macs"] == 8 * 10 * 10 * 9
    assert layer(report, "depthwise")["flops"] == 2 * 8 * 10 * 10 * 9 + 8 * 10 * 10
    assert layer(report, "depthwise")["params"] == 8 * 1 * 3 * 3 + 8


def test_deconvolution_counts_input_elements_and_has_no_bias_by_default(tmp_path):
    x = mx.sym.var("data")
    up = mx.sym.Deconvolution(x, num_filter=8, kernel=(4, 4), stride=(2, 2), pad=(1, 1),
                              name="up")
    grouped = mx.sym.Deconvolution(x, num_filter=8, kernel=(3, 3), num_group=2, no_bias=False,
                                   name="grouped_up")
    report = inspect_graph(load_symbol(mx.sym.Group([up, grouped]), tmp_path, data=(1, 16, 7, 7)))
    # each of the 16 x 7 x 7 inputs is scattered into 8 channels x 4 x 4 taps; that is also the
    # cost of the Convolution it transposes (8x14x14 -> 16x7x7: 784 outputs x 8 x 16)
    assert layer(report, "up")["output_shape"] == [1, 8, 14, 14]
    assert layer(report, "up")["macs"] == 16 * 7 * 7 * 8 * 16 == 100_352
    # no_bias is absent from the JSON and Deconvolution's default is True (PITFALLS.md, "Ops")
    assert layer(report, "up")["flops"] == 2 * 100_352
    # grouped: 8 / 2 = 4 output channels per input element; its bias adds one per output
    assert layer(report, "grouped_up")["macs"] == 16 * 7 * 7 * 4 * 9
    assert layer(report, "grouped_up")["flops"] == 2 * 16 * 7 * 7 * 4 * 9 + 8 * 9 * 9


def test_fully_connected_flatten_false_applies_to_the_last_axis(tmp_path):
    x = mx.sym.var("data")
    per_token = mx.sym.FullyConnected(x, num_hidden=7, flatten=False, name="per_token")
    flattened = mx.sym.FullyConnected(x, num_hidden=7, name="flattened")
    report = inspect_graph(load_symbol(mx.sym.Group([per_token, flattened]), tmp_path,
                                       data=(2, 5, 12)))
    # flatten=False: 2 x 5 rows of 12 features -> (2, 5, 7); flatten=True: 2 rows of 60 -> (2, 7).
    # Both multiply every input element by 7 weights (same MACs); the bias adds differ.
    assert layer(report, "per_token")["output_shape"] == [2, 5, 7]
    assert layer(report, "per_token")["macs"] == 2 * 5 * 12 * 7
    assert layer(report, "per_token")["flops"] == 2 * 2 * 5 * 12 * 7 + 2 * 5 * 7
    assert layer(report, "flattened")["output_shape"] == [2, 7]
    assert layer(report, "flattened")["macs"] == 2 * 60 * 7
    assert layer(report, "flattened")["flops"] == 2 * 2 * 60 * 7 + 2 * 7


def test_matrix_products(tmp_path):
    a, b, c = mx.sym.var("a"), mx.sym.var("b"), mx.sym.var("c")
    batched = mx.sym.batch_dot(a, b, transpose_b=True, name="batched")
    tensordot = mx.sym.dot(c, mx.sym.var("w", shape=(4, 5)), name="tensordot")
    report = inspect_graph(load_symbol(mx.sym.Group([batched, tensordot]), tmp_path,
                                       a=(4, 3, 5), b=(4, 6, 5), c=(2, 3, 4)))
    # batch_dot: 4 batches of (3 x 5) @ (5 x 6): 4 * 3 * 6 outputs, 5 MACs each
    assert layer(report, "batched")["macs"] == 4 * 3 * 6 * 5
    # N-D dot is a tensordot: (2, 3, 4) . (4, 5) -> (2, 3, 5), 4 MACs per output
    assert layer(report, "tensordot")["output_shape"] == [2, 3, 5]
    assert layer(report, "tensordot")["macs"] == 2 * 3 * 5 * 4
    assert layer(report, "tensordot")["flops"] == 2 * 2 * 3 * 5 * 4


def test_flops_only_layers_and_shape_ops(tmp_path):
    x = mx.sym.var("data")
    bn = mx.sym.BatchNorm(x, name="bn")
    pooled = mx.sym.Pooling(bn, global_pool=True, pool_type="avg", kernel=(1, 1), name="gap")
    flat = mx.sym.reshape(pooled, shape=(0, -1), name="flat")
    scaled = mx.sym.broadcast_mul(flat, mx.sym.var("scale"), name="scaled")
    summed = mx.sym.add_n(scaled, scaled, scaled, name="summed")
    normed = mx.sym.LayerNorm(summed, name="ln")
    report = inspect_graph(load_symbol(normed, tmp_path, data=(2, 64, 7, 7), scale=(1, 64)))
    assert layer(report, "bn")["flops"] == 2 * 2 * 64 * 7 * 7
    assert layer(report, "bn")["macs"] == 0
    # global pooling ignores its kernel attribute: each output reads the whole 7 x 7 plane
    assert layer(report, "gap")["flops"] == 2 * 64 * 49
    assert layer(report, "flat")["flops"] == 0
    assert layer(report, "scaled")["flops"] == 2 * 64
    assert layer(report, "summed")["flops"] == 2 * 2 * 64  # three inputs: two adds per element
    assert layer(report, "ln")["flops"] == 7 * 2 * 64
    # BatchNorm's moving mean/var are aux states, gamma/beta parameters
    assert report["parameters"]["aux"] == {"count": 128, "bytes": 512, "tensors": 2}
    assert report["parameters"]["params"]["count"] == 64 + 64 + 128  # bn gamma/beta, ln gamma/beta


def test_op_without_cost_model_is_listed_not_hidden(tmp_path):
    x = mx.sym.var("data")
    report = inspect_graph(load_symbol(mx.sym.sort(mx.sym.relu(x), name="sorted"), tmp_path,
                                       data=(3, 4)))
    assert report["uncounted_ops"] == {"sort": 1}
    assert "no cost model" in format_inspection(report)


def test_report_is_json_and_the_table_ends_with_totals(tmp_path):
    report = inspect_graph(load_symbol(lenet(), tmp_path, data=(1, 1, 28, 28)))
    assert json.loads(json.dumps(report)) == report
    text = format_inspection(report)
    assert "conv1" in text and "FullyConnected" in text
    # 1,349,280 MACs; FLOPs by layer above sum to 2,748,416; 170,988 float32 weights
    assert text.splitlines()[-1] == "Total: 1.35 MMACs, 2.75 MFLOPs, 171 k parameters (668 KiB)"


def test_human_units():
    assert human_count(1_820_000_000, "MACs") == "1.82 GMACs"
    assert human_count(11_689_512) == "11.7 M"
    assert human_count(512) == "512"
    assert human_bytes(46_758_048) == "44.6 MiB"  # resnet18's 11.69 M float32 weights
    assert human_bytes(100) == "100 B"


@pytest.mark.slow
def test_resnet50_v1_cost_and_parameter_bytes():
    from fixtures.zoo import export_zoo_model
    symbol_path, params_path, shape = export_zoo_model("resnet50_v1")
    report = inspect_graph(graphopt.load(symbol_path, params_path, inputs={"data": shape}))
    macs = report["totals"]["macs"]
    # Gluon's resnet50_v1 is the original ResNet-50 (He et al. 2015, Table 1: "3.8 x 10^9
    # FLOPs", multiply-adds): each stage's stride sits in its first 1x1 convolution. The 4.1 G
    # often quoted is ResNet-50 v1.5 (torchvision), which strides in the 3x3 instead: there the
    # first 1x1 convolution of stages 2-4 runs at the input's resolution, 4x the outputs, so
    # each costs 3 x 25.7 M MACs more. Both figures check out:
    downsampling_1x1 = 28 * 28 * 128 * 256  # = 14*14*256*512 = 7*7*512*1024 = 25.7 M MACs
    assert abs(macs - 3.86e9) / 3.86e9 < 0.005
    assert abs(macs + 3 * 3 * downsampling_1x1 - 4.09e9) / 4.09e9 < 0.005
    assert report["by_op"]["FullyConnected"]["macs"] == 2048 * 1000
    assert round(report["parameters"]["total"]["count"] / 1e5) == 256  # 25.6 M, as published
    # byte counts are the arrays' nbytes, read back independently from the params file
    stored = mx.nd.load(str(params_path))
    for kind, prefix in (("params", "arg:"), ("aux", "aux:")):
        expected = sum(a.asnumpy().nbytes for k, a in stored.items() if k.startswith(prefix))
        assert report["parameters"][kind]["bytes"] == expected
    assert report["parameters"]["total"]["bytes"] == sum(a.asnumpy().nbytes for a in stored.values())
    assert report["uncounted_ops"] == {}
    assert "3.86 GMACs" in format_inspection(report, layers="none")


def test_without_input_shapes_costs_are_flagged_not_guessed(tmp_path):
    load_symbol(lenet(), tmp_path, data=(1, 1, 28, 28))  # writes the files
    graph = graphopt.load(tmp_path / "model-symbol.json", tmp_path / "model-0000.params")
    report = inspect_graph(graph)
    assert report["totals"]["macs"] == 0
    assert report["shapes_unknown"]["Convolution"] == 2
    assert report["parameters"]["total"]["count"] == 170_988  # weights are known all the same
    assert "shapes unknown" in format_inspection(report)
