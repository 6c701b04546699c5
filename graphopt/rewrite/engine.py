"""The rule engine: dispatch by anchor op, a worklist to a fixed point, phases in order.

    new_graph, report = rewrite(graph)                       # the default phases and rules
    new_graph, report = rewrite(graph, rules_dirs=["my_rules"], check="numeric")

The input graph is never changed: the engine works on ``graph.copy()``. Each rewrite is
journaled; if the touched region fails validation (a cycle, a gap in input slots, a shape MXNet
cannot infer or that differs from what it replaces) the rewrite is rolled back, recorded as
rejected with the reason, and the engine carries on. With ``check="numeric"`` each phase is also
run in MXNet before and after on seeded inputs and rolled back as a whole if the outputs moved
more than the smallest tolerance of the rules that fired in it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from typing import Any, Iterable, Sequence

from graphopt._gc import cyclic_gc_paused
from graphopt.errors import RuleError, ShapeError
from graphopt.ir.graph import Graph
from graphopt.rewrite.edits import EditSummary, apply_edits
from graphopt.rewrite.match import Mismatch, Ref, match_rule
from graphopt.rewrite.numeric import relative_error, run_graph, seeded_inputs
from graphopt.rewrite.registry import _CONTEXT, FUNCTIONS, GUARDS, NoRewrite
from graphopt.rewrite.report import Attempt, PhaseCheck, Report
from graphopt.rewrite.rules import DEFAULT_PHASES, PHASES, Call, Rule, load_rules
from graphopt.rewrite.validate import (LocalShapeInference, TopologicalIndex, check_slots,
                                       propagate_types)

# A phase that applies more rewrites than this many per node is not converging.
REWRITES_PER_NODE_LIMIT = 8


def list_rules(rules_dirs: Iterable[str] | None = None) -> list[dict]:
    """The built-in rules and those of ``rules_dirs``: name, phase, anchor op, description, file,
    tolerance, whether its phase runs by default, number of test vectors (``graphopt rules list``)."""
    return [rule.summary() for rule in load_rules(rules_dirs)]


def select_rules(rules: Sequence[Rule | str] | None, rules_dirs: Iterable[str] | None) -> tuple[list[Rule], bool]:
    """The rules to run, and whether the caller chose them (then all their phases run)."""
    if rules is None:
        return load_rules(rules_dirs), False
    if all(isinstance(r, Rule) for r in rules):
        return list(rules), True
    available = {rule.name: rule for rule in load_rules(rules_dirs)}
    chosen = []
    for rule in rules:
        if isinstance(rule, Rule):
            chosen.append(rule)
        elif rule in available:
            chosen.append(available[rule])
        else:
            raise RuleError(f"no rule named {rule!r}; known rules: {', '.join(available)}",
                            rule=str(rule))
    return chosen, True


def rewrite(graph: Graph, rules: Sequence[Rule | str] | None = None,
            phases: Sequence[str] | None = None, rules_dirs: Iterable[str] | None = None,
            check: str | None = None, context: dict[str, Any] | None = None) -> tuple[Graph, Report]:
    """Rewrite a copy of ``graph`` with ``rules`` (default: the built-in rules plus those of
    ``rules_dirs``) in ``phases`` (default: the default phases; all phases of the given rules
    when ``rules`` is given). Returns the new graph and the :class:`Report`. ``context`` is
    what guards and functions read with ``registry.rewrite_context()`` while this rewrite runs
    (the calibration table of a quantization, say)."""
    if check not in (None, "numeric"):
        raise ValueError(f"check must be None or 'numeric', not {check!r}")
    selected, chosen = select_rules(rules, rules_dirs)
    if phases is None:
        wanted = {r.phase for r in selected} if chosen else set(DEFAULT_PHASES)
        phases = [p for p in PHASES if p in wanted]
    for phase in phases:
        if phase not in PHASES:
            raise RuleError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}", key="phases")
    unknown = [node.name for node in graph.variables("input") if not node.outputs[0].known]
    if unknown:
        raise ShapeError(f"the shape or dtype of input(s) {unknown} is unknown, and rules validate "
                         f"every rewrite by shape: load the model with inputs={{name: shape}} "
                         f"(CLI: --input NAME:SHAPE)", file=graph.source.get("symbol"),
                         node=unknown[0], op="null")
    token = _CONTEXT.set(dict(context or {}))
    try:
        return Engine(graph, selected, list(phases), check).run()
    finally:
        _CONTEXT.reset(token)


def _op_nodes(graph: Graph):
    """The op nodes in no particular order (``graph.op_nodes()`` sorts them topologically)."""
    return (node for _name, node in graph.nx.nodes(data="node") if not node.is_variable)


def _op_histogram(graph: Graph) -> dict[str, int]:
    return dict(sorted(Counter(node.op for node in _op_nodes(graph)).items()))


class Engine:
    def __init__(self, graph: Graph, rules: list[Rule], phases: list[str], check: str | None):
        self.source = graph
        self.rules = rules
        self.phases = phases
        self.check = check
        self.report = Report(graph=graph.name, phases=phases)
        self.inference = LocalShapeInference()

    @cyclic_gc_paused()  # see graphopt._gc: collections made time per node grow with the graph
    def run(self) -> tuple[Graph, Report]:
        started = time.perf_counter()
        self.graph = graph = self.source.copy()
        # MXNet cannot infer every shape of some graphs (the outputs of _while_loop and _cond):
        # those the rewrite is not asked to make known
        shapes_known = all(t.known for node in graph.nodes() for t in node.outputs)
        self.report.ops_before = _op_histogram(graph)
        self.output_types = [(t.shape, t.dtype) for t in (graph.tensor_type(o) for o in graph.outputs)]
        self.report.rules = [r.summary() for r in sorted(self.rules, key=_rule_order)
                             if r.phase in self.phases]
        self.index = TopologicalIndex(graph)   # kept up to date by every rewrite, across phases
        for phase in self.phases:
            self.run_phase(phase, [r for r in self.rules if r.phase == phase])
        graph.stop_journal()
        graph.validate(shapes=shapes_known)
        self.report.ops_after = _op_histogram(graph)
        self.report.remaining = {node.name for node in _op_nodes(graph)}
        self.report.seconds = time.perf_counter() - started
        return graph, self.report

    # --- one phase ------------------------------------------------------------------------------

    def run_phase(self, phase: str, rules: list[Rule]) -> None:
        dispatch: dict[str, list[Rule]] = defaultdict(list)
        for rule in sorted(rules, key=_rule_order):
            for op in rule.anchor_ops:
                dispatch[op].append(rule)
        if not dispatch:
            return
        graph = self.graph
        order = sorted(graph.nx, key=self.index.position.__getitem__)
        queue = deque(name for name in order if graph.node(name).op in dispatch)
        queued = set(queue)
        first_attempt = len(self.report.attempts)
        numeric = self.check == "numeric"
        if numeric:
            inputs = seeded_inputs(graph)
            reference = run_graph(graph, inputs)
            phase_mark = graph.journal_mark()
        limit = REWRITES_PER_NODE_LIMIT * len(order) + 100
        applied: list[Rule] = []
        while queue:
            name = queue.popleft()
            queued.discard(name)
            if name not in graph:
                continue
            for rule in dispatch.get(graph.node(name).op, ()):
                summary = self.attempt(rule, name, phase)
                if summary is None:
                    continue
                applied.append(rule)
                if len(applied) > limit:
                    raise self.loop_error(phase, applied)
                for node in self.requeue(summary):
                    if node not in queued and graph.node(node).op in dispatch:
                        queue.append(node)
                        queued.add(node)
                break
        if numeric and applied:
            tolerance = min(rule.tolerance for rule in applied)
            error = relative_error(reference, run_graph(graph, inputs))
            kept = error <= tolerance
            self.report.checks.append(PhaseCheck(phase, error, tolerance, kept))
            if not kept:
                graph.rollback(phase_mark)
                self.index.rebuild()
                detail = (f"phase {phase!r} moved the outputs by {error:.2e} relative, more than "
                          f"the tolerance {tolerance:.0e}")
                for attempt in self.report.attempts[first_attempt:]:
                    if attempt.outcome == "applied":
                        attempt.outcome, attempt.detail = "rolled_back", detail
        graph.stop_journal()

    def loop_error(self, phase: str, applied: list[Rule]) -> RuleError:
        recent = Counter(rule.name for rule in applied[-1000:]).most_common(5)
        names = ", ".join(f"{name} ({count} of the last {min(len(applied), 1000)})"
                          for name, count in recent)
        return RuleError(f"phase {phase!r} does not reach a fixed point: {len(applied)} rewrites "
                         f"on a graph of {len(self.graph)} nodes; rules still firing: {names}",
                         rule=recent[0][0])

    def requeue(self, summary: EditSummary) -> list[str]:
        """The nodes a rewrite may have made matchable: those it made or changed, and the readers
        of those and of the producers whose readers changed. In graph order, so that runs are
        reproducible (set order of strings is not)."""
        graph = self.graph
        nodes = set(summary.added) | summary.changed
        around = set()
        for name in nodes | summary.neighbours:
            if name in graph:
                around.update(graph.nx.succ[name])
        position = self.index.position
        return sorted((n for n in nodes | around if n in graph), key=position.__getitem__)

    # --- one attempt ----------------------------------------------------------------------------

    def record(self, rule: Rule, anchor: str, phase: str, outcome: str, detail: str = "") -> None:
        op = self.graph.node(anchor).op if anchor in self.graph else ""
        self.report.attempts.append(Attempt(rule.name, anchor, op, phase, outcome, detail))

    def attempt(self, rule: Rule, anchor: str, phase: str) -> EditSummary | None:
        graph = self.graph
        op = graph.node(anchor).op
        match = match_rule(rule, graph, anchor)
        if isinstance(match, Mismatch):
            self.record(rule, anchor, phase, "mismatch", str(match))
            return None
        refs = {binding: match.ref(graph, binding) for binding in match.tensors}
        for call in rule.guards:
            try:
                reason = GUARDS[call.function].function(*self.arguments(call, refs))
            except Exception as error:  # a broken guard must not pass silently
                reason = f"raised {type(error).__name__}: {error}"
            if reason:
                self.record(rule, anchor, phase, "guard", f"{call.function} failed: {reason}")
                return None
        values: dict[str, Any] = {}
        try:
            for call in rule.compute:
                self.compute(call, refs, values)
        except NoRewrite as reason:
            self.record(rule, anchor, phase, "declined", f"{call.function}: {reason}")
            return None
        except Exception as error:
            self.record(rule, anchor, phase, "rejected",
                        f"{call.text} raised {type(error).__name__}: {error}")
            return None
        mark = graph.journal_mark()
        rebuilds = self.index.rebuilds
        try:
            summary = apply_edits(graph, rule, match, values)
            problem = self.validate(rule, summary)
        except Exception as error:  # whatever an edit or the inference raised: undo, carry on
            problem = f"{type(error).__name__}: {error}"
        if problem is not None:
            graph.rollback(mark)
            if self.index.rebuilds != rebuilds:
                self.index.rebuild()
            self.record(rule, anchor, phase, "rejected", problem)
            return None
        if self.check != "numeric":
            graph.stop_journal()   # committed: nothing to undo it to any more
        self.report.attempts.append(Attempt(rule.name, anchor, op, phase, "applied"))
        return summary

    @staticmethod
    def arguments(call: Call, refs: dict[str, Ref | None], values: dict[str, Any] | None = None) -> list:
        values = values or {}
        out = []
        for arg in call.args:
            if arg.name is None:
                out.append(arg.literal)
            elif arg.name in values:
                out.append(values[arg.name])
            else:
                out.append(refs[arg.name])
        return out

    def compute(self, call: Call, refs: dict[str, Ref | None], values: dict[str, Any]) -> None:
        result = FUNCTIONS[call.function].function(*self.arguments(call, refs, values))
        if len(call.targets) == 1:
            values[call.targets[0]] = result
        else:
            if not isinstance(result, tuple) or len(result) != len(call.targets):
                raise TypeError(f"{call.function} returned {type(result).__name__}, expected "
                                f"{len(call.targets)} values")
            values.update(zip(call.targets, result))

    # --- validation of the touched region -------------------------------------------------------

    def validate(self, rule: Rule, summary: EditSummary) -> str | None:
        graph = self.graph
        new = [n for n in summary.added if n in graph]
        touched = {n for n in summary.changed if n in graph} | set(new)
        cycle = self.index.place(new, touched)
        if cycle is not None:
            return f"the edits make a cycle: {cycle}"
        for name in touched:
            if not graph.node(name).is_variable:
                problem = check_slots(graph, name)
                if problem:
                    return problem
        problem = propagate_types(graph, self.inference, self.index.position, touched,
                                  frozen_ok=set(new), allow_changes=rule.changes_shapes)
        if problem:
            return problem
        if not rule.changes_shapes:
            for old_name, old_type, tensor in summary.replaced:
                new_type = graph.tensor_type(tensor)
                if (new_type.shape, new_type.dtype) != (old_type.shape, old_type.dtype):
                    return (f"{tensor.node!r} gives {new_type.shape} {new_type.dtype} where "
                            f"{old_name!r} gave {old_type.shape} {old_type.dtype}")
        outputs = [(t.shape, t.dtype) for t in (graph.tensor_type(o) for o in graph.outputs)]
        if outputs != self.output_types:
            return f"graph outputs would change from {self.output_types} to {outputs}"
        return None


def _rule_order(rule: Rule) -> tuple:
    return (PHASES.index(rule.phase), -rule.priority, rule.order)
