"""Word timestamps against known truth: espeak-ng words joined with measured silences.

No trained model exists in this repository yet, so the frames' labels come from the audio itself
rather than from an acoustic model: a frame (its 400-sample receptive field at the 320-sample hop,
exactly the model's framing) is speech when its RMS is above a threshold, and the k-th speech region
is spelled with the k-th word's characters (first character on its first frame, last on its last),
silence frames carry the word delimiter. The decoders then have to turn these frames back into
times in seconds; each word's start and end must be within 60 ms of where the word really is.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.serve_helpers import VOCAB, espeak, peaky, trim_silence
from w2v_serve.audio import load_audio
from w2v_serve.decoding import BEAM, CTCDecoder, DecoderOptions

SR, STRIDE, FIELD = 16000, 320, 400
WORDS = "seven brown foxes quickly jumped over nine sleeping dogs".split()


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("words")
    rng = np.random.default_rng(0)
    pieces, truth, pos = [np.zeros(int(0.3 * SR), np.float32)], [], int(0.3 * SR)
    for i, word in enumerate(WORDS):
        audio = trim_silence(load_audio(espeak(word, tmp / f"{i}.wav", voice="en-us")))
        gap = np.zeros(int(rng.uniform(0.25, 0.6) * SR), np.float32)
        truth.append((word, pos / SR, (pos + len(audio)) / SR))
        pieces += [audio, gap]
        pos += len(audio) + len(gap)
    return np.concatenate(pieces), truth


def frames_from_audio(audio: np.ndarray, words: list[str]) -> list:
    n = (len(audio) - FIELD) // STRIDE + 1
    rms = np.array([np.sqrt(np.mean(audio[t * STRIDE: t * STRIDE + FIELD] ** 2)) for t in range(n)])
    speech = rms > 0.005
    runs, t = [], 0
    while t < n:
        if speech[t]:
            s = t
            while t < n and speech[t]:
                t += 1
            if runs and s - runs[-1][1] < 8:          # a stop closure inside a word, not a pause
                runs[-1] = (runs[-1][0], t)
            else:
                runs.append((s, t))
        else:
            t += 1
    assert len(runs) == len(words), f"found {len(runs)} speech regions for {len(words)} words"
    frames: list = ["|"] * n
    for (a, b), word in zip(runs, words):
        for k in range(a, b):
            frames[k] = "_"
        spots = np.linspace(a, b - 1, len(word)).round().astype(int)
        for k, ch in zip(spots, word):
            frames[k] = ch
    return frames


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_word_times_within_60_ms_of_truth(joined, method):
    audio, truth = joined
    lp = peaky(frames_from_audio(audio, [w for w, _, _ in truth]), p=0.9)
    options = DecoderOptions(method=method, beam_width=8) if method == BEAM else DecoderOptions()
    out = CTCDecoder(VOCAB, options, frame_seconds=STRIDE / SR).decode(lp)
    assert [w.word for w in out.words] == [w for w, _, _ in truth]
    errors = []
    for w, (_, start, end) in zip(out.words, truth):
        errors += [abs(w.start_s - start), abs(w.end_s - end)]
        assert abs(w.start_s - start) <= 0.060, (w, start)
        assert abs(w.end_s - end) <= 0.060, (w, end)
        assert 0.8 < w.confidence <= 1.0
    print(f"{method}: max timestamp error {1000 * max(errors):.1f} ms, mean {1000 * np.mean(errors):.1f} ms")
