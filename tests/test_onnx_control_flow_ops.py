"""Control flow to ONNX: a user's Gluon block with foreach, while_loop or cond exports to ONNX
(Scan, Loop, If) and onnxruntime computes what MXNet computes.

Each test builds the block, runs MXNet's forward as the reference, loads the block with
:func:`graphopt.from_block` (export, then load, as a user would) and compares onnxruntime at
opset 13 and the default opset, at the export batch size and, where the model follows the batch,
at another one (the export keeps the batch axis dynamic).
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import onnx
import pytest

import graphopt
from graphopt.onnx import DEFAULT_OPSET
from onnx_op_harness import TOLERANCE, assert_close, check, run_onnx

OPSETS = (13, DEFAULT_OPSET)


def mxnet_forward(block: mx.gluon.HybridBlock, inputs: dict[str, np.ndarray]) -> list[mx.nd.NDArray]:
    outputs = block(*[mx.nd.array(value) for value in inputs.values()])
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def export(block: mx.gluon.HybridBlock, inputs: dict[str, np.ndarray]) -> graphopt.Graph:
    block.initialize(mx.init.Xavier())
    block.hybridize()
    return graphopt.from_block(block, inputs={name: value.shape for name, value in inputs.items()})


def assert_matches_mxnet(block: mx.gluon.HybridBlock, graph: graphopt.Graph,
                         cases: list[dict[str, np.ndarray]]) -> dict[int, onnx.ModelProto]:
    """Export at each opset; onnxruntime matches MXNet on every case (other batch sizes too)."""
    models = {}
    for opset in OPSETS:
        model = graphopt.to_onnx(graph, opset=opset)
        onnx.checker.check_model(model, full_check=True)
        for inputs in cases:
            reference = [o.asnumpy() for o in mxnet_forward(block, inputs)]
            assert_close(reference, run_onnx(model, inputs), TOLERANCE,
                         f"opset {opset}, inputs {[v.shape for v in inputs.values()]}")
        models[opset] = model
    return models


def op_types(graph: onnx.GraphProto) -> set[str]:
    return {node.op_type for node in graph.node}


# --- foreach -> Scan ----------------------------------------------------------------------------

class ForeachRNN(mx.gluon.HybridBlock):
    """A recurrent cell stepped with foreach over a batch-major sequence: two states (h and a
    running sum), two outputs per step, free parameters (the cell's weights) read by the body."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.start = mx.gluon.nn.Dense(5, flatten=False, in_units=3)
            self.input_weights = mx.gluon.nn.Dense(5, flatten=False, in_units=3)
            self.recurrent = mx.gluon.nn.Dense(5, flatten=False, in_units=5, use_bias=False)

    def hybrid_forward(self, F, x):
        sequence = F.swapaxes(x, 0, 1)  # foreach steps over axis 0: time-major
        h0 = F.tanh(self.start(F.mean(x, axis=1)))

        def step(x_t, states):
            h, total = states
            h_next = F.tanh(self.input_weights(x_t) + self.recurrent(h))
            return [h_next, total * 0.5], [h_next, total + h_next]

        outputs, (h, total) = F.contrib.foreach(step, sequence, [h0, F.zeros_like(h0)])
        return outputs[0], outputs[1], h, total


def test_foreach_rnn_cell_with_states_and_free_parameters(rng):
    inputs = {"x": rng.uniform(-1, 1, (2, 4, 3)).astype(np.float32)}
    other_batch = {"x": rng.uniform(-1, 1, (3, 4, 3)).astype(np.float32)}
    block = ForeachRNN()
    graph = export(block, inputs)
    models = assert_matches_mxnet(block, graph, [inputs, other_batch])
    model = models[DEFAULT_OPSET]
    assert "Scan" in op_types(model.graph)
    weights = {p.data().shape for p in block.collect_params().values()}
    # the cell's weights stay initializers of the model (read by the body by name)
    assert {tuple(t.dims) for t in model.graph.initializer} >= weights
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_foreach_over_several_sequences_with_a_1d_one(tmp_path, rng):
    """Two data inputs (one 1-D: MXNet gives its step the shape (1,), Scan a scalar), a state,
    a free weight and a per-step output that is the state itself."""
    sequence, scale, state, weight = (mx.sym.var(n) for n in ("sequence", "scale", "state", "w"))

    def step(data, states):
        x_t, scale_t = data
        h = F.tanh(F.broadcast_mul(F.dot(x_t, weight), scale_t) + states[0])
        return [h, scale_t * 2], [h]

    F = mx.sym
    outputs, states = F.contrib.foreach(step, [sequence, scale], [state])
    symbol = F.Group(outputs + states)
    inputs = {"sequence": rng.uniform(-1, 1, (5, 2, 3)).astype(np.float32),
              "scale": rng.uniform(0.5, 2, (5,)).astype(np.float32),
              "state": rng.uniform(-1, 1, (2, 4)).astype(np.float32)}
    params = {"w": rng.uniform(-1, 1, (3, 4)).astype(np.float32)}
    models = check(symbol, tmp_path, inputs, params, opsets=OPSETS, full_check=False)
    assert all("Scan" in op_types(m.graph) for m in models.values())


def test_foreach_of_a_float64_model_with_ops_onnxruntime_runs_in_float32(tmp_path, rng):
    """onnxruntime has no double Softplus or LeakyRelu: inside a Scan body too, they compute in
    float32 between Casts (the model would not load otherwise)."""
    F = mx.sym
    x, s = F.var("x", dtype="float64"), F.var("s", dtype="float64")
    outputs, states = F.contrib.foreach(
        lambda x_t, st: (F.Activation(x_t, act_type="softrelu"),
                         [F.LeakyReLU(st[0] + x_t, slope=0.1)]), x, [s])
    inputs = {"x": rng.uniform(-1, 1, (4, 2, 3)), "s": rng.uniform(-1, 1, (2, 3))}
    models = check(F.Group([outputs] + states), tmp_path, inputs, opsets=OPSETS, full_check=False)
    for model in models.values():
        body = next(n for n in model.graph.node if n.op_type == "Scan").attribute[0].g
        assert "Cast" in op_types(body)


# --- while_loop -> Loop -------------------------------------------------------------------------

MAX_ITERATIONS = 5


class WhileLoopModel(mx.gluon.HybridBlock):
    """Iterate a cell while a counter is below the number of positive entries of the data
    (a data-dependent count, capped by max_iterations): three loop variables, two step outputs."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.start = mx.gluon.nn.Dense(4, flatten=False, in_units=3)
            self.cell = mx.gluon.nn.Dense(4, flatten=False, in_units=4)

    def hybrid_forward(self, F, x):
        limit = F.sum(x > 0)

        def cond(counter, state, total):
            return counter < limit

        def func(counter, state, total):
            state = F.tanh(self.cell(state))
            return [state, counter], [counter + 1, state, total + F.sum(state)]

        loop_vars = [F.zeros((1,)), self.start(x), F.zeros((1,))]
        steps, (counter, state, total) = F.contrib.while_loop(cond, func, loop_vars,
                                                              max_iterations=MAX_ITERATIONS)
        return steps[0], steps[1], counter, state, total


def test_while_loop_with_data_dependent_iteration_count(rng):
    """MXNet writes the step outputs' rows of the executed steps only: the rows after them hold
    whatever the memory held (control_flow.cc, WhileLoopComputeExCPU writes outputs[i].At(step)
    for the steps run); the export writes zeros there. The defined rows and the final loop
    variables match MXNet."""
    x = rng.uniform(-1, 1, (2, 3)).astype(np.float32)
    cases = {"some steps": np.where(np.arange(6).reshape(2, 3) < 2, abs(x), -abs(x)),
             "capped by max_iterations": abs(x) + 0.1,
             "another batch size": np.where(np.arange(9).reshape(3, 3) < 3, 1, -1) *
             rng.uniform(0.1, 1, (3, 3)).astype(np.float32)}
    block = WhileLoopModel()
    graph = export(block, {"x": x})
    for opset in OPSETS:
        model = graphopt.to_onnx(graph, opset=opset)
        onnx.checker.check_model(model, full_check=True)
        assert "Loop" in op_types(model.graph)
        for what, data in cases.items():
            data = data.astype(np.float32)
            reference = mxnet_forward(block, {"x": data})
            got = run_onnx(model, {"x": data})
            executed = int(reference[2].asscalar())
            assert executed == min(int((data > 0).sum()), MAX_ITERATIONS) > 0, what
            finals = [o.asnumpy() for o in reference[2:]]
            assert_close(finals, got[2:], TOLERANCE, f"opset {opset}, {what}: final loop vars")
            for index in (0, 1):
                expected = reference[index].asnumpy()
                assert got[index].shape == expected.shape == (MAX_ITERATIONS, *expected.shape[1:])
                assert_close([expected[:executed]], [got[index][:executed]], TOLERANCE,
                             f"opset {opset}, {what}: step output {index}")
                assert not got[index][executed:].any(), "rows after the last step are zeros"


def test_compare_checks_only_the_rows_a_while_loop_defines(rng):
    """graphopt compare on a while loop that stops before max_iterations: the rows MXNet never
    writes (garbage, different from run to run) are not compared and the report says so; the
    defined rows and everything else are, per layer too."""
    x = np.where(np.arange(6).reshape(2, 3) < 2, 1.0, -1.0).astype(np.float32)  # two steps
    block = WhileLoopModel()
    graph = export(block, {"x": x})
    model = graphopt.to_onnx(graph)
    for _ in range(3):
        report = graphopt.compare(graph, None, model, inputs={"x": x}, per_layer=True)
        assert report.ok and report.first_divergent is None, report.format()
        assert "not compared" in report.outputs[0].note and report.outputs[0].shape[0] == \
            MAX_ITERATIONS
        assert report.unmatched_onnx == []
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    first = broken.graph.output[0].name
    broken.graph.node.append(onnx.helper.make_node("Neg", [first], [first + "_neg"]))
    broken.graph.output[0].name = first + "_neg"  # a defined row now differs
    assert not graphopt.compare(graph, None, broken, inputs={"x": x}).ok


def test_while_loop_that_runs_no_step(rng):
    """Zero steps: MXNet's step outputs then have no shape at all (asnumpy fails), its final
    loop variables are the initial ones; the export gives the same finals and zero rows."""
    block = WhileLoopModel()
    graph = export(block, {"x": rng.uniform(-1, 1, (2, 3)).astype(np.float32)})
    data = -rng.uniform(0.1, 1, (2, 3)).astype(np.float32)  # no positive entry: no step
    model = graphopt.to_onnx(graph)
    reference = mxnet_forward(block, {"x": data})
    got = run_onnx(model, {"x": data})
    assert_close([o.asnumpy() for o in reference[2:]], got[2:], TOLERANCE, "final loop vars")
    assert got[0].shape == (MAX_ITERATIONS, 2, 4) and not got[0].any()
    assert got[1].shape == (MAX_ITERATIONS, 1) and not got[1].any()


# --- cond -> If ---------------------------------------------------------------------------------

class CondModel(mx.gluon.HybridBlock):
    """Two outputs from one of two branches, chosen by the sign of the data's sum; each branch
    reads its own layer's weights."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.then_layer = mx.gluon.nn.Dense(4, flatten=False, in_units=3)
            self.else_layer = mx.gluon.nn.Dense(4, flatten=False, in_units=3)

    def hybrid_forward(self, F, x):
        return F.contrib.cond(F.sum(x) > 0,
                              lambda: [F.relu(self.then_layer(x)), F.sum(x, axis=1)],
                              lambda: [self.else_layer(x) * 0.5, F.max(x, axis=1)])


def test_cond_takes_either_branch_from_the_data(rng):
    x = rng.uniform(0.1, 1, (2, 3)).astype(np.float32)
    cases = [{"x": x}, {"x": -x}, {"x": rng.uniform(0.1, 1, (4, 3)).astype(np.float32)},
             {"x": -rng.uniform(0.1, 1, (4, 3)).astype(np.float32)}]
    block = CondModel()
    graph = export(block, {"x": x})
    models = assert_matches_mxnet(block, graph, cases)
    assert all("If" in op_types(m.graph) for m in models.values())


def test_cond_whose_branches_give_other_shapes_is_refused_with_both_shapes(tmp_path):
    """MXNet runs it ((3,) one way, (2,) the other); an export with the then branch's shape
    would declare a wrong type and break any reshape after it."""
    F = mx.sym
    x = F.var("x")
    symbol = F.contrib.cond(F.sum(x) > 0, lambda: F.sum(x, axis=0), lambda: F.sum(x, axis=1))
    (tmp_path / "c-symbol.json").write_text(symbol.tojson())
    graph = graphopt.load(tmp_path / "c-symbol.json", None, inputs={"x": (2, 3)})
    with pytest.raises(graphopt.UnsupportedOpError, match=r"different shapes.*\(3,\).*\(2,\)"):
        graphopt.to_onnx(graph)


# --- nested control flow ----------------------------------------------------------------------
# A cond inside a foreach body is not nested here: MXNet 1.9.1 cannot run it as a symbol
# (the foreach's shape inference fails on the cond inside: "Operator _foreach inferring shapes
# failed"), so there is no reference to match.

class ForeachInCond(mx.gluon.HybridBlock):
    """A recurrent cell over the sequence, with its state scaled by 0.5 or 2 depending on the
    sign of the sequence's sum: a Scan inside each branch of an If."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.cell = mx.gluon.nn.Dense(4, flatten=False, in_units=3)

    def hybrid_forward(self, F, sequence, state):
        def run(scale):
            def step(x_t, states):
                h = F.tanh(self.cell(x_t) + states[0] * scale)
                return h, [h]
            outputs, states = F.contrib.foreach(step, sequence, [state])
            return [outputs, states[0]]

        return F.contrib.cond(F.sum(sequence) > 0, lambda: run(0.5), lambda: run(2.0))


class ForeachInForeach(mx.gluon.HybridBlock):
    """An inner recurrence over axis 1 of each step of the outer sequence (a Scan in a Scan
    body), the inner final state carried by the outer loop."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.cell = mx.gluon.nn.Dense(4, flatten=False, in_units=3)

    def hybrid_forward(self, F, sequence, state):
        def outer(x_t, states):
            def inner(y, inner_states):
                h = F.tanh(self.cell(y) + inner_states[0])
                return h, [h]
            outputs, (h,) = F.contrib.foreach(inner, F.swapaxes(x_t, 0, 1), [states[0]])
            return F.sum(outputs, axis=0), [h]

        outputs, states = F.contrib.foreach(outer, sequence, [state])
        return outputs, states[0]


def test_foreach_nested_in_cond(rng):
    sequence = rng.uniform(0.1, 1, (5, 2, 3)).astype(np.float32)
    state = rng.uniform(-1, 1, (2, 4)).astype(np.float32)
    block = ForeachInCond()
    graph = export(block, {"sequence": sequence, "state": state})
    cases = [{"sequence": sequence, "state": state}, {"sequence": -sequence, "state": state}]
    models = assert_matches_mxnet(block, graph, cases)
    branch = next(n for n in models[DEFAULT_OPSET].graph.node if n.op_type == "If")
    assert all("Scan" in op_types(attribute.g) for attribute in branch.attribute)


def test_foreach_nested_in_foreach(rng):
    inputs = {"sequence": rng.uniform(-1, 1, (3, 2, 4, 3)).astype(np.float32),
              "state": rng.uniform(-1, 1, (2, 4)).astype(np.float32)}
    block = ForeachInForeach()
    graph = export(block, inputs)
    models = assert_matches_mxnet(block, graph, [inputs])
    scan = next(n for n in models[DEFAULT_OPSET].graph.node if n.op_type == "Scan")
    assert "Scan" in op_types(scan.attribute[0].g)


def test_unconvertible_body_names_the_body_node(tmp_path):
    """A body op that cannot be converted (LRN with an even nsize, refused at the top level
    too) is refused with the body's node and the reason."""
    sequence, state = mx.sym.var("sequence"), mx.sym.var("state")
    _, states = mx.sym.contrib.foreach(
        lambda x_t, states: ([], [states[0] + mx.sym.LRN(x_t, nsize=2, name="even_lrn")]),
        sequence, [state])
    (tmp_path / "m-symbol.json").write_text(states[0].tojson())
    graph = graphopt.load(tmp_path / "m-symbol.json",
                          inputs={"sequence": (3, 2, 4, 5, 5), "state": (2, 4, 5, 5)})
    with pytest.raises(graphopt.UnsupportedOpError) as error:
        graphopt.to_onnx(graph)
    message = str(error.value)
    assert "_foreach" in message and "body" in message and "even_lrn (LRN)" in message
