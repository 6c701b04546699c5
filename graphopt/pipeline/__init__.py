"""One command from a trained model to a validated deployment artifact (issue 12).

    spec = graphopt.pipeline.load_pipeline_file("pipeline.toml")     # or validate(document)
    result = graphopt.pipeline.run_pipeline(spec, out="build/model")   # GateError if a gate fails

Steps (fold, prune, distill, quantize) run in order, each checked by a gate against the step
before it; the deployment files (ONNX, MXNet) and report.json/report.html are written to OUT.
See :mod:`graphopt.pipeline.runner` for the gates and :mod:`graphopt.pipeline.spec` for the file.
"""

from graphopt.pipeline.runner import GateError, PipelineResult, run_pipeline
from graphopt.pipeline.spec import PipelineError, PipelineSpec, Step, load_pipeline_file, validate

__all__ = ["run_pipeline", "PipelineResult", "GateError", "PipelineError", "PipelineSpec", "Step",
           "load_pipeline_file", "validate"]
