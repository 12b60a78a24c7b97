"""Triton Python-backend shim: the model lives in w2v_serve.triton.models."""

from w2v_serve.triton.models import AcousticModel as TritonPythonModel  # noqa: F401
