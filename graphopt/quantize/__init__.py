"""Post-training int8 quantization: calibration, quantize/dequantize insertion as rules
(``rules/quantize*.toml``), ONNX QDQ and MXNet int8 emission (issue 8).

    qgraph, report = graphopt.quantize.quantize(graph, calibration, activations="uint8",
                                                per_channel=True, exclude=(), exclude_first_last=False)
    model = graphopt.to_onnx(qgraph, "model-int8.onnx")  # QDQ: QuantizeLinear/DequantizeLinear
    print(graphopt.quantize.fusion_report(model).format())   # what onnxruntime runs in int8

The whole post-training recipe (fold, equalize, calibrate, quantize, correct biases), as
``graphopt quantize`` and the pipeline run it: :mod:`graphopt.quantize.recipe`.

Importing this package registers the quantize/dequantize ops with MXNet (``ops``) and the
rules' guards and functions (``rule_functions``), so it is imported by ``graphopt`` itself.
"""

from graphopt.quantize import ops  # noqa: F401  (registers the Custom ops with MXNet)
from graphopt.quantize.ops import DEQUANTIZE, DYNAMIC_QUANTIZE, QUANTIZE
from graphopt.quantize.calibrate import Calibration, CalibrationWarning, calibrate
from graphopt.quantize.data import ImagePreprocessing
from graphopt.quantize.fusion import FusionGroup, FusionReport, fusion_report
from graphopt.quantize.qdq import ObservedRanges, QuantizeReport, quantize, quantize_dynamic
from graphopt.quantize.mxnet_int8 import Int8Report, to_mxnet_int8
from graphopt.quantize.sensitivity import (FallbackResult, LayerSensitivity, fallback_until,
                                           sensitivity)
from graphopt.quantize.rule_functions import QUANTIZABLE_OPS, QuantizeOptions
from graphopt.quantize.equalize import equalize  # registers rules/equalize.toml's functions
from graphopt.quantize.bias_correction import BiasCorrectionReport, correct_bias
from graphopt.quantize.recipe import Prepared, Quantized, RecipeOptions, prepare, quantize_with

__all__ = ["calibrate", "Calibration", "CalibrationWarning", "ImagePreprocessing",
           "quantize", "quantize_dynamic", "QuantizeReport", "fusion_report", "FusionReport", "FusionGroup", "QuantizeOptions", "ObservedRanges", "QUANTIZABLE_OPS",
           "QUANTIZE", "DEQUANTIZE", "DYNAMIC_QUANTIZE",
           "to_mxnet_int8", "Int8Report", "sensitivity", "LayerSensitivity", "fallback_until",
           "FallbackResult", "equalize", "correct_bias", "BiasCorrectionReport",
           "RecipeOptions", "Prepared", "Quantized", "prepare", "quantize_with"]
