"""Dropping zeroed channels (issue 9, item 3): the user prunes filters, drops the zeroed
channels, and gets a smaller model that computes what the masked one computed.

Every test builds the *masked* model the way filter pruning leaves it — about 40% of the free
channels of every channel group zeroed in every producer of the group (on a residual trunk, in
each branch; depthwise filters too) and BatchNorm beta != 0 in those channels, so that each
zeroed channel still emits a constant (NNI #2130, #5095 lose it) — then drops the channels and
compares MXNet's outputs, masked against dropped, within 1e-5 relative (the issue's figure).
"""

from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import graphopt
from graphopt.compare import relative_error
from graphopt.prune import channel_groups, drop_channels
from graphopt.runtime import run_mxnet, run_onnx

from fixtures.zoo import export_zoo_model, seeded_input
from test_gluon_models import ARCHITECTURES, inputs_for, seeded_block

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"
TOLERANCE = 1e-5          # the issue: masked and dropped agree within 1e-5 relative
ONNX_TOLERANCE = 1e-4     # onnxruntime against MXNet: different kernels, float32 sums


def masked(graph: graphopt.Graph, fraction: float = 0.4, seed: int = 0) -> graphopt.Graph:
    """A copy of ``graph`` with ``fraction`` of the free channels of every channel group zeroed
    in every producer of the group, and BatchNorm beta set to a non-zero value (|beta| in
    [0.1, 0.6], random sign) in those channels."""
    rng = np.random.RandomState(seed)
    result = graph.copy()
    for group in channel_groups(graph):
        free = [c for c in range(group.size) if c not in group.pinned]
        count = int(len(free) * fraction)
        if not count:
            continue
        chosen = set(rng.choice(free, count, replace=False).tolist())
        for producer in group.producers:
            weight = result.params[producer.weight].copy()
            positions = [i for i, c in enumerate(producer.channels) if c in chosen]
            if producer.op == "Deconvolution":
                rows = weight.shape[0] // producer.num_group
                for i in positions:
                    j, r = divmod(i, weight.shape[1])
                    weight[j * rows:(j + 1) * rows, r] = 0
            else:
                weight[positions] = 0
            weight.flags.writeable = False   # set_param then keeps it without another copy
            result.set_param(producer.weight, weight)
        for through in group.throughs:
            if through.op == "BatchNorm" and through.outputs:
                beta_name = through.params[1][0]
                beta = np.array(result.params[beta_name])
                for position, channel in enumerate(group.tensors[through.outputs[0]]):
                    if channel in chosen:
                        beta[position] = rng.choice([-1, 1]) * rng.uniform(0.1, 0.6)
                result.set_param(beta_name, beta)
    return result


def live_channels(graph: graphopt.Graph) -> int:
    return sum(group.size for group in channel_groups(graph))


def assert_same_outputs(reference: dict, actual: dict, tolerance: float, what: str) -> None:
    assert list(reference) == list(actual), what
    for name in reference:
        error = relative_error(reference[name], actual[name])
        assert error <= tolerance, f"{what}: {name} moved by {error:.3g} relative"


def check_drop(graph: graphopt.Graph, inputs: dict, tmp_path: Path | None = None,
               onnx: bool = True) -> tuple[graphopt.Graph, object]:
    """Mask, drop, and check: the same outputs in MXNet (and onnxruntime), fewer channels,
    parameters and MACs, the input graph untouched, and the files loadable by Gluon."""
    pruned = masked(graph)
    before_params = dict(pruned.params)
    smaller, report = drop_channels(pruned)
    assert pruned.params == before_params, "drop_channels changed its input"
    reference = run_mxnet(pruned, inputs)
    assert_same_outputs(reference, run_mxnet(smaller, inputs), TOLERANCE, "MXNet, dropped")
    assert report.dropped > 0, report.format()
    assert live_channels(smaller) < live_channels(pruned)
    old, new = graphopt.inspect_graph(pruned), graphopt.inspect_graph(smaller)
    assert new["parameters"]["total"]["count"] < old["parameters"]["total"]["count"]
    assert new["totals"]["macs"] < old["totals"]["macs"]
    if onnx:
        model = graphopt.to_onnx(smaller)
        assert_same_outputs(reference, run_onnx(model, inputs), ONNX_TOLERANCE, "onnxruntime")
    if tmp_path is not None:
        symbol, params = graphopt.save_mxnet(smaller, tmp_path / "dropped")
        block = mx.gluon.SymbolBlock.imports(str(symbol), list(inputs), str(params))
        outputs = block(*[mx.nd.array(a) for a in inputs.values()])
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for expected, got in zip(reference.values(), outputs):
            assert relative_error(expected, got.asnumpy()) <= TOLERANCE
    return smaller, report


# --- the fixture models (trained on the digits, and random ones) ------------------------------

@pytest.mark.parametrize("name", ["lenet_digits", "resnet_digits", "lenet_random",
                                  "resnet_bn_random"])
def test_fixture_models_drop_their_zeroed_channels_exactly(name, tmp_path):
    shape = (2, *json.loads((FIXTURES / f"{name}.json").read_text())["input_shape"][1:])
    graph = graphopt.load(FIXTURES / f"{name}-symbol.json", FIXTURES / f"{name}-0000.params",
                          inputs={"data": shape})
    inputs = {"data": np.random.RandomState(0).uniform(0, 1, shape).astype(np.float32)}
    smaller, report = check_drop(graph, inputs, tmp_path)
    assert "channels" in report.format()
    assert report.to_dict()["channels_after"] < report.to_dict()["channels_before"]


# --- Gluon architectures: SE, U-Net (Deconvolution + concat skip), ResNeXt + DenseNet ----------

IMAGE_ARCHITECTURES = ["unet", "squeeze_excite", "resnext_densenet", "conv1d", "conv3d",
                       "activations", "float64", "deeplab_aspp", "wavenet", "ssd", "yolov3",
                       "centernet", "simple_pose", "style_transfer"]


@pytest.mark.parametrize("name", IMAGE_ARCHITECTURES)
def test_gluon_architectures_drop_exactly(name):
    build, shapes, fill = ARCHITECTURES[name]
    arrays = inputs_for(shapes, fill, 2, seed=2)
    graph = graphopt.from_block(seeded_block(build, arrays), inputs=shapes,
                                dtypes={name: array.dtype.name for name, array in arrays.items()})
    check_drop(graph, arrays)


def test_a_transpose_to_channels_last_leaves_the_channels_in_place_and_says_why():
    """Gluon's Inception test block transposes the concat to NHWC for a Dense(flatten=False):
    the analysis does not follow a channel axis that moves, so nothing goes, with the reason."""
    build, shapes, fill = ARCHITECTURES["inception"]
    arrays = inputs_for(shapes, fill, 2, seed=2)
    graph = graphopt.from_block(seeded_block(build, arrays), inputs=shapes)
    pruned = graph.copy()
    # the first conv's weight, found by structure: Gluon's name prefix (inception0, inception1...)
    # depends on what the process built before
    first_conv = pruned.op_nodes("Convolution")[0]
    weight_name = pruned.inputs_of(first_conv.name)[1].node
    weight = np.array(pruned.params[weight_name])
    weight[:2] = 0
    pruned.set_param(weight_name, weight)
    smaller, report = drop_channels(pruned)
    assert report.dropped == 0
    assert "transpose" in report.format()
    assert_same_outputs(run_mxnet(pruned, arrays), run_mxnet(smaller, arrays), 0.0, "unchanged")


# --- what couples channels -------------------------------------------------------------------------

def graph_of(symbol: mx.sym.Symbol, shape=(1, 4, 6, 6), seed: int = 0) -> graphopt.Graph:
    """A symbol with seeded parameters, as a loaded graph."""
    from graphopt.mxnet_io.save import save_symbol
    import tempfile
    rng = np.random.RandomState(seed)

    def value(_kind, name, param_shape):
        if name.endswith(("_var", "gamma")):
            return rng.uniform(0.5, 1.5, param_shape).astype(np.float32)
        return rng.normal(0, 0.5, param_shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        paths = save_symbol(symbol, Path(folder) / "model", {"data": shape}, value)
        return graphopt.load(*paths, inputs={"data": shape})


def conv(x, name, filters, kernel=1, **kwargs):
    return mx.sym.Convolution(x, name=name, num_filter=filters, kernel=(kernel, kernel),
                              pad=(kernel // 2, kernel // 2), **kwargs)


def group_with(graph, producer):
    return next(g for g in channel_groups(graph) if any(p.node == producer for p in g.producers))


def test_a_residual_trunk_is_one_group_of_every_producer_on_it():
    data = mx.sym.Variable("data")
    stem = mx.sym.relu(conv(data, "stem", 8))
    branch = conv(mx.sym.relu(conv(stem, "b1", 6, 3)), "b2", 8)
    trunk = mx.sym.relu(stem + branch)
    second = conv(mx.sym.relu(conv(trunk, "c1", 6, 3)), "c2", 8)
    out = conv(mx.sym.relu(trunk + second), "head", 3)
    graph = graph_of(out)
    trunk_group = group_with(graph, "stem")
    assert {p.node for p in trunk_group.producers} == {"stem", "b2", "c2"}
    assert trunk_group.size == 8
    assert {c.node for c in trunk_group.consumers} == {"b1", "c1", "head"}
    check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})


def test_concat_of_a_tensor_with_itself_repeats_its_channels_and_a_slice_after_it_maps_back():
    data = mx.sym.Variable("data")
    a = mx.sym.relu(conv(data, "a", 4))
    both = mx.sym.concat(a, a, dim=1)                    # channels a0..a3, a0..a3
    cut = mx.sym.slice_axis(both, axis=1, begin=2, end=6)   # a2, a3, a0, a1
    out = conv(cut, "next", 3) + conv(both, "other", 3)
    graph = graph_of(out)
    group = group_with(graph, "a")
    channels = group.tensors[graph.inputs_of("other")[0]]
    assert channels[:4] == channels[4:] and len(set(channels)) == 4
    assert group.tensors[graph.inputs_of("next")[0]] == channels[2:6]
    smaller, _ = check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})
    width = graph.node("a").outputs[0].shape[1]
    assert smaller.node("a").outputs[0].shape[1] < width


def test_a_depthwise_conv_filters_its_channels_in_the_group_of_their_producer():
    """MobileNet's pattern: 1x1 conv -> depthwise 3x3 (multiplier 2) -> 1x1 conv. The depthwise
    filters are listed with the group (depthwise=True), output k filtering channel k // 2."""
    data = mx.sym.Variable("data")
    pointwise = mx.sym.relu(conv(data, "pw", 4))
    depthwise = conv(pointwise, "dw", 8, 3, num_group=4)
    graph = graph_of(conv(mx.sym.relu(depthwise), "out", 3))
    group = group_with(graph, "pw")
    by_node = {p.node: p for p in group.producers}
    assert by_node["dw"].depthwise and not by_node["pw"].depthwise
    assert by_node["dw"].channels == tuple(c for c in by_node["pw"].channels for _ in range(2))
    assert [c.node for c in group.consumers] == ["out"]
    check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})


def test_one_channel_may_carry_different_constants_at_two_offsets_of_a_concat():
    """concat(upsample(x), x): a depthwise Deconvolution passes x's channels on, so channel k
    sits at offsets k and C + k, with the deconv's bias at the first and x's constant at the
    second. Each is folded from its own position (found by a random graph search)."""
    data = mx.sym.Variable("data")
    features = conv(data, "features", 6, 3, no_bias=True)
    up = mx.sym.Deconvolution(features, name="up", num_filter=6, num_group=6, kernel=(2, 2),
                              no_bias=False)
    up = mx.sym.slice(up, begin=(None, None, 0, 0), end=(None, None, 6, 6))
    joined = mx.sym.Pooling(mx.sym.concat(up, features, dim=1), kernel=(3, 3), pad=(1, 1),
                            pool_type="max")
    graph = graph_of(conv(joined, "head", 2))
    group = group_with(graph, "features")
    assert group.tensors[graph.inputs_of("head")[0]] == tuple(range(6)) * 2
    check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})


def test_a_graph_output_in_the_middle_keeps_its_channels_and_says_so():
    data = mx.sym.Variable("data")
    features = mx.sym.relu(conv(data, "features", 6), name="features_relu")
    head = conv(features, "head", 2)
    graph = graph_of(mx.sym.Group([head, features]))
    group = group_with(graph, "features")
    assert not group.droppable
    assert "graph output" in group.reason
    pruned = masked(graph.copy(), 0.0)
    pruned.set_param("features_weight", np.zeros_like(pruned.params["features_weight"]))
    smaller, report = drop_channels(pruned)
    assert smaller.node("features").outputs[0].shape[1] == 6
    assert any("graph output" in a.detail for a in report.rewrite.attempts)


def test_an_op_the_analysis_cannot_follow_pins_the_channels_it_reads():
    data = mx.sym.Variable("data")
    features = conv(data, "features", 6)
    out = conv(mx.sym.softmax(features, axis=1), "head", 2)
    group = group_with(graph_of(out), "features")
    assert not group.droppable and "softmax" in group.reason


def test_a_weight_shared_by_two_convs_is_left_alone_with_the_reason():
    data = mx.sym.Variable("data")
    shared = mx.sym.Variable("shared_weight")
    left = mx.sym.Convolution(data, shared, name="left", num_filter=4, kernel=(1, 1), no_bias=True)
    right = mx.sym.Convolution(data, shared, name="right", num_filter=4, kernel=(1, 1), no_bias=True)
    graph = graph_of(conv(mx.sym.relu(left) + mx.sym.relu(right), "head", 2))
    pruned = graph.copy()
    weight = np.array(pruned.params["shared_weight"])
    weight[:2] = 0
    pruned.set_param("shared_weight", weight)
    smaller, report = drop_channels(pruned)
    assert report.dropped == 0
    assert any("shared" in a.detail for a in report.rewrite.attempts)


@pytest.mark.parametrize("fix_gamma", [True, False])
def test_batchnorm_constants_follow_fix_gamma(fix_gamma):
    """fix_gamma=True (MXNet's default) ignores the stored gamma: the constant a zeroed
    channel emits is beta - mean / sqrt(var + eps), not gamma * (...)."""
    data = mx.sym.Variable("data")
    bn = mx.sym.BatchNorm(conv(data, "conv", 8, no_bias=True), name="bn", fix_gamma=fix_gamma)
    graph = graph_of(conv(mx.sym.Activation(bn, act_type="tanh"), "next", 3), seed=3)
    check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})


def test_constants_entering_zero_padding_are_carried_by_one_channel():
    """A 3x3 conv with padding 1 reads the zeroed channels (beta != 0, so non-zero constants):
    all but one go; the one left carries the others' constants into the padding."""
    data = mx.sym.Variable("data")
    bn = mx.sym.BatchNorm(conv(data, "conv", 12), name="bn", fix_gamma=False)
    graph = graph_of(conv(mx.sym.relu(bn), "next", 4, 3), shape=(1, 4, 7, 7))
    pruned = graph.copy()
    weight = np.array(pruned.params["conv_weight"])
    weight[:6] = 0
    pruned.set_param("conv_weight", weight)
    pruned.set_param("bn_beta", np.full(12, 2.0, np.float32))   # relu(constant) > 0
    smaller, report = drop_channels(pruned)
    assert smaller.node("conv").outputs[0].shape[1] == 7
    assert "carries the constants" in report.format()
    inputs = {"data": seeded_input((1, 4, 7, 7))}
    assert_same_outputs(run_mxnet(pruned, inputs), run_mxnet(smaller, inputs), TOLERANCE,
                        "carrier")


def test_grouped_convolutions_lose_equally_many_channels_per_group():
    data = mx.sym.Variable("data")
    source = mx.sym.relu(conv(data, "source", 8))
    out = conv(source, "grouped", 4, num_group=2)
    graph = graph_of(out)
    pruned = graph.copy()
    weight = np.array(pruned.params["source_weight"])
    weight[[0, 1, 2, 5]] = 0      # three in the first group of 4, one in the second
    pruned.set_param("source_weight", weight)
    smaller, report = drop_channels(pruned)
    assert smaller.node("source").outputs[0].shape[1] == 6   # one per group
    assert smaller.node("grouped").attrs["num_filter"] == 4
    assert "lose equally many" in report.format()
    inputs = {"data": seeded_input((1, 4, 6, 6))}
    assert_same_outputs(run_mxnet(pruned, inputs), run_mxnet(smaller, inputs), TOLERANCE, "grouped")


def test_a_per_channel_scale_parameter_is_sliced_with_the_channels():
    data = mx.sym.Variable("data")
    scale = mx.sym.Variable("scale", shape=(6, 1, 1))
    scaled = mx.sym.broadcast_mul(mx.sym.relu(conv(data, "conv", 6)), scale)
    graph = graph_of(conv(scaled, "next", 2))
    smaller, _ = check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})
    assert smaller.params["scale"].shape[0] == smaller.node("conv").outputs[0].shape[1] < 6


@pytest.mark.parametrize("gate_first", [True, False])
def test_a_one_channel_gate_broadcast_over_the_channels_in_either_operand_order(gate_first):
    """A spatial attention map (N, 1, H, W) times the features (N, C, H, W): the gate's own
    group is pinned (it broadcasts), the features' channels drop. With the gate as the first
    operand the op was filed under the gate's group and the drop failed with a KeyError."""
    data = mx.sym.Variable("data")
    # without a bias a zeroed feature channel is 0, and 0 times the gate is a constant
    features = mx.sym.relu(conv(data, "features", 6, no_bias=True))
    gate = mx.sym.sigmoid(conv(data, "gate", 1))
    operands = (gate, features) if gate_first else (features, gate)
    graph = graph_of(conv(mx.sym.broadcast_mul(*operands), "next", 2))
    smaller, _ = check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})
    assert smaller.node("features").outputs[0].shape[1] < 6
    assert smaller.node("gate").outputs[0].shape[1] == 1


def test_instance_norm_squeeze_and_axis_moves_after_the_channels_are_followed():
    """InstanceNorm turns a constant channel into its beta; squeeze, expand_dims and a transpose
    of the spatial axes keep the channel axis where it is."""
    data = mx.sym.Variable("data")
    features = mx.sym.InstanceNorm(conv(data, "conv", 6), name="norm")
    moved = mx.sym.transpose(mx.sym.relu(features), axes=(0, 1, 3, 2))
    pooled = mx.sym.squeeze(mx.sym.mean(moved, axis=(2, 3), keepdims=True), axis=(2, 3))
    out = mx.sym.FullyConnected(mx.sym.expand_dims(pooled, axis=2), num_hidden=3, name="fc")
    graph = graph_of(out)
    assert group_with(graph, "conv").droppable
    smaller, _ = check_drop(graph, {"data": seeded_input((1, 4, 6, 6))})
    assert smaller.params["norm_gamma"].shape[0] < 6


def test_no_layer_loses_all_its_channels():
    data = mx.sym.Variable("data")
    graph = graph_of(conv(mx.sym.relu(conv(data, "conv", 4)), "next", 2))
    pruned = graph.copy()
    pruned.set_param("conv_weight", np.zeros_like(pruned.params["conv_weight"]))
    smaller, report = drop_channels(pruned)
    assert smaller.node("conv").outputs[0].shape[1] == 1
    assert "never loses all its channels" in report.format()


# --- the apply_changes edit: validated and rolled back like any rewrite ---------------------------

HALF_DROP_RULE = """
[rule.half_drop]
description = "conv(x, W[:2]) == conv(x, W)[:2] (deliberately wrong: its BatchNorm is not cut)"
phase = "drop_channels"
changes_shapes = true
anchor = "conv"
params = ["weight"]
compute = ["changes = first_two_filters_only(conv, weight)"]
edits = [{ apply_changes = "changes" }]

[rule.half_drop.pattern]
conv = { op = "Convolution", inputs = ["x", "weight", "..."], attrs = { num_filter = 4 } }
"""


def test_a_drop_that_does_not_hold_is_rolled_back(tmp_path):
    """A rule whose computed changes cut a conv but not the BatchNorm after it: the BatchNorm's
    statistics no longer fit its input (MXNet's own inference overwrites a BatchNorm's
    parameter shapes instead of checking them: the engine compares them), so the engine rolls
    every change back and says why."""
    from graphopt.rewrite import register_function
    from graphopt.rewrite.edits import GraphChanges

    @register_function(returns="changes")
    def first_two_filters_only(conv_ref, weight_ref):
        """A test's deliberately incomplete channel drop."""
        return GraphChanges(params={weight_ref.name: weight_ref.value[:2]},
                            attrs=[(conv_ref.name, "num_filter", 2)])

    (tmp_path / "half.toml").write_text(HALF_DROP_RULE)
    data = mx.sym.Variable("data")
    bn = mx.sym.BatchNorm(conv(data, "conv", 4, no_bias=True), name="bn")
    graph = graph_of(conv(bn, "next", 2))
    smaller, report = graphopt.rewrite(graph, rules=["half_drop"], rules_dirs=[tmp_path])
    rejected = [a for a in report.attempts if a.outcome == "rejected"]
    assert rejected and "bn" in rejected[0].detail
    assert smaller.params["conv_weight"].shape[0] == 4
    assert smaller.node("conv").attrs["num_filter"] == 4
    inputs = {"data": seeded_input((1, 4, 6, 6))}
    assert_same_outputs(run_mxnet(graph, inputs), run_mxnet(smaller, inputs), 0.0, "rolled back")


# --- the model zoo ---------------------------------------------------------------------------

# small inputs where the architecture allows (a final pooling window of 7 or 13 needs 224)
ZOO = {"resnet18_v1": 64, "resnet18_v2": 64, "resnet50_v1": 64, "mobilenet1.0": 64,
       "mobilenetv2_1.0": 64, "densenet121": 224, "squeezenet1.1": 224, "vgg11_bn": 224,
       "inceptionv3": 299}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_model_zoo_drops_exactly(name, tmp_path):
    symbol, params, _ = export_zoo_model(name)
    shape = (1, 3, ZOO[name], ZOO[name])
    graph = graphopt.load(symbol, params, inputs={"data": shape})
    check_drop(graph, {"data": seeded_input(shape)}, tmp_path if name == "resnet18_v1" else None,
               onnx=name in ("resnet18_v1", "mobilenetv2_1.0", "squeezenet1.1"))
