"""Load a Gluon ``HybridBlock`` by exporting it the way users do."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

import mxnet as mx

from graphopt.ir.graph import Graph
from graphopt.mxnet_io.load import load


def from_block(block: mx.gluon.HybridBlock, inputs: Mapping[str, tuple],
               dtypes: Mapping[str, str] | None = None, name: str | None = None) -> Graph:
    """Hybridize ``block``, run it once on zeros of the ``inputs`` shapes, ``export`` it and load
    the result. Gluon names its exported inputs ``data`` (one) or ``data0``, ``data1``...; the keys
    of ``inputs`` are taken in order and mapped onto those names when they differ."""
    shapes = [tuple(shape) for shape in inputs.values()]
    dtypes = dict(dtypes or {})
    arrays = [mx.nd.zeros(shape, dtype=dtypes.get(key, "float32"))
              for key, shape in zip(inputs, shapes)]
    block.hybridize()
    block(*arrays)
    with tempfile.TemporaryDirectory(prefix="graphopt-block-") as folder:
        prefix = str(Path(folder) / "model")
        block.export(prefix, epoch=0)
        exported = ["data"] if len(shapes) == 1 else [f"data{i}" for i in range(len(shapes))]
        names = list(inputs) if set(inputs) <= _variables(prefix) else exported
        return load(f"{prefix}-symbol.json", f"{prefix}-0000.params",
                    inputs=dict(zip(names, shapes)),
                    dtypes={n: dtypes.get(k, "float32") for n, k in zip(names, inputs)},
                    name=name or block.name)


def _variables(prefix: str) -> set[str]:
    return set(mx.sym.load(f"{prefix}-symbol.json").list_arguments())
