"""The named Python functions that rule files may call: guards and tensor math.

A rule file never contains code. It names a guard (``single_consumer(conv)``) or a function
(``scale, shift = batchnorm_scale_shift(bn, gamma, beta, mean, var)``) registered here, and the
loader refuses a name that is not registered or a call with the wrong number of arguments.

Contracts
    guard(*args) -> None | str
        ``None`` when the rewrite may go ahead, else the reason it may not, written for a user
        reading ``--explain`` (e.g. ``"conv3_weight is also used by conv7"``).
    function(*args) -> value, or a tuple of ``len(returns)`` values
        Tensor math and attribute computations. A function that finds the rewrite does not apply
        after all raises :class:`NoRewrite` with the reason (the tinygrad "return None" idiom).

Arguments are :class:`~graphopt.rewrite.match.Ref` objects for names the pattern bound (an op
node, a parameter, any tensor; ``None`` for an absent optional slot), the values of earlier
``compute`` lines for their names, and plain literals (numbers, strings, booleans).
"""

from __future__ import annotations

import contextvars
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping


class NoRewrite(Exception):
    """Raised by a registered function: this match should not be rewritten, for this reason."""


@dataclass(frozen=True)
class Registered:
    name: str
    function: Callable
    min_args: int
    max_args: int | None          # None: variadic
    returns: tuple[str, ...] = ()  # names of the values a function returns (guards: empty)

    @property
    def doc(self) -> str:
        return (inspect.getdoc(self.function) or "").split("\n\n")[0].replace("\n", " ")


GUARDS: dict[str, Registered] = {}
FUNCTIONS: dict[str, Registered] = {}


def _arity(function: Callable) -> tuple[int, int | None]:
    low, high = 0, 0
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind == parameter.VAR_POSITIONAL:
            high = None
        elif parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            if parameter.default is parameter.empty:
                low += 1
            if high is not None:
                high += 1
    return low, high


def register_guard(function: Callable | None = None, *, name: str | None = None):
    """Register ``function`` as a guard under its own name (usable as a decorator)."""
    def register(fn: Callable) -> Callable:
        key = name or fn.__name__
        low, high = _arity(fn)
        GUARDS[key] = Registered(key, fn, low, high)
        return fn
    return register(function) if function is not None else register


def register_function(function: Callable | None = None, *, name: str | None = None,
                      returns: tuple[str, ...] | str = "value"):
    """Register tensor math under its own name. ``returns`` names the value(s) it returns; a
    ``compute`` line must assign exactly that many names."""
    names = (returns,) if isinstance(returns, str) else tuple(returns)

    def register(fn: Callable) -> Callable:
        key = name or fn.__name__
        low, high = _arity(fn)
        FUNCTIONS[key] = Registered(key, fn, low, high, names)
        return fn
    return register(function) if function is not None else register


# --- the rewrite context ---------------------------------------------------------------------
# What a rewrite needs besides the graph and cannot be a literal of a rule file: the calibration
# table and the options of a quantization, say. ``rewrite(graph, ..., context={...})`` makes it
# readable by every guard and function through :func:`rewrite_context` while the rewrite runs.

_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "graphopt_rewrite_context", default={})

# Test vectors name a context entry by a key of this table: the factory builds the value from
# the vector's graph, its seeded inputs and the vector's setting (``context = { key = setting }``).
CONTEXT_FACTORIES: dict[str, Callable[[Any, dict, Any], Any]] = {}


def rewrite_context() -> Mapping[str, Any]:
    """The ``context`` given to the running :func:`~graphopt.rewrite.rewrite` (empty if none)."""
    return _CONTEXT.get()


def register_context_factory(key: str):
    """Register ``factory(graph, inputs, setting) -> value`` for context entry ``key`` of test
    vectors (usable as a decorator)."""
    def register(factory: Callable) -> Callable:
        CONTEXT_FACTORIES[key] = factory
        return factory
    return register
