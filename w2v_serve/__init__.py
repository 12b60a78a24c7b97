"""w2v runtime: audio I/O, ONNX Runtime engine, CTC decoding, streaming, gRPC, the `w2v` CLI. Imports no torch."""
