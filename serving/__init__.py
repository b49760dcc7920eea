"""repwatch serving sidecar: ONNX over the Open Inference Protocol, plus the record stream."""
