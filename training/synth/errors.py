"""The synthetic corpus's error type."""

from __future__ import annotations

class SynthError(RuntimeError):
    """An engine missing, or no usable text."""
