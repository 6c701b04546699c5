"""The distillation loss against a direct numpy computation of Hinton et al. (2015), and its
gradient against finite differences on a tiny student.

PITFALLS.md, Distillation: "Scale the soft term by T^2 and reduce with batch-mean".
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from graphopt.distill.loss import distillation_loss


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reference_loss(student, teacher, labels, temperature, alpha) -> float:
    """The loss written out in float64 numpy: CE averaged over the batch, KL(p_t || p_s) summed
    over classes and averaged over the batch, times T^2."""
    cross_entropy = -np.mean(log_softmax(student)[np.arange(len(labels)), labels])
    teacher_log_p = log_softmax(teacher / temperature)
    student_log_p = log_softmax(student / temperature)
    kl = np.sum(np.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=1)
    return alpha * cross_entropy + (1 - alpha) * temperature ** 2 * np.mean(kl)


def loss_value(student, teacher, labels, temperature, alpha, dtype="float64") -> float:
    result = distillation_loss(mx.nd.array(student, dtype=dtype), mx.nd.array(teacher, dtype=dtype),
                               mx.nd.array(labels, dtype=dtype), temperature, alpha)
    return float(result.total.asscalar())


@pytest.fixture
def logits(rng):
    """8 samples, 5 classes; logits of spread ~3 so that softmax(t/T) is far from uniform."""
    student = rng.normal(0, 3, size=(8, 5))
    teacher = rng.normal(0, 3, size=(8, 5))
    labels = rng.integers(0, 5, size=8)
    return student, teacher, labels


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_loss_matches_numpy(logits, temperature, alpha):
    student, teacher, labels = logits
    expected = reference_loss(student, teacher, labels, temperature, alpha)
    # float64 all the way: only summation order differs
    assert loss_value(student, teacher, labels, temperature, alpha) == pytest.approx(expected,
                                                                                     rel=1e-12)
    # float32, as training runs: each log-probability is rounded to ~1e-7 of its size (up to
    # ~10 here), and the difference log p_t - log p_s is then multiplied by T^2
    assert loss_value(student, teacher, labels, temperature, alpha,
                      "float32") == pytest.approx(expected, rel=1e-5, abs=temperature ** 2 * 2e-6)


def test_soft_term_is_scaled_by_t_squared_and_batch_mean(logits):
    """alpha = 0: T^2 times the mean over samples of the per-sample KL (a sum over classes);
    neither the class-mean nor a sum over the batch."""
    student, teacher, labels = logits
    temperature = 4.0
    teacher_log_p = log_softmax(teacher / temperature)
    per_sample = np.sum(np.exp(teacher_log_p) * (teacher_log_p - log_softmax(student / temperature)),
                        axis=1)
    soft = loss_value(student, teacher, labels, temperature, 0.0)
    assert soft == pytest.approx(16.0 * per_sample.mean(), rel=1e-12)
    assert soft != pytest.approx(per_sample.mean(), rel=1e-3)             # T^2 not forgotten
    assert soft != pytest.approx(16.0 * per_sample.sum(), rel=1e-3)       # not a batch sum
    assert soft != pytest.approx(16.0 * per_sample.mean() / 5, rel=1e-3)  # not a class mean
    # batch-mean: the loss of a batch repeated twice is the loss of the batch
    assert loss_value(np.tile(student, (2, 1)), np.tile(teacher, (2, 1)), np.tile(labels, 2),
                      temperature, 0.0) == pytest.approx(soft, rel=1e-12)


def test_limits(logits):
    """alpha = 1 is plain cross-entropy (no teacher needed); alpha = 0 needs no labels; the soft
    term vanishes when the student equals the teacher."""
    student, teacher, labels = logits
    plain = distillation_loss(mx.nd.array(student, dtype="float64"), None,
                              mx.nd.array(labels, dtype="float64"), 4.0, 1.0)
    expected_ce = -np.mean(log_softmax(student)[np.arange(len(labels)), labels])
    assert plain.soft is None and float(plain.total.asscalar()) == pytest.approx(expected_ce, rel=1e-12)

    teacher_only = distillation_loss(mx.nd.array(student, dtype="float64"),
                                     mx.nd.array(teacher, dtype="float64"), None, 4.0, 0.0)
    assert teacher_only.hard is None
    assert float(teacher_only.total.asscalar()) == pytest.approx(
        reference_loss(student, teacher, labels, 4.0, 0.0), rel=1e-12)

    same = distillation_loss(mx.nd.array(teacher, dtype="float64"),
                             mx.nd.array(teacher, dtype="float64"), None, 4.0, 0.0)
    assert abs(float(same.total.asscalar())) < 1e-12  # KL(p || p) = 0


def test_extreme_logits_stay_finite():
    """A teacher probability that underflows to 0 contributes 0 (log_softmax, not log(softmax))."""
    teacher = np.array([[1000.0, 0.0, -1000.0]])
    student = np.array([[0.0, 500.0, -500.0]])
    value = loss_value(student, teacher, np.array([0]), 1.0, 0.5)
    assert np.isfinite(value)
    assert value == pytest.approx(reference_loss(student, teacher, np.array([0]), 1.0, 0.5), rel=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gradient_matches_finite_differences(rng, alpha):
    """A tiny student (Dense 4 -> 3, float64) under autograd; each weight's gradient against a
    central difference of the loss computed in numpy (step 1e-6: truncation ~1e-12, rounding
    ~1e-10 in float64, hence rtol 1e-6)."""
    x = rng.normal(size=(6, 4))
    teacher = rng.normal(0, 2, size=(6, 3))
    labels = rng.integers(0, 3, size=6)
    temperature = 3.0
    student = gluon.nn.Dense(3, in_units=4)
    student.initialize(mx.init.Normal(0.5))
    student.cast("float64")
    student.weight.set_data(mx.nd.array(rng.normal(size=(3, 4)), dtype="float64"))
    student.bias.set_data(mx.nd.array(rng.normal(size=3), dtype="float64"))

    with autograd.record():
        loss = distillation_loss(student(mx.nd.array(x, dtype="float64")),
                                 mx.nd.array(teacher, dtype="float64"),
                                 mx.nd.array(labels, dtype="float64"), temperature, alpha)
    loss.total.backward()

    def numpy_loss(weight, bias):
        return reference_loss(x @ weight.T + bias, teacher, labels, temperature, alpha)

    weight, bias = student.weight.data().asnumpy(), student.bias.data().asnumpy()
    step = 1e-6
    for parameter, value in ((student.weight, weight), (student.bias, bias)):
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            plus, minus = value.copy(), value.copy()
            plus[index] += step
            minus[index] -= step
            args_plus = (plus, bias) if parameter is student.weight else (weight, plus)
            args_minus = (minus, bias) if parameter is student.weight else (weight, minus)
            numeric[index] = (numpy_loss(*args_plus) - numpy_loss(*args_minus)) / (2 * step)
        np.testing.assert_allclose(parameter.grad().asnumpy(), numeric, rtol=1e-6, atol=1e-9)
