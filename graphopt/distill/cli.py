"""``graphopt distill TEACHER --student (STUDENT_MODEL | builtin:NAME) --data digits|DATA.npz
--epochs N --temperature T --alpha A -o OUT``.

Writes ``OUT-symbol.json``, ``OUT-0000.params`` and ``OUT-distill.json`` (settings and the
per-epoch history). ``--data digits`` trains on the bundled digits' training split and
validates on their held-out split; a ``.npz`` holds ``data`` (or ``x``) and ``label`` (or
``y``), and ``--val-data`` names another for validation.
"""

from __future__ import annotations

from graphopt.cli import _load, _model_arguments, _print_json, resolve_model

DEFAULTS = {"epochs": 10, "temperature": 4.0, "alpha": 0.5, "batch_size": 64,
            "learning_rate": 1e-3, "seed": 0}


def add_commands(commands) -> None:
    p = commands.add_parser("distill", help="train a student from a teacher's soft targets "
                                            "(knowledge distillation)")
    _model_arguments(p)  # the teacher: model, --params, --input
    p.add_argument("--student", required=True,
                   help="the student: a model (PREFIX-symbol.json or PREFIX, e.g. a pruned "
                        "model) or builtin:NAME (builtin:digits_cnn, builtin:lenet)")
    p.add_argument("--student-params", help="the student's params file (default: beside it)")
    p.add_argument("--data", required=True, help="'digits' or a .npz with data/x and label/y")
    p.add_argument("--val-data", help="a .npz to validate on each epoch (digits: the held-out "
                                      "split)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"],
                   help="weight of the hard-label loss; 1 is plain training, 0 teacher only")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--optimizer", default="adam", help="a Gluon optimizer name")
    p.add_argument("--lr", type=float, default=DEFAULTS["learning_rate"], dest="learning_rate")
    p.add_argument("--lr-schedule", choices=["cosine"], help="decay the learning rate to 0 along a "
                                                             "half cosine (default: constant)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--teacher-cache", choices=["auto", "run", "epoch", "batch"], default="auto")
    p.add_argument("-o", "--output", required=True, help="prefix of the trained student")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_distill)


def _refuse_overwriting_a_model(args, builtin_student: bool) -> None:
    """The teacher and the student given are never modified: ``-o`` naming one of their files
    (the student's own prefix, say) is refused before training (it replaced them)."""
    from pathlib import Path
    from graphopt.errors import ModelFileError
    models = [resolve_model(args.model, args.params)]
    if not builtin_student:
        models.append(resolve_model(args.student, args.student_params))
    outputs = [Path(f"{args.output}-symbol.json"), Path(f"{args.output}-0000.params"),
               Path(f"{args.output}-distill.json")]
    for output in outputs:
        for path in (path for model in models for path in model if path is not None):
            if output.exists() and Path(path).exists() and output.samefile(path):
                raise ModelFileError(f"-o {args.output} would overwrite the model file {path}; "
                                     f"write the student elsewhere", file=str(output))


def cmd_distill(args) -> int:
    from graphopt.distill.students import is_builtin
    from graphopt.distill.trainer import distill
    from graphopt.mxnet_io.load import load
    _refuse_overwriting_a_model(args, is_builtin(args.student))
    teacher = _load(args)
    if is_builtin(args.student):
        student = args.student
    else:
        student = load(*resolve_model(args.student, args.student_params))
    val_data = args.val_data or ("digits" if args.data == "digits" else None)
    result = distill(teacher, student, args.data, val_data, temperature=args.temperature,
                     alpha=args.alpha, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=args.optimizer, learning_rate=args.learning_rate,
                     lr_schedule=args.lr_schedule, seed=args.seed,
                     teacher_cache=args.teacher_cache, output=args.output)
    if args.json:
        _print_json({**result.to_dict(), "paths": result.paths})
        return 0
    for entry in result.history:
        accuracy = entry.get("val_accuracy")
        print(f"epoch {entry['epoch']:>3}  loss {entry['loss']:.4f}"
              + (f"  val accuracy {accuracy:.4f}" if accuracy is not None else ""))
    if result.best_val_accuracy is not None:
        teacher_text = ("" if result.teacher_val_accuracy is None
                        else f" (teacher {result.teacher_val_accuracy:.4f})")
        print(f"best epoch {result.best_epoch}: val accuracy {result.best_val_accuracy:.4f}"
              f"{teacher_text}")
    print(f"wrote {result.paths['symbol']}, {result.paths['params']}, {result.paths['history']}")
    return 0
