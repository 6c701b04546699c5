"""The main job on a bundled model: ``./dev demo`` (``python -m graphopt.demo [PREFIX]``).

For each of the models trained on the handwritten digits (fixtures/models/lenet_digits, the
classic walkthrough's LeNet, and resnet_digits, a small ResNet with BatchNorm), prints what
``graphopt inspect`` shows, saves it back and proves MXNet computes the same bits, rewrites it
with the built-in rules, exports it to ONNX and compares onnxruntime with MXNet on the held-out
digits. Then runs the optimization pipeline of ``examples/resnet_digits.pipeline.toml`` on the
digits ResNet (fold -> prune half the filters -> distill from the unpruned model -> int8 with an
accuracy budget -> ONNX + MXNet), every step gated, and writes its report (report.html) to
``build/demo-pipeline/`` (``--out``). Exits non-zero if any check or gate fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import graphopt
import graphopt.runtime
from graphopt.compare import relative_error
from graphopt.cli import resolve_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [str(REPO / "fixtures" / "models" / name) for name in ("lenet_digits", "resnet_digits")]
PIPELINE = REPO / "examples" / "resnet_digits.pipeline.toml"


def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(REPO))
    from fixtures.build import digits_split
    _, _, x_test, y_test = digits_split()
    return x_test.astype(np.float32), y_test


def run_mxnet(symbol_path: Path, params_path: Path, x: np.ndarray) -> np.ndarray:
    (output,) = graphopt.runtime.run_mxnet((symbol_path, params_path), {"data": x}).values()
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS, help="PREFIX of each model")
    parser.add_argument("--out", default=str(REPO / "build" / "demo-pipeline"),
                        help="where the pipeline writes its models and report.html")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the pipeline")
    args = parser.parse_args(argv)
    x, labels = held_out_digits()
    failures = []
    for model in args.models:
        failures += demo_one(model, x, labels)
    if not args.no_pipeline:
        failures += demo_pipeline(args.out)
    print("\n" + ("demo OK" if not failures else f"demo FAILED: {', '.join(failures)}"))
    return 1 if failures else 0


def demo_one(model: str, x: np.ndarray, labels: np.ndarray) -> list[str]:
    symbol_path, params_path = resolve_model(model)
    shape = (1,) + x.shape[1:]
    failures = []

    print(f"\n######## {symbol_path.name}\n== load {symbol_path.name} + {params_path.name}")
    graph = graphopt.load(symbol_path, params_path, inputs={"data": shape})
    print(graph.summary())
    from graphopt.analysis import format_inspection, inspect_graph
    print(format_inspection(inspect_graph(graph)))

    with tempfile.TemporaryDirectory(prefix="graphopt-demo-") as folder:
        folder = Path(folder)
        print("\n== round trip: load -> save -> run both in MXNet")
        saved = graphopt.save_mxnet(graph, folder / "roundtrip")
        before = run_mxnet(symbol_path, params_path, x)
        after = run_mxnet(*saved, x)
        accuracy = float(np.mean(before.argmax(axis=1) == labels))
        identical = np.array_equal(before, after)
        print(f"held-out accuracy {accuracy:.4f} on {len(x)} digits; outputs "
              f"{'bit-identical' if identical else 'DIFFER'} after the round trip")
        if not identical:
            failures.append(f"{graph.name}: round trip")

        print("\n== rewrite with the built-in rules")
        from graphopt.rewrite import format_report, rewrite
        optimized, report = rewrite(graph)
        print(format_report(report, explain=False))
        optimized_paths = graphopt.save_mxnet(optimized, folder / "optimized")
        rewritten = run_mxnet(*optimized_paths, x)
        error = relative_error(before, rewritten)
        print(f"rewritten model vs original in MXNet: relative error {error:.2e}")
        if error > 1e-5:
            failures.append(f"{graph.name}: rewrite")

        print("\n== export to ONNX and compare with MXNet in onnxruntime")
        from graphopt.compare import compare
        from graphopt.onnx import to_onnx
        onnx_path = folder / f"{graph.name}.onnx"
        to_onnx(optimized, path=onnx_path)
        # the original model against the optimized ONNX, layer by layer: a conv with its
        # BatchNorm folded in is paired with the BatchNorm it now computes
        comparison = compare(symbol_path, params_path, onnx_path, data={"data": x},
                             per_layer=True)
        print(comparison.format())
        if not comparison.ok or comparison.first_divergent is not None:
            failures.append(f"{graph.name}: onnx comparison")
    return failures


def demo_pipeline(out: str) -> list[str]:
    """``graphopt run examples/resnet_digits.pipeline.toml --out OUT``, in process."""
    from graphopt.pipeline import GateError, load_pipeline_file, run_pipeline
    from graphopt.pipeline.cli import format_summary
    print(f"\n######## pipeline {PIPELINE.relative_to(REPO)}")
    try:
        result = run_pipeline(load_pipeline_file(PIPELINE), out=out,
                              log=lambda text: print(f"[pipeline] {text}", flush=True))
        failures = []
    except GateError as error:
        result, failures = error.result, [f"pipeline: {error}"]
    print(format_summary(result.report))
    print(f"open {Path(out) / 'report.html'} to see the report")
    return failures


if __name__ == "__main__":
    sys.exit(main())
