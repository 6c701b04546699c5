"""graphopt: a post-training graph optimizer for Apache MXNet models.

Load a model (:func:`load`, :func:`from_block`) into a :class:`Graph`, rewrite it, and write it
back as MXNet (:func:`save_mxnet`) or ONNX.
"""

from __future__ import annotations

import numpy as _np

from graphopt.errors import (EnvironmentMismatchError, GraphError, GraphoptError, ModelFileError,
                             ParameterError, RuleError, ShapeError, UnknownOpError,
                             UnsupportedOpError)


def _check_numpy() -> None:
    major, minor = (int(p) for p in _np.__version__.split(".")[:2])
    if (major, minor) >= (1, 24):
        raise EnvironmentMismatchError(
            f"numpy {_np.__version__} is installed, but MXNet 1.9.1 needs numpy < 1.24 (it uses "
            f"np.bool, removed in 1.24). Reinstall with the project's constraints: "
            f"pip install -c constraints.txt 'numpy<1.24'")


_check_numpy()

from graphopt.ir import Graph, Node, Tensor, TensorType  # noqa: E402  (after the numpy check)
from graphopt.mxnet_io import from_block, load, save_mxnet  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Graph", "Node", "Tensor", "TensorType", "load", "from_block", "save_mxnet",
           "GraphoptError", "ModelFileError", "UnknownOpError", "ParameterError", "ShapeError",
           "GraphError", "RuleError", "UnsupportedOpError", "EnvironmentMismatchError"]
