"""NVIDIA Triton: the Python-backend models of the repository, the repository writer, the
tritonserver launcher and the gRPC clients of the repository's models."""
