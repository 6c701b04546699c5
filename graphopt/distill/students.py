"""Built-in students, named ``builtin:NAME`` on the command line.

- ``digits_cnn``: the small CNN of the classic distillation tutorial: Conv 32 k3 p1, BatchNorm,
  ReLU, MaxPool 2, Flatten, Dense ``classes`` (for 28x28 digits: 6,272 inputs to the Dense,
  about 63k weights, against the digits ResNet's 78k and LeNet's 140k).
- ``lenet``: the LeNet of ``fixtures/models/lenet_digits`` (Conv 20 k5 relu, MaxPool 2,
  Conv 50 k3 relu, MaxPool 2, Flatten, Dense 128 relu, Dense ``classes``).

Each is a fresh, uninitialised Gluon HybridBlock; :func:`graphopt.distill` initialises it from
its seed. Layer names are the same in every process (a fresh ``NameManager``).
"""

from __future__ import annotations

from typing import Callable

import mxnet as mx
from mxnet.gluon import nn

from graphopt.errors import GraphoptError

BUILTIN_PREFIX = "builtin:"


def digits_cnn(classes: int = 10) -> nn.HybridSequential:
    net = nn.HybridSequential(prefix="digits_cnn_")
    with net.name_scope():
        net.add(nn.Conv2D(32, kernel_size=3, padding=1),
                nn.BatchNorm(),
                nn.Activation("relu"),
                nn.MaxPool2D(pool_size=2),
                nn.Flatten(),
                nn.Dense(classes))
    return net


def lenet(classes: int = 10) -> nn.HybridSequential:
    net = nn.HybridSequential(prefix="lenet_")
    with net.name_scope():
        net.add(nn.Conv2D(20, kernel_size=5, activation="relu"),
                nn.MaxPool2D(pool_size=2),
                nn.Conv2D(50, kernel_size=3, activation="relu"),
                nn.MaxPool2D(pool_size=2),
                nn.Flatten(),
                nn.Dense(128, activation="relu"),
                nn.Dense(classes))
    return net


BUILTIN_STUDENTS: dict[str, Callable[[int], nn.HybridSequential]] = {
    "digits_cnn": digits_cnn,
    "lenet": lenet,
}


def is_builtin(name: object) -> bool:
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def builtin_student(name: str, classes: int = 10) -> nn.HybridSequential:
    """The built-in student ``name`` (``digits_cnn`` or ``builtin:digits_cnn``), uninitialised."""
    key = name[len(BUILTIN_PREFIX):] if is_builtin(name) else name
    if key not in BUILTIN_STUDENTS:
        raise GraphoptError(f"no built-in student {key!r}; the built-in students are "
                            f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_STUDENTS)}")
    with mx.name.NameManager():
        return BUILTIN_STUDENTS[key](classes)
