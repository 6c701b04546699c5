"""tensor converters."""

from graphopt.onnx.context import ConvertContext, Unsupported, converter  # noqa: F401
