"""End to end: the Transcriber API and `w2v transcribe` on real files through ONNX Runtime.

The test models are random (no trained model exists yet), so transcripts are compared with
an independent decode of the same model's logits written here (onnxruntime -> argmax -> collapse
-> drop blanks), not with the spoken words.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf

from tests.serve_helpers import espeak, reference_greedy, tiny_model_dir
from w2v_serve.audio import load_audio
from w2v_serve.cli import main as w2v
from w2v_serve.decoding import BEAM, DecoderOptions
from w2v_serve.engine import EngineOptions
from w2v_serve.transcribe import Transcriber

SENTENCES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
             "a stitch in time saves nine", "how much wood would a woodchuck chuck",
             "peter piper picked a peck of pickled peppers", "all that glitters is not gold"]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-029", "en-us+m3"]


@pytest.fixture(scope="module")
def speech_files(tmp_path_factory):
    """espeak-ng sentences as 16 kHz WAV, 44.1 kHz stereo FLAC and 8 kHz OGG."""
    d = tmp_path_factory.mktemp("speech")
    files = []
    for i, (text, voice) in enumerate(zip(SENTENCES, VOICES)):
        raw = espeak(text, d / f"raw{i}.wav", voice=voice)
        audio, sr = sf.read(raw, dtype="float32")
        kind = i % 3
        if kind == 0:
            path = d / f"s{i}.wav"
            sf.write(path, load_audio(raw), 16000, subtype="PCM_16")
        elif kind == 1:
            path = d / f"s{i}.flac"
            sf.write(path, np.stack([audio, 0.5 * audio], 1), sr, format="FLAC")   # 22.05 kHz stereo
        else:
            path = d / f"s{i}.ogg"
            sf.write(path, load_audio(raw, 8000), 8000, format="OGG", subtype="VORBIS")
        files.append(path)
        raw.unlink()
    return files


def reference_transcript(model_dir, path) -> str:
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    audio = load_audio(path)[None]
    logits, n = session.run(None, {"audio": audio, "lengths": np.array([audio.shape[1]], np.int64)})
    return reference_greedy(logits[0, : int(n[0])])


def test_transcripts_equal_an_independent_decode(speech_files):
    model = tiny_model_dir("attention")
    results = Transcriber(model, engine_options=EngineOptions(batch_size=4)).transcribe_batch(speech_files)
    assert [r.path for r in results] == [str(p) for p in speech_files]
    for r, path in zip(results, speech_files):
        assert r.ok, r.error
        assert r.text == reference_transcript(model, path)
        assert r.text and [w.word for w in r.words] == r.text.split()
        assert abs(r.duration_s - sf.info(path).duration) < 0.01
        assert all(0 <= w.start_s < w.end_s <= r.duration_s + 0.03 and 0 < w.confidence <= 1 for w in r.words)


def test_arrays_and_beam_width_1(speech_files):
    model = tiny_model_dir("attention")
    audio = load_audio(speech_files[0])
    greedy = Transcriber(model)
    beam1 = Transcriber(model, decoder=DecoderOptions(method=BEAM, beam_width=1))
    assert greedy.transcribe(audio).text == beam1.transcribe(audio).text == greedy.transcribe(speech_files[0]).text
    # An int16 array at 8 kHz is converted and resampled.
    at8k = (load_audio(speech_files[0], 8000) * 32767).astype(np.int16)
    assert greedy.transcribe(at8k, sample_rate=8000).duration_s == pytest.approx(len(audio) / 16000, abs=1e-3)


def make_bad_files(d):
    (d / "empty.wav").write_bytes(b"")
    sf.write(d / "full.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    (d / "truncated.wav").write_bytes((d / "full.wav").read_bytes()[:8000])
    (d / "full.wav").unlink()
    (d / "notes.wav").write_text("meeting notes, renamed by mistake\n" * 50)
    return {"empty.wav": "empty file", "truncated.wav": "truncated", "notes.wav": "not a readable audio file",
            "missing.wav": "no such file"}


def test_bad_inputs_are_reported_and_the_rest_transcribed(speech_files, tmp_path, capsys):
    model = tiny_model_dir("attention")
    reasons = make_bad_files(tmp_path)
    inputs = [str(speech_files[0]), str(tmp_path / "empty.wav"), str(speech_files[1]),
              str(tmp_path / "truncated.wav"), str(tmp_path / "notes.wav"), str(tmp_path / "missing.wav"),
              str(speech_files[2])]
    code = w2v(["transcribe", *inputs, "--model", str(model), "--format", "jsonl", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in records] == inputs
    for r in records:
        name = r["path"].rsplit("/", 1)[-1]
        if name in reasons:
            assert set(r) == {"path", "error"} and reasons[name] in r["error"] and r["path"] in r["error"]
            assert r["path"] in err
        else:
            assert r["text"] == reference_transcript(model, r["path"])
            assert set(r["words"][0]) == {"word", "start_s", "end_s", "confidence"}
            assert r["duration_s"] > 1
    assert "4 of 7 file(s) failed" in err
    assert "h audio" not in err            # no progress bar when stderr is not a terminal


def test_output_formats_directories_and_globs(speech_files, tmp_path, capsys):
    model = str(tiny_model_dir("attention"))
    folder = speech_files[0].parent
    assert w2v(["transcribe", str(folder), "--model", model, "--format", "srt", "--output-dir", str(tmp_path / "o")]) == 0
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == sorted(p.stem + ".srt" for p in speech_files)
    srt = (tmp_path / "o" / (speech_files[0].stem + ".srt")).read_text()
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    capsys.readouterr()
    assert w2v(["transcribe", str(speech_files[0]), "--model", model, "--format", "vtt"]) == 0
    vtt = capsys.readouterr().out
    assert vtt.startswith("WEBVTT\n\n00:00:") and "." in vtt.splitlines()[2]
    # A glob pattern: matches in sorted order, text lines prefixed with the path.
    assert w2v(["transcribe", str(folder / "s*.wav"), "--model", model]) == 0
    lines = capsys.readouterr().out.splitlines()
    wavs = sorted(str(p) for p in speech_files if p.suffix == ".wav")
    assert [line.split(": ", 1)[0] for line in lines] == wavs if len(wavs) > 1 else len(lines) == 1


def test_without_a_model_or_a_reachable_triton_the_message_is_clear(speech_files, capsys, monkeypatch):
    import w2v_serve.model_dir as md

    monkeypatch.setattr(md, "default_model_dir", lambda: None)
    assert w2v(["transcribe", str(speech_files[0])]) == 2
    assert "no bundled default model" in capsys.readouterr().err
    # --triton goes to the Triton client; with no server the error says so.
    assert w2v(["transcribe", str(speech_files[0]), "--triton", "127.0.0.1:9"]) == 2
    assert "Triton" in capsys.readouterr().err


# ---------------------------------------------------------------------------- long recordings
@pytest.fixture(scope="module")
def long_recording(tmp_path_factory):
    """Utterances (each with 0.4 s of silence either side, a whole number of frames long) joined
    into a 10-minute file and a 2.5-minute one, plus the unit files themselves."""
    d = tmp_path_factory.mktemp("long")
    units = []
    for i, (text, voice) in enumerate(zip(SENTENCES * 2, VOICES + VOICES[::-1])):
        speech = load_audio(espeak(text, d / f"raw{i}.wav", voice=voice, speed=140 + 10 * (i % 4)))
        pad = np.zeros(int(0.4 * 16000), np.float32)
        unit = np.concatenate([pad, speech, pad])
        unit = np.concatenate([unit, np.zeros(-len(unit) % 320, np.float32)])
        unit = np.round(unit * 32767) / 32767     # what PCM_16 stores, so unit and joined files agree
        path = d / f"unit{i}.wav"
        sf.write(path, unit, 16000, subtype="PCM_16")
        units.append((path, len(unit)))
    files = {}
    for minutes in (2.5, 10):
        order, total = [], 0
        while total < minutes * 60 * 16000:
            k = len(order) % len(units)
            order.append(k)
            total += units[k][1]
        with sf.SoundFile(d / f"joined_{minutes}.wav", "w", 16000, 1, subtype="PCM_16") as f:
            for k in order:
                f.write(sf.read(units[k][0], dtype="float32")[0])
        files[minutes] = (d / f"joined_{minutes}.wav", order)
    return units, files


def test_ten_minute_file_transcribes_to_the_joined_utterance_transcripts(long_recording):
    units, files = long_recording
    path, order = files[10]
    transcriber = Transcriber(tiny_model_dir("local"), engine_options=EngineOptions(batch_size=4))
    alone = transcriber.transcribe_batch([p for p, _ in units])
    result = transcriber.transcribe(path)
    assert result.ok and result.duration_s >= 600
    expected_words, offset = [], 0.0
    for k in order:
        expected_words += [(w.word, w.start_s + offset, w.end_s + offset) for w in alone[k].words]
        offset += units[k][1] / 16000
    assert result.text == " ".join(alone[k].text for k in order if alone[k].text)
    assert [w.word for w in result.words] == [w for w, _, _ in expected_words]
    got = np.array([(w.start_s, w.end_s) for w in result.words])
    assert np.abs(got - np.array([(a, b) for _, a, b in expected_words])).max() < 1e-6


MEASURE = """
import resource, sys
from w2v_serve.engine import EngineOptions
from w2v_serve.transcribe import Transcriber
t = Transcriber(sys.argv[1], engine_options=EngineOptions(batch_size=4))
r = t.transcribe(sys.argv[2])
assert r.ok, r.error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, round(r.duration_s))
"""


def test_peak_memory_does_not_grow_with_duration(long_recording):
    _, files = long_recording
    peaks = {}
    for minutes, (path, _) in files.items():
        out = subprocess.run([sys.executable, "-c", MEASURE, str(tiny_model_dir("local")), str(path)],
                             capture_output=True, text=True, check=True).stdout.split()
        peaks[minutes] = int(out[0])
    print(f"peak RSS: 2.5 min -> {peaks[2.5]} MiB, 10 min -> {peaks[10]} MiB")
    # 7.5 more minutes of 16 kHz float32 samples alone would be 27 MiB (and their logits more).
    assert peaks[10] - peaks[2.5] < 10, peaks


def test_progress_bar_on_a_terminal(speech_files):
    """stderr on a pseudo-terminal: the bar shows audio hours and the files counter."""
    import os
    import pty

    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))     # a 120-column terminal
    proc = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "transcribe", *map(str, speech_files[:3]),
                           "--model", str(tiny_model_dir("attention"))],
                          stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    bar = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "h audio" in bar and "files 3/3" in bar
    assert len(proc.stdout.splitlines()) == 3


def test_an_unexpected_failure_in_one_file_does_not_stop_the_others(speech_files, monkeypatch):
    """A fault the real files cannot cause (a decoder library raising something other than
    AudioError) is injected for one file: it is reported with its type, the rest transcribe."""
    import w2v_serve.transcribe as tr

    real = tr.load_audio

    def flaky(path, sample_rate=16000):
        if str(path) == str(speech_files[1]):
            raise RuntimeError("decoder crashed")
        return real(path, sample_rate)

    monkeypatch.setattr(tr, "load_audio", flaky)
    results = Transcriber(tiny_model_dir("attention")).transcribe_batch(speech_files[:3])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error == f"{speech_files[1]}: RuntimeError: decoder crashed"


def test_a_decoder_failure_after_the_last_chunk_is_reported_not_a_hang(monkeypatch):
    """Long recordings decode on a thread behind the model. A fault the real decoder cannot be
    made to raise on demand (injected): decoding fails after it has taken every chunk, the end
    marker included. The file gets an error; the producer must not wait for a marker twice."""
    import threading

    def consume_then_fail(self, chunks, *, hotwords=None):
        for _ in chunks:
            pass
        raise RuntimeError("decoder crashed at the end")

    monkeypatch.setattr(Transcriber, "decode_stream", consume_then_fail)
    t = Transcriber(tiny_model_dir("attention"), engine_options=EngineOptions(window_s=1.0, context_s=0.5))
    audio = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.1
    assert t.engine.is_long(len(audio))
    results: list = []
    worker = threading.Thread(target=lambda: results.append(t.transcribe(audio, sample_rate=16000)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "transcription hung after the decoder failed"
    assert not results[0].ok and "decoder crashed at the end" in results[0].error


def test_start_up_errors_surface_from_the_concurrent_load(tmp_path):
    """The decoder (LM) loads on a thread while the engine compiles: a bad LM is still the error
    the caller sees, and when the engine fails too, the engine's error is the one raised."""
    from w2v_serve.decoding import DecoderError
    from w2v_serve.sessions import EngineError

    fake = tmp_path / "lm.bin"
    fake.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0")
    bad_lm = DecoderOptions(method=BEAM, lm=str(fake))
    with pytest.raises(DecoderError, match="unigram"):
        Transcriber(tiny_model_dir("attention"), decoder=bad_lm)
    with pytest.raises(EngineError, match="int9"):
        Transcriber(tiny_model_dir("attention"), decoder=bad_lm, engine_options=EngineOptions(variant="int9"))
    t = Transcriber(tiny_model_dir("attention"))
    assert t.decoder.options.method == "greedy" and t.vocab is t.engine.model.vocab


def test_decode_worker_processes_give_the_transcripts_of_decoding_in_process(long_recording):
    """Beam search on worker processes (``decode_workers``, the CLI's default with the beam
    decoder): the same transcripts and word times as decoding in this process, for a long
    recording (segments decoded out of process, joined in order) and a batch of files; a worker
    killed mid-life (a fault nothing else causes) leaves decoding to this process, same results."""
    import os
    import signal

    units, files = long_recording
    path, _ = files[2.5]
    inputs = [path] + [p for p, _ in units[:5]]
    beam = DecoderOptions(method=BEAM, beam_width=8)
    options = EngineOptions(batch_size=4)
    here = Transcriber(tiny_model_dir("local"), decoder=beam, engine_options=options).transcribe_batch(inputs)
    with Transcriber(tiny_model_dir("local"), decoder=beam, engine_options=options, decode_workers=2) as t:
        assert t._decode_pool is not None and t._decode_pool.workers == 2
        pooled = t.transcribe_batch(inputs)
        assert [r.to_dict() for r in pooled] == [r.to_dict() for r in here]
        assert len(here[0].words) > 20 and all(r.ok for r in here)
        # Killed while the next decodes go out: those lost in flight and the rest are decoded here.
        for pid in list(t._decode_pool._pool._processes):
            os.kill(pid, signal.SIGKILL)
        again = t.transcribe_batch(inputs)
        assert t._decode_pool is None
        assert [r.to_dict() for r in again] == [r.to_dict() for r in here]


def test_decode_workers_only_where_they_pay():
    from w2v_serve.transcribe import auto_decode_workers

    beam, greedy = DecoderOptions(method=BEAM), DecoderOptions()
    assert auto_decode_workers(beam, 3600, cores=16, model_on_gpu=False) == 0      # the model holds the cores
    assert auto_decode_workers(greedy, 3600, cores=16, model_on_gpu=True) == 0
    assert auto_decode_workers(beam, 60, cores=16, model_on_gpu=True) == 0          # too little audio
    assert auto_decode_workers(beam, 600, cores=16, model_on_gpu=True) == 5
    assert auto_decode_workers(beam, 36000, cores=4, model_on_gpu=True) == 3
    assert auto_decode_workers(beam, 36000, cores=64, model_on_gpu=True) == 8
