"""Does knowledge distillation help on the digits, and does it win back what pruning cost?

Accuracy goals, not speed goals: every figure is a held-out accuracy on the 359 held-out digits
(``fixtures.build.digits_split``), of the weights after the last epoch (no checkpoint is chosen
on the held-out set, which would flatter both sides). Each recipe runs over several seeds and
reports mean, sample standard deviation, min and max.

1. **KD against no KD**: the classic tutorial's small CNN (``builtin:digits_cnn``) trained with
   the same recipe (Adam, learning rate, batch 64, epochs) with KD from the digits ResNet
   (T, alpha) and without (alpha = 1, plain cross-entropy), on all 1,438 training digits and on
   a small subset (KD is said to help most when labels are few).
2. **Recovery after pruning**: the digits ResNet with 50% of its filters pruned and dropped
   (``graphopt.prune(method="filters", ratio=0.5, drop=True)``), fine-tuned with the unpruned
   ResNet as teacher and without; MACs before and after.
3. **LeNet, 50% filters pruned and dropped**, before and after a short fine-tune (plain, and
   with KD from the unpruned LeNet): MACs and accuracy (the pruning issue's "after" figures).

Run: ``.venv/bin/python benchmarks/bench_distill.py [--seeds 0,1,2] [--epochs 5]
[--sections kd,resnet,lenet] [--json]`` (about 4 minutes of CPU; 9 on two shared, busy cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRAPHOPT_PROGRESS", "0")

import graphopt  # noqa: E402
from fixtures.build import digits_split, fixture_path  # noqa: E402
from graphopt.runtime import run_mxnet  # noqa: E402

DIGITS_INPUT = {"data": (1, 1, 28, 28)}


def held_out_accuracy(graph, x, y) -> float:
    (logits,) = run_mxnet(graph, {"data": x}).values()
    return float(np.mean(logits.argmax(axis=1) == y))


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "runs": values}


def macs(graph) -> int:
    return graphopt.inspect_graph(graph)["totals"]["macs"]


def prune_half_the_filters(graph):
    """``(pruned graph, how)``: 50% of the filters pruned by graphopt.prune and dropped (while
    ``graphopt.prune.drop_channels`` is not there yet, zeroed only: ``distill(keep_zeros=True)``
    keeps them at zero)."""
    prune_package = importlib.import_module("graphopt.prune")
    drop = hasattr(prune_package, "drop_channels")
    pruned, _report = prune_package.prune(graph, method="filters", ratio=0.5, drop=drop,
                                          measure_storage=False)
    how = f"graphopt.prune(method='filters', ratio=0.5, drop={drop})"
    return pruned, how + ("" if drop else " (drop_channels not available yet: zeroed only)")


def kd_against_no_kd(args, data) -> dict:
    x_train, y_train, x_test, y_test = data
    teacher = graphopt.load(*fixture_path("resnet_digits"), inputs=DIGITS_INPUT)
    subset = np.random.RandomState(0).permutation(len(x_train))[:args.subset]
    regimes = {f"all {len(x_train)} training digits": (x_train, y_train),
               f"{args.subset} training digits": (x_train[subset], y_train[subset])}
    results = {"teacher": "resnet_digits", "teacher_accuracy": held_out_accuracy(teacher, x_test, y_test),
               "student": "builtin:digits_cnn", "regimes": {}}
    for regime, train in regimes.items():
        row = {}
        for name, alpha in (("kd", args.alpha), ("no_kd", 1.0)):
            accuracies = []
            for seed in args.seeds:
                result = graphopt.distill(teacher, "builtin:digits_cnn", train, epochs=args.epochs,
                                          temperature=args.temperature, alpha=alpha, seed=seed)
                accuracies.append(held_out_accuracy(result.student, x_test, y_test))
            row[name] = spread(accuracies)
        row["kd_minus_no_kd"] = row["kd"]["mean"] - row["no_kd"]["mean"]
        results["regimes"][regime] = row
    return results


def recovery(args, data, fixture: str, epochs: int) -> dict:
    """Prune ``fixture`` by half its filters; fine-tune with KD from the unpruned model and
    without, over the seeds."""
    x_train, y_train, x_test, y_test = data
    teacher = graphopt.load(*fixture_path(fixture), inputs=DIGITS_INPUT)
    pruned, how = prune_half_the_filters(teacher)
    results = {"model": fixture, "pruning": how, "epochs": epochs,
               "teacher_accuracy": held_out_accuracy(teacher, x_test, y_test),
               "pruned_accuracy_before_fine_tune": held_out_accuracy(pruned, x_test, y_test),
               "macs_before": macs(teacher), "macs_after": macs(pruned),
               "params_before": sum(v.size for v in teacher.params.values()),
               "params_after": sum(v.size for v in pruned.params.values())}
    for name, alpha in (("kd", args.alpha), ("no_kd", 1.0)):
        accuracies, seconds = [], []
        for seed in args.seeds:
            started = time.perf_counter()
            result = graphopt.distill(teacher, pruned, (x_train, y_train), epochs=epochs,
                                      temperature=args.temperature, alpha=alpha, seed=seed,
                                      learning_rate=args.fine_tune_lr, lr_schedule="cosine")
            seconds.append(time.perf_counter() - started)
            accuracies.append(held_out_accuracy(result.student, x_test, y_test))
        results[name] = spread(accuracies)
        results[name]["seconds_median"] = statistics.median(seconds)
    results["kd_within_half_a_point"] = (results["teacher_accuracy"] - results["kd"]["min"]) <= 0.005
    return results


def _line(label: str, stats: dict) -> str:
    return (f"  {label:<28} {stats['mean']:.4f} +- {stats['std']:.4f}  "
            f"(min {stats['min']:.4f}, max {stats['max']:.4f})")


def print_kd_section(report: dict) -> None:
    settings = report["settings"]
    print(f"seeds {settings['seeds']}, T = {settings['temperature']}, alpha = {settings['alpha']} "
          f"(no KD: alpha = 1); held-out accuracy after the last epoch, mean +- sample std")
    kd = report["kd_against_no_kd"]
    print(f"\n1. KD against no KD: {kd['student']} from {kd['teacher']} "
          f"(teacher {kd['teacher_accuracy']:.4f}), {settings['epochs']} epochs, Adam "
          f"lr 1e-3, batch 64")
    for regime, row in kd["regimes"].items():
        print(f" {regime}:")
        print(_line("with KD", row["kd"]))
        print(_line("without KD", row["no_kd"]))
        print(f"  {'KD - no KD':<28} {row['kd_minus_no_kd']:+.4f}")


def print_recovery_section(number: int, block: dict) -> None:
    print(f"\n{number}. {block['model']}: {block['pruning']}")
    print(f"  MACs {block['macs_before']:,} -> {block['macs_after']:,} "
          f"({block['macs_after'] / block['macs_before']:.2f}x); params "
          f"{block['params_before']:,} -> {block['params_after']:,}")
    print(f"  {'unpruned (teacher)':<28} {block['teacher_accuracy']:.4f}")
    print(f"  {'pruned, before fine-tune':<28} {block['pruned_accuracy_before_fine_tune']:.4f}")
    print(_line(f"fine-tuned {block['epochs']} ep., KD", block["kd"]))
    print(_line(f"fine-tuned {block['epochs']} ep., no KD", block["no_kd"]))
    print(f"  KD within 0.5 points of the teacher on every seed: "
          f"{block['kd_within_half_a_point']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the from-scratch runs")
    parser.add_argument("--fine-tune-epochs", type=int, default=12)
    parser.add_argument("--fine-tune-lr", type=float, default=3e-3)
    parser.add_argument("--subset", type=int, default=200, help="the small training set's size")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--sections", default="kd,resnet,lenet",
                        help="which parts to run: kd (KD against no KD), resnet, lenet (recovery)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    args.seeds = [int(s) for s in args.seeds.split(",")]
    data = digits_split()
    started = time.perf_counter()
    report = {"settings": {"seeds": args.seeds, "epochs": args.epochs,
                           "fine_tune_epochs": args.fine_tune_epochs,
                           "fine_tune_lr": args.fine_tune_lr, "subset": args.subset,
                           "temperature": args.temperature, "alpha": args.alpha}}
    # each section is printed as soon as it is done (a later failure keeps the earlier figures)
    if "kd" in sections:
        report["kd_against_no_kd"] = kd_against_no_kd(args, data)
        if not args.json:
            print_kd_section(report)
    for number, (key, fixture) in enumerate((("resnet_recovery", "resnet_digits"),
                                             ("lenet_recovery", "lenet_digits")), start=2):
        if fixture.split("_")[0] not in sections:
            continue
        report[key] = recovery(args, data, fixture, args.fine_tune_epochs)
        if not args.json:
            print_recovery_section(number, report[key])
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\n({report['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
