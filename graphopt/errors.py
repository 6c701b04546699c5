"""The exceptions graphopt raises.

Every error a user can provoke with bad input derives from :class:`GraphoptError` and
carries the file, the node and the op it concerns, so that the message alone is enough
to find the problem. Internal bugs are left as ordinary Python exceptions.
"""

from __future__ import annotations


class GraphoptError(Exception):
    """Base of all graphopt errors. ``file``, ``node`` and ``op`` are ``None`` when unknown."""

    def __init__(self, message: str, *, file: str | None = None, node: str | None = None,
                 op: str | None = None):
        self.message = message
        self.file = None if file is None else str(file)
        self.node = node
        self.op = op
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(f"file {self.file}")
        if self.node is not None:
            where.append(f"node {self.node!r}")
        if self.op is not None:
            where.append(f"op {self.op}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


class ModelFileError(GraphoptError):
    """A model file is missing, unreadable, truncated or not the format it claims to be."""


class UnknownOpError(GraphoptError):
    """The graph uses an op that MXNet does not know."""


class ParameterError(GraphoptError):
    """A parameter is missing from the params file or has the wrong shape or dtype."""


class ShapeError(GraphoptError):
    """Shapes or dtypes cannot be inferred: an input shape does not fit the graph."""


class GraphError(GraphoptError):
    """The graph itself is inconsistent (cycle, dangling input, bad slot numbering)."""


class UnsupportedOpError(GraphoptError):
    """An op cannot be converted; ``unsupported`` lists every offending node, not just the first."""

    def __init__(self, message: str, unsupported: list[dict] | None = None, **where):
        self.unsupported = list(unsupported or [])
        super().__init__(message, **where)


class RuleError(GraphoptError):
    """A rule file is malformed or names something that does not exist."""

    def __init__(self, message: str, *, rule: str | None = None, key: str | None = None, **where):
        self.rule = rule
        self.key = key
        super().__init__(message, **where)

    def _render(self) -> str:
        text = super()._render()
        details = []
        if self.rule is not None:
            details.append(f"rule {self.rule!r}")
        if self.key is not None:
            details.append(f"key {self.key!r}")
        return f"{text} [{', '.join(details)}]" if details else text


class EnvironmentMismatchError(GraphoptError):
    """The installed libraries are of versions graphopt cannot work with (e.g. numpy >= 1.24)."""


class DataError(GraphoptError):
    """Data given to train or calibrate on is unusable: empty, of the wrong shape or dtype, or
    with labels outside the model's classes."""


class PruneError(GraphoptError):
    """A pruning request cannot be met as asked: a threshold, sparsity or ratio out of range, or
    a layer pattern that matches no prunable layer (the message lists what exists)."""


class CalibrationError(GraphoptError):
    """Calibration cannot give ranges: NaN or infinity in an activation, a tensor it never saw,
    a method its table cannot serve, or a calibration table file that cannot be read."""
