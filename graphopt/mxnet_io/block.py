"""Load a Gluon ``HybridBlock`` by exporting it the way users do."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Mapping

import mxnet as mx

from graphopt.errors import ShapeError
from graphopt.ir.graph import Graph
from graphopt.mxnet_io.load import load


def from_block(block: mx.gluon.HybridBlock, inputs: Mapping[str, tuple],
               dtypes: Mapping[str, str] | None = None, name: str | None = None) -> Graph:
    """Hybridize ``block``, run it once on zeros of the ``inputs`` shapes, ``export`` it and load
    the result. The keys of ``inputs`` are the block's forward arguments in order; Gluon exports
    them as ``data`` (one) or ``data0``, ``data1``... and the graph's inputs are renamed back to
    the keys, so an ONNX export later carries the names the user chose."""
    names, shapes = list(inputs), [tuple(shape) for shape in inputs.values()]
    dtypes = dict(dtypes or {})
    # a block written for MXNet's NumPy interface (npx.set_np()) takes mx.np arrays
    zeros = mx.np.zeros if mx.util.is_np_array() else mx.nd.zeros
    arrays = [zeros(shape, dtype=dtypes.get(key, "float32")) for key, shape in inputs.items()]
    block.hybridize()
    block(*arrays)
    with tempfile.TemporaryDirectory(prefix="graphopt-block-") as folder:
        prefix = str(Path(folder) / "model")
        block.export(prefix, epoch=0)
        exported = ["data"] if len(names) == 1 else [f"data{i}" for i in range(len(names))]
        _rename_inputs(Path(f"{prefix}-symbol.json"), dict(zip(exported, names)))
        return load(f"{prefix}-symbol.json", f"{prefix}-0000.params",
                    inputs=dict(zip(names, shapes)),
                    dtypes={key: dtypes.get(key, "float32") for key in names},
                    name=name or block.name)


def _rename_inputs(symbol_path: Path, renames: dict[str, str]) -> None:
    """Rename the exported input variables in the (temporary) symbol file."""
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return
    data = json.loads(symbol_path.read_text(encoding="utf-8"))
    taken = {node["name"] for node in data["nodes"]} - set(renames)
    clash = sorted(set(renames.values()) & taken)
    if clash:
        raise ShapeError(f"input name(s) {clash} are already names of nodes in the block's graph; "
                         f"choose other keys for inputs=")
    for node in data["nodes"]:
        if node["op"] == "null" and node["name"] in renames:
            node["name"] = renames[node["name"]]
    symbol_path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
