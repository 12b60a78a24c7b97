"""Limits on hotwords, wherever they come from (``--hotword``, a stream's config, a request):
each is a word or a short phrase, and the beam search scores every one at every step, so their
number and length are bounded."""

from __future__ import annotations

from typing import Iterable, Optional

MAX_HOTWORDS = 256               # per request or command
MAX_HOTWORD_CHARS = 100          # one hotword
MAX_HOTWORDS_TOTAL_CHARS = 10_000


def hotwords_problem(hotwords: Iterable[str]) -> Optional[str]:
    """Why these hotwords are refused (None when they are fine)."""
    words = [h for h in hotwords if h and h.strip()]
    if len(words) > MAX_HOTWORDS:
        return f"at most {MAX_HOTWORDS} hotwords, got {len(words)}"
    for h in words:
        if len(h) > MAX_HOTWORD_CHARS:
            return f"a hotword is at most {MAX_HOTWORD_CHARS} characters, got one of {len(h)}"
    total = sum(len(h) for h in words)
    if total > MAX_HOTWORDS_TOTAL_CHARS:
        return f"hotwords total at most {MAX_HOTWORDS_TOTAL_CHARS} characters, got {total}"
    return None
