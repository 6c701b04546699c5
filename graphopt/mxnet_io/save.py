"""Write a graph back as an MXNet model that ``mx.sym.load`` and ``SymbolBlock.imports`` accept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import mxnet as mx
import numpy as np

from graphopt._files import atomic_paths
from graphopt.errors import ModelFileError
from graphopt.ir.graph import Graph, Node, default_output_names
from graphopt.mxnet_io.symbol_json import graph_to_dict, json_text


def params_for_mxnet(graph: Graph, copy: bool = True) -> dict[str, mx.nd.NDArray]:
    """Parameters named the way ``export``/``save_checkpoint`` name them (``arg:``/``aux:``).

    ``copy=False`` lends the graph's own (read-only) memory to MXNet where it can: only for
    calls that just read, such as ``mx.nd.save`` (the copy was 0.6 s of vgg16_bn's save)."""
    out = {}
    for node in graph.variables():
        if node.kind in ("param", "aux"):
            prefix = "aux:" if node.kind == "aux" else "arg:"
            out[prefix + node.name] = _to_ndarray(graph.params[node.name], copy)
    return out


def _to_ndarray(value, copy: bool) -> mx.nd.NDArray:
    # from_numpy marks the array read-only: lend only arrays that already are (the graph's)
    if not copy and value.flags.c_contiguous and not value.flags.writeable:
        try:
            return mx.nd.from_numpy(value, zero_copy=True)
        except ValueError:  # a dtype DLPack does not carry: copy
            pass
    return mx.nd.array(value, dtype=value.dtype)


def save_mxnet(graph: Graph, prefix: str | os.PathLike, epoch: int = 0) -> tuple[Path, Path]:
    """Write ``PREFIX-symbol.json`` and ``PREFIX-%04d.params`` (epoch). Both are written to
    temporary names first and renamed only when both are complete."""
    prefix = str(prefix)
    symbol_path = Path(f"{prefix}-symbol.json")
    params_path = Path(f"{prefix}-{epoch:04d}.params")
    for path in (symbol_path, params_path):
        # checked first: found only at the rename, the params file would already be in place
        if path.is_dir():
            raise ModelFileError("cannot save the model: the path is a directory", file=str(path))
    text = json_text(_outputs_keep_their_names(graph, _names_of_values(graph, graph_to_dict(graph))))
    # A 0-d or zero-size array exists only in MXNet's numpy shape semantics (in the legacy ones
    # its shape means "unknown", and mx.nd.save writes a file nothing can read back): such
    # parameters are written, as MXNet's numpy interface writes them, with those semantics on.
    numpy_shapes = mx.util.is_np_array() or any(value.ndim == 0 or 0 in value.shape
                                                for value in graph.params.values())
    with atomic_paths(params_path, symbol_path) as (params_temp, symbol_temp), \
            mx.util.np_shape(numpy_shapes):
        mx.nd.save(str(params_temp), params_for_mxnet(graph, copy=False))
        symbol_temp.write_text(text, encoding="utf-8")
    return symbol_path, params_path


def save_symbol(symbol: mx.sym.Symbol, prefix: str | os.PathLike,
                input_shapes: Mapping[str, tuple],
                value: Callable[[str, str, tuple], np.ndarray]) -> tuple[Path, Path | None]:
    """Write an ``mx.sym`` symbol as ``PREFIX-symbol.json`` and ``PREFIX-0000.params`` the way
    Gluon's ``export`` does (``arg:``/``aux:`` names): every argument and aux state that is not
    an input holds ``value(kind, name, shape)`` (kind ``"arg"`` or ``"aux"``), asked in MXNet's
    order, arguments first, with shapes inferred from ``input_shapes``. Without parameters no
    params file is written (MXNet reads an empty one back as a list) and its path is None.
    For building models from symbols: the rule test vectors, and the tests."""
    # partial: MXNet infers the parameters but not the outputs of a _while_loop or _cond
    arg_shapes, _, aux_shapes = symbol.infer_shape_partial(**input_shapes)
    arrays = {}
    for kind, names, shapes in (("arg", symbol.list_arguments(), arg_shapes),
                                ("aux", symbol.list_auxiliary_states(), aux_shapes)):
        for name, shape in zip(names, shapes):
            if name not in input_shapes:
                array = np.asarray(value(kind, name, tuple(shape)))
                arrays[f"{kind}:{name}"] = mx.nd.array(array, dtype=array.dtype)
    symbol_path, params_path = Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params")
    symbol.save(str(symbol_path))
    if not arrays:
        return symbol_path, None
    mx.nd.save(str(params_path), arrays)
    return symbol_path, params_path


def _outputs_keep_their_names(graph: Graph, data: dict) -> dict:
    """Symbol JSON whose outputs carry the graph's output names where MXNet allows it.

    MXNet names an output after its node (``bn`` -> ``bn_output``). When a rewrite removed the
    node that named an output (a ``BlockGrad`` dropped, an identity whose input is also an
    output), the node now producing it takes the old name, if no output keeps the node's own
    name and the name is free; any further name asked of the same tensor, or of a variable,
    comes from a ``_copy`` of that name added in front of it. An output named otherwise than
    ``NAME_output`` keeps the name MXNet gives it."""
    nodes, heads = data["nodes"], data["heads"]
    taken = {entry["name"] for entry in nodes}
    labels = graph.output_names
    suffixes = [_suffix(graph.node(t.node), t.index) for t in graph.outputs]
    keeps_own_name = {head[0] for head, label, suffix in zip(heads, labels, suffixes)
                      if label == nodes[head[0]]["name"] + suffix}
    renamed: set[int] = set()
    for index, (head, label, suffix) in enumerate(zip(heads, labels, suffixes)):
        entry = nodes[head[0]]
        if label == entry["name"] + suffix:
            continue
        new_name = label[:-len(suffix)] if suffix and label.endswith(suffix) else None
        if entry["op"] != "null" and new_name and new_name not in taken \
                and head[0] not in keeps_own_name and head[0] not in renamed:
            taken.add(new_name)
            entry["name"] = new_name
            renamed.add(head[0])
        elif label.endswith("_output") and label[:-len("_output")] not in taken:
            copy_name = label[:-len("_output")]
            nodes.append({"op": "_copy", "name": copy_name, "inputs": [list(head[:2]) + [0]]})
            taken.add(copy_name)
            if "node_row_ptr" in data:
                data["node_row_ptr"].append(data["node_row_ptr"][-1] + 1)
            heads[index] = [len(nodes) - 1, 0, 0]
    return data


def _suffix(node: Node, index: int) -> str:
    """What MXNet appends to the node's name to name output ``index`` (``_output``, ``_output1``,
    nothing for a variable)."""
    if node.is_variable:
        return ""
    return default_output_names(node.name, node.op, node.num_outputs)[index][len(node.name):]


def _names_of_values(graph: Graph, data: dict) -> dict:
    """Symbol JSON in which a node whose outputs a rewrite renamed is written under the name
    that gives them. MXNet derives output names from node names; a conv with a BatchNorm
    folded in computes ``bn_output``, so it is written as ``bn`` (when no other node is), and
    the saved model's tensor names keep meaning the values they meant in the original."""
    taken = {entry["name"] for entry in data["nodes"]}
    for entry in data["nodes"]:
        if entry["op"] != "null":
            entry["name"] = _json_name(graph.node(entry["name"]), taken)
    return data


def _json_name(node: Node, taken: set[str]) -> str:
    """The name under which MXNet gives ``node``'s outputs their recorded names, else its own."""
    if node.is_variable or not node.output_names:
        return node.name
    default = default_output_names(node.name, node.op, node.num_outputs)
    if node.output_names == default or not default[0].startswith(node.name):
        return node.name
    suffix = default[0][len(node.name):]
    first = node.output_names[0]
    base = first[:-len(suffix)] if suffix and first.endswith(suffix) else None
    if base and base not in taken \
            and default_output_names(base, node.op, node.num_outputs) == node.output_names:
        taken.add(base)
        return base
    return node.name
