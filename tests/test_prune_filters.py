"""Filter (structured) pruning (issue 9, item 2): whole output channels zeroed, ranked by L1/L2
norm or BatchNorm |gamma|, per layer or globally, the same channels on every producer of a
residual trunk, equal numbers per conv group, never a layer left with 0 channels, the
classifier's outputs untouched; then, with the channels dropped, a model with fewer MACs that
computes what the masked model computes, in MXNet and in onnxruntime."""

from __future__ import annotations


import mxnet as mx
import numpy as np
import pytest

import graphopt
from fixtures.build import digits_split, fixture_path
from graphopt.errors import PruneError
from graphopt.mxnet_io.save import save_symbol
from graphopt.prune import channel_groups
from graphopt.prune.layers import output_filters
from graphopt.runtime import run_mxnet, run_onnx

DIGITS = {"data": (1, 1, 28, 28)}


@pytest.fixture(scope="module")
def resnet():
    return graphopt.load(*fixture_path("resnet_digits"), inputs=DIGITS)


@pytest.fixture(scope="module")
def lenet():
    return graphopt.load(*fixture_path("lenet_digits"), inputs=DIGITS)


@pytest.fixture(scope="module")
def heldout():
    _, _, x_test, y_test = digits_split()
    return x_test, y_test


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """conv(16) -> conv(16, 4 groups) -> depthwise conv -> BN -> Concat(conv 8, conv 8) ->
    global pool -> dense 10: every coupling a grouped model has, in 5 layers."""
    sym = mx.sym
    x = sym.relu(sym.Convolution(sym.var("data"), num_filter=16, kernel=(3, 3), pad=(1, 1),
                                 name="c0"))
    x = sym.relu(sym.Convolution(x, num_filter=16, num_group=4, kernel=(3, 3), pad=(1, 1),
                                 name="grouped"))
    x = sym.Convolution(x, num_filter=16, num_group=16, kernel=(3, 3), pad=(1, 1),
                        name="depthwise")
    x = sym.relu(sym.BatchNorm(x, fix_gamma=False, name="bn"))
    x = sym.Concat(sym.Convolution(x, num_filter=8, kernel=(1, 1), name="c2"),
                   sym.Convolution(x, num_filter=8, kernel=(1, 1), name="c3"), dim=1)
    x = sym.Pooling(x, global_pool=True, pool_type="avg", kernel=(1, 1))
    x = sym.FullyConnected(sym.Flatten(x), num_hidden=10, name="fc")
    rng = np.random.RandomState(0)

    def value(_kind, name, shape):
        if name.endswith("var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.normal(0, 0.5, shape).astype(np.float32)
    prefix = tmp_path_factory.mktemp("grouped") / "grouped"
    symbol_path, params_path = save_symbol(x, prefix, {"data": (1, 3, 8, 8)}, value)
    return graphopt.load(symbol_path, params_path, inputs={"data": (1, 3, 8, 8)})


def zeroed_channels(graph, node):
    """Output channels of ``node`` whose filter is all zero."""
    weight = graph.params[graph.inputs_of(node)[1].node]
    return set(np.flatnonzero(~np.any(output_filters(weight, "Convolution") != 0, axis=1)))


def l1_norms(graph, node):
    weight = graph.params[graph.inputs_of(node)[1].node]
    return np.abs(weight).reshape(len(weight), -1).sum(axis=1)


def accuracy(graph, heldout):
    images, labels = heldout
    (logits,) = run_mxnet(graph, {"data": images}).values()
    return float(np.mean(logits.argmax(axis=1) == labels))


def test_a_residual_trunk_loses_the_same_channels_in_every_producer(resnet):
    pruned, report = graphopt.prune(resnet, method="filters", ratio=0.5, measure_storage=False)
    trunks = [group for group in channel_groups(resnet) if len(group.producers) > 1]
    # the stem and block 0's last conv share 16 channels through the identity shortcut; blocks
    # 1 and 2 add a projection shortcut to their last conv
    assert [[p.node for p in g.producers] for g in trunks] == [
        ["resnet_conv0_fwd", "resnet_basicblock0_conv1_fwd"],
        ["resnet_basicblock1_conv1_fwd", "resnet_basicblock1_conv2_fwd"],
        ["resnet_basicblock2_conv1_fwd", "resnet_basicblock2_conv2_fwd"]]
    for group in trunks:
        first, second = (p.node for p in group.producers)
        zeroed = zeroed_channels(pruned, first)
        assert zeroed == zeroed_channels(pruned, second)
        assert len(zeroed) == group.size // 2
        # ranked by the members' summed L1 norms: the zeroed half is the lower half
        summed = l1_norms(resnet, first) + l1_norms(resnet, second)
        assert zeroed == set(np.argsort(summed, kind="stable")[: group.size // 2])
    # the classifier's 10 outputs are left alone, and the report says why
    assert "resnet_dense0_fwd" not in [layer.name for layer in report.layers]
    assert report.skipped == [{"layers": ["resnet_dense0_fwd"],
                               "reason": "channels kept: resnet_dense0_fwd_output is a graph output"}]


def test_no_layer_is_ever_left_with_zero_channels(resnet, lenet):
    for graph in (resnet, lenet):
        for scope in ("layer", "global"):
            _, report = graphopt.prune(graph, method="filters", ratio=0.99, scope=scope,
                                       measure_storage=False)
            for layer in report.layers:
                assert 1 <= layer.filters - layer.zeroed_filters_after, (scope, layer.name)


def test_keeping_multiples_of_8(resnet, lenet):
    _, report = graphopt.prune(resnet, method="filters", ratio=0.3, round_to=8,
                               measure_storage=False)
    kept = {layer.name: layer.filters - layer.zeroed_filters_after for layer in report.layers}
    # 16 - 0.3*16 = 11.2 -> 8; 32 -> 22.4 -> 24; 64 -> 44.8 -> 48
    assert kept == {"resnet_conv0_fwd": 8, "resnet_basicblock0_conv1_fwd": 8,
                    "resnet_basicblock0_conv0_fwd": 8, "resnet_basicblock1_conv0_fwd": 24,
                    "resnet_basicblock1_conv1_fwd": 24, "resnet_basicblock1_conv2_fwd": 24,
                    "resnet_basicblock2_conv0_fwd": 48, "resnet_basicblock2_conv1_fwd": 48,
                    "resnet_basicblock2_conv2_fwd": 48}
    # LeNet's 20/50/128: 10 -> 8, 25 -> 24, 64 -> 64 kept; a layer of 8 or fewer is left alone
    _, report = graphopt.prune(lenet, method="filters", ratio=0.5, round_to=8,
                               measure_storage=False)
    assert [layer.filters - layer.zeroed_filters_after for layer in report.layers] == [8, 24, 64]
    _, report = graphopt.prune(lenet, method="filters", ratio=0.5, round_to=32,
                               measure_storage=False)
    assert [layer.name for layer in report.layers] == ["lenet_conv1_fwd", "lenet_dense0_fwd"]


def test_global_scope_zeroes_the_asked_fraction_of_all_channels(resnet):
    _, report = graphopt.prune(resnet, method="filters", ratio=0.5, scope="global",
                               measure_storage=False)
    segments = {16: 2, 32: 2, 64: 2}  # two 16-channel, two 32 and two 64 segments (trunks once)
    total = sum(size * count for size, count in segments.items())
    by_name = {layer.name: layer.zeroed_filters_after for layer in report.layers}
    per_segment = [by_name["resnet_conv0_fwd"], by_name["resnet_basicblock0_conv0_fwd"],
                   by_name["resnet_basicblock1_conv0_fwd"], by_name["resnet_basicblock1_conv1_fwd"],
                   by_name["resnet_basicblock2_conv0_fwd"], by_name["resnet_basicblock2_conv1_fwd"]]
    assert sum(per_segment) == total // 2


def test_batchnorm_gamma_ranking_and_its_fix_gamma_fallback(resnet):
    pruned, report = graphopt.prune(resnet, method="filters", ratio=0.5, criterion="bn_gamma",
                                    measure_storage=False)
    assert report.notes == []  # Gluon writes fix_gamma=False: gamma means something
    gamma = np.abs(resnet.params["resnet_basicblock0_batchnorm0_gamma"])  # after its conv0
    assert zeroed_channels(pruned, "resnet_basicblock0_conv0_fwd") == set(
        np.argsort(gamma, kind="stable")[:8])

    # MXNet's default fix_gamma=True treats gamma as 1: ranking by it would be arbitrary
    fixed = resnet.copy()
    fixed.del_attr("resnet_basicblock0_batchnorm0_fwd", "fix_gamma")
    pruned_fixed, report = graphopt.prune(fixed, method="filters", ratio=0.5,
                                          criterion="bn_gamma", measure_storage=False)
    assert report.notes == [
        "resnet_basicblock0_conv0_fwd: ranked by L1 norm instead of |gamma|: BatchNorm "
        "'resnet_basicblock0_batchnorm0_fwd' has fix_gamma=True (MXNet's default): gamma is "
        "treated as 1, so |gamma| ranks nothing"]
    l1_pruned, _ = graphopt.prune(resnet, method="filters", ratio=0.5, measure_storage=False)
    assert zeroed_channels(pruned_fixed, "resnet_basicblock0_conv0_fwd") == \
        zeroed_channels(l1_pruned, "resnet_basicblock0_conv0_fwd")


def test_grouped_and_depthwise_convolutions_and_concat(grouped):
    pruned, report = graphopt.prune(grouped, method="filters", ratio=0.5, measure_storage=False)
    # c0 feeds a 4-group conv: each group of 4 input channels loses 2
    blocks = [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]
    for node in ("c0", "grouped"):
        zeroed = zeroed_channels(pruned, node)
        assert [len(zeroed & set(block)) for block in blocks] == [2, 2, 2, 2], node
    # the depthwise conv filters the grouped conv's channels one by one: same channels zeroed
    assert zeroed_channels(pruned, "depthwise") == zeroed_channels(pruned, "grouped")
    # Concat(c2, c3): each input is its own segment, each loses half of its own
    assert len(zeroed_channels(pruned, "c2")) == len(zeroed_channels(pruned, "c3")) == 4
    assert [s["layers"] for s in report.skipped] == [["fc"]]


def test_layers_selection_never_splits_a_coupled_group(resnet):
    _, report = graphopt.prune(resnet, method="filters", ratio=0.5, measure_storage=False,
                               layers="resnet_conv0_fwd,resnet_basicblock1_conv0_fwd")
    assert [layer.name for layer in report.layers] == ["resnet_basicblock1_conv0_fwd"]
    assert report.skipped[0] == {
        "layers": ["resnet_conv0_fwd", "resnet_basicblock0_conv1_fwd"],
        "reason": "coupled with ['resnet_basicblock0_conv1_fwd'], which the layer selection "
                  "leaves out: their channels must be zeroed together"}


def test_the_input_graph_is_never_modified(resnet):
    arrays = dict(resnet.params)
    copies = {name: value.copy() for name, value in arrays.items()}
    graphopt.prune(resnet, method="filters", ratio=0.75, scope="global", measure_storage=False)
    assert all(resnet.params[name] is arrays[name] for name in arrays)
    assert all(np.array_equal(resnet.params[name], copies[name]) for name in copies)


@pytest.mark.parametrize("arguments, message", [
    ({"ratio": 1.0}, "ratio must be in [0, 1)"),
    ({"ratio": -0.1}, "ratio must be in [0, 1)"),
    ({"ratio": "half"}, "ratio must be a number in [0, 1), got 'half'"),
    ({}, "filter pruning needs ratio=R"),
    ({"ratio": 0.5, "criterion": "l0"}, "criterion must be one of ('l1', 'l2', 'bn_gamma')"),
    ({"ratio": 0.5, "round_to": 0}, "round_to must be a whole number >= 1"),
    ({"ratio": 0.5, "threshold": 0.1}, "threshold does not apply to method='filters'"),
    ({"ratio": 0.5, "layers": "op:Deconvolution"},
     "layer pattern 'op:Deconvolution' matches no prunable layer; prunable layers: "
     "resnet_conv0_fwd (Convolution)"),
])
def test_bad_requests(resnet, arguments, message):
    with pytest.raises(PruneError) as error:
        graphopt.prune(resnet, method="filters", measure_storage=False, **arguments)
    assert message in str(error.value)


def test_filter_pruning_without_input_shapes_says_to_give_them():
    """Channels are followed by shape: loaded without input shapes, every layer was skipped
    ('its shapes are unknown') and the CLI wrote the model unpruned with exit 0."""
    graph = graphopt.load(*fixture_path("lenet_digits"))
    with pytest.raises(PruneError) as error:
        graphopt.prune(graph, method="filters", ratio=0.5, measure_storage=False)
    assert "inputs={name: shape}" in str(error.value) and "'data'" in str(error.value)


# --- with the zeroed channels dropped -----------------------------------------------------------

@pytest.fixture(scope="module")
def dropped_resnet(resnet):
    masked, _ = graphopt.prune(resnet, method="filters", ratio=0.5, measure_storage=False)
    smaller, report = graphopt.prune(resnet, method="filters", ratio=0.5, drop=True,
                                     measure_storage=False)
    return masked, smaller, report


def test_dropping_the_zeroed_filters_cuts_macs_and_computes_the_masked_model(
        dropped_resnet, heldout):
    masked, smaller, report = dropped_resnet
    # half of every conv's output channels and (but for the stem) of its input channels:
    # about a quarter of the MACs are left (measured 2.36 M of 9.35 M)
    assert report.after["macs"] < 0.26 * report.before["macs"]
    assert report.after["params"] < 0.26 * report.before["params"]  # measured 20,146 of 78,426
    # every zeroed channel went: the silenced channels are exactly 0, nothing to fold
    assert report.dropped.dropped == 8 + 8 + 16 + 16 + 32 + 32  # half of each of the 6 segments
    images, _ = heldout
    (reference,) = run_mxnet(masked, {"data": images[:64]}).values()
    (actual,) = run_mxnet(smaller, {"data": images[:64]}).values()
    # the same function up to float32 summation order
    np.testing.assert_allclose(actual, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_the_smaller_model_saves_as_mxnet_and_onnx(dropped_resnet, heldout, tmp_path):
    masked, smaller, _ = dropped_resnet
    images = heldout[0][:16]
    (reference,) = run_mxnet(masked, {"data": images}).values()
    graphopt.save_mxnet(smaller, tmp_path / "small")
    with mx.util.np_shape(False):
        block = mx.gluon.SymbolBlock.imports(str(tmp_path / "small-symbol.json"), ["data"],
                                             str(tmp_path / "small-0000.params"))
    gluon = block(mx.nd.array(images)).asnumpy()
    np.testing.assert_allclose(gluon, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    graphopt.to_onnx(smaller, tmp_path / "small.onnx")
    (onnx_out,) = run_onnx(str(tmp_path / "small.onnx"), {"data": images}).values()
    np.testing.assert_allclose(onnx_out, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_lenet_half_its_filters_dropped(lenet, heldout):
    """The seed's LeNet at 50% filter pruning plus dropping, before any fine-tuning: MACs and
    held-out accuracy (the figures in the issue's closing note)."""
    smaller, report = graphopt.prune(lenet, method="filters", ratio=0.5, drop=True,
                                     measure_storage=False)
    # conv0 20 -> 10 filters: 10x24x24 outputs x 1x5x5 = 144,000; conv1 50 -> 25 reading 10:
    # 25x10x10 x 10x3x3 = 225,000; dense0 128 -> 64 reading 25x5x5: 40,000; dense1 10 x 64 = 640
    assert report.after["macs"] == 144_000 + 225_000 + 40_000 + 640  # of 1,349,280
    assert report.after["params"] < 0.26 * report.before["params"]  # measured 43,249 of 170,988
    conv1 = report.layers[1]  # 50x20x3x3 + 50 -> 25x10x3x3 + 25 float32 values
    assert (conv1.params_before, conv1.params_after) == (9050, 2275)
    assert (conv1.bytes_before, conv1.bytes_after) == (4 * 9050, 4 * 2275)
    # measured 0.8997 (323/359) before fine-tuning, against 0.9944 unpruned: the masked
    # model's accuracy, which dropping does not change
    # (2 images of slack: another CPU's kernels may flip a borderline prediction)
    assert accuracy(smaller, heldout) == pytest.approx(0.8997, abs=0.006)


def test_a_coupling_the_analysis_cannot_follow_leaves_the_layer_alone_and_says_why(tmp_path):
    # c1's channels go through a transpose (channels moved last): no channel can be dropped
    # there, so filter pruning must not zero any of c1's filters, and the report says why
    sym = mx.sym
    x = sym.relu(sym.Convolution(sym.var("data"), num_filter=8, kernel=(3, 3), name="c0"))
    x = sym.Convolution(x, num_filter=8, kernel=(3, 3), name="c1")
    x = sym.FullyConnected(sym.transpose(x, axes=(0, 2, 3, 1), name="nhwc"), num_hidden=4,
                           name="fc")
    rng = np.random.RandomState(0)
    symbol_path, params_path = save_symbol(
        x, tmp_path / "nhwc", {"data": (1, 2, 9, 9)},
        lambda _kind, _name, shape: rng.normal(0, 0.5, shape).astype(np.float32))
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (1, 2, 9, 9)})
    pruned, report = graphopt.prune(graph, method="filters", ratio=0.5, measure_storage=False)
    assert [layer.name for layer in report.layers] == ["c0"]
    assert pruned.params["c1_weight"] is graph.params["c1_weight"]
    reasons = {tuple(s["layers"]): s["reason"] for s in report.skipped}
    assert "transpose 'nhwc'" in reasons[("c1",)], reasons
    # and dropping keeps the model's function
    smaller, report = graphopt.prune(graph, method="filters", ratio=0.5, drop=True,
                                     measure_storage=False)
    data = {"data": rng.uniform(-1, 1, (3, 2, 9, 9)).astype(np.float32)}
    (reference,) = run_mxnet(pruned, data).values()
    (actual,) = run_mxnet(smaller, data).values()
    np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-6)
    assert smaller.params["c0_weight"].shape[0] == 4


def seeded_model(symbol, tmp_path, name, data_shape):
    rng = np.random.RandomState(0)

    def value(_kind, param, shape):
        if param.endswith("var"):
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.normal(0, 0.5, shape).astype(np.float32)
    symbol_path, params_path = save_symbol(symbol, tmp_path / name, {"data": data_shape}, value)
    return graphopt.load(symbol_path, params_path, inputs={"data": data_shape})


def test_a_grouped_deconvolution_loses_equally_many_filters_per_group(tmp_path):
    # Deconvolution's weight is (C_in, C_out/g, kh, kw): output channel gi*C_out/g + j is
    # W[gi*C_in/g:(gi+1)*C_in/g, j] (PITFALLS.md, BatchNorm fold targets)
    sym = mx.sym
    x = sym.relu(sym.Convolution(sym.var("data"), num_filter=8, kernel=(3, 3), pad=(1, 1),
                                 name="c0"))
    x = sym.Deconvolution(x, num_filter=8, num_group=2, kernel=(4, 4), stride=(2, 2),
                          pad=(1, 1), no_bias=False, name="up")
    x = sym.Convolution(sym.relu(sym.BatchNorm(x, fix_gamma=False, name="bn")), num_filter=4,
                        kernel=(3, 3), pad=(1, 1), name="c1")
    x = sym.Pooling(x, global_pool=True, kernel=(1, 1), pool_type="avg")
    graph = seeded_model(sym.FullyConnected(sym.Flatten(x), num_hidden=3, name="fc"), tmp_path,
                         "deconv", (1, 2, 6, 6))
    masked, report = graphopt.prune(graph, method="filters", ratio=0.5, measure_storage=False)
    weight = masked.params["up_weight"]  # (8, 4, 4, 4): 2 groups of 4 input channels
    zeroed = [[j for j in range(4) if not np.any(weight[g * 4:(g + 1) * 4, j])] for g in (0, 1)]
    assert [len(z) for z in zeroed] == [2, 2]
    l1 = np.abs(graph.params["up_weight"]).reshape(2, 4, 4, -1).sum(axis=(1, 3))  # (group, j)
    assert zeroed == [sorted(np.argsort(l1[g], kind="stable")[:2].tolist()) for g in (0, 1)]
    assert not np.any(masked.params["up_bias"][[g * 4 + j for g in (0, 1) for j in zeroed[g]]])
    smaller, _ = graphopt.prune(graph, method="filters", ratio=0.5, drop=True,
                                measure_storage=False)
    assert smaller.params["up_weight"].shape == (4, 2, 4, 4)
    data = {"data": np.random.RandomState(1).uniform(-1, 1, (2, 2, 6, 6)).astype(np.float32)}
    (reference,) = run_mxnet(masked, data).values()
    (actual,) = run_mxnet(smaller, data).values()
    np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-5)


def test_a_depthwise_deconvolution_loses_the_filters_of_its_pruned_channels(tmp_path):
    # a depthwise Deconvolution (num_group == C_in, a CenterNet-style upsampler) passes channel
    # c through its weight row c: W is (C_in, 1, kh, kw), so pruning channel c of the conv
    # before it must zero W[c] as well (it zeroed nothing when the group count was taken as 1)
    sym = mx.sym
    x = sym.relu(sym.Convolution(sym.var("data"), num_filter=8, kernel=(3, 3), pad=(1, 1),
                                 name="c0"))
    x = sym.Deconvolution(x, num_filter=8, num_group=8, kernel=(4, 4), stride=(2, 2),
                          pad=(1, 1), no_bias=False, name="up")
    x = sym.Convolution(sym.relu(x), num_filter=4, kernel=(1, 1), name="c1")
    x = sym.Pooling(x, global_pool=True, kernel=(1, 1), pool_type="avg")
    graph = seeded_model(sym.FullyConnected(sym.Flatten(x), num_hidden=3, name="fc"), tmp_path,
                         "dwdeconv", (1, 2, 6, 6))
    masked, _ = graphopt.prune(graph, method="filters", ratio=0.5, measure_storage=False)
    pruned_channels = zeroed_channels(masked, "c0")
    assert len(pruned_channels) == 4
    deconv_rows = masked.params["up_weight"].reshape(8, -1)
    assert set(np.flatnonzero(~np.any(deconv_rows != 0, axis=1))) == pruned_channels
    smaller, _ = graphopt.prune(graph, method="filters", ratio=0.5, drop=True,
                                measure_storage=False)
    assert smaller.params["up_weight"].shape == (4, 1, 4, 4)
    data = {"data": np.random.RandomState(1).uniform(-1, 1, (2, 2, 6, 6)).astype(np.float32)}
    (reference,) = run_mxnet(masked, data).values()
    (actual,) = run_mxnet(smaller, data).values()
    np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-5)


def test_bn_gamma_after_a_residual_add_ranks_a_pre_activation_trunk(tmp_path):
    # ResNet v2: BN-relu-conv inside the block, the trunk's BatchNorms read the sums, so no
    # BatchNorm comes right after a conv; every BatchNorm a channel passes through counts
    sym = mx.sym
    stem = sym.Convolution(sym.var("data"), num_filter=8, kernel=(3, 3), pad=(1, 1), name="c0")
    inner = sym.relu(sym.BatchNorm(stem, fix_gamma=False, name="bn_block"))
    trunk = stem + sym.Convolution(inner, num_filter=8, kernel=(3, 3), pad=(1, 1), name="c1")
    x = sym.relu(sym.BatchNorm(trunk, fix_gamma=False, name="bn_out"))
    x = sym.Pooling(x, global_pool=True, kernel=(1, 1), pool_type="avg")
    graph = seeded_model(sym.FullyConnected(sym.Flatten(x), num_hidden=3, name="fc"), tmp_path,
                         "preact", (1, 2, 6, 6))
    masked, report = graphopt.prune(graph, method="filters", ratio=0.5, criterion="bn_gamma",
                                    measure_storage=False)
    assert report.notes == []
    gamma = np.abs(graph.params["bn_block_gamma"]) + np.abs(graph.params["bn_out_gamma"])
    expected = set(np.argsort(gamma, kind="stable")[:4])
    assert zeroed_channels(masked, "c0") == zeroed_channels(masked, "c1") == expected


def test_pinned_channels_of_a_segment_are_never_zeroed(tmp_path):
    # channels 0-3 of c0 also go through a transpose the coupling cannot follow: they are
    # pinned, so at 75% only the other 4 of the 6 asked can be zeroed, and a note says so
    sym = mx.sym
    features = sym.relu(sym.Convolution(sym.var("data"), num_filter=8, kernel=(3, 3), name="c0"))
    side = sym.transpose(sym.slice_axis(features, axis=1, begin=0, end=4), axes=(0, 2, 3, 1),
                         name="nhwc")
    main_path = sym.Pooling(sym.Convolution(features, num_filter=8, kernel=(3, 3), name="c1"),
                            global_pool=True, kernel=(1, 1), pool_type="avg")
    out = sym.FullyConnected(side, num_hidden=3, name="fc_side") + \
        sym.FullyConnected(sym.Flatten(main_path), num_hidden=3, name="fc_main")
    graph = seeded_model(out, tmp_path, "pinned", (1, 2, 9, 9))
    pruned, report = graphopt.prune(graph, method="filters", ratio=0.75, measure_storage=False,
                                    layers="c0")
    assert zeroed_channels(pruned, "c0") == {4, 5, 6, 7}
    assert report.notes == ["c0: 4 of the 6 channels asked zeroed (pinned channels, or equal "
                            "drops per block)"]


def test_lenet_half_its_filters_dropped_recovers_with_a_short_fine_tune(lenet, heldout):
    """After: 3 epochs of plain fine-tuning (graphopt.distill with alpha=1, no teacher) of the
    dropped LeNet. Measured 0.9916 in two runs (MXNet's training is not bit-reproducible, so
    the bound leaves a point), against 0.8997 before and 0.9944 unpruned."""
    x_train, y_train, _, _ = digits_split()
    smaller, _ = graphopt.prune(lenet, method="filters", ratio=0.5, drop=True,
                                measure_storage=False)
    result = graphopt.distill(None, smaller, (x_train, y_train), alpha=1.0, epochs=3, seed=0)
    assert accuracy(result.student, heldout) >= 0.98
    # the fine-tuned model keeps the smaller structure
    assert {k: v.shape for k, v in result.student.params.items()} == \
        {k: v.shape for k, v in smaller.params.items()}


def test_a_layer_whose_weight_is_shared_is_reported_not_pruned_with_the_reason(tmp_path):
    """Two convs reading one weight (a recurrent block unrolled): its channels cannot be cut in
    one use alone, so filter pruning leaves the weight whole. Asked for that layer by name,
    it used to return an empty report with no word about why."""
    sym = mx.sym
    weight = sym.var("shared_weight")
    x = sym.relu(sym.Convolution(sym.var("data"), num_filter=4, kernel=(3, 3), pad=(1, 1),
                                 name="c0"))
    x = sym.relu(sym.Convolution(x, weight, num_filter=4, kernel=(3, 3), pad=(1, 1),
                                 no_bias=True, name="s1"))
    x = sym.Convolution(x, weight, num_filter=4, kernel=(3, 3), pad=(1, 1), no_bias=True,
                        name="s2")
    rng = np.random.RandomState(0)
    symbol_path, params_path = save_symbol(
        x, tmp_path / "shared", {"data": (1, 4, 6, 6)},
        lambda _kind, _name, shape: rng.normal(0, 0.5, shape).astype(np.float32))
    graph = graphopt.load(symbol_path, params_path, inputs={"data": (1, 4, 6, 6)})
    pruned, report = graphopt.prune(graph, method="filters", ratio=0.5, layers="s1",
                                    measure_storage=False)
    assert pruned.params["shared_weight"] is graph.params["shared_weight"]
    reasons = {tuple(s["layers"]): s["reason"] for s in report.skipped}
    assert "shared" in reasons[("s1",)], reasons
    assert "s1" in report.format()
