"""MXNet's op schema, as data, and the attribute language of MXNet symbol JSON.

``mxnet_ops.json`` (generated from MXNet's own registry by ``python -m graphopt.schema.generate``)
lists for every op its input slots and its attributes with type and default. Everything in
graphopt that needs an MXNet default (the IR, the rule engine, the ONNX converters) reads it
from here: symbol JSON stores only the attributes that were set explicitly, and MXNet's
defaults often differ from ONNX's (BatchNorm ``eps=1e-3``, ``fix_gamma=True``; Deconvolution
``no_bias=True``).

Attribute values in symbol JSON are strings: ``"(3, 3)"``, ``"True"``, ``"relu"``, ``"None"``.
:func:`parse_value` turns one into a Python value using the attribute's type when known,
and :func:`format_value` writes a Python value back in MXNet's form.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("mxnet_ops.json")

_MISSING = object()
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|nan)\Z", re.IGNORECASE)


# --- the attribute language --------------------------------------------------------------

def parse_type_text(type_text: str) -> dict:
    """Decode MXNet's description of an attribute type, e.g.
    ``"{'avg', 'max'},optional, default='max'"`` -> kind enum, choices, default ``"max"``."""
    text = type_text.strip()
    required = ", required" in text or text.endswith("required")
    default_text = None
    match = re.search(r"default=(.*)\Z", text)
    if match:
        default_text = match.group(1).strip()
        if len(default_text) >= 2 and default_text[0] == default_text[-1] == "'":
            default_text = default_text[1:-1]
    head = text.split(",optional")[0].split(", optional")[0].split(", required")[0].strip()
    nullable = " or None" in head or head.startswith("{None")
    choices = None
    if head.startswith("{"):
        kind = "enum"
        choices = [c.strip().strip("'") for c in head[1:head.index("}")].split(",")]
        choices = [None if c == "None" else c for c in choices]
    elif head.startswith("Shape"):
        kind = "shape"
    elif head.startswith("tuple of <float>") or head.startswith("tuple of <double>"):
        kind = "float_tuple"
    elif head.startswith("tuple of"):
        kind = "int_tuple"
    elif head.startswith(("int", "long", "index_t", "unsigned", "uint", "size_t")):
        kind = "int"
    elif head.startswith(("float", "double", "real_t")):
        kind = "float"
    elif head.startswith("boolean"):
        kind = "bool"
    elif head.startswith("string"):
        kind = "string"
    else:
        kind = "other"
    spec: dict[str, Any] = {"kind": kind, "required": required, "nullable": nullable}
    if choices is not None:
        spec["choices"] = choices
    if not required and default_text is not None:
        spec["default"] = parse_value(default_text, kind, nullable)
    return spec


def _parse_tuple(text: str, element) -> tuple | None:
    inner = text.strip()
    if inner in ("None",):
        return None
    if inner[:1] in "([" and inner[-1:] in ")]":
        inner = inner[1:-1]
    parts = [p.strip() for p in inner.split(",") if p.strip()]
    return tuple(None if p == "None" else element(p) for p in parts)


def _to_int(text: str) -> int:
    return int(float(text)) if not _INT.match(text) else int(text)


def parse_value(text: str, kind: str | None = None, nullable: bool = False) -> Any:
    """Parse one attribute string. With ``kind=None`` the type is guessed from the text."""
    text = str(text).strip()
    if text == "None" and (nullable or kind in (None, "enum", "other", "shape")):
        return None
    if kind == "shape" or kind == "int_tuple":
        return _parse_tuple(text, _to_int)
    if kind == "float_tuple":
        return _parse_tuple(text, float)
    if kind == "int":
        return _to_int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text in ("True", "true", "1"):
            return True
        if text in ("False", "false", "0"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if kind in ("enum", "string", "other"):
        return text
    return _guess(text)


def _guess(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    if text[:1] in "([" and text[-1:] in ")]":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(value, (tuple, list)) and all(
                v is None or isinstance(v, (int, float)) for v in value):
            return tuple(value)
    return text


def format_value(value: Any) -> str:
    """Write a Python value the way MXNet writes attributes: ``(3, 3)``, ``True``, ``None``."""
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (tuple, list)):
        items = [format_value(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else "(" + ", ".join(items) + ")"
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "item"):  # numpy scalars
        return format_value(value.item())
    return str(value)


# --- the op schema -------------------------------------------------------------------------

@dataclass(frozen=True)
class AttrSpec:
    name: str
    kind: str
    required: bool = False
    nullable: bool = False
    default: Any = None
    has_default: bool = False
    choices: tuple | None = None
    type_text: str = ""

    def parse(self, text: str) -> Any:
        return parse_value(text, self.kind, self.nullable)


@dataclass(frozen=True)
class OpSpec:
    """What MXNet says of one op: input slot names and attribute specs."""
    name: str
    inputs: tuple[str, ...]
    variadic: bool
    variadic_count_attr: str | None
    attrs: dict[str, AttrSpec] = field(default_factory=dict)

    def default(self, attr: str) -> Any:
        spec = self.attrs.get(attr)
        if spec is None or not spec.has_default:
            raise KeyError(f"{self.name} has no default for attribute {attr!r}")
        return spec.default

    def parse_attr(self, attr: str, text: str) -> Any:
        spec = self.attrs.get(attr)
        return spec.parse(text) if spec is not None else parse_value(text)


def _as_tuple(value: Any) -> Any:
    """JSON has no tuples: a default read back as a list is the tuple the parser would give."""
    return tuple(value) if isinstance(value, list) else value


class Schema:
    def __init__(self, data: dict):
        self.mxnet_version = data.get("mxnet_version")
        self.aliases: dict[str, str] = dict(data.get("aliases", {}))
        self._ops: dict[str, OpSpec] = {}
        for name, entry in data["ops"].items():
            attrs = {}
            for attr_name, a in entry["attrs"].items():
                attrs[attr_name] = AttrSpec(
                    name=attr_name, kind=a["kind"], required=a["required"], nullable=a["nullable"],
                    default=_as_tuple(a.get("default")), has_default="default" in a,
                    choices=tuple(a["choices"]) if a.get("choices") else None, type_text=a["type"])
            inputs = tuple(i["name"] for i in entry["inputs"])
            self._ops[name] = OpSpec(name=name, inputs=inputs,
                                     variadic=any(i["variadic"] for i in entry["inputs"]),
                                     variadic_count_attr=entry.get("variadic_count_attr"),
                                     attrs=attrs)

    def __contains__(self, op: str) -> bool:
        return op in self._ops

    def __getitem__(self, op: str) -> OpSpec:
        return self._ops[op]

    def get(self, op: str) -> OpSpec | None:
        return self._ops.get(op)

    def canonical(self, op: str) -> str:
        """The name MXNet stores ``op`` under in symbol JSON (``identity`` -> ``_copy``)."""
        return self.aliases.get(op, op)

    @property
    def ops(self) -> list[str]:
        return list(self._ops)


@functools.lru_cache(maxsize=1)
def mxnet_schema() -> Schema:
    """The schema of MXNet 1.9.1's ops, loaded once."""
    return Schema(json.loads(SCHEMA_PATH.read_text()))


def attr_or_default(op: str, attrs: dict, name: str, fallback: Any = _MISSING) -> Any:
    """The value of attribute ``name`` of an ``op`` node: explicit if set, MXNet's default if not."""
    if name in attrs:
        return attrs[name]
    spec = mxnet_schema().get(op)
    if spec is not None and name in spec.attrs and spec.attrs[name].has_default:
        return spec.attrs[name].default
    if fallback is not _MISSING:
        return fallback
    raise KeyError(f"{op} has no attribute {name!r} set and MXNet gives it no default")
