"""Rules as data: the rule file format, and the strict loader.

One rule is one TOML table ``[rule.NAME]`` (the format is documented with examples in
``rules/README.md``). Loading checks everything a rule names before any graph is touched: ops
against MXNet's op schema, input slots against the op's inputs, attribute names against the op's
attributes, guards and functions against the registries (and their number of arguments), and
that every name is bound before it is used. A malformed rule is refused with a
:class:`~graphopt.errors.RuleError` naming the file, the rule and the offending key.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from graphopt.errors import RuleError
from graphopt.rewrite.registry import FUNCTIONS, GUARDS, Registered
from graphopt.schema import OpSpec, mxnet_schema

# Phases run in this order. Only cleanup and fold run by default; the others are asked for:
# ``lower`` trades a fused op for simpler ones (BatchNorm -> multiply + add), slower in MXNet and
# only worth it for a consumer that wants no BatchNorm; ``equalize`` rescales the channels of
# conv -> (ReLU) -> conv pairs before calibration (graphopt.quantize.equalize); ``drop_channels``
# deletes the channels pruning zeroed (graphopt.prune); ``quantize`` inserts quantize/dequantize
# pairs (graphopt.quantize), last, so that it sees the graph every other phase left.
PHASES = ("cleanup", "fold", "lower", "equalize", "drop_channels", "quantize")
DEFAULT_PHASES = ("cleanup", "fold")

DEFAULT_TOLERANCE = 1e-5
RULE_KEYS = {"description", "phase", "anchor", "priority", "tolerance", "params", "pattern",
             "guards", "compute", "edits", "tests", "changes_shapes"}
PATTERN_NODE_KEYS = {"op", "inputs", "attrs", "output"}
TEST_KEYS = {"name", "inputs", "nodes", "outputs", "params", "zeroed", "applied", "refused_by",
             "remaining", "context"}
TEST_NODE_KEYS = {"name", "op", "inputs", "attrs"}
EDIT_KEYS = {
    "set_input": ({"slot", "to"}, set()),
    "replace_uses": ({"by"}, set()),
    "set_attr": (set(), {"attrs", "attrs_from"}),
    "add_node": ({"op"}, {"inputs", "attrs", "attrs_from", "name"}),
    "add_param": ({"value"}, {"name"}),
    "insert_on_edge": ({"tensor", "op"}, {"extra_inputs", "attrs", "attrs_from", "name",
                                          "readers_only"}),
    "erase": (set(), set()),
    "apply_changes": (set(), set()),
}

_IDENT = re.compile(r"[A-Za-z_]\w*\Z")
_OUTPUT_REF = re.compile(r"[A-Za-z_]\w*:\d+\Z")
_CALL = re.compile(r"\s*(?:(?P<targets>[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*)\s*=\s*)?"
                   r"(?P<function>[A-Za-z_]\w*)\s*\((?P<args>.*)\)\s*\Z", re.S)
_ARG = re.compile(r"\s*(?:(?P<string>\"(?:[^\"\\]|\\.)*\"|'[^']*')|(?P<bool>true|false)\b|"
                  r"(?P<number>[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))|"
                  r"(?P<name>[A-Za-z_]\w*))\s*(?:,|\Z)")


# --- the rule model ------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One entry of a pattern node's ``inputs``: the name bound to that slot's tensor
    (``None`` for ``_``: not looked at), and whether the slot may be absent (``name?``)."""
    binding: str | None
    optional: bool = False


@dataclass(frozen=True)
class PatternNode:
    binding: str
    ops: tuple[str, ...]
    inputs: tuple[Slot, ...]
    more_inputs: bool = False           # the list ended with "...": further inputs are ignored
    attrs: tuple[tuple[str, Any], ...] = ()
    output: int = 0


@dataclass(frozen=True)
class Arg:
    name: str | None = None             # a bound name ...
    literal: Any = None                 # ... or a literal value


@dataclass(frozen=True)
class Call:
    """``targets = function(args)`` (a compute line) or ``function(args)`` (a guard)."""
    function: str
    args: tuple[Arg, ...]
    targets: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class Edit:
    verb: str
    target: str
    fields: dict


@dataclass
class Rule:
    name: str
    description: str
    file: str
    phase: str
    anchor: str                         # the binding name of the anchor node
    pattern: dict[str, PatternNode]
    params: tuple[str, ...] = ()        # leaves that must be parameters (values captured)
    guards: tuple[Call, ...] = ()
    compute: tuple[Call, ...] = ()
    edits: tuple[Edit, ...] = ()
    tolerance: float = DEFAULT_TOLERANCE
    priority: int = 0
    changes_shapes: bool = False
    tests: tuple[dict, ...] = ()
    order: int = 0                      # load order, the tie-break after priority

    @property
    def anchor_ops(self) -> tuple[str, ...]:
        return self.pattern[self.anchor].ops

    @property
    def leaves(self) -> set[str]:
        names = {s.binding for p in self.pattern.values() for s in p.inputs if s.binding}
        return names - set(self.pattern)

    def summary(self) -> dict:
        return {"name": self.name, "phase": self.phase, "anchor": "|".join(self.anchor_ops),
                "description": self.description, "file": self.file, "tolerance": self.tolerance,
                "default": self.phase in DEFAULT_PHASES, "tests": len(self.tests)}


# --- finding rule files ------------------------------------------------------------------------

def builtin_rules_dir() -> Path:
    """The built-in rules: the package ``graphopt.builtin_rules`` when installed, else the
    repository's ``rules/`` folder."""
    try:
        folder = importlib.resources.files("graphopt.builtin_rules")
        path = Path(str(folder))
        if path.is_dir() and any(path.glob("*.toml")):
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "rules"


def rule_files(rules_dirs: Iterable[str | Path] | None = None, builtin: bool = True) -> list[Path]:
    folders = ([builtin_rules_dir()] if builtin else []) + [Path(d) for d in rules_dirs or ()]
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise RuleError("rules folder not found", file=str(folder))
        files.extend(sorted(folder.glob("*.toml")))
    return files


def load_rules(rules_dirs: Iterable[str | Path] | None = None, builtin: bool = True) -> list[Rule]:
    """Every rule of the built-in files and of ``rules_dirs``, checked (see the module doc)."""
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for path in rule_files(rules_dirs, builtin):
        for rule in load_rule_file(path, first_order=len(rules)):
            if rule.name in seen:
                raise RuleError(f"rule name already used in {seen[rule.name]}", file=str(path),
                                rule=rule.name)
            seen[rule.name] = str(path)
            rules.append(rule)
    return rules


_PARSED: dict[tuple, list[Rule]] = {}


def load_rule_file(path: str | Path, first_order: int = 0) -> list[Rule]:
    """The rules of one file, checked. Parsed rules are kept while the file (and the set of
    registered guards and functions) stays the same: parsing TOML costs more than folding a
    small model."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise RuleError(f"cannot read rule file: {error}", file=str(path)) from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, tuple(GUARDS), tuple(FUNCTIONS))
    if key not in _PARSED:
        _PARSED[key] = _parse_rule_file(path)
    return [dataclasses.replace(rule, order=first_order + i) for i, rule in enumerate(_PARSED[key])]


def _parse_rule_file(path: Path) -> list[Rule]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise RuleError(f"not valid TOML: {error}", file=str(path)) from None
    except OSError as error:
        raise RuleError(f"cannot read rule file: {error}", file=str(path)) from None
    unknown = set(data) - {"rule"}
    if unknown:
        raise RuleError("unknown top-level key; rules are tables [rule.NAME]", file=str(path),
                        key=sorted(unknown)[0])
    tables = data.get("rule", {})
    if not isinstance(tables, dict):
        raise RuleError("'rule' must be a table of rules", file=str(path), key="rule")
    return [parse_rule(name, table, str(path), i) for i, (name, table) in enumerate(tables.items())]


def parse_rule(name: str, table: Any, file: str, order: int = 0) -> Rule:
    return _RuleParser(name, table, file).parse(order)


# --- the checks -------------------------------------------------------------------------------

class _RuleParser:
    def __init__(self, name: str, table: Any, file: str):
        self.name, self.table, self.file = name, table, file
        self.schema = mxnet_schema()
        self._new_ops: dict[str, list[OpSpec]] = {}   # ops of the nodes the edits add

    def fail(self, message: str, key: str) -> RuleError:
        return RuleError(message, file=self.file, rule=self.name, key=key)

    def check_keys(self, table: dict, known: set[str], key: str | None = None,
                   required: Iterable[str] = ()) -> None:
        """Refuse keys of ``table`` outside ``known`` and missing ``required`` ones, naming the key."""
        prefix = f"{key}." if key else ""
        unknown = set(table) - known
        if unknown:
            raise self.fail(f"unknown key (known: {', '.join(sorted(known))})",
                            f"{prefix}{sorted(unknown)[0]}")
        for name in required:
            if name not in table:
                raise self.fail("missing required key", f"{prefix}{name}")

    def get(self, key: str, kind: type | tuple, default: Any = None, required: bool = False):
        if key not in self.table:
            if required:
                raise self.fail("missing required key", key)
            return default
        value = self.table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(f"must be a {names}, not {type(value).__name__}", key)
        return value

    def parse(self, order: int) -> Rule:
        if not _IDENT.match(self.name):
            raise self.fail("a rule name is an identifier (letters, digits, _)", "rule")
        if not isinstance(self.table, dict):
            raise self.fail("a rule is a table", "rule")
        self.check_keys(self.table, RULE_KEYS)
        description = self.get("description", str, required=True).strip()
        if not description or "\n" in description:
            raise self.fail("the description is one line stating the identity", "description")
        phase = self.get("phase", str, required=True)
        if phase not in PHASES:
            raise self.fail(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}", "phase")
        tolerance = float(self.get("tolerance", (int, float), DEFAULT_TOLERANCE))
        if tolerance < 0:
            raise self.fail("tolerance must be >= 0", "tolerance")
        pattern = self.parse_pattern()
        anchor = self.get("anchor", str, required=True)
        if anchor not in pattern:
            raise self.fail(f"anchor {anchor!r} is not a node of the pattern", "anchor")
        self.check_connected(pattern, anchor)
        leaves = {s.binding for p in pattern.values() for s in p.inputs if s.binding} - set(pattern)
        params = tuple(self.get("params", list, []))
        for i, param in enumerate(params):
            if param not in leaves:
                raise self.fail(f"{param!r} is not an input leaf of the pattern", f"params[{i}]")
        bound = {name: ("node" if name in pattern else "tensor") for name in set(pattern) | leaves}
        guards = tuple(self.parse_call(text, f"guards[{i}]", bound, GUARDS, guard=True)
                       for i, text in enumerate(self.get("guards", list, [])))
        compute = []
        for i, text in enumerate(self.get("compute", list, [])):
            call = self.parse_call(text, f"compute[{i}]", bound, FUNCTIONS, guard=False)
            for target in call.targets:
                if target in bound:
                    raise self.fail(f"{target!r} is already bound", f"compute[{i}]")
                bound[target] = "value"
            compute.append(call)
        edits = tuple(self.parse_edit(edit, f"edits[{i}]", bound, pattern)
                      for i, edit in enumerate(self.get("edits", list, [])))
        if not edits:
            raise self.fail("a rule must edit the graph", "edits")
        tests = tuple(self.parse_test(test, f"tests[{i}]")
                      for i, test in enumerate(self.get("tests", list, [])))
        return Rule(name=self.name, description=description, file=self.file, phase=phase,
                    anchor=anchor, pattern=pattern, params=params, guards=guards,
                    compute=tuple(compute), edits=edits, tolerance=tolerance,
                    priority=self.get("priority", int, 0),
                    changes_shapes=self.get("changes_shapes", bool, False), tests=tests,
                    order=order)

    # pattern ------------------------------------------------------------------------------

    def op_spec(self, op: Any, key: str) -> OpSpec:
        if not isinstance(op, str):
            raise self.fail("an op is a string", key)
        spec = self.schema.get(op)
        if spec is None:
            canonical = self.schema.canonical(op)
            hint = (f"; MXNet stores it as {canonical!r} in symbol JSON" if canonical != op
                    else "")
            raise self.fail(f"MXNet has no op {op!r}{hint}", key)
        return spec

    def check_attrs(self, specs: list[OpSpec], attrs: Any, key: str) -> None:
        if not isinstance(attrs, dict):
            raise self.fail("attrs is a table", key)
        for attr in attrs:
            for spec in specs:
                # Custom hands its keyword arguments to the registered CustomOpProp: MXNet's
                # schema cannot list them
                if attr not in spec.attrs and spec.name != "Custom":
                    raise self.fail(f"{spec.name} has no attribute {attr!r} (it has "
                                    f"{', '.join(sorted(spec.attrs))})", f"{key}.{attr}")

    def parse_pattern(self) -> dict[str, PatternNode]:
        table = self.get("pattern", dict, required=True)
        if not table:
            raise self.fail("the pattern is empty", "pattern")
        pattern = {}
        for binding, entry in table.items():
            key = f"pattern.{binding}"
            if not _IDENT.match(binding) or binding == "_":
                raise self.fail("a pattern name is an identifier", key)
            if not isinstance(entry, dict):
                raise self.fail("a pattern node is a table { op = ..., inputs = [...] }", key)
            self.check_keys(entry, PATTERN_NODE_KEYS, key, required=["op"])
            ops = entry["op"] if isinstance(entry["op"], list) else [entry["op"]]
            specs = [self.op_spec(op, f"{key}.op") for op in ops]
            inputs = entry.get("inputs", [])
            if not isinstance(inputs, list):
                raise self.fail("inputs is a list of names, one per input slot", f"{key}.inputs")
            slots, more = [], False
            for slot, text in enumerate(inputs):
                slot_key = f"{key}.inputs[{slot}]"
                if text == "...":
                    if slot != len(inputs) - 1:
                        raise self.fail("'...' may only end the list", slot_key)
                    more = True
                    continue
                if not isinstance(text, str):
                    raise self.fail("an input is a name, 'name?' (optional), '_' or '...'", slot_key)
                optional = text.endswith("?")
                name = text[:-1] if optional else text
                if name != "_" and not _IDENT.match(name):
                    raise self.fail(f"{text!r} is not a name", slot_key)
                for spec in specs:
                    if not spec.variadic and slot >= len(spec.inputs):
                        raise self.fail(f"slot {slot} is out of range: {spec.name} has "
                                        f"{len(spec.inputs)} inputs ({', '.join(spec.inputs)})",
                                        slot_key)
                if name == binding:
                    raise self.fail("a node cannot be its own input", slot_key)
                slots.append(Slot(None if name == "_" else name, optional))
            attrs = entry.get("attrs", {})
            self.check_attrs(specs, attrs, f"{key}.attrs")
            output = entry.get("output", 0)
            if not isinstance(output, int) or output < 0:
                raise self.fail("output is an output index (int >= 0)", f"{key}.output")
            pattern[binding] = PatternNode(binding, tuple(ops), tuple(slots), more,
                                           tuple((k, _normalise(v)) for k, v in attrs.items()),
                                           output)
        return pattern

    def check_connected(self, pattern: dict[str, PatternNode], anchor: str) -> None:
        """Every pattern node is reached from the anchor through inputs (the matcher walks
        from the anchor to its producers)."""
        reached, stack = set(), [anchor]
        while stack:
            name = stack.pop()
            if name in reached or name not in pattern:
                continue
            reached.add(name)
            stack.extend(s.binding for s in pattern[name].inputs if s.binding)
        for name in pattern:
            if name not in reached:
                raise self.fail(f"pattern node {name!r} is not an input (direct or indirect) of "
                                f"the anchor {anchor!r}", f"pattern.{name}")

    # calls --------------------------------------------------------------------------------

    def parse_call(self, text: Any, key: str, bound: dict[str, str],
                   registry: dict[str, Registered], guard: bool) -> Call:
        if not isinstance(text, str):
            raise self.fail("a call is a string such as \"name(arg, arg)\"", key)
        match = _CALL.match(text)
        if not match:
            form = "guard(arg, ...)" if guard else "result, ... = function(arg, ...)"
            raise self.fail(f"cannot read {text!r}; expected {form}", key)
        targets = tuple(t.strip() for t in (match.group("targets") or "").split(",") if t.strip())
        if guard and targets:
            raise self.fail("a guard returns nothing to assign", key)
        if not guard and not targets:
            raise self.fail("a compute line assigns its result: name = function(...)", key)
        function = match.group("function")
        registered = registry.get(function)
        if registered is None:
            kind = "guard" if guard else "function"
            known = ", ".join(sorted(registry)) or "none"
            raise self.fail(f"no {kind} named {function!r} is registered (registered: {known})", key)
        args = self.parse_args(match.group("args"), key)
        for arg in args:
            if arg.name is not None and arg.name not in bound:
                raise self.fail(f"{arg.name!r} is used before it is bound", key)
        count = len(args)
        if count < registered.min_args or (registered.max_args is not None
                                           and count > registered.max_args):
            wanted = (f"{registered.min_args}" if registered.max_args == registered.min_args
                      else f"{registered.min_args} to {registered.max_args or 'any'}")
            raise self.fail(f"{function} takes {wanted} arguments, {count} given", key)
        if not guard and len(targets) != len(registered.returns):
            raise self.fail(f"{function} returns {len(registered.returns)} value(s) "
                            f"({', '.join(registered.returns)}), {len(targets)} assigned", key)
        return Call(function, args, targets, text.strip())

    def parse_args(self, text: str, key: str) -> tuple[Arg, ...]:
        args, position = [], 0
        text = text.strip()
        while position < len(text):
            match = _ARG.match(text, position)
            if not match or match.end() == position:
                raise self.fail(f"cannot read the arguments {text!r}", key)
            position = match.end()
            if match.group("string") is not None:
                args.append(Arg(literal=match.group("string")[1:-1]))
            elif match.group("bool") is not None:
                args.append(Arg(literal=match.group("bool") == "true"))
            elif match.group("number") is not None:
                number = match.group("number")
                args.append(Arg(literal=float(number) if re.search(r"[.eE]", number) else int(number)))
            else:
                args.append(Arg(name=match.group("name")))
        return tuple(args)

    # edits --------------------------------------------------------------------------------

    def parse_edit(self, edit: Any, key: str, bound: dict[str, str],
                   pattern: dict[str, PatternNode]) -> Edit:
        if not isinstance(edit, dict):
            raise self.fail("an edit is an inline table such as { replace_uses = \"bn\", by = \"conv\" }", key)
        verbs = [v for v in edit if v in EDIT_KEYS]
        if len(verbs) != 1:
            raise self.fail(f"an edit has exactly one verb of {', '.join(EDIT_KEYS)}", key)
        verb = verbs[0]
        required, optional = EDIT_KEYS[verb]
        fields = {k: v for k, v in edit.items() if k != verb}
        for name in fields:
            if name not in required | optional:
                raise self.fail(f"{verb} takes {', '.join(sorted(required | optional)) or 'no other keys'}",
                                f"{key}.{name}")
        for name in required:
            if name not in fields:
                raise self.fail(f"{verb} needs {name!r}", f"{key}.{name}")
        target = edit[verb]
        if not isinstance(target, str) or not _IDENT.match(target):
            raise self.fail("the verb's value is a name", f"{key}.{verb}")

        def need(name: str, kinds: tuple[str, ...], where: str) -> str:
            if isinstance(name, str) and _OUTPUT_REF.match(name):  # "q:1": output 1 of q
                base = name.split(":")[0]
                if bound.get(base) not in ("node", "new node"):
                    raise self.fail(f"{name!r}: {base!r} is not a bound node", where)
                return "tensor"
            if not isinstance(name, str) or name not in bound:
                raise self.fail(f"{name!r} is used before it is bound", where)
            if bound[name] not in kinds:
                raise self.fail(f"{name!r} is a {bound[name]}; expected a {' or '.join(kinds)}", where)
            return bound[name]

        def op_specs_of(name: str) -> list[OpSpec]:
            if name in pattern:
                return [self.schema[op] for op in pattern[name].ops]
            return self._new_ops.get(name, [])

        tensors = ("node", "tensor", "new node")
        if verb in ("set_input", "set_attr", "erase"):
            need(target, ("node", "new node"), f"{key}.{verb}")
        if verb == "replace_uses":
            need(target, tensors, f"{key}.{verb}")
            need(fields["by"], tensors + ("value",), f"{key}.by")
        if verb == "set_input":
            need(fields["to"], tensors + ("value",), f"{key}.to")
            slot = fields["slot"]
            for spec in op_specs_of(target):
                if isinstance(slot, str):
                    if slot not in spec.inputs:
                        raise self.fail(f"{spec.name} has no input {slot!r} ({', '.join(spec.inputs)})",
                                        f"{key}.slot")
                elif not isinstance(slot, int) or slot < 0 or (
                        not spec.variadic and slot >= len(spec.inputs)):
                    raise self.fail(f"slot {slot} is out of range: {spec.name} has "
                                    f"{len(spec.inputs)} inputs", f"{key}.slot")
        if verb in ("set_attr", "add_node", "insert_on_edge"):
            specs = ([self.op_spec(fields["op"], f"{key}.op")] if "op" in fields
                     else op_specs_of(target))
            if verb == "set_attr" and not ({"attrs", "attrs_from"} & set(fields)):
                raise self.fail("set_attr needs attrs or attrs_from", key)
            self.check_attrs(specs, fields.get("attrs", {}), f"{key}.attrs")
            self.check_attrs(specs, fields.get("attrs_from", {}), f"{key}.attrs_from")
            for attr, name in fields.get("attrs_from", {}).items():
                need(name, ("value",), f"{key}.attrs_from.{attr}")
        if verb in ("add_node", "insert_on_edge"):
            spec = self.op_spec(fields["op"], f"{key}.op")
            inputs = fields.get("inputs", []) if verb == "add_node" else (
                [fields["tensor"]] + list(fields.get("extra_inputs", [])))
            if not isinstance(inputs, list):
                raise self.fail("inputs is a list of names", f"{key}.inputs")
            if not spec.variadic and len(inputs) > len(spec.inputs):
                raise self.fail(f"{spec.name} has {len(spec.inputs)} inputs, {len(inputs)} given",
                                f"{key}.inputs")
            for i, name in enumerate(inputs):
                need(name, tensors + ("value",), f"{key}.inputs[{i}]")
        if verb == "add_param":
            need(fields["value"], ("value",), f"{key}.value")
        if verb == "apply_changes":
            need(target, ("value",), f"{key}.{verb}")
        if "name" in fields:
            self.check_template(fields["name"], bound, f"{key}.name")
        if verb in ("add_node", "add_param", "insert_on_edge"):
            if target in bound:
                raise self.fail(f"{target!r} is already bound", f"{key}.{verb}")
            bound[target] = "new node"
            self._new_ops[target] = ([self.schema[fields["op"]]] if "op" in fields else [])
        return Edit(verb, target, fields)

    def check_template(self, template: Any, bound: dict[str, str], key: str) -> None:
        if not isinstance(template, str):
            raise self.fail("a name template is a string such as \"{bn}_scale\"", key)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as error:
            raise self.fail(f"bad name template: {error}", key) from None
        for name in fields:
            if bound.get(name) not in ("node", "tensor", "new node", "value"):
                raise self.fail(f"template field {{{name}}} is not a bound name", key)

    # test vectors ---------------------------------------------------------------------------

    def parse_test(self, test: Any, key: str) -> dict:
        if not isinstance(test, dict):
            raise self.fail("a test vector is a table", key)
        self.check_keys(test, TEST_KEYS, key, required=["name", "inputs", "nodes", "outputs"])
        inputs = test["inputs"]
        if not isinstance(inputs, dict) or not all(
                isinstance(s, list) and all(isinstance(d, int) and d > 0 for d in s)
                for s in inputs.values()):
            raise self.fail("inputs maps each input name to its shape, e.g. { data = [1, 3, 8, 8] }",
                            f"{key}.inputs")
        names = set(inputs)
        if not isinstance(test["nodes"], list) or not test["nodes"]:
            raise self.fail("nodes is a non-empty list of tables", f"{key}.nodes")
        for i, node in enumerate(test["nodes"]):
            node_key = f"{key}.nodes[{i}]"
            if not isinstance(node, dict):
                raise self.fail("a node is a table { name, op, inputs, attrs }", node_key)
            self.check_keys(node, TEST_NODE_KEYS, node_key, required=["name", "op"])
            spec = self.op_spec(node["op"], f"{node_key}.op")
            self.check_attrs([spec], node.get("attrs", {}), f"{node_key}.attrs")
            node_inputs = node.get("inputs", [])
            if not spec.variadic and len(node_inputs) > len(spec.inputs):
                raise self.fail(f"{spec.name} has {len(spec.inputs)} inputs", f"{node_key}.inputs")
            names.add(node["name"])
        for i, output in enumerate(test["outputs"]):
            if output not in names:
                raise self.fail(f"output {output!r} is not a node or input of the test",
                                f"{key}.outputs[{i}]")
        refused = test.get("refused_by")
        if refused is not None and refused != "pattern" and refused not in GUARDS \
                and refused not in FUNCTIONS:
            raise self.fail(f"refused_by names no guard or function: {refused!r}", f"{key}.refused_by")
        for op in test.get("remaining", {}):
            self.op_spec(op, f"{key}.remaining.{op}")
        return test


def _normalise(value: Any) -> Any:
    """TOML arrays become tuples, as the IR's typed attribute values are."""
    if isinstance(value, list):
        return tuple(_normalise(v) for v in value)
    return value
