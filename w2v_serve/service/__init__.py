"""The gRPC streaming recognition service (``w2v serve``): server, audio messages (PCM), auth,
errors, metrics, health check, client, the generated protocol code, and the backends that run
the model (in-process ONNX Runtime, or Triton servers)."""
