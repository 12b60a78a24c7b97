"""Export of w2v checkpoints to ONNX model directories and Triton repositories."""
