"""The HTTP face of ``w2v serve --http-port N``: one ASGI application (Starlette on uvicorn) in
the gRPC server's process and event loop, over the same models, limits, auth token and metrics.

* ``POST /v1/audio/transcriptions``, ``GET /v1/models``: OpenAI's transcription API
  (``openai_api``).
* ``/ws``: streaming recognition over a WebSocket in Vosk's server protocol (``vosk``).
* ``/``: a page that streams the microphone and transcribes dropped files (``static/``).

Needs the ``http`` extra (``pip install 'w2v[http]'``): starlette, uvicorn, python-multipart,
websockets.
"""

from __future__ import annotations

import importlib.util

MISSING = ("the HTTP face (--http-port) needs starlette, uvicorn, python-multipart and websockets: "
           "pip install 'w2v[http]'")
_MODULES = ("starlette", "uvicorn", "python_multipart", "websockets")


def missing() -> list[str]:
    """The HTTP face's packages that are not installed (empty when it can run)."""
    return [m for m in _MODULES if importlib.util.find_spec(m) is None]
