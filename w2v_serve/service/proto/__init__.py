"""The w2v.v1 gRPC API: ``w2v.proto`` and the code generated from it (``make proto``)."""
