"""The built-in rules on models they were not written for: other batch sizes, shapes MXNet
cannot infer, other dtypes, outputs that are read as graph outputs.

A model is exported at one batch size and run at others. A rewrite justified by the loaded
shapes only must not change what the model computes at another batch: each story runs the
original and the rewritten graph in MXNet at the loaded batch and at another one.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

import graphopt
from conftest import relative_error
from graphopt.mxnet_io import graph_to_json, save_symbol
from graphopt.rewrite import format_report, rewrite
from graphopt.runtime import MXNetModel

TOLERANCE = 1e-5  # the fold rules' own tolerance (rules/batchnorm.toml)


def export_and_load(symbol: mx.sym.Symbol, tmp_path, dtype: str = "float32",
                    **shapes) -> graphopt.Graph:
    """Save ``symbol`` with seeded parameters (BatchNorm variances and gammas in [0.5, 1.5],
    so that a fold that ignores them shows) and load it as a user would."""
    rng = np.random.RandomState(0)

    def value(kind: str, name: str, shape: tuple) -> np.ndarray:
        low = 0.5 if name.endswith(("var", "gamma")) else -0.5
        # MXNet's BatchNorm keeps float32 statistics for float16 data
        stored = "float32" if dtype == "float16" and (kind == "aux" or "gamma" in name
                                                      or "beta" in name) else dtype
        return rng.uniform(low, low + 1, shape).astype(stored)
    symbol_path, params_path = save_symbol(symbol, tmp_path / "model", shapes, value)
    return graphopt.load(symbol_path, params_path, inputs=shapes,
                         dtypes={name: dtype for name in shapes})


def seeded(dtype: str = "float32", seed: int = 0, **shapes) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {name: rng.uniform(-1, 1, shape).astype(dtype) for name, shape in shapes.items()}


def same_outputs(before: graphopt.Graph, after: graphopt.Graph, inputs, fuse: bool = True,
                 compared: slice = slice(None)) -> float:
    """The worst relative error over the ``compared`` outputs; all shapes must agree first."""
    expected = MXNetModel.from_graph(before).forward(inputs, fuse=fuse)
    actual = MXNetModel.from_graph(after).forward(inputs, fuse=fuse)
    assert [a.shape for a in expected] == [b.shape for b in actual]
    return max(relative_error(a, b) for a, b in zip(expected[compared], actual[compared]))


def count(graph: graphopt.Graph, op: str) -> int:
    return sum(1 for node in graph.op_nodes() if node.op == op)


def snapshot(graph: graphopt.Graph) -> tuple:
    return (graph_to_json(graph), {k: (v.dtype, v.tobytes()) for k, v in graph.params.items()},
            [(n.name, dict(n.attrs), [(t.shape, t.dtype) for t in n.outputs]) for n in graph.nodes()])


# --- Reshape at other batch sizes ----------------------------------------------------------------

DATA = mx.sym.Variable("data")


@pytest.mark.parametrize("codes, loaded, other, removed", [
    # (6, -1) keeps a (6, 4) tensor, but makes batch 3's (3, 4) into (6, 2)
    ({"shape": (6, -1)}, (6, 4), (3, 4), False),
    ({"shape": (6, -1), "reverse": True}, (6, 4), (3, 4), False),
    ({"shape": (4, -1)}, (4, 2), (3, 2), False),
    # these follow the batch: removed
    ({"shape": (-1, 4)}, (6, 4), (3, 4), True),
    ({"shape": (0, -1)}, (2, 4), (3, 4), True),
    ({"shape": (-2,)}, (2, 3, 4), (5, 3, 4), True),
    ({"shape": (0, 0), "reverse": True}, (2, 4), (3, 4), True),
])
def test_an_identity_reshape_is_removed_only_if_it_holds_at_every_batch(codes, loaded, other,
                                                                        removed, tmp_path):
    symbol = mx.sym.relu(mx.sym.reshape(DATA, name="r", **codes), name="act")
    graph = export_and_load(symbol, tmp_path, data=loaded)
    optimized, report = rewrite(graph)
    assert count(optimized, "Reshape") == (0 if removed else 1), format_report(report, explain=True)
    assert same_outputs(graph, optimized, seeded(data=loaded)) == 0.0
    assert same_outputs(graph, optimized, seeded(data=other)) == 0.0
    if not removed:
        assert "guard reshape_is_identity failed: r keeps the shape" in \
            format_report(report, explain=True)


def test_a_reshape_chain_that_ends_as_the_identity_at_the_loaded_batch_only_stays(tmp_path):
    """(2, -1) then (0, 3, -1) of a (2, 3, 4) tensor merge into one Reshape (2, 3, -1), which
    gives (2, 3, 4) back, but makes batch 3's (3, 3, 4) into (2, 3, 6) as the chain does: it is
    not dropped."""
    inner = mx.sym.reshape(DATA, shape=(2, -1), name="inner")
    symbol = mx.sym.reshape(inner, shape=(0, 3, -1), name="outer")
    graph = export_and_load(symbol, tmp_path, data=(2, 3, 4))
    optimized, report = rewrite(graph)
    assert report.applied("merge_reshape_chain") == 1
    assert count(optimized, "Reshape") == 1, format_report(report, explain=True)
    for shape in ((2, 3, 4), (3, 3, 4)):
        assert same_outputs(graph, optimized, seeded(data=shape)) == 0.0


def test_a_gluon_reshape_chain_still_runs_at_another_batch(tmp_path):
    class Reshapes(mx.gluon.nn.HybridBlock):
        def hybrid_forward(self, F, x):
            return F.reshape(F.reshape(x, (-1, 4, 3)), (0, -1)).reshape((-1, 12)).reshape((0, 0))

    block = Reshapes()
    block.initialize()
    graph = graphopt.from_block(block, inputs={"data": (2, 4, 3)})
    optimized, _ = rewrite(graph)
    assert count(optimized, "Reshape") < count(graph, "Reshape")
    for shape in ((2, 4, 3), (5, 4, 3)):
        assert same_outputs(graph, optimized, seeded(data=shape)) == 0.0


def test_reshapes_of_a_while_loop_output_are_kept(tmp_path):
    """MXNet cannot infer the shapes after a _while_loop: an unknown shape is no proof that a
    Reshape changes nothing (the rewrite removed all three and changed the output shapes)."""
    def keep_going(i, state):
        return i < 3

    def step(i, state):
        return (state * 2,), (i + 1, state + 1)

    outputs, states = mx.sym.contrib.while_loop(keep_going, step, [mx.sym.zeros((1,)), DATA],
                                                max_iterations=4)
    symbol = mx.sym.Group([mx.sym.reshape(states[1], shape=(-1, 3), name="r"),
                           mx.sym.Flatten(mx.sym.reshape(states[1], shape=(0, 3, 2), name="r2"),
                                          name="flat"),
                           mx.sym.reshape(outputs[0], shape=(0, -1), name="r3")])
    graph = export_and_load(symbol, tmp_path, data=(2, 6))
    assert graph.node("r").shape is None  # the premise: MXNet does not know it
    optimized, report = rewrite(graph)
    assert count(optimized, "Reshape") == 3 and count(optimized, "_while_loop") == 1
    # the loop stops after 3 of its 4 iterations: the last stacked output is left uninitialised
    assert same_outputs(graph, optimized, seeded(data=(2, 6)), compared=slice(0, 2)) == 0.0
    assert "r: guard reshape_is_identity failed: the shape of r's output is unknown" in \
        format_report(report, explain=True)


def test_a_foreach_body_is_left_alone_and_the_graph_around_it_is_rewritten(tmp_path):
    """The BatchNorm before a _foreach folds; the body's own BatchNorm and Dropout stay as MXNet
    wrote them (the rules see the main graph only), and the saved model runs."""
    conv = mx.sym.Convolution(DATA, kernel=(1,), num_filter=4, name="conv")
    steps = mx.sym.transpose(mx.sym.BatchNorm(conv, fix_gamma=False, name="bn"), axes=(2, 0, 1))

    def body(x, states):
        y = mx.sym.BatchNorm(mx.sym.FullyConnected(x, num_hidden=4, name="inner_fc"),
                             fix_gamma=False, name="inner_bn")
        y = mx.sym.Dropout(y, p=0.5, name="inner_drop")
        return y, [states[0] + y]

    outputs, states = mx.sym.contrib.foreach(body, steps, [mx.sym.zeros((2, 4))])
    symbol = mx.sym.Group([mx.sym.BlockGrad(outputs, name="stop"), states[0]])
    graph = export_and_load(symbol, tmp_path, data=(2, 3, 5))
    (loop,) = graph.op_nodes("_foreach")
    optimized, _ = rewrite(graph)
    assert count(optimized, "BatchNorm") == count(optimized, "BlockGrad") == 0
    assert optimized.node(loop.name).subgraphs == loop.subgraphs
    assert same_outputs(graph, optimized, seeded(data=(2, 3, 5))) <= TOLERANCE
    saved = graphopt.save_mxnet(optimized, tmp_path / "out" / "model")
    reloaded = graphopt.load(*saved, inputs={"data": (2, 3, 5)})
    assert same_outputs(graph, reloaded, seeded(data=(2, 3, 5))) <= TOLERANCE


# --- BatchNorm folding, in general ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_a_fold_keeps_the_dtype_of_the_weights(dtype, tmp_path):
    data = mx.sym.Variable("data", dtype=dtype)
    conv = mx.sym.Convolution(data, kernel=(3, 3), num_filter=4, no_bias=True, name="conv")
    symbol = mx.sym.BatchNorm(conv, fix_gamma=False, name="bn")
    graph = export_and_load(symbol, tmp_path, dtype=dtype, data=(2, 3, 6, 6))
    optimized, report = rewrite(graph)
    assert report.applied("fold_batchnorm_into_convolution") == 1
    assert {optimized.param(name).dtype for name in ("conv_weight", "conv_bias")} == {np.dtype(dtype)}
    assert optimized.node("conv").dtype == dtype
    if dtype == "float64":  # MXNet's CPU has no float16 convolution to run
        assert same_outputs(graph, optimized, seeded(dtype, data=(2, 3, 6, 6))) < 1e-12


def test_a_chain_of_two_batchnorms_folds_into_the_conv(tmp_path):
    conv = mx.sym.Convolution(DATA, kernel=(3, 3), num_filter=4, name="conv")
    first = mx.sym.BatchNorm(conv, fix_gamma=False, name="bn1")
    symbol = mx.sym.BatchNorm(first, fix_gamma=True, eps=0.1, name="bn2")
    graph = export_and_load(symbol, tmp_path, data=(2, 3, 6, 6))
    optimized, report = rewrite(graph)
    assert count(optimized, "BatchNorm") == 0 and report.applied() == 2
    assert optimized.output_names == graph.output_names == ["bn2_output"]
    for shape in ((2, 3, 6, 6), (3, 3, 6, 6)):
        assert same_outputs(graph, optimized, seeded(data=shape)) <= TOLERANCE


def test_graph_outputs_keep_their_names_and_order(tmp_path):
    """A folded BatchNorm, an identity and a stop_gradient as graph outputs, one of them of a
    graph input: the rewritten graph's outputs are the same tensors, in order, under the same
    names."""
    conv = mx.sym.Convolution(DATA, kernel=(3, 3), num_filter=4, name="conv")
    bn = mx.sym.BatchNorm(conv, fix_gamma=False, name="bn")
    symbol = mx.sym.Group([mx.sym.relu(bn, name="relu"), mx.sym.identity(bn, name="same"), bn,
                           mx.sym.BlockGrad(DATA, name="stop")])
    graph = export_and_load(symbol, tmp_path, data=(2, 3, 6, 6))
    optimized, report = rewrite(graph)
    assert count(optimized, "BatchNorm") == count(optimized, "_copy") == 0
    assert count(optimized, "BlockGrad") == 0
    assert optimized.output_names == graph.output_names == \
        ["relu_output", "same_output", "bn_output", "stop_output"]
    assert same_outputs(graph, optimized, seeded(data=(2, 3, 6, 6))) <= TOLERANCE
    # saved as MXNet, the outputs keep those names too: the conv that absorbed "bn" takes the
    # first name asked of it, and the second name of that tensor and "stop" (now a graph
    # input) come from a _copy of that name
    symbol_path, _ = graphopt.save_mxnet(optimized, tmp_path / "optimized")
    assert mx.sym.load(str(symbol_path)).list_outputs() == graph.output_names
    reloaded = graphopt.load(symbol_path, tmp_path / "optimized-0000.params",
                             inputs={"data": (2, 3, 6, 6)})
    assert same_outputs(graph, reloaded, seeded(data=(2, 3, 6, 6))) <= TOLERANCE


def test_what_blocks_a_fold_is_explained(tmp_path):
    """Each guard of the fold rules that refuses says why, under --explain."""
    conv_read_twice = mx.sym.Convolution(DATA, kernel=(1, 1), num_filter=3, name="twice")
    conv_mean_var = mx.sym.Convolution(DATA, kernel=(1, 1), num_filter=3, name="conv_mv")
    conv_axis = mx.sym.Convolution(DATA, kernel=(1, 1), num_filter=3, name="conv_axis")
    symbol = mx.sym.Group([
        mx.sym.BatchNorm(conv_read_twice, fix_gamma=False, name="bn_twice") + conv_read_twice,
        mx.sym.BatchNorm(conv_mean_var, fix_gamma=False, output_mean_var=True, name="bn_mv")[0],
        mx.sym.BatchNorm(conv_axis, fix_gamma=False, axis=-1, name="bn_axis"),
        mx.sym.BatchNorm(DATA, fix_gamma=False, name="bn_input"),
    ])
    graph = export_and_load(symbol, tmp_path, data=(2, 3, 4, 4))
    optimized, report = rewrite(graph)
    assert count(optimized, "BatchNorm") == 4
    # unfused: MXNet's oneDNN fusion of a conv with a BatchNorm over axis 3 fails (or corrupts
    # memory) in the original model already
    assert same_outputs(graph, optimized, seeded(data=(2, 3, 4, 4)), fuse=False) == 0.0
    explained = format_report(report, explain=True)
    for line in ("bn_twice: guard single_consumer failed: twice's output is also read by",
                 "bn_mv: guard batchnorm_on_channel_axis failed: bn_mv also outputs its mean and "
                 "variance",
                 "bn_axis: guard batchnorm_on_channel_axis failed: bn_axis normalises axis 3, but "
                 "conv_axis's output channels are on axis 1",
                 "bn_input: pattern mismatch at bn slot 0 (data): expected Convolution, found "
                 "input variable 'data'"):
        assert line in explained, explained


# --- cleanup -------------------------------------------------------------------------------------

def test_dropout_in_always_mode_is_kept_and_others_go(tmp_path):
    """mode='always' drops at inference too (MXNet's Dropout), so it is no no-op."""
    dense = mx.sym.FullyConnected(DATA, num_hidden=6, name="fc")
    kept = mx.sym.Dropout(dense, p=0.5, mode="always", name="always")
    gone = mx.sym.Dropout(kept, p=0.5, axes=(1,), name="per_axis")
    graph = export_and_load(mx.sym.Group([gone, mx.sym.Dropout(dense, name="plain")]), tmp_path,
                            data=(2, 5))
    optimized, report = rewrite(graph)
    assert [node.name for node in optimized.op_nodes("Dropout")] == ["always"]
    assert optimized.output_names == graph.output_names
    assert "always: pattern mismatch at dropout (always): attribute mode is 'always'" in \
        format_report(report, explain=True)


def test_the_input_graph_is_left_as_it_was(tmp_path):
    """Float64 weights folded, reshapes checked at another batch (which infers a copy of the
    graph), BatchNorms lowered, the numeric check run: the graph given is not touched."""
    data = mx.sym.Variable("data", dtype="float64")
    conv = mx.sym.Convolution(data, kernel=(3, 3), num_filter=4, name="conv")
    folded = mx.sym.BatchNorm(conv, fix_gamma=False, name="bn")
    flat = mx.sym.reshape(mx.sym.Flatten(folded, name="flat"), shape=(0, -1), name="same")
    symbol = mx.sym.BatchNorm(mx.sym.reshape(flat, shape=(0, 4, -1), name="back"), name="alone")
    graph = export_and_load(symbol, tmp_path, dtype="float64", data=(2, 3, 6, 6))
    before = snapshot(graph)
    optimized, report = rewrite(graph, phases=["cleanup", "fold", "lower"], check="numeric")
    assert all(check.kept for check in report.checks) and report.applied() >= 3
    assert count(optimized, "BatchNorm") == 0
    assert snapshot(graph) == before
    for shape in ((2, 3, 6, 6), (3, 3, 6, 6)):
        assert same_outputs(graph, optimized, seeded("float64", data=shape)) < 1e-12
