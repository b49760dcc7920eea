"""repwatch serving sidecar: ONNX inference over the Open Inference Protocol plus the record stream."""
