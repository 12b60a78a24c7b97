"""NVIDIA Riva's ASR API on ``w2v serve``, driven by the real ``riva.client`` library the way
NVIDIA's scripts drive it (transcribe_file.py, transcribe_file_offline.py, --list-models):
the whole WAV file, header included, no encoding/rate/channels set, interim_results on,
``authorization: Bearer TOKEN`` metadata, boosted words as one SpeechContext of boost 4.

One real ``w2v serve`` process on 127.0.0.1 serves the bundled model (real words, its default
decoder: beam search with its own LM) and a tiny model (for the model list), with a token.
Spoken audio is espeak-ng's, at 16 kHz and 44.1 kHz, mono and stereo (the two channels differ).
The reference transcripts come from ``w2v transcribe`` on the same files with the same decoder.

A streamed final equals the offline transcript where the stream's windows see what offline
sees: a server with whole-recording windows, greedy decoding. With the default windows the
streamed final is compared with the same server's w2v.v1 stream (the adapter adds nothing);
its equality with offline beam search comes from the full-context pass over each final segment
(w2v_serve/streaming.py).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
import soxr

riva_client = pytest.importorskip("riva.client")
import riva.client.proto.riva_asr_pb2 as rasr  # noqa: E402
import riva.client.proto.riva_asr_pb2_grpc as rasr_grpc  # noqa: E402

from tests.serve_helpers import espeak, tiny_model_dir  # noqa: E402
from w2v_serve.model_dir import default_model_dir  # noqa: E402
from w2v_serve.service.client import RecognizerClient, final_text  # noqa: E402

TOKEN = "riva-test-token"
ROOT = Path(__file__).resolve().parents[1]
SENTENCES = {"north": "the northern wind told old stories in the morning",
             "fox": "a quick brown fox jumps over the lazy dog"}
# name -> (sentence, rate, channels)
FILES = {"north16": ("north", 16000, 1), "north44st": ("north", 44100, 2),
         "fox44": ("fox", 44100, 1), "fox16st": ("fox", 16000, 2)}
pytestmark = pytest.mark.slow


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("riva_audio")
    for name, (sentence, rate, channels) in FILES.items():
        raw = d / f"{sentence}.espeak.wav"
        if not raw.exists():
            espeak(SENTENCES[sentence], raw)
        x, r = sf.read(raw, dtype="float32")
        x = soxr.resample(x, r, rate, quality="VHQ")
        if channels == 2:
            x = np.stack([x, 0.5 * x], axis=1)        # different channels: the mean is what counts
        sf.write(d / f"{name}.wav", x, rate, subtype="PCM_16")
    x, _ = sf.read(d / "north16.wav", dtype="float32")
    sf.write(d / "north16.flac", x, 16000)
    sf.write(d / "north16.opus", x, 16000, format="OGG", subtype="OPUS")
    sf.write(d / "north16_ulaw.wav", x, 16000, subtype="ULAW")
    sf.write(d / "north16_alaw.wav", x, 16000, subtype="ALAW")
    return d


def _transcribe(files, *flags) -> dict:
    """`w2v transcribe` of each file on its own (--batch-size 1, as the server runs a request: a
    file padded in a batch with longer ones can come out differently)."""
    out = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "transcribe", *map(str, files), "--format", "jsonl",
                          "--batch-size", "1", *flags], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    return {Path(d["path"]).name: d for d in map(json.loads, out.stdout.splitlines())}


@pytest.fixture(scope="module")
def offline(audio_dir) -> dict:
    """`w2v transcribe` of every file with the bundled model's default decoder."""
    return _transcribe(sorted(audio_dir.glob("north16*")) + [audio_dir / f"{n}.wav" for n in FILES])


class Served:
    def __init__(self, args) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "w2v_serve.cli", "serve", "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True, env=_env())
        self.log: list[str] = []
        deadline = time.monotonic() + 120
        port = None
        while port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("w2v serve exited:\n" + "".join(self.log))
            self.log.append(line)
            if "listening on 127.0.0.1:" in line:
                port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
            assert time.monotonic() < deadline, "".join(self.log)
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.address = f"127.0.0.1:{port}"

    def asr(self, token: str | None = TOKEN) -> "riva_client.ASRService":
        auth = riva_client.Auth(uri=self.address, metadata_args=[["authorization", f"Bearer {token}"]] if token else None)
        return riva_client.ASRService(auth)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def server():
    s = Served(["--model", f"default={default_model_dir()}", "--model", f"tiny={tiny_model_dir('attention')}",
                "--auth-token", TOKEN])
    yield s
    s.stop()


def script_config(**kw) -> rasr.RecognitionConfig:
    """The RecognitionConfig NVIDIA's file scripts build with their default flags."""
    base = dict(language_code="", model="", max_alternatives=1, profanity_filter=False,
                enable_automatic_punctuation=False, verbatim_transcripts=True, enable_word_time_offsets=False)
    return riva_client.RecognitionConfig(**{**base, **kw})


def stream_file(asr, path, config, delay=None) -> list[tuple[float, rasr.StreamingRecognitionResult]]:
    """transcribe_file.py's call: the file in 1600-frame chunks (the first with the header)."""
    streaming = riva_client.StreamingRecognitionConfig(config=config, interim_results=True)
    out = []
    with riva_client.AudioChunkFileIterator(str(path), 1600, delay) as chunks:
        for response in asr.streaming_response_generator(audio_chunks=chunks, streaming_config=streaming):
            out.extend((time.monotonic(), r) for r in response.results)
    return out


def finals(results) -> str:
    """The final transcripts as the scripts' output joins them (Riva's end in a space)."""
    return "".join(r.alternatives[0].transcript for _, r in results if r.is_final)


def check_words(words, duration_s: float) -> None:
    starts = [w.start_time for w in words]
    assert words and starts == sorted(starts)
    for w in words:
        assert 0 <= w.start_time <= w.end_time <= duration_s * 1000 + 20, (w, duration_s)
        assert 0 < w.confidence <= 1


# ---------------------------------------------------------------------------- offline (Recognize)
@pytest.mark.parametrize("name", list(FILES))
def test_offline_script_request_equals_w2v_transcribe(server, audio_dir, offline, name):
    """transcribe_file_offline.py: the whole file in one RecognizeRequest, nothing about its format set."""
    path = audio_dir / f"{name}.wav"
    response = server.asr().offline_recognize(path.read_bytes(), script_config(enable_word_time_offsets=True))
    text = "".join(r.alternatives[0].transcript for r in response.results)
    assert text.endswith(" ") and text.strip() == offline[path.name]["text"]
    words = [w for r in response.results for w in r.alternatives[0].words]
    assert [w.word for w in words] == offline[path.name]["text"].split()
    check_words(words, sf.info(path).duration)


@pytest.mark.parametrize("name,encoding", [("north16.flac", "FLAC"), ("north16.opus", "OGGOPUS"),
                                           ("north16_ulaw.wav", "MULAW"), ("north16_alaw.wav", "ALAW")])
def test_offline_encodings_equal_w2v_transcribe(server, audio_dir, offline, name, encoding):
    """FLAC and Ogg/Opus files, and G.711 WAV files, with their encoding named."""
    path = audio_dir / name
    config = script_config(encoding=riva_client.AudioEncoding.Value(encoding))
    response = server.asr().offline_recognize(path.read_bytes(), config)
    assert response.results[0].alternatives[0].transcript.strip() == offline[name]["text"]


def test_max_alternatives_gives_the_beams_best_first(server, audio_dir, offline):
    """transcribe_file_offline.py --max-alternatives 3: the beam's best hypotheses, the first the
    offline transcript, distinct texts, each with words and a confidence."""
    path = audio_dir / "north16.wav"
    response = server.asr().offline_recognize(path.read_bytes(),
                                              script_config(max_alternatives=3, enable_word_time_offsets=True))
    alts = response.results[0].alternatives
    texts = [a.transcript.strip() for a in alts]
    assert 2 <= len(alts) <= 3 and len(set(texts)) == len(texts)
    assert texts[0] == offline[path.name]["text"]
    for a in alts:
        assert [w.word for w in a.words] == a.transcript.split() and 0 < a.confidence <= 1
    one = server.asr().offline_recognize(path.read_bytes(), script_config(max_alternatives=1))
    assert len(one.results[0].alternatives) == 1


def test_headerless_linear_pcm_and_mulaw(server, audio_dir, offline):
    """Raw samples: LINEAR_PCM and MULAW with the rate and channel count in the config."""
    x, rate = sf.read(audio_dir / "north44st.wav", dtype="int16")
    response = server.asr().offline_recognize(x.tobytes(), script_config(encoding=1, sample_rate_hertz=rate,
                                                                         audio_channel_count=2))
    assert response.results[0].alternatives[0].transcript.strip() == offline["north44st.wav"]["text"]
    x, _ = sf.read(audio_dir / "north16.wav", dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="RAW", subtype="ULAW")
    response = server.asr().offline_recognize(buf.getvalue(), script_config(encoding=3, sample_rate_hertz=16000))
    assert response.results[0].alternatives[0].transcript.strip() == offline["north16_ulaw.wav"]["text"]


# ---------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("name", ["north44st", "fox16st"])
def test_streaming_script_request_words_and_adapter(server, audio_dir, name):
    """transcribe_file.py with --word-time-offsets: finals with word times in ms, monotone and
    inside the audio; the final transcript is what the same server's w2v.v1 stream gives."""
    path = audio_dir / f"{name}.wav"
    results = stream_file(server.asr(), path, script_config(enable_word_time_offsets=True))
    text = finals(results)
    assert text.endswith(" ")
    with RecognizerClient(server.address, token=TOKEN, timeout_s=60) as client:
        assert text.strip() == final_text(client.stream_file(path))
    words = [w for _, r in results if r.is_final for w in r.alternatives[0].words]
    assert [w.word for w in words] == text.split()
    check_words(words, sf.info(path).duration)


def test_streamed_flac_equals_the_streamed_wav(server, audio_dir):
    """A FLAC file streamed as the script streams non-WAV files (1600-byte pieces, encoding FLAC) is
    decoded when it ends: the same finals as the WAV file's stream."""
    config = script_config(encoding=riva_client.AudioEncoding.FLAC)
    flac = finals(stream_file(server.asr(), audio_dir / "north16.flac", config))
    assert flac and flac == finals(stream_file(server.asr(), audio_dir / "north16.wav", script_config()))


def test_streamed_final_equals_w2v_transcribe_with_default_decoder(server, audio_dir, offline):
    path = audio_dir / "north16.wav"
    assert finals(stream_file(server.asr(), path, script_config())).strip() == offline[path.name]["text"]


def test_partials_arrive_before_the_final_in_real_time(server, audio_dir):
    """transcribe_file.py --simulate-realtime: audio at playback speed, partials while it plays."""
    path = audio_dir / "north16.wav"
    start = time.monotonic()
    results = stream_file(server.asr(), path, script_config(), delay=riva_client.sleep_audio_length)
    duration = sf.info(path).duration
    partial_times = [t - start for t, r in results if not r.is_final]
    final_times = [t - start for t, r in results if r.is_final]
    assert final_times and partial_times and min(partial_times) < min(final_times)
    assert min(partial_times) < duration - 0.5          # while the audio still plays
    assert all(r.alternatives[0].transcript and not r.alternatives[0].transcript.endswith(" ")
               for _, r in results if not r.is_final)


def test_boosted_words_equal_w2v_transcribe_hotwords(server, audio_dir):
    """--boosted-lm-words stories (one SpeechContext, boost 4) is `w2v transcribe --hotword stories`."""
    path = audio_dir / "north16.wav"
    config = script_config()
    riva_client.add_word_boosting_to_config(config, ["stories"], 4.0)
    expected = _transcribe([path], "--hotword", "stories")[path.name]["text"]
    response = server.asr().offline_recognize(path.read_bytes(), config)
    assert response.results[0].alternatives[0].transcript.strip() == expected
    assert "stories" in expected.split()


def test_stream_final_equals_offline_with_whole_recording_windows(audio_dir, tmp_path):
    """Greedy decoding and windows that see the whole recording: the streamed final of a 44.1 kHz
    stereo WAV sent as the script sends it is `w2v transcribe --decoder greedy` of the file."""
    path = audio_dir / "north44st.wav"
    s = Served(["--model", str(default_model_dir()), "--decoder", "greedy", "--chunk-ms", "400",
                "--left-context-ms", "60000", "--right-context-ms", "60000", "--endpoint-ms", "60000"])
    try:
        text = finals(stream_file(s.asr(None), path, script_config()))
    finally:
        s.stop()
    assert text.strip() == _transcribe([path], "--decoder", "greedy")[path.name]["text"]


# ---------------------------------------------------------------------------- models, auth, bad input
def test_list_models_needs_no_token(server):
    """--list-models sends no metadata: the model list answers without the token."""
    stub = rasr_grpc.RivaSpeechRecognitionStub(grpc.insecure_channel(server.address))
    response = stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest(), timeout=30)
    seen = {(c.model_name, c.parameters["type"], c.parameters["language_code"]) for c in response.model_config}
    assert seen == {(m, t, "en-US") for m in ("default", "tiny") for t in ("online", "offline")}
    # The script's grouping of the online ones by language:
    online = sorted(c.model_name for c in response.model_config if c.parameters["type"] == "online")
    assert online == ["default", "tiny"]
    one = stub.GetRivaSpeechRecognitionConfig(rasr.RivaSpeechRecognitionConfigRequest(model_name="tiny"), timeout=30)
    assert {c.model_name for c in one.model_config} == {"tiny"}


def test_model_and_language_pick_the_model(server, audio_dir):
    path = audio_dir / "north16.wav"
    asr = server.asr()
    tiny = asr.offline_recognize(path.read_bytes(), script_config(model="tiny"))
    default = asr.offline_recognize(path.read_bytes(), script_config(language_code="en-US"))
    assert tiny.results[0].alternatives[0].transcript != default.results[0].alternatives[0].transcript
    for kw, words in (({"model": "nope"}, "model 'nope' is not served"),
                      ({"language_code": "fr-FR"}, "no model for language 'fr-FR'")):
        with pytest.raises(grpc.RpcError) as e:
            asr.offline_recognize(path.read_bytes(), script_config(**kw))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in e.value.details() and "default (en-US), tiny (en-US)" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stream_file(asr, path, script_config(**kw))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("token", [None, "wrong"])
def test_wrong_or_missing_token_is_refused(server, audio_dir, token):
    path = audio_dir / "north16.wav"
    asr = server.asr(token)
    with pytest.raises(grpc.RpcError) as e:
        asr.offline_recognize(path.read_bytes(), script_config())
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as e:
        stream_file(asr, path, script_config())
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_malformed_input_gets_a_status_and_the_server_goes_on(server, audio_dir):
    asr = server.asr()
    wav = (audio_dir / "north16.wav").read_bytes()
    cases = [
        (b"\x00\x01" * 800, script_config()),                                  # no header, no format
        (wav[:30], script_config()),                                           # ends inside the header
        (b"RIFF\x10\x00\x00\x00WAVEjunk", script_config()),
        (b"fLaC" + os.urandom(400), script_config(encoding=2)),               # not really FLAC
        (wav[44:1045], script_config(encoding=1, sample_rate_hertz=16000)),   # half a sample at the end
        (wav[44:], script_config(encoding=1)),                                 # raw PCM without a rate
    ]
    for data, config in cases:
        with pytest.raises(grpc.RpcError) as e:
            asr.offline_recognize(data, config)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (data[:8], e.value.details())
    diarize = script_config()
    riva_client.add_speaker_diarization_to_config(diarize, True, 3)
    negative = script_config()
    riva_client.add_word_boosting_to_config(negative, ["north"], -5.0)
    bad_custom = script_config()
    riva_client.add_custom_configuration_to_config(bad_custom, "beam_width:lots")
    for config in (diarize, negative, bad_custom):
        with pytest.raises(grpc.RpcError) as e:
            stream_file(asr, audio_dir / "north16.wav", config)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A stream whose first message is audio, not a config:
    stub = rasr_grpc.RivaSpeechRecognitionStub(asr.auth.channel)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.StreamingRecognize(iter([rasr.StreamingRecognizeRequest(audio_content=wav[:3200])]),
                                     metadata=asr.auth.get_auth_metadata(), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Still serving:
    ok = asr.offline_recognize(wav, script_config())
    assert ok.results[0].alternatives[0].transcript.strip()


def test_w2v_stream_cli_speaks_riva(server, audio_dir):
    path = audio_dir / "north44st.wav"
    out = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "stream", str(path), "--server", server.address,
                          "--protocol", "riva", "--format", "jsonl", "--token", TOKEN],
                         capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    results = [json.loads(line) for line in out.stdout.splitlines()]
    assert results[-1]["is_final"] and not results[0]["is_final"]
    with RecognizerClient(server.address, token=TOKEN, timeout_s=60) as client:
        assert " ".join(r["text"] for r in results if r["is_final"] and r["text"]) == final_text(client.stream_file(path))


def test_mangled_wav_headers_are_refused_cleanly(audio_dir):
    """Random corruption of a WAV header, fed in random pieces: a ChunkError (INVALID_ARGUMENT) or
    audio, never another exception."""
    from w2v_serve.service.pcm import ChunkError
    from w2v_serve.service.riva_audio import RivaAudio

    wav = (audio_dir / "north16.wav").read_bytes()[:4000]
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        data = bytearray(wav)
        for pos in rng.integers(0, 60, size=rng.integers(1, 4)):
            data[pos] = int(rng.integers(0, 256))
        audio = RivaAudio(0, 0, 0)
        try:
            cut = int(rng.integers(1, len(data)))
            audio.feed(bytes(data[:cut]))
            audio.feed(bytes(data[cut:]))
            audio.finish()
            outcomes.add("ok")
        except ChunkError:
            outcomes.add("refused")
    assert outcomes == {"ok", "refused"}
