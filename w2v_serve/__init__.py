"""w2v runtime: audio I/O, ONNX Runtime engine, CTC decoding, streaming, gRPC service, Triton,
the `w2v` CLI. Imports no torch."""


def version() -> str:
    """The installed w2v version ("0+unknown" when running from a source tree)."""
    try:
        from importlib.metadata import version as installed

        return installed("w2v")
    except Exception:
        return "0+unknown"
