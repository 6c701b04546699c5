"""MXNet graph -> ONNX: :func:`to_onnx`, built on the converter table of :mod:`.context`."""

from graphopt.onnx.emit import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, to_onnx

__all__ = ["to_onnx", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET"]
