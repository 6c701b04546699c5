"""Knowledge distillation: a student learns from a loaded teacher's softened outputs
(Hinton et al. 2015), to win back what pruning and quantization cost.

``graphopt.distill(teacher, student, train_data, val_data)`` (:mod:`.trainer`) trains a Gluon
block, a built-in student (:mod:`.students`) or a graphopt Graph (:mod:`.trainable`) against
a teacher run in inference mode (:mod:`.teacher`), with the loss of :mod:`.loss`, on data in
the forms of :mod:`.data`. ``graphopt distill`` is the command (:mod:`.cli`).
"""

from graphopt.distill.loss import DistillationLoss, distillation_loss
from graphopt.distill.students import BUILTIN_STUDENTS, builtin_student
from graphopt.distill.trainer import DistillResult, distill

__all__ = ["distill", "DistillResult", "distillation_loss", "DistillationLoss", "builtin_student",
           "BUILTIN_STUDENTS"]
