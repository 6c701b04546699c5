"""The graph IR. It depends on nothing else in graphopt but the op schema and the errors."""

from graphopt.ir.graph import VARIABLE_KINDS, Graph, Node, Tensor, TensorType, default_output_names

__all__ = ["Graph", "Node", "Tensor", "TensorType", "VARIABLE_KINDS", "default_output_names"]
