"""The rules' own test vectors: tiny graphs written as data in the rule files, built with
MXNet, rewritten with the one rule, and checked against MXNet's outputs before the rewrite.

A test vector (``[[rule.NAME.tests]]``) gives the graph inputs with their shapes, the nodes
(MXNet creates the parameters a node does not name, e.g. ``conv_weight``; a name that is neither
a node nor an input is a parameter), the outputs, and what must happen: ``applied`` times the
rule fires, ``refused_by`` the guard or function (or ``"pattern"``) that must stop it, and
``remaining`` op counts, and ``context`` what the rewrite's guards and functions read (a key
with a registered context factory, such as quantization's ``quantize``, is built from the
vector's graph and seeded inputs). Parameters get seeded random values (variances and gammas in
[0.5, 1.5], so that a fold that ignores them shows); ``params`` fixes some to a constant, and
``zeroed`` zeroes slices of some, as pruning does: ``{ conv_weight = [0, 2] }`` zeroes filters
0 and 2 (axis 0), ``{ up_weight = { axis = 1, index = [1] } }`` index 1 of another axis.
"""

from __future__ import annotations

import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import mxnet as mx
import numpy as np

from graphopt.ir.graph import Graph
from graphopt.mxnet_io.load import load
from graphopt.mxnet_io.save import save_symbol
from graphopt.rewrite.numeric import relative_error, run_graph, seeded_inputs
from graphopt.rewrite.registry import CONTEXT_FACTORIES
from graphopt.rewrite.rules import Rule


@dataclass
class VectorResult:
    rule: str
    name: str
    applied: int
    relative_error: float
    outcomes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _mxnet_op(op: str):
    function = getattr(mx.sym, op, None) or getattr(mx.sym._internal, op, None)
    if function is None and op.startswith("_contrib_"):
        function = getattr(mx.sym.contrib, op[len("_contrib_"):], None)
    if function is None:
        raise ValueError(f"mxnet.sym has no function for op {op!r}")
    return function


def _random_value(name: str, shape: tuple, rng: np.random.RandomState) -> np.ndarray:
    if name.endswith(("_var", "gamma")):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if name.endswith(("_mean", "beta", "bias")):
        return rng.uniform(-0.5, 0.5, shape).astype(np.float32)
    return rng.normal(0.0, 0.5, shape).astype(np.float32)


def build_vector_symbol(vector: dict) -> mx.sym.Symbol:
    built: dict[str, mx.sym.Symbol] = {}

    def tensor(name: str) -> mx.sym.Symbol:
        if name not in built:
            built[name] = mx.sym.Variable(name)
        return built[name]

    def read(name: str) -> mx.sym.Symbol:
        """What a node input names: a node's first output, ``"node:i"`` its output i, or an
        input or parameter."""
        base, _, index = name.partition(":")
        symbol = tensor(base)
        if index:
            return symbol[int(index)]
        return symbol[0] if len(symbol.list_outputs()) > 1 else symbol

    for node in vector["nodes"]:
        attrs = {k: tuple(v) if isinstance(v, list) else v for k, v in node.get("attrs", {}).items()}
        inputs = [read(name) for name in node.get("inputs", [])]
        built[node["name"]] = _mxnet_op(node["op"])(*inputs, name=node["name"], **attrs)
    outputs = [tensor(name) for name in vector["outputs"]]
    return outputs[0] if len(outputs) == 1 else mx.sym.Group(outputs)


def build_vector_graph(vector: dict, folder: str | Path, seed: int = 0) -> Graph:
    """Export the test vector as an MXNet model into ``folder`` and load it, as a user would."""
    shapes = {name: tuple(shape) for name, shape in vector["inputs"].items()}
    rng = np.random.RandomState(seed)
    fixed = vector.get("params", {})
    zeroed = vector.get("zeroed", {})

    def value(_kind: str, name: str, shape: tuple) -> np.ndarray:
        array = (np.full(shape, fixed[name], np.float32) if name in fixed
                 else _random_value(name, shape, rng))
        if name in zeroed:
            where = zeroed[name] if isinstance(zeroed[name], dict) else {"index": zeroed[name]}
            index = [slice(None)] * array.ndim
            index[where.get("axis", 0)] = list(where["index"])
            array[tuple(index)] = 0.0
        return array
    symbol_path, params_path = save_symbol(build_vector_symbol(vector), Path(folder) / "vector",
                                           shapes, value)
    return load(symbol_path, params_path, inputs=shapes, name=vector["name"])


def run_test_vector(rule: Rule, vector: dict) -> VectorResult:
    """Build the vector, rewrite it with ``rule`` alone, and say what does not hold."""
    from graphopt.rewrite.engine import rewrite  # the engine imports this module's neighbours

    seed = zlib.crc32(f"{rule.name}/{vector['name']}".encode()) & 0x7FFFFFFF
    with tempfile.TemporaryDirectory(prefix="graphopt-vector-") as folder:
        graph = build_vector_graph(vector, folder, seed)
    inputs = seeded_inputs(graph, seed)
    before = run_graph(graph, inputs)
    context = {key: (CONTEXT_FACTORIES[key](graph, inputs, setting) if key in CONTEXT_FACTORIES
                     else setting) for key, setting in vector.get("context", {}).items()}
    new_graph, report = rewrite(graph, rules=[rule], context=context)
    after = run_graph(new_graph, inputs)
    error = relative_error(before, after)
    applied = report.applied(rule.name)
    result = VectorResult(rule.name, vector["name"], applied, error,
                          [f"{a.anchor}: {a.outcome} {a.detail}".strip() for a in report.attempts])
    if error > rule.tolerance:
        result.problems.append(f"outputs moved by {error:.3e} relative, tolerance {rule.tolerance:.0e}")
    if "applied" in vector and applied != vector["applied"]:
        result.problems.append(f"fired {applied} times, expected {vector['applied']}")
    refused_by = vector.get("refused_by")
    if refused_by is not None:
        wanted = ("mismatch",) if refused_by == "pattern" else ("guard", "declined")
        if not any(a.outcome in wanted and (refused_by == "pattern" or a.detail.startswith(refused_by))
                   for a in report.attempts):
            result.problems.append(f"expected a refusal by {refused_by}; attempts: {result.outcomes}")
    for op, count in vector.get("remaining", {}).items():
        actual = report.ops_after.get(op, 0)
        if actual != count:
            result.problems.append(f"{actual} {op} remain, expected {count}")
    return result
