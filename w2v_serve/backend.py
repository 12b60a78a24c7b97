"""What the service asks of a backend (embedded ONNX Runtime, or Triton servers).

A backend opens streams (``open_stream(options)`` -> an object with ``async send(audio, end=)``
returning result dicts in ``StreamResult.to_dict()`` form, and ``close()``, which must not block:
it runs in the event loop, also when a call is being cancelled), answers
``async recognize(audio, options)`` with ``{"text", "words", "duration_s"}``, says whether it is
``healthy()``, and ``close()``s. Audio is always 16 kHz float32 mono by then. Failures are
``ServiceError``s carrying the gRPC status for the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class StreamOptions:
    interim_results: bool = True
    hotwords: tuple[str, ...] = ()
    method: Optional[str] = None     # "greedy" | "beam" | None (the server's default)
    beam_width: int = 0              # 0: the server's default
