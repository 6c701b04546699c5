"""What a pruned model's parameters take on disk: measured by writing them, never estimated.

Zeroed weights make a dense params file no smaller: MXNet writes every element. They do make it
compressible, and a sparse encoding stores only what is left. :func:`storage_sizes` serializes
the parameters (in memory, or to a temporary file for MXNet's own format) in each form and
reports the bytes:

``mxnet``             the ``.params`` file :func:`graphopt.save_mxnet` writes (``mx.nd.save``,
                      ``arg:``/``aux:`` names)
``npz_zlib``          the dense arrays in ``np.savez_compressed`` (zip + deflate)
``bitmask``           per array a bit per element (``np.packbits`` of ``w != 0``) and the nonzero
                      values, in an uncompressed ``.npz``
``bitmask_zlib``      the same, deflated (what :func:`save_sparse` writes)
``csr``               per array, rows = axis 0: ``indptr`` (int64), column ``indices`` in the
                      smallest unsigned type that holds a row's length, and the values (``.npz``)

A bitmask costs 1/32 of a float32 element and beats CSR until about 97% sparsity (CSR pays 1-4
bytes of index per nonzero). :func:`save_sparse` / :func:`load_sparse` round-trip the
``bitmask_zlib`` form exactly (``load_sparse`` gives back the dense arrays).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from graphopt._files import atomic_write_bytes
from graphopt.ir.graph import Graph

FORMATS = ("mxnet", "npz_zlib", "bitmask", "bitmask_zlib", "csr")


def _npz_bytes(arrays: Mapping[str, np.ndarray], compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _bitmask_arrays(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {}
    for index, (name, value) in enumerate(params.items()):
        flat = np.ascontiguousarray(value).reshape(-1)
        mask = flat != 0
        arrays[f"{index}.name"] = np.frombuffer(name.encode(), dtype=np.uint8)
        arrays[f"{index}.shape"] = np.asarray(value.shape, dtype=np.int64)
        arrays[f"{index}.mask"] = np.packbits(mask)
        arrays[f"{index}.values"] = flat[mask]
    return arrays


def _csr_arrays(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {}
    for index, (name, value) in enumerate(params.items()):
        matrix = np.ascontiguousarray(value).reshape(value.shape[0] if value.ndim else 1, -1)
        rows, columns = np.nonzero(matrix)
        width = matrix.shape[1]
        index_type = np.uint8 if width <= 1 << 8 else np.uint16 if width <= 1 << 16 else np.uint32
        arrays[f"{index}.name"] = np.frombuffer(name.encode(), dtype=np.uint8)
        arrays[f"{index}.shape"] = np.asarray(value.shape, dtype=np.int64)
        arrays[f"{index}.indptr"] = np.searchsorted(rows, np.arange(matrix.shape[0] + 1))
        arrays[f"{index}.indices"] = columns.astype(index_type)
        arrays[f"{index}.values"] = matrix[rows, columns]
    return arrays


def _mxnet_bytes(graph: Graph) -> int:
    import mxnet as mx
    from graphopt.mxnet_io.save import params_for_mxnet
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model-0000.params")
        mx.nd.save(path, params_for_mxnet(graph, copy=False))
        return os.path.getsize(path)


def storage_sizes(graph: Graph) -> dict[str, int]:
    """Bytes of the parameters (and aux states) of ``graph`` in each of :data:`FORMATS`."""
    params = graph.params
    bitmask = _bitmask_arrays(params)
    return {
        "mxnet": _mxnet_bytes(graph),
        "npz_zlib": len(_npz_bytes(params, compressed=True)),
        "bitmask": len(_npz_bytes(bitmask, compressed=False)),
        "bitmask_zlib": len(_npz_bytes(bitmask, compressed=True)),
        "csr": len(_npz_bytes(_csr_arrays(params), compressed=False)),
    }


def save_sparse(params: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write ``params`` as a deflated bitmask ``.npz`` (atomically); :func:`load_sparse` reads it."""
    return atomic_write_bytes(path, _npz_bytes(_bitmask_arrays(params), compressed=True))


def load_sparse(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The dense arrays of a file :func:`save_sparse` wrote."""
    params = {}
    with np.load(str(path)) as stored:
        count = len({key.split(".")[0] for key in stored.files})
        for index in range(count):
            name = stored[f"{index}.name"].tobytes().decode()
            shape = tuple(int(d) for d in stored[f"{index}.shape"])
            values = stored[f"{index}.values"]
            size = int(np.prod(shape))
            mask = np.unpackbits(stored[f"{index}.mask"], count=size).astype(bool)
            dense = np.zeros(size, dtype=values.dtype)
            dense[mask] = values
            params[name] = dense.reshape(shape)
    return params
