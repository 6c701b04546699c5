"""Post-training int8 quantization: calibration, quantize/dequantize insertion as rules
(``rules/quantize*.toml``), ONNX QDQ and MXNet int8 emission. (Issue 8; being built.)"""
