"""The distillation loss of Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a
Neural Network", on MXNet NDArrays so that autograd differentiates it:

    loss = alpha * CE(softmax(s), y) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

``s`` are the student's logits, ``t`` the teacher's, ``y`` the hard labels, ``T`` the
temperature. Both terms are summed over the class axis (1) and averaged over the batch
("batchmean"): a mean over the class axis as well would shrink the soft term by the number of
classes. The soft term is scaled by T^2 because its gradient with respect to the student's
logits scales as 1/T^2; without the factor, raising T silently turns the soft term off (the
classic tutorial forgets it, and takes the KL of probabilities against "probability x T").

Both distributions are computed with ``log_softmax`` (never ``log(softmax(.))``, which gives
-inf for a probability that underflows), and the KL is ``sum p_t * (log p_t - log p_s)``: a
teacher probability of exactly 0 contributes 0, as in the definition.
"""

from __future__ import annotations

from typing import NamedTuple

import mxnet as mx


class DistillationLoss(NamedTuple):
    """The loss and its two terms, each a batch mean (1-element NDArrays). ``hard`` is None when
    ``alpha == 0`` and ``soft`` None when ``alpha == 1`` (the term is not computed at all)."""
    total: mx.nd.NDArray
    hard: mx.nd.NDArray | None
    soft: mx.nd.NDArray | None


def cross_entropy(logits: mx.nd.NDArray, labels: mx.nd.NDArray) -> mx.nd.NDArray:
    """Batch mean of ``-log softmax(logits)[label]``; ``labels`` are class indices (N,)."""
    log_probabilities = mx.nd.log_softmax(logits, axis=1)
    return -mx.nd.mean(mx.nd.pick(log_probabilities, labels, axis=1))


def soft_target_loss(student_logits: mx.nd.NDArray, teacher_logits: mx.nd.NDArray,
                     temperature: float) -> mx.nd.NDArray:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, averaged over the batch.
    The teacher's side is a constant: no gradient flows into ``teacher_logits``."""
    teacher_log_p = mx.nd.log_softmax(mx.nd.stop_gradient(teacher_logits) / temperature, axis=1)
    student_log_p = mx.nd.log_softmax(student_logits / temperature, axis=1)
    per_sample = mx.nd.sum(mx.nd.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=1)
    return temperature * temperature * mx.nd.mean(per_sample)


def distillation_loss(student_logits: mx.nd.NDArray, teacher_logits: mx.nd.NDArray | None,
                      labels: mx.nd.NDArray | None, temperature: float = 4.0,
                      alpha: float = 0.5) -> DistillationLoss:
    """``alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(teacher/T || student/T)``.

    ``alpha = 1`` is plain training on the labels (``teacher_logits`` may be None);
    ``alpha = 0`` learns from the teacher alone (``labels`` may be None). Logits are (N, C)."""
    hard = cross_entropy(student_logits, labels) if alpha > 0 else None
    soft = soft_target_loss(student_logits, teacher_logits, temperature) if alpha < 1 else None
    if hard is None:
        total = soft
    elif soft is None:
        total = hard
    else:
        total = alpha * hard + (1.0 - alpha) * soft
    return DistillationLoss(total, hard, soft)
