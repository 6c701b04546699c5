"""Write a graph back as an MXNet model that ``mx.sym.load`` and ``SymbolBlock.imports`` accept."""

from __future__ import annotations

import os
from pathlib import Path

import mxnet as mx

from graphopt._files import atomic_paths
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
    text = graph_to_json(graph)
    arrays = params_for_mxnet(graph, copy=False)
    with atomic_paths(params_path, symbol_path) as (params_temp, symbol_temp):
        mx.nd.save(str(params_temp), arrays)
        symbol_temp.write_text(text)
    return symbol_path, params_path
