"""The streaming algorithm (w2v_serve.streaming) against offline recognition of the same audio."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import speech_like
from tests.serve_helpers import TINY, VOCAB, tiny_model_dir
from w2v_serve.decoding import CTCDecoder
from w2v_serve.engine import Engine
from w2v_serve.streaming import StreamError, StreamingConfig, StreamingRecognizer

# "Enough context": every window covers the whole test utterance, so streaming must reproduce
# offline recognition exactly (the windows are then the offline input).
FULL = StreamingConfig(chunk_ms=400, left_context_ms=60_000, right_context_ms=60_000, endpoint_ms=60_000)


@pytest.fixture(scope="module")
def groupnorm_model_dir(tmp_path_factory):
    """A BASE-style model (GroupNorm conv block): the encoder reruns over each window."""
    import torch

    from export.exporter import export_model
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_small

    torch.manual_seed(11)
    model = wav2vec2_small(vocab_size=len(VOCAB), **{**TINY, "extractor_mode": "default",
                                                     "normalize_waveform": True}).eval()
    out = tmp_path_factory.mktemp("gn") / "model"
    export_model(Checkpoint.from_model(model, VOCAB), out, check=False)
    return out


def offline_text(model_dir, audio) -> str:
    return CTCDecoder(VOCAB).decode(Engine(model_dir).log_probs(audio)).text


def stream(rec: StreamingRecognizer, audio: np.ndarray, sizes, stream_id="s"):
    rec.start(stream_id)
    results, pos, k = [], 0, 0
    while pos < len(audio):
        n = sizes[k % len(sizes)]
        k += 1
        results += rec.accept(stream_id, audio[pos:pos + n], end=pos + n >= len(audio))
        pos += n
    return results


def finals_text(results) -> str:
    return " ".join(r.text for r in results if r.is_final and r.text)


@pytest.mark.parametrize("kind", ["cached", "window"])
def test_full_context_stream_equals_offline(kind, groupnorm_model_dir):
    model_dir = tiny_model_dir("attention") if kind == "cached" else groupnorm_model_dir
    rec = StreamingRecognizer(model_dir, FULL)
    assert rec.cache_features == (kind == "cached")
    audio = speech_like(16000 * 3 + 777, seed=3, scale=0.3)
    # Odd chunk sizes, some shorter than one receptive field, one empty.
    results = stream(rec, audio, [1234, 0, 4000, 97, 5000])
    assert finals_text(results) == offline_text(model_dir, audio)
    assert results[-1].is_final and rec.active_streams == 0


def test_partials_arrive_before_the_end_and_finals_at_end_points():
    model_dir = tiny_model_dir("local")   # silence decodes to the word delimiter: a pause
    rec = StreamingRecognizer(model_dir, StreamingConfig(chunk_ms=200, right_context_ms=100, endpoint_ms=400))
    a, b = speech_like(16000, seed=1, scale=0.5), speech_like(12000, seed=2, scale=0.5)
    audio = np.concatenate([a, np.zeros(16000, np.float32), b])
    results = stream(rec, audio, [1600])
    finals = [r for r in results if r.is_final and r.text]
    partial_times = [r.end_s for r in results if not r.is_final]
    assert partial_times and min(partial_times) < 0.5          # partials while audio still arrives
    assert len(finals) == 2                                    # the pause ended the first segment
    assert finals[0].end_s <= 1.8 and finals[1].start_s >= 1.0
    assert all(w.start_s >= 1.0 for w in finals[1].transcript.words)   # times on the stream's line
    # Frame-local model: the segments' finals joined are exactly the offline decode of the whole.
    assert finals_text(results) == offline_text(model_dir, audio)


def test_interleaved_streams_do_not_mix():
    model_dir = tiny_model_dir("attention")
    cfg = StreamingConfig(chunk_ms=200, right_context_ms=100)
    x, y = speech_like(20000, seed=5), speech_like(26000, seed=6, scale=2.0)
    alone = [finals_text(stream(StreamingRecognizer(model_dir, cfg), a, [1000])) for a in (x, y)]
    rec = StreamingRecognizer(model_dir, cfg)
    rec.start("x")
    rec.start("y")
    out = {"x": [], "y": []}
    for k in range(0, 26000, 1000):
        items = [(sid, a[k:k + 1000], k + 1000 >= len(a)) for sid, a in (("x", x), ("y", y)) if k < len(a)]
        for (sid, _, _), res in zip(items, rec.accept_many(items)):
            out[sid] += res
    assert [finals_text(out["x"]), finals_text(out["y"])] == alone


def test_state_is_bounded_on_a_long_stream():
    model_dir = tiny_model_dir("attention")
    cfg = StreamingConfig(chunk_ms=400, left_context_ms=1000, right_context_ms=200, max_segment_s=4.0)
    rec = StreamingRecognizer(model_dir, cfg)
    rec.start("long")
    rng = np.random.default_rng(0)
    sizes = []
    for k in range(120):  # 60 s of audio in 0.5 s pieces
        rec.accept("long", (0.1 * rng.standard_normal(8000)).astype(np.float32))
        st = rec._streams["long"]
        sizes.append((len(st.audio), 0 if st.features is None else len(st.features), st.segment_frames,
                      sum(len(a) for a in st.segment_audio)))
    window = cfg.left_frames + cfg.chunk_frames + cfg.right_frames
    assert max(s[1] for s in sizes) <= window + 25        # conv feature cache: one window (+ a piece)
    assert max(s[0] for s in sizes) <= (window + 25) * 320 + 400
    assert max(s[2] for s in sizes) <= cfg.max_segment_frames
    assert max(s[3] for s in sizes) <= (cfg.max_segment_frames + 25) * 320 + 400   # full-context finals' audio
    assert st.frames_emitted > 2900 and st.features_start > 2800   # it did stream the whole minute


def test_bad_use_is_an_error_and_leaves_other_streams_intact():
    rec = StreamingRecognizer(tiny_model_dir("attention"), StreamingConfig())
    with pytest.raises(StreamError, match="unknown stream"):
        rec.accept("never", np.zeros(100, np.float32))
    rec.start("ok")
    rec.start("bad")
    good = speech_like(8000, seed=9)
    bad = good.copy()
    bad[10] = np.nan
    with pytest.raises(StreamError, match="non-finite"):
        rec.accept_many([("ok", good, False), ("bad", bad, False)])
    assert rec._streams["ok"].samples == 0                    # nothing applied to anyone
    rec.accept("ok", good, end=True)
    with pytest.raises(StreamError, match="unknown stream"):  # after END
        rec.accept("ok", good)
    assert rec.expire_idle(0.0) == ["bad"] and rec.active_streams == 0
