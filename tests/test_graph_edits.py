"""The IR's edit vocabulary keeps producers and consumers consistent, and the journal undoes it.

These are the edits later work is built from: insert a node on an edge (quantize/dequantize),
replace all uses (folding), delete channels of a parameter (pruning), erase, roll back.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest

import graphopt
from graphopt import Tensor
from graphopt.errors import GraphError
from graphopt.mxnet_io import graph_to_json, to_symbol


@pytest.fixture
def small_graph() -> graphopt.Graph:
    """data -> conv (4 filters) -> relu -> fc(3); loaded from a real MXNet symbol."""
    data = mx.sym.Variable("data")
    conv = mx.sym.Convolution(data, kernel=(3, 3), num_filter=4, name="conv")
    relu = mx.sym.Activation(conv, act_type="relu", name="relu")
    fc = mx.sym.FullyConnected(relu, num_hidden=3, name="fc")
    rng = np.random.default_rng(0)
    arg_shapes, _, _ = fc.infer_shape(data=(1, 2, 6, 6))
    graph = graphopt.mxnet_io.graph_from_json(fc.tojson())
    for name, shape in zip(fc.list_arguments(), arg_shapes):
        node = graph.node(name)
        if name == "data":
            node.outputs[0] = graphopt.TensorType(shape, "float32")
        else:
            node.kind = "param"
            array = rng.standard_normal(shape).astype(np.float32)
            array.flags.writeable = False
            graph.params[name] = array
    graph.infer_shapes()
    return graph


def snapshot(graph: graphopt.Graph) -> tuple:
    return (graph_to_json(graph), {k: v.tobytes() for k, v in graph.params.items()},
            [(n.name, [(t.shape, t.dtype) for t in n.outputs]) for n in graph.nodes()])


def run(graph: graphopt.Graph, x: np.ndarray) -> np.ndarray:
    args = {k: mx.nd.array(v) for k, v in graph.params.items()}
    args["data"] = mx.nd.array(x)
    return to_symbol(graph).bind(mx.cpu(), args).forward()[0].asnumpy()


def test_insert_on_edge_rewires_every_consumer(small_graph):
    relu_out = Tensor("relu", 0)
    node = small_graph.insert_on_edge(relu_out, "_mul_scalar", attrs={"scalar": 2.0}, name="scale")
    assert small_graph.consumers(relu_out) == [("scale", 0)]
    assert small_graph.input_of("fc", 0) == Tensor(node.name, 0)
    small_graph.infer_shapes()
    small_graph.validate()
    assert small_graph.node("scale").shape == small_graph.node("relu").shape


def test_replace_all_uses_follows_graph_outputs(small_graph):
    identity = small_graph.add_node("_copy", [Tensor("fc", 0)], name="copy")
    small_graph.replace_all_uses(Tensor("fc", 0), Tensor(identity.name, 0), exclude=[identity.name])
    assert small_graph.outputs == [Tensor("copy", 0)]
    assert small_graph.consumers(Tensor("fc", 0)) == [("copy", 0)]


def test_deleting_channels_of_a_parameter_reinfers_shapes(small_graph):
    """Pruning: drop conv filter 1 and the matching FC input columns; MXNet agrees on shapes."""
    x = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    weight = small_graph.param("conv_weight")
    zeroed = weight.copy()
    zeroed[1] = 0
    small_graph.set_param("conv_weight", zeroed)
    small_graph.set_param("conv_bias", np.where(np.arange(4) == 1, 0, small_graph.param("conv_bias")))
    expected = run(small_graph, x)

    keep = [0, 2, 3]
    small_graph.set_param("conv_weight", zeroed[keep])
    small_graph.set_param("conv_bias", small_graph.param("conv_bias")[keep])
    small_graph.set_attr("conv", "num_filter", 3)
    fc_weight = small_graph.param("fc_weight").reshape(3, 4, 16)[:, keep].reshape(3, 48)
    small_graph.set_param("fc_weight", fc_weight)
    small_graph.infer_shapes()
    small_graph.validate()
    assert small_graph.node("conv").shape == (1, 3, 4, 4)
    np.testing.assert_allclose(run(small_graph, x), expected, rtol=1e-5, atol=1e-6)  # float32 sums


def test_rollback_restores_the_graph_exactly(small_graph):
    before = snapshot(small_graph)
    mark = small_graph.journal_mark()
    small_graph.insert_on_edge(Tensor("conv", 0), "_mul_scalar", attrs={"scalar": 3.0})
    small_graph.set_attr("fc", "num_hidden", 5)
    small_graph.set_param("fc_bias", np.zeros(5, np.float32))
    scale = small_graph.add_param("extra", np.ones(3, np.float32))
    small_graph.replace_all_uses(Tensor("fc", 0), Tensor("relu", 0))
    small_graph.erase_node(scale.name)
    small_graph.rollback(mark)
    assert snapshot(small_graph) == before
    small_graph.validate()


def test_erase_refuses_a_node_still_in_use(small_graph):
    with pytest.raises(GraphError, match="still read by"):
        small_graph.erase_node("relu")


def test_erase_dead_removes_what_outputs_do_not_need(small_graph):
    small_graph.add_node("Activation", [Tensor("conv", 0)], attrs={"act_type": "tanh"}, name="dangling")
    assert small_graph.erase_dead() == ["dangling"]
    small_graph.validate()


def test_copy_is_independent(small_graph):
    copy = small_graph.copy()
    copy.set_attr("relu", "act_type", "tanh")
    copy.insert_on_edge(Tensor("conv", 0), "_copy")
    assert small_graph.node("relu").attrs["act_type"] == "relu"
    assert len(small_graph) + 1 == len(copy)


def test_validate_names_the_broken_node(small_graph):
    small_graph.nx.remove_edge("data", "conv", key=0)  # bypass the edit API: slot 0 goes missing
    with pytest.raises(GraphError) as error:
        small_graph.validate()
    assert error.value.node == "conv" and error.value.op == "Convolution"


def test_validate_finds_a_cycle(small_graph):
    small_graph.set_input("conv", 0, Tensor("relu", 0))
    with pytest.raises(GraphError, match="cycle"):
        small_graph.validate()


def test_tensor_names_and_multi_output_nodes():
    data = mx.sym.Variable("data")
    split = mx.sym.SliceChannel(data, num_outputs=3, axis=1, name="split")
    out = mx.sym.Group([split[0] + split[2], split[1]])
    graph = graphopt.mxnet_io.graph_from_json(out.tojson())
    graph.node("data").outputs[0] = graphopt.TensorType((2, 6), "float32")
    graph.infer_shapes()
    assert graph.node("split").num_outputs == 3
    assert [t.shape for t in graph.node("split").outputs] == [(2, 2)] * 3
    assert graph.consumers(Tensor("split", 2)) == [(graph.outputs[0].node, 1)]


def test_a_node_added_after_a_fold_does_not_take_the_folded_tensors_name(tmp_path):
    """After BatchNorm 'bn' is folded, the conv's output is named bn_output; a node added
    later with base name 'bn' must not produce a second bn_output."""
    data = mx.sym.var("data")
    conv = mx.sym.Convolution(data, kernel=(1, 1), num_filter=2, name="conv")
    symbol = mx.sym.BatchNorm(conv, fix_gamma=False, name="bn")
    (tmp_path / "m-symbol.json").write_text(symbol.tojson())
    shapes = {"conv_weight": (2, 3, 1, 1), "conv_bias": (2,), "bn_gamma": (2,), "bn_beta": (2,)}
    params = {f"arg:{k}": mx.nd.ones(v) for k, v in shapes.items()}
    params.update({"aux:bn_moving_mean": mx.nd.zeros((2,)), "aux:bn_moving_var": mx.nd.ones((2,))})
    mx.nd.save(str(tmp_path / "m-0000.params"), params)
    graph = graphopt.load(tmp_path / "m-symbol.json", tmp_path / "m-0000.params",
                          inputs={"data": (1, 3, 4, 4)})
    folded, _ = graphopt.rewrite(graph)
    assert folded.output_names == ["bn_output"] and "bn" not in folded
    added = folded.add_node("relu", [folded.outputs[0]], name="bn")
    assert added.name != "bn"
    assert len({folded.tensor_name(Tensor(n, 0)) for n in ("conv", added.name)}) == 2
