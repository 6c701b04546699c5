"""``graphopt.distill``: train a student on a teacher's softened outputs and the labels.

The loop is plain Gluon: for each batch, the student's logits under ``autograd.record()``,
:func:`graphopt.distill.loss.distillation_loss` against the teacher's cached logits and the
labels, ``backward``, one optimizer step. After each epoch the student is evaluated in
inference mode on the validation data, and the weights of the best epoch are kept (the first
of equals); without validation data the last epoch's weights are the result.

Everything that can be wrong with the inputs is checked before the first step: settings out of
range, an empty data set, labels missing or outside the classes, a teacher and a student whose
outputs differ in shape (both run once on the first batch).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from graphopt._files import atomic_write_bytes
from graphopt._progress import progress
from graphopt.distill.data import ArrayData, LoaderData, as_training_data, check_label_range
from graphopt.distill.loss import distillation_loss
from graphopt.distill.models import ModelSource
from graphopt.distill.students import builtin_student, is_builtin
from graphopt.distill.teacher import Teacher
from graphopt.distill.trainable import GraphStudent, block_to_graph, restore, snapshot
from graphopt.errors import DataError, GraphoptError, ShapeError
from graphopt.ir.graph import Graph
from graphopt.mxnet_io.infer import first_error_line

TEACHER_CACHES = ("auto", "run", "epoch", "batch")
LR_SCHEDULES = (None, "cosine")
EVALUATION_BATCH = 256


@dataclass
class DistillResult:
    """What :func:`distill` returns.

    ``student``: the trained student as a Graph (the best epoch's weights), ready for
    ``graphopt.save_mxnet``/``to_onnx``; ``block``: the same student as the Gluon block that was
    trained; ``history``: one dict per epoch (``epoch``, ``loss``, ``hard_loss``,
    ``soft_loss``, ``train_accuracy``, ``val_accuracy``, ``seconds``); ``best_epoch`` (1-based)
    and ``best_val_accuracy``; ``teacher_val_accuracy`` for comparison; ``settings`` as used.
    """
    student: Graph
    block: gluon.HybridBlock
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float | None
    teacher_val_accuracy: float | None
    settings: dict
    paths: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "best_epoch": self.best_epoch,
                "best_val_accuracy": self.best_val_accuracy,
                "teacher_val_accuracy": self.teacher_val_accuracy, "history": self.history}

    def save(self, prefix: str | Path) -> dict[str, str]:
        """Write ``PREFIX-symbol.json``, ``PREFIX-0000.params`` (``save_mxnet``) and the history
        as ``PREFIX-distill.json``; returns the paths."""
        from graphopt.mxnet_io.save import save_mxnet
        symbol_path, params_path = save_mxnet(self.student, prefix)
        history_path = Path(f"{prefix}-distill.json")
        atomic_write_bytes(history_path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        self.paths = {"symbol": str(symbol_path), "params": str(params_path),
                      "history": str(history_path)}
        return self.paths


def distill(teacher: ModelSource | None, student: gluon.HybridBlock | ModelSource,
            train_data: Any, val_data: Any = None, *, temperature: float = 4.0,
            alpha: float = 0.5, epochs: int = 10, batch_size: int = 64,
            optimizer: str | mx.optimizer.Optimizer = "adam", learning_rate: float = 1e-3,
            optimizer_params: dict | None = None, lr_schedule: str | None = None, seed: int = 0,
            teacher_cache: str = "auto", keep_zeros: bool = True,
            output: str | Path | None = None) -> DistillResult:
    """Train ``student`` to match ``teacher`` (Hinton et al. 2015); see the module docstring.

    ``teacher``: a Graph, a model path or a ``(symbol, params)`` pair, run in inference mode
    (None only with ``alpha = 1``, plain training). ``student``: a Gluon HybridBlock (trained in
    place, initialised from ``seed`` where it is not yet), ``"builtin:NAME"``
    (:mod:`graphopt.distill.students`), or a Graph / model path, trained as a SymbolBlock with
    its BatchNorm statistics updated (the Graph given is not modified).
    ``train_data``/``val_data``: see :mod:`graphopt.distill.data` (``"digits"``, ``.npz``,
    arrays, a DataLoader).
    Loss: ``alpha * CE + (1 - alpha) * T^2 * KL`` (:mod:`graphopt.distill.loss`).
    ``optimizer``: a Gluon optimizer name (with ``learning_rate`` and ``optimizer_params``) or
    an ``mx.optimizer.Optimizer``. ``lr_schedule="cosine"`` decays the learning rate to 0 along
    a half cosine over all steps (None: constant). ``seed`` fixes initialisation, shuffling and
    dropout: the same call gives the same history, bit for bit across processes at the same
    thread count (measured; with another OMP_NUM_THREADS oneDNN's sums change the last bits).
    ``teacher_cache``: ``"run"`` computes the teacher's logits of the training set once,
    ``"epoch"`` once per epoch (for a DataLoader: over the epoch's batches, drawn first),
    ``"batch"`` for each batch; ``"auto"`` is ``"run"`` for arrays, ``"epoch"`` for a loader.
    ``keep_zeros``: a weight entry (tensors of 2 or more axes) that is exactly zero before
    training stays zero, so pruned weights stay pruned while fine-tuning.
    ``output``: a prefix to save the result to (:meth:`DistillResult.save`).
    """
    _check_settings(temperature, alpha, epochs, batch_size, teacher_cache, lr_schedule)
    setup = _prepare(teacher, student, train_data, val_data, alpha, batch_size, teacher_cache,
                     seed)
    settings = {"temperature": temperature, "alpha": alpha, "epochs": epochs,
                "batch_size": batch_size,
                "optimizer": optimizer if isinstance(optimizer, str) else type(optimizer).__name__,
                "learning_rate": learning_rate, "lr_schedule": lr_schedule,
                "optimizer_params": {key: value if isinstance(value, (int, float, str)) else str(value)
                                     for key, value in (optimizer_params or {}).items()},
                "seed": seed, "teacher_cache": setup.cache, "keep_zeros": keep_zeros,
                "train_data": setup.train.source,
                "val_data": None if setup.val is None else setup.val.source,
                "classes": setup.classes}
    block, teacher_model, val = setup.trainee.block, setup.teacher, setup.val
    teacher_val_accuracy = (None if teacher_model is None or val is None
                            else _accuracy(teacher_model.logits, val))
    scheduler = _schedule(lr_schedule, learning_rate, epochs, setup.train, batch_size)
    loop = _Loop(block, teacher_model if alpha < 1 else None, setup.train, setup.classes,
                 batch_size, setup.cache, temperature, alpha, seed, keep_zeros,
                 _optimizer(block, optimizer, learning_rate, optimizer_params, scheduler))

    history, best_epoch, best_accuracy, best_weights = [], epochs, None, None
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        entry = {"epoch": epoch, **loop.run_epoch(f"distill {epoch}/{epochs}")}
        if val is not None:
            entry["val_accuracy"] = _accuracy(lambda x: _student_logits(block, x), val)
            if best_accuracy is None or entry["val_accuracy"] > best_accuracy:
                best_epoch, best_accuracy = epoch, entry["val_accuracy"]
                best_weights = snapshot(block)
        entry["seconds"] = round(time.perf_counter() - started, 3)
        history.append(entry)
    if best_weights is not None:  # without validation data the last epoch is the result
        restore(block, best_weights)

    result = DistillResult(setup.trainee.graph(), block, history, best_epoch, best_accuracy,
                           teacher_val_accuracy, settings)
    if output is not None:
        result.save(output)
    return result


@dataclass
class _Setup:
    train: ArrayData | LoaderData
    val: ArrayData | LoaderData | None
    cache: str
    teacher: Teacher | None
    trainee: "_Trainee"
    classes: int


def _prepare(teacher, student, train_data, val_data, alpha: float, batch_size: int,
             teacher_cache: str, seed: int) -> _Setup:
    """Load and check everything before training: both models run once on the first batch."""
    if teacher is None and alpha < 1:
        raise GraphoptError(f"a teacher is needed unless alpha = 1 (plain training); alpha is {alpha}")
    train = as_training_data(train_data, "train_data")
    val = None if val_data is None else as_training_data(val_data, "val_data")
    if isinstance(train, LoaderData) and teacher_cache == "run":
        raise GraphoptError("teacher_cache='run' needs the training data as arrays: a DataLoader "
                            "draws new batches each epoch (use 'epoch' or 'batch')")
    cache = teacher_cache if teacher_cache != "auto" else (
        "run" if isinstance(train, ArrayData) else "epoch")

    mx.random.seed(seed)
    teacher_model = None if teacher is None else Teacher(teacher)
    first_x, first_y = _first_batch(train, batch_size)
    if alpha > 0 and first_y is None:
        raise DataError(f"{train.source}: the data has no labels, but alpha = {alpha} > 0 weighs "
                        f"the hard-label loss (use alpha = 0 to learn from the teacher alone)")
    if teacher_model is not None:
        _check_input_shape(first_x, teacher_model.input_shape, "teacher", train.source)
    teacher_sample = None if teacher_model is None else teacher_model.logits(first_x)
    classes = _classes(teacher_sample, train, first_y)
    trainee = _trainee(student, classes, seed, first_x)
    _check_input_shape(first_x, trainee.declared_input_shape, "student", train.source)
    student_sample = _student_logits(trainee.block, first_x)
    _check_outputs(teacher_sample, student_sample)
    classes = int(student_sample.shape[1])  # the teacher's (just checked) or, without one, the
    # student's own: labels 0..8 of a 10-class student are fine
    check_label_range(first_y, classes, train.source)
    if isinstance(train, ArrayData):
        check_label_range(train.y, classes, train.source)
    if val is not None:
        _check_validation(val, classes, first_x, train.source)
    return _Setup(train, val, cache, teacher_model, trainee, classes)


# --- before training: checks ---------------------------------------------------------------

def _check_settings(temperature, alpha, epochs, batch_size, teacher_cache, lr_schedule) -> None:
    problems = []
    if not temperature > 0:
        problems.append(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        problems.append(f"alpha must lie in [0, 1], got {alpha}")
    if int(epochs) != epochs or epochs < 1:
        problems.append(f"epochs must be a whole number >= 1, got {epochs}")
    if int(batch_size) != batch_size or batch_size < 1:
        problems.append(f"batch_size must be a whole number >= 1, got {batch_size}")
    if teacher_cache not in TEACHER_CACHES:
        problems.append(f"teacher_cache must be one of {TEACHER_CACHES}, got {teacher_cache!r}")
    if lr_schedule not in LR_SCHEDULES:
        problems.append(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if problems:
        raise GraphoptError("; ".join(problems))


def _first_batch(data: ArrayData | LoaderData, batch_size: int):
    if isinstance(data, ArrayData):
        return data.x[:batch_size], None if data.y is None else data.y[:batch_size]
    for x, y in data.batches():
        if len(x) == 0:
            break
        return x, y
    raise DataError(f"{data.source}: the data set is empty (the loader yields no samples)")


def _classes(teacher_sample: np.ndarray | None, train: ArrayData | LoaderData,
             first_y: np.ndarray | None) -> int:
    """The number of classes a built-in student is made with: the teacher's output width, else
    the labels' (alpha = 1)."""
    if teacher_sample is not None:
        if teacher_sample.ndim != 2:
            raise ShapeError(f"the teacher's output must be class logits (N, classes); it has "
                             f"shape {teacher_sample.shape}")
        return int(teacher_sample.shape[1])
    labels = train.y if isinstance(train, ArrayData) and train.y is not None else first_y
    return int(labels.max()) + 1


def _check_input_shape(x: np.ndarray, declared: tuple[int, ...] | None, role: str,
                       source: str) -> None:
    """A model loaded with an input shape takes samples of that shape; a model that also runs
    on other sizes (global pooling) would otherwise train on what the user did not mean."""
    if declared is not None and tuple(x.shape[1:]) != tuple(declared[1:]):
        raise DataError(f"{source}: samples of shape {tuple(x.shape[1:])}, but the {role} was "
                        f"loaded for inputs of shape {tuple(declared)} (per sample "
                        f"{tuple(declared[1:])})")


def _check_outputs(teacher_sample: np.ndarray | None, student_sample: np.ndarray) -> None:
    if student_sample.ndim != 2:
        raise ShapeError(f"the student's output must be class logits (N, classes); it has shape "
                         f"{student_sample.shape}")
    if teacher_sample is not None and teacher_sample.shape != student_sample.shape:
        raise ShapeError(f"the teacher and the student disagree on the output: on the same "
                         f"{len(teacher_sample)} samples the teacher gives {teacher_sample.shape} "
                         f"and the student {student_sample.shape} (the classes must be the same)")


def _check_validation(val: ArrayData | LoaderData, classes: int, train_x: np.ndarray,
                      train_source: str) -> None:
    """Labels in range, and samples shaped as the training ones: a model with global pooling
    runs on any image size, and would be validated (and its best epoch chosen) on inputs it
    is not trained for."""
    if isinstance(val, ArrayData):
        if tuple(val.x.shape[1:]) != tuple(train_x.shape[1:]):
            raise DataError(f"{val.source}: validation samples of shape {tuple(val.x.shape[1:])}, "
                            f"but the training samples ({train_source}) have shape "
                            f"{tuple(train_x.shape[1:])}")
        if val.y is None:
            raise DataError(f"{val.source}: validation data needs labels (to measure accuracy)")
        check_label_range(val.y, classes, val.source)


# --- the student ------------------------------------------------------------------------------

class _Trainee:
    """The block that trains, and how to turn it back into a Graph."""

    def __init__(self, block: gluon.HybridBlock, graph_student: GraphStudent | None,
                 input_shape: tuple[int, ...], name: str):
        self.block, self._graph_student = block, graph_student
        self.declared_input_shape = None if graph_student is None else \
            graph_student.graph.node(graph_student.input_name).shape
        self._input_shape, self._name = input_shape, name

    def graph(self) -> Graph:
        if self._graph_student is not None:
            return self._graph_student.trained_graph()
        return block_to_graph(self.block, self._input_shape, self._name)


def _trainee(student, classes: int, seed: int, sample_x: np.ndarray) -> _Trainee:
    input_shape = tuple(sample_x.shape[1:])
    if is_builtin(student):
        student = builtin_student(student, classes)
    if isinstance(student, gluon.HybridBlock):
        mx.random.seed(seed)
        with warnings.catch_warnings():  # "already initialized": a trained block is kept as is
            warnings.simplefilter("ignore")
            student.initialize(mx.init.MSRAPrelu(factor_type="in", slope=0.0), ctx=mx.cpu())
        student.hybridize()
        return _Trainee(student, None, input_shape, student.name.rstrip("_") or "student")
    if isinstance(student, gluon.Block):
        raise GraphoptError(f"the student must be a HybridBlock (it is exported as a graph after "
                            f"training); got a {type(student).__name__}")
    graph_student = GraphStudent(student)
    return _Trainee(graph_student.block, graph_student, input_shape, graph_student.graph.name)


def _student_logits(block: gluon.HybridBlock, x: np.ndarray) -> np.ndarray:
    """The student's outputs at inference (outside ``autograd.record``: BatchNorm uses its
    moving statistics and does not update them)."""
    try:
        output = block(mx.nd.array(x))
    except mx.MXNetError as error:
        raise ShapeError(f"the student cannot run on inputs of shape {x.shape[1:]} (per sample): "
                         f"{first_error_line(error)}") from None
    if isinstance(output, (list, tuple)):
        raise ShapeError(f"the student must return one output (the class logits); it returns "
                         f"{len(output)}")
    return output.asnumpy()


def _schedule(name: str | None, learning_rate: float, epochs: int,
              train: ArrayData | LoaderData, batch_size: int):
    if name is None:
        return None
    steps = (train.count_batches(batch_size) if isinstance(train, ArrayData)
             else train.count_batches())
    if steps is None:
        raise GraphoptError("lr_schedule='cosine' needs the number of batches per epoch; this "
                            "loader has no len()")
    return mx.lr_scheduler.CosineScheduler(max_update=max(1, epochs * steps),
                                           base_lr=learning_rate, final_lr=0.0)


def _optimizer(block, optimizer, learning_rate, optimizer_params, scheduler) -> gluon.Trainer:
    if isinstance(optimizer, mx.optimizer.Optimizer):
        if scheduler is not None or optimizer_params:
            raise GraphoptError("an Optimizer object carries its own learning rate and schedule: "
                                "give lr_schedule and optimizer_params only with an optimizer name")
        return gluon.Trainer(block.collect_params(), optimizer)
    options = {"learning_rate": learning_rate, **(optimizer_params or {})}
    if scheduler is not None:
        options["lr_scheduler"] = scheduler
    try:
        return gluon.Trainer(block.collect_params(), optimizer, options)
    except (ValueError, TypeError, AssertionError, mx.MXNetError) as error:
        raise GraphoptError(f"cannot make optimizer {optimizer!r} with {options}: {error}") from None


# --- the loop ---------------------------------------------------------------------------------

class _Loop:
    """One object per run: the shuffler, the teacher's cache and the zero masks live here."""

    def __init__(self, block, teacher: Teacher | None, train: ArrayData | LoaderData,
                 classes: int, batch_size: int, cache: str, temperature: float, alpha: float,
                 seed: int, keep_zeros: bool, trainer: gluon.Trainer):
        self.block, self.teacher, self.train, self.classes = block, teacher, train, classes
        self.batch_size, self.cache = batch_size, cache
        self.temperature, self.alpha = temperature, alpha
        self.trainer = trainer
        self.shuffler = np.random.RandomState(seed)
        self.run_cache = (teacher.logits(train.x) if teacher is not None and cache == "run"
                          else None)
        self.masks = _zero_masks(block) if keep_zeros else {}

    def _epoch_batches(self):
        """``(x, y, teacher logits or None)`` per batch of this epoch, and the batch count."""
        if isinstance(self.train, ArrayData):
            order = self.shuffler.permutation(len(self.train))
            cached = self.run_cache
            if self.teacher is not None and self.cache == "epoch":
                cached = self.teacher.logits(self.train.x)
            batches = ((x, y, None if cached is None else cached[indices])
                       for x, y, indices in self.train.batches(self.batch_size, order))
            return batches, self.train.count_batches(self.batch_size)
        if self.teacher is not None and self.cache == "epoch":
            drawn = list(self.train.batches())
            logits = self.teacher.logits(np.concatenate([x for x, _ in drawn]))
            ends = np.cumsum([len(x) for x, _ in drawn])
            return ((x, y, logits[end - len(x):end]) for (x, y), end in zip(drawn, ends)), len(drawn)
        return ((x, y, None) for x, y in self.train.batches()), self.train.count_batches()

    def run_epoch(self, description: str) -> dict:
        batches, count = self._epoch_batches()
        sums = {"loss": 0.0, "hard_loss": 0.0, "soft_loss": 0.0, "correct": 0}
        seen, labelled = 0, 0
        bar = progress(batches, desc=description, total=count, unit="batch")
        for x, y, teacher_logits in bar:
            if self.teacher is not None and teacher_logits is None:  # cache "batch"
                teacher_logits = self.teacher.logits(x)
            if y is None and self.alpha > 0:
                raise DataError(f"{self.train.source}: a batch without labels, but alpha > 0")
            if isinstance(self.train, LoaderData):  # arrays were checked before training
                check_label_range(y, self.classes, self.train.source)
            student_input = mx.nd.array(x)
            labels = None if y is None else mx.nd.array(y)
            with autograd.record():
                student_logits = self.block(student_input)
                loss = distillation_loss(
                    student_logits, None if teacher_logits is None else mx.nd.array(teacher_logits),
                    labels, self.temperature, self.alpha)
            loss.total.backward()
            self.trainer.step(1)  # the loss is already a batch mean
            self._apply_masks()
            count_here = len(x)
            seen += count_here
            for key, value in (("loss", loss.total), ("hard_loss", loss.hard),
                               ("soft_loss", loss.soft)):
                if value is not None:
                    sums[key] += float(value.asscalar()) * count_here
            if y is not None:
                labelled += count_here
                sums["correct"] += int((student_logits.asnumpy().argmax(axis=1) == y).sum())
            bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
        if seen == 0:
            raise DataError(f"{self.train.source}: the data set is empty (no batch this epoch)")
        return {"loss": sums["loss"] / seen,
                "hard_loss": sums["hard_loss"] / seen if self.alpha > 0 else None,
                "soft_loss": sums["soft_loss"] / seen if self.alpha < 1 else None,
                "train_accuracy": sums["correct"] / labelled if labelled else None}

    def _apply_masks(self) -> None:
        for parameter, mask in self.masks.values():
            parameter.set_data(parameter.data() * mask)


def _zero_masks(block) -> dict[str, tuple]:
    """``{name: (parameter, mask)}`` for trainable weights (2+ axes) holding exact zeros."""
    masks = {}
    for name, parameter in block.collect_params().items():
        if parameter.grad_req == "null":
            continue
        value = parameter.data()
        if value.ndim >= 2:
            mask = value != 0
            if float(mask.min().asscalar()) == 0.0:
                masks[name] = (parameter, mask.astype(value.dtype))
    return masks


def _accuracy(logits_of, data: ArrayData | LoaderData) -> float:
    correct = total = 0
    batches = (data.batches(EVALUATION_BATCH) if isinstance(data, ArrayData)
               else ((x, y, None) for x, y in data.batches()))
    for x, y, _ in batches:
        if y is None:
            raise DataError(f"{data.source}: validation data needs labels (to measure accuracy)")
        correct += int((logits_of(x).argmax(axis=1) == y).sum())
        total += len(x)
    if total == 0:
        raise DataError(f"{data.source}: the validation data set is empty")
    return correct / total
