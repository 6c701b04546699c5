"""Regenerate ``mxnet_ops.json`` from the op registry of the installed MXNet.

Run ``python -m graphopt.schema.generate``. The schema is data: for every op MXNet
registers, its input slots, its attributes with MXNet's type text and default, and
the canonical name an alias is stored under in symbol JSON. MXNet's own registry is
the authority for defaults, which often differ from ONNX's.
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import mxnet as mx
from mxnet.base import _LIB, c_str, check_call, mx_uint, py_str

from graphopt.schema import SCHEMA_PATH, parse_type_text


def _registry_entries():
    """Yield (listed name, canonical name, args, variadic key) for every name MXNet registers.

    An alias shares its op handle with the canonical op, and MXNet reports the canonical
    name for it: that is the name symbol JSON stores.
    """
    size, names = mx_uint(), ctypes.POINTER(ctypes.c_char_p)()
    check_call(_LIB.MXListAllOpNames(ctypes.byref(size), ctypes.byref(names)))
    for listed in sorted(py_str(names[i]) for i in range(size.value)):
        handle = ctypes.c_void_p()
        check_call(_LIB.NNGetOpHandle(c_str(listed), ctypes.byref(handle)))
        name, desc, num_args = ctypes.c_char_p(), ctypes.c_char_p(), mx_uint()
        arg_names = ctypes.POINTER(ctypes.c_char_p)()
        arg_types = ctypes.POINTER(ctypes.c_char_p)()
        arg_descs = ctypes.POINTER(ctypes.c_char_p)()
        key_var_num_args, return_type = ctypes.c_char_p(), ctypes.c_char_p()
        check_call(_LIB.MXSymbolGetAtomicSymbolInfo(
            handle, ctypes.byref(name), ctypes.byref(desc),
            ctypes.byref(num_args), ctypes.byref(arg_names), ctypes.byref(arg_types),
            ctypes.byref(arg_descs), ctypes.byref(key_var_num_args), ctypes.byref(return_type)))
        args = [(py_str(arg_names[k]), py_str(arg_types[k])) for k in range(num_args.value)]
        yield (listed, py_str(name.value), args,
               py_str(key_var_num_args.value) if key_var_num_args.value else None)


def build_schema() -> dict:
    ops, aliases = {}, {}
    for listed, canonical, args, variadic_key in _registry_entries():
        if listed != canonical:
            aliases[listed] = canonical
            continue
        inputs, attrs = [], {}
        for arg_name, type_text in args:
            if type_text.startswith("NDArray-or-Symbol"):
                inputs.append({"name": arg_name, "variadic": type_text.endswith("[]")})
            else:
                attrs[arg_name] = {"type": type_text, **parse_type_text(type_text)}
        ops[canonical] = {"inputs": inputs, "attrs": attrs, "variadic_count_attr": variadic_key}
    return {"mxnet_version": mx.__version__, "ops": ops, "aliases": aliases}


def main() -> int:
    schema = build_schema()
    Path(SCHEMA_PATH).write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
    print(f"wrote {len(schema['ops'])} ops and {len(schema['aliases'])} aliases to {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
