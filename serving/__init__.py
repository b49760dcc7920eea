"""repwatch serving sidecar: ONNX over the Open Inference Protocol, plus the record stream.

Module map: ``app`` (HTTP endpoints) and ``fastpath`` (the infer endpoint as plain ASGI);
``oip`` (protocol codec); ``session`` / ``models`` / ``batching`` (onnxruntime); ``tap`` (proxy
mode); ``ingest`` (``/v1/records``, ``/v1/feedback``); ``builder`` (queued items into v1
records); ``stream`` / ``transport`` / ``producer_proc`` (queue and Kafka producer); ``metrics``;
``core`` (state shared by all of them); ``cli`` (``repwatch serve``).
"""
