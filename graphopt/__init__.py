"""graphopt: a post-training graph optimizer for Apache MXNet models.

Load a model (:func:`load`, :func:`from_block`) into a :class:`Graph`, rewrite it, and write it
back as MXNet (:func:`save_mxnet`) or ONNX.
"""

from __future__ import annotations

import numpy as _np

from graphopt.errors import (CalibrationError, EnvironmentMismatchError, GraphError,
                             GraphoptError, ModelFileError, ParameterError, PruneError, RuleError,
                             ShapeError, UnknownOpError, UnsupportedOpError)


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
from graphopt.onnx import to_onnx  # noqa: E402
from graphopt.compare import compare  # noqa: E402
from graphopt.analysis import inspect_graph  # noqa: E402
import graphopt.rewrite as _rewrite_package  # noqa: E402
import graphopt.quantize  # noqa: E402,F401  (registers the quantize ops and the rules' functions)
from graphopt.quantize import calibrate  # noqa: E402

# ``graphopt.rewrite(graph)`` is the engine's entry point (issue 4). The name is also the
# subpackage's: after this line ``graphopt.rewrite`` is the function, while
# ``from graphopt.rewrite import format_report`` still finds the package in sys.modules.
rewrite = _rewrite_package.rewrite

# ``graphopt.prune(graph, method=...)`` likewise (issue 9); ``from graphopt.prune import ...``
# still finds the package.
import graphopt.prune as _prune_package  # noqa: E402
prune = _prune_package.prune

import graphopt.distill as _distill_package  # noqa: E402

# ``graphopt.distill(teacher, student, data)`` (issue 10): the function shadows its subpackage's
# name the same way; ``from graphopt.distill import DistillResult`` still finds the package.
distill = _distill_package.distill
DistillResult = _distill_package.DistillResult

__version__ = "0.1.0"

__all__ = ["Graph", "Node", "Tensor", "TensorType", "load", "from_block", "save_mxnet", "to_onnx",
           "compare", "rewrite", "prune", "calibrate", "inspect_graph", "distill", "DistillResult",
           "GraphoptError", "ModelFileError", "UnknownOpError", "ParameterError", "ShapeError",
           "GraphError", "RuleError", "UnsupportedOpError", "EnvironmentMismatchError",
           "CalibrationError", "PruneError"]
