"""What a pipeline is: a model, its data, the steps in order, the outputs, as a plain document.

The same document comes from a pipeline file (``graphopt run pipeline.toml``) or from the flags
of ``graphopt optimize`` (:func:`graphopt.pipeline.cli.spec_from_args`), and both go through
:func:`validate` against :data:`SCHEMA`: an unknown key or a value of the wrong type is refused
with its name, the table it is in and, for a file, its line::

    pipeline.toml line 12: unknown key 'ratoi' in [[step]] #2 (prune) (known: ratio, ...)

A pipeline file::

    model = "fixtures/models/resnet_digits"   # paths are relative to the file's folder
    inputs = ["data:1x1x28x28"]
    data = "digits"              # evaluation data: "digits" or a labelled .npz; absent: seeded inputs
    out = "build/resnet"
    to = ["onnx", "mxnet"]

    [[step]]
    kind = "fold"                # BatchNorm folding and cleanup (the built-in rules)

    [[step]]
    kind = "prune"
    method = "filters"
    ratio = 0.5
    gate = { max_accuracy_drop = 0.9 }        # distillation wins it back; its gate says how much

    [[step]]
    kind = "distill"
    epochs = 5
    gate = { max_accuracy_drop = 0.05, against = "input" }

    [[step]]
    kind = "quantize"
    calib = "digits"
    max_accuracy_drop = 0.01     # accuracy-aware: the most sensitive layers fall back to float
"""

from __future__ import annotations

import argparse
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphopt.cli import parse_input
from graphopt.errors import GraphoptError


class PipelineError(GraphoptError):
    """A pipeline file or the ``optimize`` flags describe a pipeline that cannot run: an unknown
    key, a value of the wrong type, a step that does not exist. Bad input: exit code 2."""


# --- the schema ----------------------------------------------------------------------------------
# A type is a tuple of accepted Python types; "float" accepts integers too (TOML's 1 for 1.0).

STRING, INTEGER, NUMBER, BOOLEAN = (str,), (int,), (float, int), (bool,)
STRINGS = "list of strings"
TABLE = "table"

TYPE_NAMES = {STRING: "a string", INTEGER: "an integer", NUMBER: "a number",
              BOOLEAN: "true or false", STRINGS: "a list of strings", TABLE: "a table"}

TOP_LEVEL = {
    "model": STRING, "params": STRING, "inputs": STRINGS, "data": STRING, "samples": INTEGER,
    "seed": INTEGER, "out": STRING, "to": STRINGS, "latency_runs": INTEGER, "opset": INTEGER,
    "static_batch": BOOLEAN, "step": "steps",
}
REQUIRED_TOP_LEVEL = ("model",)

GATE = {"rtol": NUMBER, "min_sqnr": NUMBER, "max_accuracy_drop": NUMBER, "against": STRING}
GATE_AGAINST = ("previous", "input")

STEPS = {
    "fold": {"phases": STRINGS},
    "prune": {"method": STRING, "ratio": NUMBER, "threshold": NUMBER, "sparsity": NUMBER,
              "criterion": STRING, "scope": STRING, "layers": STRING, "round_to": INTEGER,
              "drop": BOOLEAN},
    "distill": {"teacher": STRING, "train_data": STRING, "val_data": STRING, "epochs": INTEGER,
                "temperature": NUMBER, "alpha": NUMBER, "learning_rate": NUMBER,
                "lr_schedule": STRING, "batch_size": INTEGER, "seed": INTEGER},
    "quantize": {"calib": STRING, "method": STRING, "activations": STRING,
                 "per_channel": BOOLEAN, "exclude": STRINGS, "exclude_first_last": BOOLEAN,
                 "num_samples": INTEGER, "max_accuracy_drop": NUMBER, "min_sqnr": NUMBER,
                 "equalize": BOOLEAN, "bias_correction": BOOLEAN},
}
STEP_COMMON = {"kind": STRING, "name": STRING, "gate": TABLE}
CHOICES = {  # string options with a closed set of values: refused here, with their line
    ("prune", "method"): ("magnitude", "filters"),
    ("prune", "criterion"): ("l1", "l2", "bn_gamma"),
    ("prune", "scope"): ("layer", "global"),
    ("distill", "lr_schedule"): ("cosine",),
    ("quantize", "method"): ("minmax", "percentile", "entropy", "mse"),
    ("quantize", "activations"): ("uint8", "int8"),
}
OUTPUT_FORMATS = ("onnx", "mxnet")
RESERVED_STEP_NAMES = {"input": "the model as loaded", "export": "the deployment files"}


@dataclass
class Step:
    kind: str
    options: dict[str, Any]
    gate: dict[str, Any]
    name: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "options": self.options, "gate": self.gate}


@dataclass
class PipelineSpec:
    """A validated pipeline. Paths are as given (``base`` is the folder they are relative to)."""
    model: str
    steps: list[Step]
    inputs: list[str] = field(default_factory=list)
    params: str | None = None
    data: str | None = None
    samples: int = 16
    seed: int = 0
    out: str | None = None
    to: list[str] = field(default_factory=lambda: ["onnx", "mxnet"])
    latency_runs: int = 20
    opset: int | None = None          # the ONNX opset (None: graphopt.onnx.DEFAULT_OPSET)
    static_batch: bool = False
    base: Path = Path(".")
    source: str = "command line"

    def path(self, value: str | None) -> str | None:
        """``value`` resolved against :attr:`base` (``"digits"`` and absolute paths as they are)."""
        if value is None or value == "digits" or Path(value).is_absolute():
            return value
        return str(self.base / value)


# --- validation with lines -----------------------------------------------------------------------

class _Where:
    """Finds the line of a key in the pipeline file's text (tomllib gives none): the first line,
    after the header of the table the key is in, that assigns it."""

    def __init__(self, text: str | None, source: str):
        self.lines = text.splitlines() if text else []
        self.source = source

    def line_of(self, key: str, table: str | None = None, index: int = 0) -> int | None:
        start = 0
        if table is not None:
            headers = [i for i, line in enumerate(self.lines)
                       if re.match(rf"\s*\[\[\s*{re.escape(table)}\s*\]\]", line)]
            if index < len(headers):
                start = headers[index]
                end = headers[index + 1] if index + 1 < len(headers) else len(self.lines)
            else:
                return None
        else:
            end = next((i for i, line in enumerate(self.lines) if re.match(r"\s*\[", line)),
                       len(self.lines))
        # key = ..., "key" = ..., key.sub = ... (a dotted key), inside an inline table too
        pattern = re.compile(rf"(^|[\s{{,])\"?{re.escape(key)}\"?\s*[=.]")
        for i in range(start, end):
            if pattern.search(self.lines[i].split("#", 1)[0]):
                return i + 1
        return None

    def error(self, message: str, key: str, table: str | None = None, index: int = 0
              ) -> PipelineError:
        line = self.line_of(key, table, index) if self.lines else None
        prefix = f"{self.source} line {line}: " if line else f"{self.source}: "
        return PipelineError(prefix + message)


def _check_type(value: Any, expected, key: str, where: _Where, table: str | None, index: int,
                context: str) -> None:
    if expected == STRINGS:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif expected == TABLE:
        ok = isinstance(value, dict)
    elif expected == NUMBER or expected == INTEGER:
        ok = isinstance(value, expected) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise where.error(f"{key!r} in {context} must be {TYPE_NAMES[expected]}, not "
                          f"{type(value).__name__} {value!r}", key, table, index)


def _check_keys(table_value: dict, known: dict, where: _Where, table: str | None, index: int,
                context: str) -> None:
    for key, value in table_value.items():
        if key not in known:
            raise where.error(f"unknown key {key!r} in {context} (known: "
                              f"{', '.join(sorted(known))})", key, table, index)
        if known[key] != "steps":
            _check_type(value, known[key], key, where, table, index, context)


def validate(document: dict, *, text: str | None = None, source: str = "command line",
             base: Path = Path(".")) -> PipelineSpec:
    """The :class:`PipelineSpec` of ``document`` (a parsed TOML file or the CLI's equivalent),
    or :class:`PipelineError` naming the key, the table and (with ``text``) the line."""
    where = _Where(text, source)
    _check_keys(document, TOP_LEVEL, where, None, 0, "the top level")
    for key in REQUIRED_TOP_LEVEL:
        if key not in document:
            raise PipelineError(f"{source}: {key!r} is missing: the model to optimize "
                                f"(PREFIX-symbol.json or PREFIX)")
    raw_steps = document.get("step", [])
    if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
        raise where.error("'step' must be an array of tables ([[step]])", "step")
    steps = []
    for index, raw in enumerate(raw_steps):
        kind = raw.get("kind")
        if kind not in STEPS:
            key = "kind" if "kind" in raw else "step"
            raise where.error(f"[[step]] #{index + 1}: 'kind' must be one of "
                              f"{', '.join(STEPS)}, not {kind!r}", key, "step", index)
        context = f"[[step]] #{index + 1} ({kind})"
        _check_keys(raw, {**STEP_COMMON, **STEPS[kind]}, where, "step", index, context)
        for key, value in raw.items():
            allowed = CHOICES.get((kind, key))
            if allowed is not None and value not in allowed:
                raise where.error(f"{key!r} in {context} must be one of {', '.join(allowed)}, "
                                  f"not {value!r}", key, "step", index)
        gate = raw.get("gate", {})
        _check_keys(gate, GATE, where, "step", index, f"the gate of {context}")
        if gate.get("against", "previous") not in GATE_AGAINST:
            raise where.error(f"the gate of {context}: 'against' must be one of "
                              f"{', '.join(GATE_AGAINST)}, not {gate['against']!r}", "against",
                              "step", index)
        if "name" in raw and (not re.fullmatch(r"[A-Za-z0-9_.-]+", raw["name"])
                              or set(raw["name"]) == {"."}):  # "..": OUT/steps/.. is OUT
            raise where.error(f"the name of {context} ({raw['name']!r}) names its folder: use "
                              f"letters, digits, '_', '.' and '-'", "name", "step", index)
        if raw.get("name") in RESERVED_STEP_NAMES:  # a step named so would be gated against
            # itself: the report's records of the loaded model and the export have these names
            raise where.error(f"the name of {context} ({raw['name']!r}) is the report's name "
                              f"for {RESERVED_STEP_NAMES[raw['name']]}: choose another",
                              "name", "step", index)
        options = {k: v for k, v in raw.items() if k not in STEP_COMMON}
        steps.append(Step(kind, options, dict(gate), raw.get("name") or f"{index + 1:02d}-{kind}"))
    kinds = [step.kind for step in steps]
    if "quantize" in kinds[:-1]:
        after = kinds.index("quantize") + 1
        raise where.error(f"[[step]] #{after + 1} ({kinds[after]}) comes after the quantize step: "
                          f"quantization is the last step (prune, distill and fold work on float "
                          f"models)", "kind", "step", after)
    for index, step in enumerate(steps):
        if step.kind == "distill" and "train_data" not in step.options \
                and document.get("data") != "digits":
            # the digits are only the default of a pipeline on the digits: another model's
            # student trained on them silently when its shapes happened to fit
            raise where.error(f"[[step]] #{index + 1} (distill) needs 'train_data' (\"digits\" "
                              f"or a labelled .npz): the evaluation data is not the digits",
                              "kind", "step", index)
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        raise PipelineError(f"{source}: two steps have the same name: {names}")
    for text in document.get("inputs", []):
        try:
            parse_input(text)
        except argparse.ArgumentTypeError as error:
            raise where.error(f"'inputs': {error}", "inputs") from None
    to = document.get("to", list(OUTPUT_FORMATS))
    unknown = [f for f in to if f not in OUTPUT_FORMATS]
    if unknown:
        raise where.error(f"'to' lists {unknown}: the formats are {', '.join(OUTPUT_FORMATS)}",
                          "to")
    for key in ("samples", "latency_runs"):
        if key in document and document[key] < 1:
            raise where.error(f"{key!r} must be at least 1, not {document[key]}", key)
    if document.get("seed", 0) < 0:  # numpy's seeds are 0 .. 2**32 - 1
        raise where.error(f"'seed' must be at least 0, not {document['seed']}", "seed")
    if "opset" in document:
        from graphopt.onnx import MAX_OPSET, MIN_OPSET
        if not MIN_OPSET <= document["opset"] <= MAX_OPSET:
            raise where.error(f"'opset' must lie in {MIN_OPSET}..{MAX_OPSET}, not "
                              f"{document['opset']}", "opset")
    return PipelineSpec(model=document["model"], steps=steps, inputs=document.get("inputs", []),
                        params=document.get("params"), data=document.get("data"),
                        samples=document.get("samples", 16), seed=document.get("seed", 0),
                        out=document.get("out"), to=list(to),
                        latency_runs=document.get("latency_runs", 20),
                        opset=document.get("opset"), static_batch=document.get("static_batch", False),
                        base=base, source=source)


def load_pipeline_file(path: str | Path) -> PipelineSpec:
    """Read and validate a pipeline file; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PipelineError(f"cannot read the pipeline file: {error.strerror}", file=str(path))
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:  # its message carries "(at line L, column C)"
        raise PipelineError(f"{path}: not valid TOML: {error}") from None
    return validate(document, text=text, source=str(path), base=path.parent)
