"""MXNet symbol JSON <-> the graph IR (structure and attributes; no parameters, no shapes).

MXNet's JSON lists nodes in topological order; an input entry is ``[node_id, output_index,
version]``. Attribute values are strings and only explicitly set attributes are present
(PITFALLS.md, "MXNet symbol JSON"). We keep each node's original attribute strings and write
an attribute back verbatim when its value has not changed, so a graph that was only loaded
saves to the same attributes text.
"""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any

import mxnet as mx

from graphopt.errors import ModelFileError, UnknownOpError
from graphopt.ir.graph import Graph, Node, Tensor, TensorType, default_output_names
from graphopt.schema import format_value, mxnet_schema, parse_value

MXNET_VERSION = 10901


def parse_attrs(op: str, raw: dict[str, str]) -> dict[str, Any]:
    """Typed values for a node's attribute strings. Hidden attributes (``__init__`` ...) and
    values that do not parse stay strings: MXNet itself will judge them."""
    return {key: parse_attr(op, key, text) for key, text in raw.items()}


@functools.lru_cache(maxsize=65536)
def parse_attr(op: str, key: str, text: str) -> Any:
    """One attribute string as a typed value. Cached: saving, and every symbol built for shape
    inference, re-reads each unchanged attribute to decide to write its original text; the
    values are immutable (tuples, numbers, strings), so sharing them is safe."""
    if key.startswith("__") or op == "null":
        return text
    spec = mxnet_schema().get(op)
    try:
        return spec.parse_attr(key, text) if spec is not None else parse_value(text)
    except (ValueError, TypeError):
        return text


def format_attrs(node: Node) -> dict[str, str]:
    out = {}
    for key, value in node.attrs.items():
        raw = node.raw_attrs.get(key)
        if raw is not None and _same(parse_attr(node.op, key, raw), value):
            out[key] = raw
        else:
            out[key] = value if isinstance(value, str) else format_value(value)
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and a == b
    except Exception:  # arrays or other exotic values: treat as changed
        return False


def graph_from_json(text: str, file: str = "<string>") -> Graph:
    """Build the graph structure from symbol JSON. Variables get kind ``"input"`` here; the
    loader decides which are parameters, aux states or labels."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelFileError(f"not valid symbol JSON (truncated or malformed): {error.msg} at "
                             f"line {error.lineno} column {error.colno}", file=file) from None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) \
            or not isinstance(data.get("heads"), list):
        raise ModelFileError("not an MXNet symbol JSON: expected an object with 'nodes' and 'heads'",
                             file=file)
    data = _upgraded(data, text)
    schema = mxnet_schema()
    graph = Graph()
    names: list[str] = []
    # Names are meant to be unique. A repeated variable name is one variable (MXNet binds
    # variables by name); a repeated op name is renamed to a name no node of the file has.
    reserved = {str(e.get("name")) for e in data["nodes"] if isinstance(e, dict)}
    row_ptr = data.get("node_row_ptr")
    unknown = []
    for index, entry in enumerate(data["nodes"]):
        if not isinstance(entry, dict) or "op" not in entry or "name" not in entry:
            raise ModelFileError(f"node #{index} lacks 'op' or 'name'", file=file)
        op, name = entry["op"], str(entry["name"])
        if op != "null" and op not in schema:
            if op in schema.aliases:
                op = schema.canonical(op)
            else:
                unknown.append((name, op))  # reported all together after the walk
        raw = {}
        for key in ("param", "attr", "attrs"):  # older MXNet versions wrote 'param' / 'attr'
            raw.update({k: str(v) for k, v in (entry.get(key) or {}).items()})
        if name in graph.nx and op == "null" and graph.node(name).is_variable:
            names.append(name)
            continue
        unique = name
        for k in itertools.count(1):
            if unique not in graph.nx and (unique == name or unique not in reserved):
                break
            unique = f"{name}_{k}"
        kind = "input" if op == "null" else "op"
        node = Node(name=unique, op=op, kind=kind, attrs=parse_attrs(op, raw), raw_attrs=raw,
                    seq=index, subgraphs=entry.get("subgraphs"))
        if row_ptr and len(row_ptr) == len(data["nodes"]) + 1:
            node.total_outputs = row_ptr[index + 1] - row_ptr[index]
        graph.nx.add_node(unique, node=node)
        names.append(unique)
        for slot, ref in enumerate(entry.get("inputs") or []):
            if not isinstance(ref, list) or len(ref) < 2 or not isinstance(ref[0], int) \
                    or not 0 <= ref[0] < index:
                raise ModelFileError(f"input slot {slot} refers to {ref!r}, which is not an earlier "
                                     f"node", file=file, node=name, op=op)
            graph.nx.add_edge(names[ref[0]], unique, key=slot, index=int(ref[1]))
    if unknown:
        listing = ", ".join(f"{n!r} ({o})" for n, o in unknown)
        raise UnknownOpError(f"MXNet does not know the op of {len(unknown)} node(s): {listing}",
                             file=file, node=unknown[0][0], op=unknown[0][1])
    graph._seq = iter(range(len(names), 1 << 62))
    # every node kept the name the file gave it (nothing renamed or merged)
    graph.source["names_as_loaded"] = len(graph) == len(names) and all(
        name == str(entry["name"]) for name, entry in zip(names, data["nodes"]))
    for ref in data["heads"]:
        if not isinstance(ref, list) or len(ref) < 2 or not isinstance(ref[0], int) \
                or not 0 <= ref[0] < len(names):
            raise ModelFileError(f"graph output {ref!r} refers to no node", file=file)
        graph.outputs.append(Tensor(names[ref[0]], int(ref[1])))
    return graph


def _upgraded(data: dict, text: str) -> dict:
    """The symbol as this MXNet reads it. A file written by an older MXNet (``mxnet_version``
    below ours, or absent, as in hand-written JSON) is upgraded by MXNet on loading, and the
    upgrade changes what the file means: aux states that files before 0.9 left implicit become
    variables (``bn_moving_mean``), plain ``lr_mult``/``ctx_group`` attributes become hidden
    ones (or move to the input variable), and ``argmax(axis=-1)`` from before 0.9.5 loses its
    axis (the global argmax). Written back as ``mxnet_version`` 10901 without that upgrade, the
    same file would mean something else (or be refused), so we read MXNet's upgraded symbol.
    A file MXNet refuses is kept as it is: the loader then says which node is wrong."""
    version = (data.get("attrs") or {}).get("mxnet_version")
    if isinstance(version, list) and len(version) == 2 and isinstance(version[1], int) \
            and version[1] >= MXNET_VERSION:
        return data
    try:
        return json.loads(mx.sym.load_json(text).tojson())
    except mx.MXNetError:
        return data


def graph_to_dict(graph: Graph) -> dict:
    order = graph.topological_order()
    position = {name: i for i, name in enumerate(order)}
    nodes, arg_nodes, row_ptr = [], [], [0]
    for name in order:
        node = graph.node(name)
        entry: dict[str, Any] = {"op": node.op, "name": node.name}
        attrs = format_attrs(node)
        if attrs:
            entry["attrs"] = attrs
        entry["inputs"] = [[position[t.node], t.index, 1 if graph.node(t.node).kind == "aux" else 0]
                           for t in graph.inputs_of(name)]
        if node.subgraphs is not None:
            entry["subgraphs"] = node.subgraphs
        nodes.append(entry)
        if node.is_variable:
            arg_nodes.append(position[name])
        if row_ptr is not None:
            total = node.total_outputs if node.total_outputs is not None else (
                node.num_outputs if not _has_hidden_outputs(node.op) else None)
            if total is None:
                row_ptr = None
            else:
                row_ptr.append(row_ptr[-1] + total)  # append: `row_ptr + [...]` was O(n^2)
    result = {"nodes": nodes, "arg_nodes": arg_nodes}
    if row_ptr is not None:
        result["node_row_ptr"] = row_ptr
    result["heads"] = [[position[t.node], t.index, 0] for t in graph.outputs]
    result["attrs"] = {"mxnet_version": ["int", MXNET_VERSION]}
    return result


def _has_hidden_outputs(op: str) -> bool:
    # ops whose node has more outputs than it shows (BatchNorm's mean and var)
    return op in ("BatchNorm", "BatchNorm_v1", "_contrib_SyncBatchNorm", "CuDNNBatchNorm",
                  "LayerNorm", "GroupNorm", "InstanceNorm", "Dropout", "_sg_mkldnn_conv")


def graph_to_json(graph: Graph) -> str:
    return json_text(graph_to_dict(graph))


def json_text(data: dict) -> str:
    """Symbol JSON text of ``graph_to_dict``'s result. ensure_ascii=False: MXNet's JSON reader
    knows no \\u escapes ("unknown string escape \\u"), so a node name such as "café" must be
    written as UTF-8 (as MXNet's own tojson does)."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def assign_output_names(graph: Graph) -> None:
    for node in graph._iter_unordered():
        if not node.output_names or len(node.output_names) != node.num_outputs:
            node.output_names = default_output_names(node.name, node.op, node.num_outputs)


__all__ = ["graph_from_json", "graph_to_json", "graph_to_dict", "json_text", "parse_attrs", "format_attrs",
           "TensorType"]
