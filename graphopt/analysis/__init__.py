"""Analysis of a graph: what it is and what it costs (inputs, outputs, parameters, MACs/FLOPs)."""

from graphopt.analysis.inspect import format_inspection, human_bytes, human_count, inspect_graph

__all__ = ["inspect_graph", "format_inspection", "human_count", "human_bytes"]
