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


@pytest.mark.parametrize("seconds", [12.5, 41.0, 70.3])
def test_stitched_windows_reproduce_whole_input_logits(seconds):
    """With a frame-local model every frame's logits are fully determined by its own samples, so
    the stitched windows must equal one run over the whole input, frame for frame."""
    engine = Engine(tiny_model_dir("local"), EngineOptions(window_s=8.0, context_s=1.0, batch_size=3))
    audio = speech_like(int(seconds * 16000), seed=3)
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
