"""MXNet op -> ONNX converters, one short function per op, grouped by family.

Importing this package fills :data:`graphopt.onnx.context.CONVERTERS`.
"""

from graphopt.onnx.converters import (constant, contrib, legacy, math, nn,  # noqa: F401
                                       numpy_interface, tensor, vision)  # (registration)
