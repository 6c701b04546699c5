"""BatchNorm folding is never silently wrong: the stories behind issue 4's guards.

A user exports a model, runs ``graphopt.rewrite``, and the rewritten model computes what the
original computed. Where folding would be wrong (a shared weight, a conv output read twice, a
BatchNorm over another axis, integer weights) the BatchNorm stays, and ``--explain`` says why.
MXNet's own defaults are the trap (PITFALLS.md, "BatchNorm"): fix_gamma=True ignores the stored
gamma, eps defaults to 1e-3 where Gluon writes 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import graphopt
from conftest import relative_error
from fixtures import build, zoo
from graphopt import Tensor, TensorType
from graphopt.mxnet_io import save_symbol
from graphopt.rewrite import format_report, rewrite
from graphopt.rewrite.numeric import run_graph

TOLERANCE = 1e-5  # issue 4: max abs diff / max abs output


def seeded(shape, seed=0):
    return {"data": zoo.seeded_input(shape, seed)}


def randomise_batchnorms(net: nn.HybridBlock, seed: int = 0, **fixed) -> None:
    """Non-trivial BatchNorm parameters and statistics (identity ones hide every fold bug)."""
    rng = np.random.RandomState(seed)
    for name, param in net.collect_params().items():
        role = name.rsplit("_", 1)[-1]
        if name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, param.shape)
        elif name.endswith("running_mean") or role == "beta":
            value = rng.uniform(-0.5, 0.5, param.shape)
        elif role == "gamma":
            value = rng.uniform(0.5, 1.5, param.shape)
        else:
            continue
        param.set_data(mx.nd.array(fixed.get(role, value) * np.ones(param.shape)))


def gluon_graph(net: nn.HybridBlock, shape, seed=0, **fixed) -> graphopt.Graph:
    net.initialize(mx.init.Normal(0.5))
    net(mx.nd.zeros(shape))
    randomise_batchnorms(net, seed, **fixed)
    return graphopt.from_block(net, inputs={"data": shape})


def assert_same_outputs(before: graphopt.Graph, after: graphopt.Graph, shape) -> float:
    inputs = seeded(shape)
    error = relative_error(run_graph(before, inputs)[0], run_graph(after, inputs)[0])
    assert error <= TOLERANCE, f"relative error {error:.2e}"
    return error


def op_count(graph: graphopt.Graph, op: str) -> int:
    return sum(1 for node in graph.op_nodes() if node.op == op)


# --- the committed fixtures, saved and run the way users run them ------------------------------

@pytest.mark.parametrize("name", build.COMMITTED)
def test_fixture_rewritten_and_saved_gives_the_same_outputs(name, tmp_path):
    symbol_path, params_path = (str(path) for path in build.fixture_path(name))
    shape = tuple(json.loads(Path(symbol_path).with_name(f"{name}.json").read_text())["input_shape"])
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    optimized, report = rewrite(graph)
    saved = graphopt.save_mxnet(optimized, tmp_path / name)

    x = mx.nd.array(zoo.seeded_input(shape))
    original = mx.gluon.SymbolBlock.imports(symbol_path, ["data"], params_path)(x).asnumpy()
    rewritten = mx.gluon.SymbolBlock.imports(str(saved[0]), ["data"], str(saved[1]))(x).asnumpy()
    assert relative_error(original, rewritten) <= TOLERANCE
    assert op_count(optimized, "BatchNorm") == 0, format_report(report, explain=True)


# --- the guards ---------------------------------------------------------------------------------

class SharedWeight(nn.HybridBlock):
    """Two convolutions with one weight (Gluon ``params=``); a BatchNorm after the first."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = nn.Conv2D(4, 3, padding=1, in_channels=4, use_bias=False)
        self.second = nn.Conv2D(4, 3, padding=1, in_channels=4, use_bias=False,
                                params=self.first.params)
        self.bn = nn.BatchNorm(in_channels=4)

    def hybrid_forward(self, F, x):
        return self.second(self.bn(self.first(x)))


def test_a_weight_shared_with_another_conv_is_not_folded():
    """Folding into conv A's weight would also rescale conv B (PyTorch FX #104593)."""
    shape = (1, 4, 6, 6)
    graph = gluon_graph(SharedWeight(), shape)
    optimized, report = rewrite(graph)
    assert op_count(optimized, "BatchNorm") == 1
    assert_same_outputs(graph, optimized, shape)
    (weight,) = [n.name for n in graph.variables("param") if n.name.endswith("weight")]
    (bn,) = [n.name for n in graph.op_nodes("BatchNorm")]
    (second,) = [n.name for n in graph.op_nodes("Convolution")][1:]
    explained = format_report(report, explain=True)
    assert f"{bn}: guard param_not_shared failed: {weight} is also used by {second}" in explained


class ConvReadTwice(nn.HybridBlock):
    """conv -> BatchNorm, and the same conv output -> relu; both summed."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = nn.Conv2D(6, 3, in_channels=3)
        self.bn = nn.BatchNorm(in_channels=6)

    def hybrid_forward(self, F, x):
        y = self.conv(x)
        return self.bn(y) + F.relu(y)


def test_a_conv_output_read_by_another_op_is_not_folded():
    """Folding would change what the relu reads too."""
    shape = (2, 3, 8, 8)
    graph = gluon_graph(ConvReadTwice(), shape)
    optimized, report = rewrite(graph)
    assert op_count(optimized, "BatchNorm") == 1
    assert_same_outputs(graph, optimized, shape)
    reasons = [a.detail for a in report.attempts if a.outcome == "guard"]
    assert any(r.startswith("single_consumer failed:") and "is also read by" in r for r in reasons)


def batchnorm_after_conv(**bn_attrs) -> mx.sym.Symbol:
    conv = mx.sym.Convolution(mx.sym.Variable("data"), kernel=(3, 3), num_filter=8, name="conv")
    return mx.sym.BatchNorm(conv, name="bn", **bn_attrs)


def symbol_graph(symbol: mx.sym.Symbol, shape, tmp_path, **values) -> graphopt.Graph:
    """Export ``symbol`` with seeded parameters (``values`` fixes some) and load it."""
    rng = np.random.RandomState(1)

    def value(_kind: str, name: str, param_shape: tuple) -> np.ndarray:
        drawn = rng.uniform(0.5, 1.5, param_shape)  # drawn even when fixed: the seeds stay put
        return (values.get(name, drawn) * np.ones(param_shape)).astype(np.float32)
    symbol_path, params_path = save_symbol(symbol, tmp_path / "model", {"data": shape}, value)
    return graphopt.load(symbol_path, params_path, inputs={"data": shape})


def test_fix_gamma_true_ignores_a_stored_gamma_of_100(tmp_path):
    """MXNet's default fix_gamma=True uses gamma = 1 whatever is stored; a fold that reads the
    stored gamma (here 100) is off by a factor of about 100."""
    shape = (1, 3, 8, 8)
    graph = symbol_graph(batchnorm_after_conv(), shape, tmp_path, bn_gamma=100.0)
    assert "fix_gamma" not in graph.node("bn").attrs  # the default, not written in the JSON
    optimized, _ = rewrite(graph)
    assert op_count(optimized, "BatchNorm") == 0
    assert_same_outputs(graph, optimized, shape)

    trusting_gamma = graph.copy()  # what a fold that forgets fix_gamma computes
    trusting_gamma.set_attr("bn", "fix_gamma", False)
    inputs = seeded(shape)
    error = relative_error(run_graph(graph, inputs)[0], run_graph(trusting_gamma, inputs)[0])
    assert 50 < error < 200  # "errors of order 100" (issue 4): the test has teeth


def test_eps_defaults_to_1e_3_not_gluons_1e_5(tmp_path):
    """A BatchNorm without eps in its JSON uses MXNet's 1e-3; with variances of 1e-3 assuming
    1e-5 would be off by tens of percent."""
    shape = (1, 3, 8, 8)
    symbol = batchnorm_after_conv(fix_gamma=False)
    graph = symbol_graph(symbol, shape, tmp_path, bn_moving_var=1e-3)
    assert "eps" not in graph.node("bn").attrs
    optimized, _ = rewrite(graph)
    assert op_count(optimized, "BatchNorm") == 0
    assert_same_outputs(graph, optimized, shape)

    gluon_eps = graph.copy()
    gluon_eps.set_attr("bn", "eps", 1e-5)
    inputs = seeded(shape)
    assert relative_error(run_graph(graph, inputs)[0], run_graph(gluon_eps, inputs)[0]) > 0.2

    explicit, _ = rewrite(gluon_eps)  # and an explicit 1e-5 is honoured too
    assert_same_outputs(gluon_eps, explicit, shape)


def test_a_channel_last_conv_is_not_folded(tmp_path):
    """An NHWC convolution keeps its channels on the last axis; BatchNorm axis 1 is not them."""
    conv = mx.sym.Convolution(mx.sym.Variable("data"), kernel=(3, 3), num_filter=8,
                              layout="NHWC", name="conv")
    symbol = mx.sym.BatchNorm(conv, name="bn", axis=3, fix_gamma=False)
    graph = symbol_graph(symbol, (1, 8, 8, 3), tmp_path)  # shapes only: MXNet's CPU has no NHWC conv
    optimized, report = rewrite(graph)
    assert op_count(optimized, "BatchNorm") == 1
    assert "batchnorm_on_channel_axis failed: conv has channel-last layout NHWC" in \
        format_report(report, explain=True)


def test_integer_weights_are_not_folded(tmp_path):
    """A quantized (int8) weight would be rounded by the fold: the float_tensors guard refuses."""
    graph = symbol_graph(batchnorm_after_conv(fix_gamma=False), (1, 3, 8, 8), tmp_path)
    weight = graph.param("conv_weight")
    graph.set_param("conv_weight", np.round(weight * 10).astype(np.int8))
    optimized, report = rewrite(graph)
    assert op_count(optimized, "BatchNorm") == 1
    assert any(a.detail == "float_tensors failed: conv_weight is int8, not a float type"
               for a in report.attempts)


def test_folds_record_the_rule_and_the_original_nodes(tmp_path):
    graph = symbol_graph(batchnorm_after_conv(fix_gamma=False), (1, 3, 8, 8), tmp_path)
    optimized, _ = rewrite(graph)
    conv = optimized.node("conv")
    assert conv.rule == "fold_batchnorm_into_convolution"
    assert set(conv.origin) == {"conv", "bn"}
    assert optimized.outputs == [Tensor("conv", 0)]
    assert optimized.output_names == graph.output_names  # the model's output keeps its name


def test_a_batchnorm_after_concat_stays_unless_lowering_is_asked_for(tmp_path):
    """DenseNet-style: nothing to fold into. Left as BatchNorm by default (faster in MXNet);
    the opt-in phase 'lower' turns it into broadcast_mul + broadcast_add."""
    data = mx.sym.Variable("data")
    left = mx.sym.Convolution(data, kernel=(1, 1), num_filter=3, name="left")
    right = mx.sym.Convolution(data, kernel=(1, 1), num_filter=5, name="right")
    symbol = mx.sym.BatchNorm(mx.sym.Concat(left, right, dim=1, name="cat"), name="bn",
                              fix_gamma=False)
    shape = (2, 4, 6, 6)
    graph = symbol_graph(symbol, shape, tmp_path)
    default, report = rewrite(graph)
    assert op_count(default, "BatchNorm") == 1
    assert "bn: pattern mismatch at bn slot 0 (data): expected Convolution, found Concat 'cat'" in \
        format_report(report, explain=True)

    lowered, _ = rewrite(graph, phases=["cleanup", "fold", "lower"])
    assert op_count(lowered, "BatchNorm") == 0
    assert lowered.param("bn_scale").shape == (1, 8, 1, 1)
    assert_same_outputs(graph, lowered, shape)


# --- the model zoo ------------------------------------------------------------------------------

def float32_noise(graph: graphopt.Graph, inputs) -> float:
    """How far MXNet's float32 run of ``graph`` is from the same graph run in float64."""
    exact = graph.copy()
    for name, value in list(exact.params.items()):
        exact.set_param(name, value.astype(np.float64))
    for node in exact.variables("input"):
        node.outputs[0] = TensorType(node.shape, "float64")
    reference = run_graph(exact, {k: v.astype(np.float64) for k, v in inputs.items()})[0]
    return relative_error(reference, run_graph(graph, inputs)[0])


def has_batchnorm(name: str) -> bool:
    return name.startswith(("resnet", "mobilenet", "densenet", "inception")) or name.endswith("_bn")


FOLDS_EVERY_BATCHNORM = ("resnet", "mobilenet", "vgg")  # resnet*_v1, mobilenet*, vgg*_bn


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.ZOO_NAMES if has_batchnorm(n)])
def test_zoo_model_keeps_its_outputs_after_the_default_rules(name):
    """Within 1e-5 relative of the original, or, for the deep nets whose own float32 run is
    already further than that from exact arithmetic, within twice that noise: a fold cannot be
    closer to the float32 original than the original is to the exact result. Measured with
    these weights (rewritten vs original / original vs float64): resnet152_v1 1.4e-4 / 1.9e-4,
    resnet101_v1 3.4e-5 / 6.4e-5, resnet152_v2 3.5e-5 / 3.9e-5, vgg19_bn 1.5e-5 / 1.65e-5,
    resnet101_v2 1.3e-5 / 1.5e-5; every other net is within 1e-5."""
    symbol_path, params_path, shape = zoo.export_zoo_model(name)
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    optimized, report = rewrite(graph)
    inputs = seeded(shape)
    error = relative_error(run_graph(graph, inputs)[0], run_graph(optimized, inputs)[0])
    if error > TOLERANCE:
        noise = float32_noise(graph, inputs)
        assert error <= 2 * noise, f"relative error {error:.2e}, float32 noise {noise:.2e}"
    if name.startswith(FOLDS_EVERY_BATCHNORM) and not name.endswith("_v2"):
        assert op_count(optimized, "BatchNorm") == 0, format_report(report, explain=True)
    assert report.applied() > 0
