"""MXNet op -> ONNX converters, one short function per op, grouped by family.

Importing this package fills :data:`graphopt.onnx.context.CONVERTERS`.
"""

from graphopt.onnx.converters import (constant, contrib, control_flow, legacy,  # noqa: F401
                                       math, nn, numpy_interface, quantize, tensor,
                                       vision)  # (registration)
