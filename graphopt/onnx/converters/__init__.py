"""MXNet op -> ONNX converters, one short function per op, grouped by family.

Importing this package fills :data:`graphopt.onnx.context.CONVERTERS`.
"""

from graphopt.onnx.converters import contrib, legacy, math, nn, tensor  # noqa: F401  (registration)
