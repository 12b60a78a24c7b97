"""The gRPC service (w2v serve, embedded backend) and its client, on 127.0.0.1 over real gRPC.

Two in-process servers on tiny exported models:
* ``full``: the "attention" model with "enough context" windows (60 s each side, no end points
  inside the test audio), so a stream's final transcript must equal offline recognition; tight
  limits for the bad-input tests.
* ``live``: the "local" model with the default-like window (chunk 200 ms, right context 320 ms),
  for partials during the audio and end-point finals (its frames depend only on their own
  samples, so it too must equal offline recognition).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import speech_like
from tests.serve_helpers import espeak, tiny_model_dir
from tests.service_helpers import DrivenStream, audio_request, float32_config, metric, wait_for
from w2v_serve.service.backends.embedded import EmbeddedBackend
from w2v_serve.service.client import RecognizerClient, RecognizerError, final_text
from w2v_serve.service.proto import w2v_pb2 as pb
from w2v_serve.service.server import ServiceLimits, ThreadedServer
from w2v_serve.streaming import StreamingConfig
from w2v_serve.transcribe import Transcriber

FULL = StreamingConfig(chunk_ms=400, left_context_ms=60_000, right_context_ms=60_000, endpoint_ms=60_000)
LIVE = StreamingConfig(chunk_ms=200, left_context_ms=8000, right_context_ms=320, endpoint_ms=400)
LIMITS = ServiceLimits(max_streams=4, max_chunk_bytes=64_000, max_stream_seconds=5.0, idle_timeout_s=1.0)
TOKEN = "s3cret-token"
AUDIO = speech_like(16000 * 3 + 555, seed=1, scale=0.5)


@pytest.fixture(scope="module")
def full():
    srv = ThreadedServer(EmbeddedBackend(tiny_model_dir("attention"), FULL), limits=LIMITS, metrics_port=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def live():
    srv = ThreadedServer(EmbeddedBackend(tiny_model_dir("local"), LIVE), metrics_port=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def offline():
    return {kind: Transcriber(tiny_model_dir(kind)) for kind in ("attention", "local")}


def assert_still_serving(srv, offline) -> None:
    with RecognizerClient(srv.address) as client:
        results = list(client.stream_audio(AUDIO[:16000], chunk_ms=250))
    assert results and results[-1]["is_final"]
    assert final_text(results) == offline["attention"].transcribe(AUDIO[:16000], sample_rate=16000).text


def refused(srv, *requests, metadata=()) -> grpc.RpcError:
    s = DrivenStream(srv.address, metadata)
    for r in requests:
        s.send(r)
    s.end()
    s.wait()
    assert s.error is not None, "the server accepted the stream"
    s.close()
    return s.error


# ---------------------------------------------------------------------------- results
def test_streamed_final_transcript_equals_offline(full, offline):
    with RecognizerClient(full.address) as client:
        results = list(client.stream_audio(AUDIO, chunk_ms=100))
    reference = offline["attention"].transcribe(AUDIO, sample_rate=16000)
    assert reference.text and final_text(results) == reference.text
    finals = [r for r in results if r["is_final"]]
    assert [(w["word"], w["start_s"], w["end_s"]) for r in finals for w in r["words"]] == \
           [(w.word, round(w.start_s, 3), round(w.end_s, 3)) for w in reference.words]
    assert all(0 < w["confidence"] <= 1 for r in finals for w in r["words"])


def test_any_rate_and_channels_are_resampled_like_offline(full, offline):
    """22.05 kHz stereo LINEAR16 in 37 ms pieces: the server's streaming resampler must give
    exactly what offline transcription (whole-file soxr) gives."""
    rate = 22050
    left = speech_like(rate * 2 + 99, seed=5, scale=0.4)
    stereo = np.stack([left, 0.5 * left[::-1]], axis=1)
    pcm = np.round(stereo * 32767).astype("<i2")
    with RecognizerClient(full.address) as client:
        config = client.config(encoding="LINEAR16", sample_rate=rate, channels=2)
        step = rate * 37 // 1000
        results = list(client.stream([pcm[i:i + step].tobytes() for i in range(0, len(pcm), step)], config))
    assert final_text(results) == offline["attention"].transcribe(pcm, sample_rate=rate).text


def test_unary_recognize_equals_offline(full, offline):
    with RecognizerClient(full.address) as client:
        r = client.recognize(AUDIO)
    ref = offline["attention"].transcribe(AUDIO, sample_rate=16000)
    assert r["text"] == ref.text and r["duration_s"] == pytest.approx(len(AUDIO) / 16000, abs=1e-3)
    assert [w["word"] for w in r["words"]] == [w.word for w in ref.words]


def test_partials_arrive_before_the_end_of_the_audio(live, offline):
    """Sent at real time, 4 s of audio with pauses: partials arrive while audio is still being
    sent, finals at end points, and the finals equal offline recognition."""
    speech = [speech_like(16000, seed=s, scale=0.5) for s in (11, 12, 13)]
    silence = np.zeros(8000, np.float32)
    audio = np.concatenate([speech[0], silence, speech[1], silence, speech[2]])
    s = DrivenStream(live.address)
    s.send(float32_config())
    start = time.monotonic()
    step = 1600  # 100 ms
    for i in range(0, len(audio), step):
        time.sleep(max(0.0, start + i / 16000 - time.monotonic()))
        s.send(audio_request(audio[i:i + step]))
    audio_done = time.monotonic()
    s.end()
    s.wait()
    assert s.error is None
    partial_times = [t for r, t in zip(s.results, s.arrivals) if not r["is_final"]]
    assert len(partial_times) >= 5 and partial_times[0] < audio_done - 2.0
    assert sum(r["is_final"] for r in s.results) >= 2       # end points inside the audio
    assert all(0 <= r["stability"] <= 1 for r in s.results)
    assert final_text(s.results) == offline["local"].transcribe(audio, sample_rate=16000).text


def test_interim_results_off_gives_finals_only(live):
    s = DrivenStream(live.address)
    s.send(float32_config(interim=False))
    for i in range(0, 32000, 3200):
        s.send(audio_request(AUDIO[i:i + 3200]))
    s.end()
    s.wait()
    assert s.error is None and s.results and all(r["is_final"] for r in s.results)


def test_cli_stream_matches_cli_transcribe(live, tmp_path):
    """`w2v stream FILE --format jsonl` against `w2v transcribe FILE` on a real speech file."""
    wav = espeak("the quick brown fox jumps over the lazy dog", tmp_path / "fox.wav")
    w2v = [sys.executable, "-m", "w2v_serve.cli"]
    streamed = subprocess.run(w2v + ["stream", str(wav), "--server", live.address, "--format", "jsonl",
                                     "--chunk-ms", "80"], capture_output=True, text=True, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    results = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert all({"is_final", "text", "words", "stability"} <= set(r) for r in results)
    offline_run = subprocess.run(w2v + ["transcribe", str(wav), "--model", str(tiny_model_dir("local")),
                                        "--format", "jsonl"], capture_output=True, text=True, timeout=120)
    assert offline_run.returncode == 0, offline_run.stderr
    assert final_text(results) == json.loads(offline_run.stdout)["text"] != ""
    text = subprocess.run(w2v + ["stream", str(wav), "--server", live.address], capture_output=True, text=True,
                          timeout=120)
    assert text.returncode == 0 and " ".join(text.stdout.split()) == final_text(results)


# ---------------------------------------------------------------------------- operations
def test_health_and_reflection(full):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(full.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for service in ("", "w2v.v1.Recognizer"):
            assert check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
    assert {"w2v.v1.Recognizer", "grpc.health.v1.Health"} <= names


def test_metrics_count_streams_audio_latency_and_errors(full):
    port = full.server.metrics_port
    before = metric(port, "w2v_audio_seconds_total{rpc=\"streaming\"}")
    streams_before = metric(port, "w2v_streams_total")
    with RecognizerClient(full.address) as client:
        list(client.stream_audio(AUDIO[:32000], chunk_ms=200))
    assert metric(port, "w2v_audio_seconds_total{rpc=\"streaming\"}") - before == pytest.approx(2.0, abs=1e-6)
    assert metric(port, "w2v_streams_total") == streams_before + 1
    assert metric(port, "w2v_streams_open") == 0
    assert metric(port, "w2v_result_latency_seconds_count{kind=\"final\"}") >= 1
    errors = metric(port, "w2v_errors_total{code=\"INVALID_ARGUMENT\"}")
    refused(full, audio_request(AUDIO[:160]))
    assert metric(port, "w2v_errors_total{code=\"INVALID_ARGUMENT\"}") == errors + 1


# ---------------------------------------------------------------------------- bad input
def test_audio_before_config(full, offline):
    e = refused(full, audio_request(AUDIO[:1600]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "config" in e.details()
    assert_still_serving(full, offline)


def test_unknown_encoding(full, offline):
    for encoding in (7, pb.ENCODING_UNSPECIFIED):
        cfg = pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
            config=pb.RecognitionConfig(encoding=encoding, sample_rate_hz=16000)))
        e = refused(full, cfg, audio_request(AUDIO[:1600]))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "encoding" in e.details()
    assert_still_serving(full, offline)


def test_sample_rate_zero(full, offline):
    e = refused(full, float32_config(sample_rate=0), audio_request(AUDIO[:1600]))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "8000..192000" in e.details()
    assert_still_serving(full, offline)


def test_odd_byte_count_for_linear16(full, offline):
    cfg = pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(
        config=pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=16000)))
    e = refused(full, cfg, pb.StreamingRecognizeRequest(audio_content=b"\x01\x02\x03"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "3 bytes" in e.details()
    assert_still_serving(full, offline)


def test_non_finite_float32_samples(full, offline):
    e = refused(full, float32_config(), audio_request(np.full(160, np.nan, np.float32)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "non-finite" in e.details()
    assert_still_serving(full, offline)


def test_oversize_chunk(full, offline):
    e = refused(full, float32_config(), audio_request(np.zeros(LIMITS.max_chunk_bytes // 4 + 1, np.float32)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit" in e.details()
    assert_still_serving(full, offline)


def test_stream_over_the_duration_limit(full, offline):
    second = np.zeros(16000, np.float32)
    s = DrivenStream(full.address)
    s.send(float32_config())
    for _ in range(int(LIMITS.max_stream_seconds) + 1):
        s.send(audio_request(second))
    s.wait()           # the server ends the call without waiting for our half-close
    assert s.code == grpc.StatusCode.OUT_OF_RANGE
    s.end()
    s.close()
    assert_still_serving(full, offline)


def test_idle_stream_is_ended(full, offline):
    s = DrivenStream(full.address)
    s.send(float32_config())
    s.send(audio_request(AUDIO[:1600]))
    t = time.monotonic()
    s.wait(LIMITS.idle_timeout_s + 5)
    assert s.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t < LIMITS.idle_timeout_s + 2
    s.end()
    s.close()
    assert_still_serving(full, offline)


def test_more_streams_than_allowed(full, offline):
    held = [DrivenStream(full.address) for _ in range(LIMITS.max_streams)]
    for s in held:
        s.send(float32_config())
        s.send(audio_request(AUDIO[:1600]))
    assert wait_for(lambda: full.call(lambda: full.server.service.open_streams) == LIMITS.max_streams)
    e = refused(full, float32_config(), audio_request(AUDIO[:1600]))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for s in held:            # the held streams are unaffected and finish normally
        s.end()
    for s in held:
        assert s.wait().error is None and s.results[-1]["is_final"]
        s.close()
    assert_still_serving(full, offline)


def test_missing_or_wrong_token(offline):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with ThreadedServer(EmbeddedBackend(tiny_model_dir("attention"), FULL), auth_token=TOKEN, metrics_port=0) as srv:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            e = refused(srv, float32_config(), audio_request(AUDIO[:1600]), metadata=metadata)
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(RecognizerError) as info:
            RecognizerClient(srv.address, token="wrong").recognize(AUDIO[:1600])
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert metric(srv.server.metrics_port, "w2v_errors_total{code=\"UNAUTHENTICATED\"}") == 4
        with RecognizerClient(srv.address, token=TOKEN) as client:     # the right token works
            results = list(client.stream_audio(AUDIO[:16000], chunk_ms=250))
        assert final_text(results) == offline["attention"].transcribe(AUDIO[:16000], sample_rate=16000).text
        with grpc.insecure_channel(srv.address) as channel:             # health stays open for probes
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status
        assert status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------------------- clients that vanish
def test_cancelled_stream_is_freed_at_once(full, offline):
    port = full.server.metrics_port
    cancelled = metric(port, 'w2v_errors_total{code="CANCELLED"}')
    internal = metric(port, 'w2v_errors_total{code="INTERNAL"}')
    s = DrivenStream(full.address)
    s.send(float32_config())
    s.send(audio_request(AUDIO[:8000]))
    assert wait_for(lambda: metric(port, "w2v_streams_open") == 1)
    s.call.cancel()
    assert wait_for(lambda: metric(port, "w2v_streams_open") == 0, timeout=2.0)
    assert metric(port, 'w2v_errors_total{code="CANCELLED"}') == cancelled + 1      # seen as a client leaving,
    assert metric(port, 'w2v_errors_total{code="INTERNAL"}') == internal           # not as a failure
    assert wait_for(lambda: full.server.backend.active_streams == 0, timeout=2.0)
    s.close()
    assert_still_serving(full, offline)


def test_killed_client_process_frees_its_stream(live, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(str(path), speech_like(16000 * 20, seed=9, scale=0.5), 16000)
    port = live.server.metrics_port
    client = subprocess.Popen([sys.executable, "-m", "w2v_serve.cli", "stream", str(path), "--server", live.address,
                               "--realtime", "--format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: metric(port, "w2v_streams_open") == 1, timeout=30)
        client.stdout.readline()                       # results are flowing
        client.kill()
        assert wait_for(lambda: metric(port, "w2v_streams_open") == 0, timeout=3.0)
    finally:
        client.kill()
        client.wait()


# ---------------------------------------------------------------------------- shutdown
def test_sigterm_drains_open_streams_then_exits(tmp_path):
    model = tiny_model_dir("local")
    proc = subprocess.Popen([sys.executable, "-m", "w2v_serve.cli", "serve", "--model", str(model), "--port", "0",
                             "--grace-period", "4", "--chunk-ms", "200", "--right-context-ms", "320"],
                            stderr=subprocess.PIPE, text=True)
    try:
        address = None
        for line in proc.stderr:
            if "listening on" in line:
                address = line.split("listening on ")[1].split()[0]
                break
        assert address, "the server did not start"
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()   # keep reading its log
        finishing, stuck = DrivenStream(address), DrivenStream(address)
        for s in (finishing, stuck):
            s.send(float32_config())
            s.send(audio_request(AUDIO[:16000]))
        assert wait_for(lambda: len(finishing.results) > 0 and len(stuck.results) > 0, timeout=20)
        proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        time.sleep(0.5)
        late = DrivenStream(address)                     # a new stream while draining is refused
        late.send(float32_config())
        late.end()
        assert late.wait().code in (grpc.StatusCode.UNAVAILABLE,)
        finishing.send(audio_request(AUDIO[16000:32000]))    # an open stream keeps working...
        finishing.end()
        assert finishing.wait().error is None and finishing.results[-1]["is_final"]   # ...to its final
        assert proc.wait(timeout=15) == 0                # exits once the grace period is over
        elapsed = time.monotonic() - t
        assert 3.5 < elapsed < 10, elapsed               # it waited for the stuck stream, then gave up
        assert stuck.wait().error is not None
        stuck.end()
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------- the API's generated code
def test_generated_code_is_reproducible_from_the_proto(tmp_path):
    """`make proto` regenerates exactly the committed modules (with the grpcio-tools that made them)."""
    from importlib.metadata import version

    from w2v_serve.service.proto import generate, w2v_pb2_grpc

    if version("grpcio-tools") != w2v_pb2_grpc.GRPC_GENERATED_VERSION:
        pytest.skip(f"grpcio-tools {version('grpcio-tools')} is not the {w2v_pb2_grpc.GRPC_GENERATED_VERSION} "
                    "that generated the committed code")
    for path in generate.generate(tmp_path):
        assert path.read_bytes() == (generate.HERE / path.name).read_bytes(), f"{path.name} differs: run make proto"


# ---------------------------------------------------------------------------- decoding options, TLS
def test_per_stream_beam_decoder_equals_offline_beam(full):
    from w2v_serve.decoding import DecoderOptions

    audio = AUDIO[:24000]
    with RecognizerClient(full.address) as client:
        results = list(client.stream_audio(audio, chunk_ms=200, decoder="beam", beam_width=8))
        with pytest.raises(RecognizerError) as info:     # hotwords need the beam decoder
            list(client.stream_audio(audio[:1600], decoder="greedy", hotwords=["fox"]))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "beam" in info.value.details
    offline_beam = Transcriber(tiny_model_dir("attention"), decoder=DecoderOptions(method="beam", beam_width=8))
    assert final_text(results) == offline_beam.transcribe(audio, sample_rate=16000).text


def test_tls(tmp_path, offline):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls = (cert.read_bytes(), key.read_bytes())
    with ThreadedServer(EmbeddedBackend(tiny_model_dir("attention"), FULL), tls=tls, auth_token=TOKEN) as srv:
        with RecognizerClient(srv.address, tls_ca=str(cert), token=TOKEN) as client:
            results = list(client.stream_audio(AUDIO[:16000], chunk_ms=250))
        assert final_text(results) == offline["attention"].transcribe(AUDIO[:16000], sample_rate=16000).text
        with pytest.raises(RecognizerError) as info, RecognizerClient(srv.address, token=TOKEN) as plain:
            plain.recognize(AUDIO[:1600])                  # plaintext is not spoken there
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
