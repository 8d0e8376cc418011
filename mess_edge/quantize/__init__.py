"""Quantize stage: an fp32 ONNX folder -> an INT8 (Q/DQ) or FP16 ONNX folder (device side: onnxruntime, no torch)."""
