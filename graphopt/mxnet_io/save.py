"""Write a graph back as an MXNet model that ``mx.sym.load`` and ``SymbolBlock.imports`` accept."""

from __future__ import annotations

import os
from pathlib import Path

import mxnet as mx

from graphopt._files import atomic_paths
from graphopt.errors import ModelFileError
from graphopt.ir.graph import Graph
from graphopt.mxnet_io.symbol_json import graph_to_json


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
    text = graph_to_json(graph)
    # A 0-d or zero-size array exists only in MXNet's numpy shape semantics (in the legacy ones
    # its shape means "unknown", and mx.nd.save writes a file nothing can read back): such
    # parameters are written, as MXNet's numpy interface writes them, with those semantics on.
    numpy_shapes = any(value.ndim == 0 or 0 in value.shape for value in graph.params.values())
    with atomic_paths(params_path, symbol_path) as (params_temp, symbol_temp), \
            mx.util.np_shape(numpy_shapes):
        mx.nd.save(str(params_temp), params_for_mxnet(graph, copy=False))
        symbol_temp.write_text(text, encoding="utf-8")
    return symbol_path, params_path
