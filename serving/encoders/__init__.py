"""Self-supervised encoders: training (torch, `train` extra) and ONNX export."""
