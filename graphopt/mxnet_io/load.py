"""Load an MXNet model (symbol JSON + params) into a :class:`~graphopt.ir.Graph`."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping

import mxnet as mx
import numpy as np
from mxnet.ndarray.ndarray import _DTYPE_MX_TO_NP

from graphopt._gc import cyclic_gc_paused
from graphopt.errors import ModelFileError, ParameterError, ShapeError
from graphopt.ir.graph import Graph, TensorType
from graphopt.mxnet_io.infer import first_error_line, infer_shapes
from graphopt.mxnet_io.symbol_json import MXNET_VERSION, assign_output_names, graph_from_json
from graphopt.schema import mxnet_schema

# Names that can only be parameters: a variable so named but absent from the params file is a
# missing parameter, not a graph input.
_PARAM_SUFFIX = re.compile(r"(weight|bias|gamma|beta|running_mean|running_var|moving_mean|"
                           r"moving_var|alpha)$")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ModelFileError("symbol file is a directory" if path.is_dir() else "symbol file not found",
                             file=str(path))
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelFileError(f"cannot read symbol file: {error}", file=str(path)) from None


def read_params(params_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an MXNet params file as numpy arrays, keys as stored (``arg:``/``aux:`` kept)."""
    path = Path(params_path)
    if not path.is_file():
        raise ModelFileError("params file is a directory" if path.is_dir() else "params file not found",
                             file=str(path))
    try:
        loaded = _load_as_numpy(path)
    except mx.MXNetError as error:
        raise ModelFileError(f"cannot read params file (truncated or not an MXNet params file): "
                             f"{first_error_line(error)}", file=str(path)) from None
    if isinstance(loaded, list) and not loaded:
        return {}  # MXNet reads a file saved from an empty dict back as an empty list
    if not isinstance(loaded, dict):
        raise ModelFileError("params file holds unnamed arrays; graphopt needs names",
                             file=str(path))
    return loaded


def _load_as_numpy(path: Path) -> dict[str, np.ndarray] | list[np.ndarray]:
    try:
        loaded = mx.nd.load(str(path))
    except mx.MXNetError as error:
        if "np shape semantics" not in str(error):
            raise
        # written with numpy shape semantics (a 0-d or zero-size array, MXNet's numpy
        # interface): MXNet reads such a file only with those semantics on
        with mx.util.np_shape(True):
            return _as_numpy(mx.nd.load(str(path)))
    return _as_numpy(loaded)


def _as_numpy(loaded):
    if isinstance(loaded, dict):
        return {name: array.asnumpy() for name, array in loaded.items()}
    return [array.asnumpy() for array in loaded]


def _strip_prefix(name: str) -> str:
    return name[4:] if name.startswith(("arg:", "aux:")) else name


def _match_structural_names(needed: list[str], stored: dict[str, np.ndarray],
                            file: str) -> dict[str, np.ndarray]:
    """Gluon's ``save_parameters`` names parameters by structure (``features.0.weight``: the
    attribute path, children in registration order) while the symbol names them by prefix
    (``lenet0_conv0_weight``: block counters in creation order). MXNet itself cannot load such a
    file into a symbol; we match the two by the parameter's own name (the part after the last
    '.', the longest one the variable's name ends with: ``l0_i2h_weight`` before ``weight``), in
    creation order: the graph's order, except that variables whose names differ only in their
    counters (``dense1_weight``, ``dense0_weight``) take the counters' order, since a block used
    before an earlier-created one is still registered after it. A parameter shared between two
    blocks (``params=``) is saved under both paths but is one variable: an excess entry equal to
    an earlier one is that sharing. Wrong matches of another shape are then caught by shape
    inference."""
    by_suffix_file: dict[str, list[str]] = {}
    for key in stored:
        by_suffix_file.setdefault(_running(key.rsplit(".", 1)[-1]), []).append(key)
    suffixes = sorted(by_suffix_file, key=len, reverse=True)
    by_suffix_graph: dict[str, list[str]] = {}
    for name in needed:
        suffix = next((s for s in suffixes if _running(name) == s or _running(name).endswith("_" + s)),
                      None)
        if suffix is not None:  # else an input the user has not named
            by_suffix_graph.setdefault(suffix, []).append(name)
    matched = {}
    for suffix, names in by_suffix_graph.items():
        keys = _without_shared_copies(by_suffix_file[suffix], stored, len(names), file, suffix)
        if len(keys) != len(names):
            raise ParameterError(
                f"cannot match Gluon structural parameter names to the symbol: the file has "
                f"{len(keys)} '{suffix}' parameters, the graph needs {len(names)}",
                file=file, node=names[0])
        matched.update(zip(_creation_order(names, suffix), (stored[key] for key in keys)))
    return matched


def _running(name: str) -> str:
    # MXNet's own BatchNorm calls its statistics moving_mean/var, Gluon's running_mean/var
    return name.replace("moving_mean", "running_mean").replace("moving_var", "running_var")


def _without_shared_copies(keys: list[str], stored: dict[str, np.ndarray], wanted: int,
                           file: str, suffix: str) -> list[str]:
    """``keys`` without the second copies of shared parameters, when the file has more entries
    than the graph has variables. A copy is an entry equal to an earlier one; that is taken as
    sharing only when there are exactly as many such entries as entries too many. Otherwise
    (two untouched zero biases look alike as well) the match would be a guess: refused."""
    excess = len(keys) - wanted
    if excess <= 0:
        return keys
    seen: set[tuple] = set()
    copies = []
    for key in keys:
        value = stored[key]
        digest = (value.dtype.str, value.shape, hashlib.sha1(value.tobytes()).digest())
        if digest in seen:
            copies.append(key)
        seen.add(digest)
    if not copies:
        return keys  # more parameters than the graph uses, none shared: counted by the caller
    if len(copies) != excess:
        raise ParameterError(
            f"the file has {len(keys)} '{suffix}' parameters for {wanted} in the graph, and "
            f"{len(copies)} of them equal another, so which are the copies of shared parameters "
            f"cannot be told; save the model with export(), or save_parameters(..., "
            f"deduplicate=True)", file=file)
    copied = set(copies)
    return [key for key in keys if key not in copied]


def _creation_order(names: list[str], suffix: str) -> list[str]:
    """``names`` (graph order) with each set of names that differ only in their numbers
    (``net0_dense1_``, ``net0_dense0_``) put in the numbers' order, in the same places."""
    def signature(name: str) -> tuple[str, tuple[int, ...]]:
        parts = re.split(r"(\d+)", name[:len(name) - len(suffix)])
        return "#".join(parts[0::2]), tuple(int(n) for n in parts[1::2])
    keyed = [signature(name) for name in names]
    places: dict[str, list[int]] = {}
    for position, (text, _numbers) in enumerate(keyed):
        places.setdefault(text, []).append(position)
    ordered = list(names)
    for positions in places.values():
        for place, source in zip(positions, sorted(positions, key=lambda i: keyed[i][1])):
            ordered[place] = names[source]
    return ordered


@cyclic_gc_paused()  # building ~10 objects per node: see graphopt._gc
def load(symbol_json_path: str | os.PathLike, params_path: str | os.PathLike | None = None,
         inputs: Mapping[str, tuple] | None = None, dtypes: Mapping[str, str] | None = None,
         name: str | None = None) -> Graph:
    """Load an MXNet symbol JSON and its params into a :class:`Graph`.

    ``inputs`` maps each graph input to its shape, e.g. ``{"data": (1, 3, 224, 224)}``; with it,
    every tensor's shape and dtype is known after loading, and any other variable the params file
    lacks is reported as a missing parameter. ``params_path`` may hold ``arg:``/``aux:`` names
    (``export``, ``save_checkpoint``) or Gluon ``save_parameters`` names.
    """
    symbol_path = Path(symbol_json_path)
    text = _read_text(symbol_path)
    graph = graph_from_json(text, file=str(symbol_path))
    graph.name = name or re.sub(r"-symbol$", "", symbol_path.stem.replace(".json", ""))
    graph.source.update(symbol=str(symbol_path), params=None if params_path is None else str(params_path))
    try:
        symbol = mx.sym.load_json(text)
        input_names = symbol.list_inputs()  # arguments and aux states, in graph order
        aux_names = set(symbol.list_auxiliary_states())
    except mx.MXNetError as error:
        raise _refused(graph, error, symbol_path) from None

    stored = {} if params_path is None else read_params(params_path)
    values = {_strip_prefix(k): v for k, v in stored.items()}
    inputs = {k: tuple(int(d) for d in v) for k, v in (inputs or {}).items()}
    # graph order matters: Gluon structural names are matched to variables by position
    variable_names = [n for n in input_names if n in graph]
    unknown_inputs = [k for k in inputs if k not in graph or not graph.node(k).is_variable]
    if unknown_inputs:
        raise ShapeError(f"no graph input named {unknown_inputs}; the graph's variables not in the "
                         f"params file are {[n for n in variable_names if n not in values]}",
                         file=str(symbol_path), node=unknown_inputs[0])
    needed = [n for n in variable_names if n not in inputs and not _is_label(graph, n)]
    if stored and not any(n in values for n in needed) and any("." in k for k in values):
        values = _match_structural_names(needed, values, file=str(params_path))
    if stored and needed and not any(n in values for n in needed):
        raise ParameterError(f"the params file holds none of the {len(needed)} parameters the symbol "
                             f"reads (such as {needed[0]!r}); it holds {sorted(values)[:3]}...: is it "
                             f"the params file of another model?", file=str(params_path))

    for var in variable_names:
        node = graph.node(var)
        if var in inputs:
            node.kind = "input"
            dtype = (dtypes or {}).get(var) or _declared_dtype(node) or "float32"
            node.outputs[0] = TensorType(inputs[var], np.dtype(dtype).name)
        elif var in values:
            node.kind = "aux" if var in aux_names else "param"
            array = values[var]  # a fresh array from read_params: no copy needed (was 40%
            array.flags.writeable = False  # of vgg16_bn's load time)
            graph.params[var] = array
            node.outputs[0] = TensorType(tuple(array.shape), array.dtype.name)
        elif _is_label(graph, var):
            node.kind = "label"
        elif var in aux_names or inputs or _PARAM_SUFFIX.search(var):
            consumer, _slot = graph.consumers(var)[0]
            op = graph.node(consumer).op
            if var not in aux_names and not _PARAM_SUFFIX.search(var):
                raise ShapeError(f"variable {var!r} is neither in the params file nor given a shape "
                                 f"in inputs (the inputs given: {sorted(inputs)})",
                                 file=str(symbol_path), node=consumer, op=op)
            where = f"params file {params_path}" if params_path is not None else "the model (no params file given)"
            raise ParameterError(f"parameter {var!r} is missing from {where}",
                                 file=str(params_path or symbol_path), node=consumer, op=op)
        else:
            node.kind = "input"
            dtype = (dtypes or {}).get(var) or _declared_dtype(node)
            if dtype is not None:
                node.outputs[0] = TensorType(None, np.dtype(dtype).name)
    graph.source["unused_params"] = sorted(set(values) - set(variable_names))
    # the symbol MXNet parsed from the file is this graph, unless names had to change on loading
    infer_shapes(graph, symbol=symbol if graph.source.get("names_as_loaded") else None)
    if graph.source.get("names_as_loaded"):
        graph.derived["mxnet_symbol"] = symbol
    assign_output_names(graph)
    graph.output_labels = [graph.tensor_name(t) for t in graph.outputs]
    return graph


def _declared_dtype(node) -> str | None:
    """The dtype a variable declares (``mx.sym.Variable(..., dtype=...)`` stores MXNet's type
    code as ``__dtype__``): the model's own input dtype when the user names none."""
    code = node.attrs.get("__dtype__")
    try:
        dtype = _DTYPE_MX_TO_NP.get(int(code)) if code is not None else None
    except ValueError:
        return None
    return None if dtype is None else np.dtype(dtype).name


def _refused(graph: Graph, error: Exception, symbol_path: Path) -> ModelFileError:
    """MXNet's message when it refuses a symbol (an attribute value it rejects, an attribute
    its op does not have) names neither the node nor the op: find the node by giving MXNet each
    op node alone, with variables for inputs."""
    for node in graph.nodes():
        if node.is_variable:
            continue
        count = len(graph.inputs_of(node.name))
        entries = [{"op": "null", "name": f"input{i}", "inputs": []} for i in range(count)]
        entries.append({"op": node.op, "name": node.name, "attrs": node.raw_attrs,
                        "inputs": [[i, 0, 0] for i in range(count)]})
        if node.subgraphs is not None:
            entries[-1]["subgraphs"] = node.subgraphs
        alone = {"nodes": entries, "arg_nodes": list(range(count)), "heads": [[count, 0, 0]],
                 "attrs": {"mxnet_version": ["int", MXNET_VERSION]}}
        try:
            mx.sym.load_json(json.dumps(alone, ensure_ascii=False))
        except mx.MXNetError as node_error:
            return ModelFileError(f"MXNet refuses the symbol: {first_error_line(node_error)}",
                                  file=str(symbol_path), node=node.name, op=node.op)
    return ModelFileError(f"MXNet refuses the symbol: {first_error_line(error)}",
                          file=str(symbol_path))


def _is_label(graph: Graph, var: str) -> bool:
    """A variable read only at slots MXNet names ``label`` (SoftmaxOutput and the other loss
    heads): inference never reads it."""
    schema = mxnet_schema()
    uses = graph.consumers(var)
    if not uses:
        return False
    for consumer, slot in uses:
        spec = schema.get(graph.node(consumer).op)
        if spec is None or slot >= len(spec.inputs) or spec.inputs[slot] != "label":
            return False
    return True
