"""The ONNX Runtime engine: providers, batches with lengths, length buckets, stitched windows."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import speech_like
from tests.serve_helpers import tiny_model_dir
from w2v_serve.engine import Engine, EngineError, EngineOptions
from w2v_serve.model_dir import ModelDirectory


def test_providers_fall_back_to_what_this_build_has():
    engine = Engine(tiny_model_dir("attention"), EngineOptions(runtime="onnxruntime"))
    available = ort.get_available_providers()
    assert engine.providers[-1] == "CPUExecutionProvider"
    assert all(p in available for p in engine.providers)
    # Asking for TensorRT/CUDA on a CPU-only build still gives a working engine.
    forced = Engine(tiny_model_dir("attention"), EngineOptions(providers=("TensorrtExecutionProvider",), threads=1,
                                                               runtime="onnxruntime"))
    assert forced.providers == ("CPUExecutionProvider",) or "TensorrtExecutionProvider" in available
    assert forced.session.get_session_options().intra_op_num_threads == 1


def test_batch_rows_equal_single_runs_and_are_trimmed_to_their_frames():
    engine = Engine(tiny_model_dir("attention"))
    audio = [speech_like(n, seed=n) for n in (16000, 9000, 23456, 401)]
    batched = engine.infer(audio)
    for a, lp in zip(audio, batched):
        alone = engine.infer([a])[0]
        assert lp.shape == alone.shape == (engine.num_frames(len(a)), len(engine.model.vocab))
        np.testing.assert_allclose(lp, alone, atol=1e-4)
        # Log-probabilities: each frame sums to one.
        np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-4)


def test_too_short_input_is_an_error_naming_the_minimum():
    with pytest.raises(EngineError, match="at least 400"):
        Engine(tiny_model_dir("attention")).infer([np.zeros(100, np.float32)])


def test_length_buckets_group_similar_lengths_and_leave_long_inputs_to_windows():
    engine = Engine(tiny_model_dir("attention"), EngineOptions(batch_size=2, window_s=10))
    lengths = [16000 * s for s in (5, 1, 9, 2, 30, 6)]
    batches = engine.plan_batches(lengths)
    assert batches == [[1, 3], [0, 5], [2]]       # 30 s is longer than the window
    # At most max_batch_seconds of padded audio per run: 2 x 6 s fits in 12 s, 3 x 5 s does not.
    capped = Engine(tiny_model_dir("attention"), EngineOptions(batch_size=8, window_s=10, max_batch_seconds=12))
    assert capped.plan_batches([16000 * s for s in (5, 1, 9, 2, 6)]) == [[1, 3], [0, 4], [2]]


def with_pauses(seconds: float, seed: int, pause_s: float = 0.4) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """speech_like bursts of 1.5-2.5 s separated by ``pause_s`` of quiet (noise 60 dB down), and
    the (start, stop) samples of each pause."""
    rng = np.random.default_rng(seed)
    parts, pauses, n = [], [], 0
    while n < seconds * 16000:
        burst = speech_like(int(rng.uniform(1.5, 2.5) * 16000), seed=int(rng.integers(1 << 16)))
        quiet = (1e-3 * rng.standard_normal(int(pause_s * 16000))).astype(np.float32)
        parts += [burst, quiet]
        pauses.append((n + len(burst), n + len(burst) + len(quiet)))
        n += len(burst) + len(quiet)
    return np.concatenate(parts)[: int(seconds * 16000)], pauses


@pytest.mark.parametrize("pauses", [False, True])
@pytest.mark.parametrize("seconds", [12.5, 41.0, 70.3])
def test_stitched_segments_reproduce_whole_input_logits(seconds, pauses):
    """With a frame-local model every frame's logits are fully determined by its own samples, so
    the stitched segments (cut at pauses, or windows) must equal one run over the whole input,
    frame for frame."""
    engine = Engine(tiny_model_dir("local"), EngineOptions(window_s=8.0, context_s=1.0, batch_size=3,
                                                           segment_min_s=2.0, segment_max_s=5.0))
    audio = with_pauses(seconds, seed=3)[0] if pauses else speech_like(int(seconds * 16000), seed=3)
    whole = engine.infer([audio])[0]
    # Blocks of odd sizes, as a file reader would give them.
    blocks = [audio[k:k + 12345] for k in range(0, len(audio), 12345)]
    chunks = list(engine.stream_log_probs(blocks))
    starts = [s for s, _ in chunks]
    stitched = np.concatenate([c for _, c in chunks])
    assert starts[0] == 0 and all(b == a + len(c) for a, b, (_, c) in zip(starts, starts[1:], chunks))
    assert stitched.shape == whole.shape == (engine.num_frames(len(audio)), len(engine.model.vocab))
    np.testing.assert_allclose(stitched, whole, atol=1e-4)
    assert np.array_equal(engine.log_probs(audio).argmax(1), whole.argmax(1))


def test_long_recordings_are_cut_inside_pauses_and_fall_back_to_windows_without_them():
    """Cuts land inside the quiet gaps, segments are min..max long and overlap nothing (every
    2-6 s span of the audio holds a whole gap); steady noise has no pause, so it runs as
    windows with context (each after the first starting context_s before its kept frames)."""
    options = EngineOptions(window_s=8.0, context_s=1.0, segment_min_s=2.0, segment_max_s=6.0)
    engine = Engine(tiny_model_dir("local"), options)
    audio, pauses = with_pauses(60.0, seed=5)
    segments = list(engine.segments([audio[k:k + 7777] for k in range(0, len(audio), 7777)]))
    assert len(segments) > 10 and segments[-1].stop_frame is None
    for previous, segment in zip(segments, segments[1:]):
        cut = previous.stop_frame * engine.stride
        assert segment.start == cut                                  # no overlap after a pause cut
        assert any(a <= cut < b for a, b in pauses), cut
        assert 2.0 * 16000 <= cut - previous.start <= 6.0 * 16000
    noise = (0.1 * np.random.default_rng(0).standard_normal(30 * 16000)).astype(np.float32)
    windows = list(engine.segments([noise]))
    assert [len(w.audio) for w in windows[:-1]] == [engine.window] * (len(windows) - 1)
    assert all(b.start == a.stop_frame * engine.stride - engine.context for a, b in zip(windows, windows[1:]))


@pytest.mark.parametrize("fill", ["zeros", "constant"])
def test_a_recording_without_any_level_range_runs_as_windows_and_keeps_every_frame(fill):
    """Digital silence or a constant offset: no dynamic range, so no pause is trusted; the
    recording runs as context windows and the stitched frames still cover it exactly."""
    engine = Engine(tiny_model_dir("local"), EngineOptions(window_s=8.0, context_s=1.0,
                                                           segment_min_s=2.0, segment_max_s=5.0))
    audio = np.zeros(20 * 16000, np.float32) + (0.0 if fill == "zeros" else 0.25)
    segments = list(engine.segments([audio]))
    assert len(segments) > 1 and all(len(s.audio) == engine.window for s in segments[:-1])
    chunks = list(engine.stream_log_probs([audio]))
    assert sum(len(c) for _, c in chunks) == engine.num_frames(len(audio))


def test_find_pause_takes_the_middle_of_the_longest_quiet_run():
    """Hand-made levels: tone at -6 dBFS with quiet runs of 0.1 s (too short), 0.3 s and 0.5 s
    (noise at -66 dBFS); the cut is the middle of the 0.5 s run, on its 10 ms frame grid. A
    window that excludes it gets the 0.3 s run; steady noise has none."""
    from w2v_serve.pauses import find_pause

    rate = 16000
    rng = np.random.default_rng(0)
    tone = lambda s: (0.7 * np.sin(2 * np.pi * 200 * np.arange(int(s * rate)) / rate)).astype(np.float32)
    quiet = lambda s: (7e-4 * rng.standard_normal(int(s * rate))).astype(np.float32)
    audio = np.concatenate([tone(1), quiet(0.1), tone(1), quiet(0.3), tone(1), quiet(0.5), tone(1)])
    assert find_pause(audio, 0, len(audio), rate) == int(3.4 * rate) + int(0.25 * rate)
    assert find_pause(audio, 0, int(3.3 * rate), rate) == int(2.1 * rate) + int(0.15 * rate)
    assert find_pause(audio, 0, int(2.0 * rate), rate) is None
    assert find_pause(quiet(5.0), 0, 5 * rate, rate) is None


def test_window_geometry_is_on_the_frame_grid():
    engine = Engine(tiny_model_dir("local"), EngineOptions(window_s=8.0, context_s=1.0))
    assert engine.window % engine.stride == 0 and engine.hop % engine.stride == 0
    assert engine.window == engine.hop + 2 * engine.context


def test_raw_logits_cards_get_log_softmax(tmp_path):
    import shutil

    src = tiny_model_dir("attention")
    dst = tmp_path / "raw"
    shutil.copytree(src, dst)
    md = ModelDirectory.load(dst)
    md.card.logits_are_log_probs = False
    md.write_card()
    audio = speech_like(8000, seed=1)
    np.testing.assert_allclose(Engine(dst).infer([audio])[0], Engine(src).infer([audio])[0], atol=1e-5)


def test_an_int8_engine_runs_each_input_alone_so_companions_do_not_change_it():
    """int8 graphs quantize activations with one scale over the whole batch: batched with a loud
    file, a quiet file's output would change. The engine runs them one input per run: the
    quiet file's log-probs are identical alone and "batched"; its length plan has one per batch."""
    from w2v_serve.model_dir import default_model_dir

    model = default_model_dir()
    if model is None or not (model / "model.int8.onnx").exists():
        pytest.skip("no bundled model with an int8 variant")
    engine = Engine(model, EngineOptions(runtime="onnxruntime", variant="int8"))
    quiet, loud = speech_like(24000, seed=1, scale=0.02), speech_like(30000, seed=2, scale=1.0)
    alone = engine.infer([quiet])[0]
    np.testing.assert_array_equal(engine.infer([quiet, loud])[0], alone)
    assert engine.plan_batches([24000, 30000, 20000]) == [[2], [0], [1]]
    fp32 = Engine(model, EngineOptions(runtime="onnxruntime", variant="fp32"))
    assert fp32.plan_batches([24000, 30000, 20000]) == [[2, 0, 1]]


def test_transcribe_flags_choose_pause_cuts_or_windows():
    from w2v_serve.cli import build_parser
    from w2v_serve.cli.transcribe import _engine_options

    parse = build_parser().parse_args
    assert _engine_options(parse(["transcribe", "a.wav"])).cut_at_pauses
    windows = _engine_options(parse(["transcribe", "a.wav", "--no-pause-cuts", "--window", "20"]))
    assert not windows.cut_at_pauses and windows.window_s == 20.0
