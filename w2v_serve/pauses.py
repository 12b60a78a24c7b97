"""Pauses in a recording, for cutting it into segments the acoustic model runs one at a time.

A pause is a run of 10 ms frames whose level stays in the lower quarter of the recording's
dynamic range: below floor + 0.25 * (speech - floor) dB, where speech and floor are the 95th
and 5th percentiles of the frame levels of the audio examined. Where speech and floor are less
than 20 dB apart (steady noise, music, speech over noise) nothing counts as a pause, and the
caller falls back to overlapping windows. Pauses shorter than 0.2 s (stop closures inside
words, most gaps between words) are not used.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

FRAME_S = 0.01
MIN_PAUSE_S = 0.2
MIN_RANGE_DB = 20.0
QUIET_FRACTION = 0.25
FLOOR_DB = -100.0             # digital silence counts as this level


def frame_levels(audio: np.ndarray, hop: int) -> np.ndarray:
    """Level in dB (re full scale 1.0) of each whole ``hop``-sample frame of ``audio``."""
    frames = np.asarray(audio[: len(audio) // hop * hop], dtype=np.float32).reshape(-1, hop)
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / hop
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), FLOOR_DB)


def find_pause(audio: np.ndarray, start: int, stop: int, sample_rate: int,
               min_pause_s: float = MIN_PAUSE_S) -> Optional[int]:
    """The sample index (into ``audio``) of the middle of the longest pause lying within
    ``audio[start:stop]`` (the latest of equally long ones), judged against the levels of all
    of ``audio``; None when there is none."""
    hop = max(1, int(round(sample_rate * FRAME_S)))
    levels = frame_levels(audio, hop)
    if len(levels) == 0:
        return None
    speech, floor = np.percentile(levels, 95), np.percentile(levels, 5)
    if speech - floor < MIN_RANGE_DB:
        return None
    first, last = -(-start // hop), min(stop // hop, len(levels))
    if last <= first:
        return None
    quiet = levels[first:last] < floor + QUIET_FRACTION * (speech - floor)
    edges = np.diff(np.concatenate(([0], quiet.astype(np.int8), [0])))
    run_starts, run_ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(run_starts) == 0:
        return None
    lengths = run_ends - run_starts
    best = len(lengths) - 1 - int(np.argmax(lengths[::-1]))        # longest, latest on ties
    if lengths[best] * hop < min_pause_s * sample_rate:
        return None
    return (first + int(run_starts[best] + run_ends[best]) // 2) * hop
