"""Reading and writing MXNet models, and MXNet's shape inference over the IR."""

from graphopt.mxnet_io.block import from_block
from graphopt.mxnet_io.infer import infer_shapes, to_symbol
from graphopt.mxnet_io.load import load, read_params
from graphopt.mxnet_io.save import params_for_mxnet, save_mxnet, save_symbol
from graphopt.mxnet_io.symbol_json import graph_from_json, graph_to_json

__all__ = ["from_block", "infer_shapes", "to_symbol", "load", "read_params", "params_for_mxnet",
           "save_mxnet", "save_symbol", "graph_from_json", "graph_to_json"]
