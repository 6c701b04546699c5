"""The engine's promises: the input graph is never changed, a rewrite that breaks the graph is
rolled back and reported, ``check="numeric"`` undoes a phase that moves the outputs, a rule set
that never settles is stopped with the rules named, and ``--explain`` says why rules did not fire.

The faulty rules here are user rules (a folder passed as ``rules_dirs``) with deliberately wrong
math registered for the test: what a user with a bug in their rule would see.
"""

from __future__ import annotations

import json
import re
import textwrap

import mxnet as mx
import numpy as np
import pytest

import graphopt
from conftest import relative_error
from fixtures import build, zoo
from graphopt.errors import RuleError
from graphopt.mxnet_io import graph_to_json, save_symbol
from graphopt.rewrite import (FUNCTIONS, format_report, load_rule_file, register_function,
                              rewrite)
from graphopt.rewrite.numeric import run_graph


def snapshot(graph: graphopt.Graph) -> tuple:
    return (graph_to_json(graph), {k: v.tobytes() for k, v in graph.params.items()},
            [(n.name, n.rule, n.origin, [(t.shape, t.dtype) for t in n.outputs]) for n in graph.nodes()])


@pytest.fixture
def resnet() -> graphopt.Graph:
    """The CIFAR ResNet-20 fixture: 21 conv+BatchNorm pairs, residual adds, a dense head."""
    symbol_path, params_path = build.fixture_path("resnet_bn_random")
    return graphopt.load(symbol_path, params_path, inputs={"data": (1, 3, 32, 32)})


@pytest.fixture
def faulty_functions():
    """Tensor math with bugs a rule author could make; unregistered after the test."""
    @register_function(returns="weight")
    def drop_last_filter(weight):
        return weight.value[:-1]

    @register_function(returns="weight")
    def scale_by_one_percent(weight):
        return weight.value * np.float32(1.01)

    yield
    del FUNCTIONS["drop_last_filter"], FUNCTIONS["scale_by_one_percent"]


def rule_file(tmp_path, name: str, function: str):
    """A BatchNorm 'fold' that forgets the BatchNorm's arithmetic and applies ``function``."""
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(f'''
        [rule.{name}]
        description = "BatchNorm(Convolution(x, W)) == Convolution(x, {function}(W)) (deliberately wrong)"
        phase = "fold"
        tolerance = 1e-5
        anchor = "bn"
        params = ["weight"]
        compute = ["new_weight = {function}(weight)"]
        edits = [
            {{ set_input = "conv", slot = "weight", to = "new_weight" }},
            {{ replace_uses = "bn", by = "conv" }},
        ]

        [rule.{name}.pattern]
        bn = {{ op = "BatchNorm", inputs = ["conv", "..."] }}
        conv = {{ op = "Convolution", inputs = ["x", "weight", "bias?"] }}
    '''))
    return load_rule_file(path)


def test_the_input_graph_is_never_changed(resnet):
    before = snapshot(resnet)
    optimized, report = rewrite(resnet)
    assert report.applied("fold_batchnorm_into_convolution") == 21
    assert snapshot(resnet) == before
    assert len(optimized) < len(resnet)


def test_a_rewrite_that_breaks_shapes_is_rolled_back(resnet, tmp_path, faulty_functions):
    """The rule removes a filter from every conv weight: MXNet cannot infer the conv any more
    (or its output would shrink), so each rewrite is undone and the graph is left as it was."""
    before = snapshot(resnet)
    copy = resnet.copy()
    optimized, report = rewrite(copy, rules=rule_file(tmp_path, "shrink_weights", "drop_last_filter"))
    assert snapshot(optimized) == snapshot(copy) == before
    outcomes = {a.outcome for a in report.attempts}
    assert outcomes == {"rejected"}
    assert report.applied() == 0
    reasons = [a.detail for a in report.attempts]
    assert all("shape inference of" in r or "would change its output" in r for r in reasons), reasons
    assert "rejected by validation" in format_report(report, explain=True)


def test_numeric_check_rolls_back_a_phase_that_moves_the_outputs(resnet, tmp_path, faulty_functions):
    """Scaling weights by 1.01 keeps every shape, so only running the model catches it."""
    rules = rule_file(tmp_path, "nudge_weights", "scale_by_one_percent")
    unchecked, report = rewrite(resnet, rules=rules)
    assert report.applied() == 21  # without the check the wrong rewrite is kept

    checked, report = rewrite(resnet, rules=rules, check="numeric")
    (check,) = report.checks
    assert not check.kept and check.relative_error > 1e-2 and check.tolerance == 1e-5
    assert {a.outcome for a in report.attempts} == {"rolled_back"}
    inputs = {"data": zoo.seeded_input((1, 3, 32, 32))}
    assert relative_error(run_graph(resnet, inputs)[0], run_graph(checked, inputs)[0]) == 0.0
    assert "ROLLED BACK" in format_report(report)


def test_numeric_check_keeps_the_default_rules(resnet):
    optimized, report = rewrite(resnet, check="numeric")
    assert [c.phase for c in report.checks] == ["fold"]  # cleanup found nothing to do
    assert report.checks[0].kept and report.checks[0].relative_error < 1e-5
    assert report.applied("fold_batchnorm_into_convolution") == 21


def test_a_rule_that_keeps_firing_is_stopped_and_named(resnet, tmp_path):
    path = tmp_path / "loop.toml"
    path.write_text(textwrap.dedent('''
        [rule.relu_forever]
        description = "relu(x) == relu(x), rewritten again and again"
        phase = "cleanup"
        anchor = "act"
        edits = [{ set_attr = "act", attrs = { act_type = "relu" } }]

        [rule.relu_forever.pattern]
        act = { op = "Activation", inputs = ["x"] }
    '''))
    with pytest.raises(RuleError, match="does not reach a fixed point.*relu_forever") as error:
        rewrite(resnet, rules=load_rule_file(path))
    assert error.value.rule == "relu_forever"


def test_explain_says_per_rule_how_often_it_fired_and_why_not_elsewhere(tmp_path):
    """A conv whose weight is shared, and a BatchNorm after a Concat."""
    data = mx.sym.Variable("data")
    weight = mx.sym.Variable("shared_weight")
    conv3 = mx.sym.Convolution(data, weight, kernel=(1, 1), num_filter=4, no_bias=True, name="conv3")
    bn3 = mx.sym.BatchNorm(conv3, fix_gamma=False, name="bn3")
    conv7 = mx.sym.Convolution(bn3, weight, kernel=(1, 1), num_filter=4, no_bias=True, name="conv7")
    cat = mx.sym.Concat(conv7, data, dim=1, name="cat")
    head = mx.sym.BatchNorm(cat, fix_gamma=False, name="bn_after_cat")
    conv9 = mx.sym.Convolution(head, kernel=(1, 1), num_filter=2, name="conv9")
    out = mx.sym.BatchNorm(conv9, fix_gamma=False, name="bn9")
    rng = np.random.RandomState(0)
    files = save_symbol(out, tmp_path / "m", {"data": (1, 4, 5, 5)},
                        lambda _kind, _name, shape: rng.uniform(0.5, 1.5, shape).astype(np.float32))
    graph = graphopt.load(*files, inputs={"data": (1, 4, 5, 5)})

    _, report = rewrite(graph)
    text = format_report(report, explain=True)
    assert re.search(r"fold_batchnorm_into_convolution +fired +1 ", text)
    assert "bn3: guard param_not_shared failed: shared_weight is also used by conv7" in text
    assert ("bn_after_cat: pattern mismatch at bn slot 0 (data): expected Convolution, "
            "found Concat 'cat'") in text
    assert "bn9" not in text  # it fired there: nothing to explain

    as_json = json.loads(json.dumps(report.to_dict()))
    fold = next(r for r in as_json["rules"] if r["name"] == "fold_batchnorm_into_convolution")
    assert fold["fired"] == 1 and as_json["ops_before"]["BatchNorm"] == 3
    assert {"rule": "fold_batchnorm_into_convolution", "anchor": "bn9", "op": "BatchNorm",
            "phase": "fold", "outcome": "applied", "detail": ""} in as_json["attempts"]


def test_a_rewrite_that_would_make_a_cycle_is_rejected(resnet, tmp_path):
    """Wiring a conv's input to its own consumer closes a loop: the index of node order spots it."""
    path = tmp_path / "cycle.toml"
    path.write_text(textwrap.dedent('''
        [rule.feed_back]
        description = "relu(conv(x)) -> conv reads relu (deliberately cyclic)"
        phase = "cleanup"
        anchor = "act"
        edits = [{ set_input = "conv", slot = "data", to = "act" }]

        [rule.feed_back.pattern]
        act = { op = "Activation", inputs = ["conv"] }
        conv = { op = "Convolution", inputs = ["x", "..."] }
    '''))
    before = snapshot(resnet)
    optimized, report = rewrite(resnet, rules=load_rule_file(path))
    assert report.applied() == 0
    assert all("cycle" in a.detail for a in report.attempts if a.outcome == "rejected")
    assert snapshot(optimized) == before


def test_the_edit_vocabulary_can_insert_quantize_dequantize(tmp_path):
    """What the quantization work will write: int8 quantize/dequantize in front of every dense
    layer, with ``q:1``/``q:2`` naming the quantize node's min/max outputs, and a guard that
    keeps the rule from quantizing its own output again."""
    path = tmp_path / "qdq.toml"
    path.write_text(textwrap.dedent('''
        [rule.quantize_dense_input]
        description = "FullyConnected(x, W) == FullyConnected(dequantize(quantize_int8(x)), W) up to int8 rounding"
        phase = "lower"
        tolerance = 0.05
        anchor = "dense"
        guards = ['op_is_not(x, "_contrib_dequantize")']
        edits = [
            { insert_on_edge = "q", tensor = "x", op = "_contrib_quantize_v2", attrs = { min_calib_range = -1.0, max_calib_range = 1.0 } },
            { insert_on_edge = "dq", tensor = "q", op = "_contrib_dequantize", extra_inputs = ["q:1", "q:2"] },
        ]

        [rule.quantize_dense_input.pattern]
        dense = { op = "FullyConnected", inputs = ["x", "..."] }
    '''))
    data = mx.sym.Variable("data")
    hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=16, name="fc1"),
                               act_type="tanh", name="tanh")
    out = mx.sym.FullyConnected(hidden, num_hidden=4, name="fc2")
    rng = np.random.RandomState(0)
    files = save_symbol(out, tmp_path / "mlp", {"data": (2, 8)},
                        lambda _kind, _name, shape: rng.normal(0, 0.5, shape).astype(np.float32))
    graph = graphopt.load(*files, inputs={"data": (2, 8)})

    quantized, report = rewrite(graph, rules=load_rule_file(path), check="numeric")
    assert report.applied() == 2 and report.checks[0].kept
    assert 0 < report.checks[0].relative_error < 0.05  # int8 rounding
    ops = [n.op for n in quantized.nodes() if not n.is_variable]
    assert ops.count("_contrib_quantize_v2") == ops.count("_contrib_dequantize") == 2
    dequantize = quantized.node(quantized.input_of("fc2", 0).node)
    assert dequantize.op == "_contrib_dequantize" and dequantize.rule == "quantize_dense_input"
    assert quantized.tensor_type(quantized.inputs_of(dequantize.name)[0]).dtype == "int8"


def test_rewrite_needs_input_shapes_and_says_so():
    """A model loaded without input shapes cannot be validated rewrite by rewrite."""
    symbol_path, params_path = build.fixture_path("resnet_digits")
    graph = graphopt.load(symbol_path, params_path)
    with pytest.raises(graphopt.ShapeError, match="--input"):
        graphopt.rewrite(graph)
