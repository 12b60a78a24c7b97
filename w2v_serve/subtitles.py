"""Subtitles from timed words: the cues (words grouped at pauses and line lengths) and their SRT
and WebVTT renderings. ``w2v transcribe --format srt|vtt`` and the HTTP API's ``srt``, ``vtt`` and
``verbose_json`` segments all come from here."""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

from w2v_serve.decoding import Word


class Cue(NamedTuple):
    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...]


def format_timestamp(seconds: float, sep: str) -> str:
    """``HH:MM:SS{sep}mmm`` (SRT: ``sep=","``; WebVTT: ``"."``)."""
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitle_cues(words: Iterable[Word], max_chars: int = 42, max_seconds: float = 6.0,
                  max_gap: float = 1.0) -> list[Cue]:
    """Words grouped into cues: a new cue after a pause, or when a line would get too long."""
    cues: list[Cue] = []
    group: list[Word] = []

    def close() -> None:
        cues.append(Cue(group[0].start_s, group[-1].end_s, " ".join(x.word for x in group), tuple(group)))

    for w in words:
        if group and (w.start_s - group[-1].end_s > max_gap or w.end_s - group[0].start_s > max_seconds
                      or len(" ".join(x.word for x in group)) + 1 + len(w.word) > max_chars):
            close()
            group = []
        group.append(w)
    if group:
        close()
    return cues


def render_srt(cues: Sequence[Cue]) -> str:
    return "".join(f"{i}\n{format_timestamp(c.start_s, ',')} --> {format_timestamp(c.end_s, ',')}\n{c.text}\n\n"
                   for i, c in enumerate(cues, 1))


def render_vtt(cues: Sequence[Cue]) -> str:
    return "WEBVTT\n\n" + "".join(f"{format_timestamp(c.start_s, '.')} --> {format_timestamp(c.end_s, '.')}\n{c.text}\n\n"
                                  for c in cues)
