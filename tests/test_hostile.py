"""Hostile but legitimate clients against a real service on 127.0.0.1 (embedded backend, tiny
exported model): sample rates, per-stream budgets, fair scheduling, the idle clock, malformed
protobuf bytes. Each case also checks that a normal stream keeps its correct final."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

from tests.conftest import speech_like
from tests.serve_helpers import tiny_model_dir
from tests.service_helpers import DrivenStream, audio_request, float32_config, wait_for
from w2v_serve.service.backends.embedded import EmbeddedBackend
from w2v_serve.service.client import RecognizerClient, RecognizerError, final_text
from w2v_serve.service.limits import ServiceLimits, StreamGuard
from w2v_serve.service.pcm import AudioFormat
from w2v_serve.service.proto import w2v_pb2 as pb
from w2v_serve.service.server import ThreadedServer
from w2v_serve.streaming import StreamingConfig
from w2v_serve.transcribe import Transcriber

LIVE = StreamingConfig(chunk_ms=200, left_context_ms=8000, right_context_ms=320, endpoint_ms=400)
# Generous budgets, a short idle timeout: the server is busy for far longer than 1 s with each
# attacker's message, which must not count as anybody's silence.
OPEN = ServiceLimits(max_streams=8, idle_timeout_s=1.0, max_stream_seconds=600)
# Tight budgets.
TIGHT = ServiceLimits(max_streams=8, idle_timeout_s=1.0, max_stream_seconds=60, max_stream_cpu_s=1.5,
                      min_audio_rate=0.5)
NORMAL = speech_like(16000 * 3, seed=1, scale=0.5)


@pytest.fixture(scope="module")
def open_server():
    srv = ThreadedServer(EmbeddedBackend(tiny_model_dir("local"), LIVE), limits=OPEN, metrics_port=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tight_server():
    srv = ThreadedServer(EmbeddedBackend(tiny_model_dir("local"), LIVE), limits=TIGHT, metrics_port=0)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def expected():
    return Transcriber(tiny_model_dir("local")).transcribe(NORMAL, sample_rate=16000).text


def linear16_config(rate: int) -> pb.StreamingRecognizeRequest:
    cfg = pb.RecognitionConfig(encoding=pb.LINEAR16, sample_rate_hz=rate)
    return pb.StreamingRecognizeRequest(streaming_config=pb.StreamingRecognitionConfig(config=cfg, interim_results=True))


def normal_stream(address: str, realtime: bool = False) -> tuple[str, float]:
    """A normal client: 3 s of audio in 100 ms messages (at playback speed with ``realtime``);
    its final text and the seconds from its last message to its final."""
    with RecognizerClient(address) as client:
        sent = {}

        def chunks():
            for i in range(0, len(NORMAL), 1600):
                if realtime:
                    time.sleep(0.1)
                yield NORMAL[i:i + 1600].astype("<f4").tobytes()
            sent["t"] = time.monotonic()

        results = list(client.stream(chunks(), client.config(), interim_results=False))
    return final_text(results), time.monotonic() - sent["t"]


def assert_serves(srv, expected) -> None:
    text, _ = normal_stream(srv.address)
    assert text == expected


# ---------------------------------------------------------------------------- sample rates
@pytest.mark.parametrize("rate", [1, 7999, 192001, 384000])
def test_sample_rates_outside_audio_range_are_refused(open_server, rate):
    s = DrivenStream(open_server.address)
    s.send(float32_config(sample_rate=rate))
    s.send(audio_request(np.zeros(100, np.float32)))
    s.end()
    assert s.wait().code == grpc.StatusCode.INVALID_ARGUMENT and "8000..192000" in s.error.details()
    s.close()
    with RecognizerClient(open_server.address) as client, pytest.raises(RecognizerError) as info:
        client.recognize(np.zeros(16000, np.float32), sample_rate=rate)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "8000..192000" in info.value.details


@pytest.mark.parametrize("rate", [8000, 192000])
def test_sample_rates_at_the_ends_of_the_range_are_recognized(open_server, rate):
    audio = speech_like(rate, seed=2, scale=0.5)     # one second at that rate
    with RecognizerClient(open_server.address) as client:
        results = list(client.stream_audio(audio, rate, chunk_ms=250))
        whole = client.recognize(audio, rate)
    assert results[-1]["is_final"] and abs(whole["duration_s"] - 1.0) < 0.01


# ---------------------------------------------------------------------------- budgets
def test_one_message_over_the_audio_budget_is_refused_before_any_work(tight_server, expected):
    # 65 s at 8 kHz LINEAR16 in one 1 MB message: over the 60 s budget by its own duration.
    started = time.monotonic()
    s = DrivenStream(tight_server.address)
    s.send(linear16_config(8000))
    s.send(pb.StreamingRecognizeRequest(audio_content=np.zeros(8000 * 65, "<i2").tobytes()))
    s.wait(10)
    assert s.code == grpc.StatusCode.OUT_OF_RANGE and "60 s of audio" in s.error.details()
    assert time.monotonic() - started < 3
    assert tight_server.server.backend.worker.waiting_streams == 0
    s.end()
    s.close()
    assert_serves(tight_server, expected)


@pytest.mark.slow
def test_compute_budget_stops_a_long_message_in_the_middle(open_server, expected):
    # 55 s of audio in one message (within the audio budget). Its whole cost is measured first on a
    # server without a compute budget; a server whose budget is a quarter of it stops the message
    # between slices instead of finishing it.
    audio = speech_like(8000 * 55, seed=4, scale=0.5)
    message = pb.StreamingRecognizeRequest(audio_content=(audio * 32767).astype("<i2").tobytes())
    s = DrivenStream(open_server.address)
    s.send(linear16_config(8000))
    started = time.monotonic()
    s.send(message)
    s.end()
    assert s.wait(60).error is None
    whole_s = time.monotonic() - started
    s.close()
    budget = replace(TIGHT, max_stream_cpu_s=max(0.2, whole_s / 4))
    srv = ThreadedServer(EmbeddedBackend(tiny_model_dir("local"), LIVE), limits=budget, metrics_port=0)
    try:
        s = DrivenStream(srv.address)
        s.send(linear16_config(8000))
        started = time.monotonic()
        s.send(message)
        s.wait(60)
        assert s.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "compute" in s.error.details(), s.code
        stopped_s = time.monotonic() - started
        s.end()
        s.close()
        assert wait_for(lambda: srv.server.backend.active_streams == 0, timeout=5)
        assert_serves(srv, expected)
    finally:
        srv.stop()
    assert stopped_s < 0.75 * whole_s, (stopped_s, whole_s)


def test_a_trickling_client_is_ended(tight_server, expected):
    """Two bytes every 0.3 s keeps the idle clock from running out; the audio rate check ends it."""
    s = DrivenStream(tight_server.address)
    s.send(linear16_config(8000))
    started = time.monotonic()
    while s.error is None and time.monotonic() - started < 8:
        s.send(pb.StreamingRecognizeRequest(audio_content=b"\0\0"))
        time.sleep(0.3)
    s.wait(5)
    assert s.code == grpc.StatusCode.DEADLINE_EXCEEDED and "too slowly" in s.error.details()
    assert time.monotonic() - started < 4
    s.end()
    s.close()
    assert_serves(tight_server, expected)


def test_guard_idle_clock_counts_only_waiting():
    now = [0.0]
    guard = StreamGuard(ServiceLimits(idle_timeout_s=5.0, min_audio_rate=0.0), clock=lambda: now[0])
    guard.begin_wait()
    now[0] = 4.0
    guard.end_wait()                       # a message came after 4 s of silence
    now[0] = 100.0                         # the server was busy for 96 s: nobody's silence
    assert guard.idle_left() == 5.0
    guard.begin_wait()
    now[0] = 104.5
    assert guard.idle_left() == pytest.approx(0.5)
    assert guard.client_s == 4.0
    fmt = AudioFormat("LINEAR16", 8000)
    assert guard.admit(fmt, 16000) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- fairness, idle clock
ATTACK_MESSAGES = 4


@pytest.mark.slow
def test_big_messages_do_not_starve_a_normal_stream(open_server, expected):
    """Two attackers each send 1 MiB messages (65 s of 8 kHz LINEAR16 each: seconds of work)
    and then end. A normal stream running meanwhile gets its correct final within a couple of
    seconds, and the attackers get theirs too: the server's time on their audio is not their
    silence, so the 1 s idle timeout does not end them."""
    attack = (speech_like(8000 * 65, seed=5, scale=0.5)[:(1 << 20) // 2] * 32767).astype("<i2").tobytes()
    attackers = []
    for _ in range(2):
        s = DrivenStream(open_server.address, timeout=120)
        s.send(linear16_config(8000))
        for _ in range(ATTACK_MESSAGES):
            s.send(pb.StreamingRecognizeRequest(audio_content=attack))
        s.end()
        attackers.append(s)
    assert wait_for(lambda: open_server.server.backend.worker.waiting_streams == 2, timeout=10)
    text, final_latency = normal_stream(open_server.address, realtime=True)
    busy = open_server.server.backend.worker.waiting_streams     # attackers still being worked on
    for s in attackers:
        s.wait(120)
        assert s.error is None, s.error
        assert s.results and s.results[-1]["is_final"]
        s.close()
    assert text == expected
    assert busy >= 1                       # the normal final came while the attack was going on
    assert final_latency < 1.5, final_latency


# ---------------------------------------------------------------------------- malformed bytes
GARBAGE = [b"\xff\xff\xff", b"\x0a\x05abc", b"\x12\xff\xff\xff\xff\x0f"]


def _no_tracebacks(caplog) -> None:
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()], \
        [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_malformed_unary_request_is_invalid_argument(open_server, expected, garbage, caplog):
    with grpc.insecure_channel(open_server.address) as channel:
        call = channel.unary_unary("/w2v.v1.Recognizer/Recognize")
        with pytest.raises(grpc.RpcError) as info:
            call(garbage, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in info.value.details()
    _no_tracebacks(caplog)
    assert_serves(open_server, expected)


@pytest.mark.parametrize("where", ["first", "after the config", "after audio"])
def test_malformed_stream_message_is_invalid_argument(open_server, expected, where, caplog):
    config = float32_config().SerializeToString()
    audio = audio_request(NORMAL[:1600]).SerializeToString()
    messages = {"first": [GARBAGE[0]], "after the config": [config, GARBAGE[2]],
                "after audio": [config, audio, audio, GARBAGE[1], audio]}[where]
    with grpc.insecure_channel(open_server.address) as channel:
        call = channel.stream_stream("/w2v.v1.Recognizer/StreamingRecognize")
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter(messages), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in info.value.details()
    _no_tracebacks(caplog)
    assert wait_for(lambda: open_server.call(lambda: open_server.server.service.open_streams) == 0)
    assert_serves(open_server, expected)


def test_health_check_with_garbage_is_invalid_argument(open_server):
    with grpc.insecure_channel(open_server.address) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as info:
            call(GARBAGE[0], timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("hotwords, reason", [(["x" * 101], "at most 100 characters"),
                                              (["word"] * 257, "at most 256 hotwords"),
                                              (["y" * 100] * 101, "total at most")])
def test_hotword_limits(open_server, hotwords, reason):
    with RecognizerClient(open_server.address) as client, pytest.raises(RecognizerError) as info:
        list(client.stream_audio(NORMAL[:1600], hotwords=hotwords))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and reason in info.value.details


# ---------------------------------------------------------------------------- model directory paths
def _model_copy(tmp_path, edit=None):
    import json
    import shutil

    from w2v_serve.model_dir import CARD_NAME

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir("local"), model)
    if edit is not None:
        card = json.loads((model / CARD_NAME).read_text())
        edit(card)
        (model / CARD_NAME).write_text(json.dumps(card))
    return model


def _trap(tmp_path):
    """A FIFO outside the model directory: opening it for reading would block, so a test that
    reaches it hangs (and times out) instead of passing."""
    import os

    trap = tmp_path / "outside" / "trap.arpa"
    trap.parent.mkdir()
    os.mkfifo(trap)
    return trap


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "graph", "vocab symlink"])
def test_model_directory_paths_stay_inside(tmp_path, how):
    import os
    import subprocess
    import sys

    from w2v_serve.model_dir import ModelDirectory, ModelDirError
    from w2v_serve.decoding import options_for_model

    trap = _trap(tmp_path)
    edits = {
        "dotdot": lambda c: c.setdefault("decoding", {}).update(lm="../outside/trap.arpa"),
        "absolute": lambda c: c.setdefault("decoding", {}).update(lm=str(trap)),
        "symlink": lambda c: c.setdefault("decoding", {}).update(lm="link.arpa"),
        "graph": lambda c: c["variants"]["fp32"].update(model="../../../../.." + str(trap)),
        "vocab symlink": None,
    }
    model = _model_copy(tmp_path, edits[how])
    if how == "symlink":
        os.symlink(trap, model / "link.arpa")
    if how == "vocab symlink":
        (model / "vocab.json").unlink()
        os.symlink(trap, model / "vocab.json")
    with pytest.raises(ModelDirError) as info:
        directory = ModelDirectory.load(model)
        directory.graph_path()
        options_for_model(model)
    assert "outside the model directory" in str(info.value) and "\n" not in str(info.value)
    out = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "transcribe", "--model", str(model), "x.wav"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "outside the model directory" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_model_directory_links_inside_it_still_work(tmp_path):
    import os

    from w2v_serve.model_dir import ModelDirectory

    model = _model_copy(tmp_path, lambda c: c["variants"]["fp32"].update(model="sub/linked.onnx"))
    (model / "sub").mkdir()
    os.symlink("../model.onnx", model / "sub" / "linked.onnx")
    assert ModelDirectory.load(model).graph_path().resolve() == (model / "model.onnx").resolve()


def test_triton_repository_copies_nothing_from_outside(tmp_path):
    import os

    from w2v_serve.model_dir import ModelDirError
    from w2v_serve.triton.repository import write_repository

    model = _model_copy(tmp_path)
    os.symlink(_trap(tmp_path), model / "extra.bin")
    with pytest.raises(ModelDirError, match="outside the model directory"):
        write_repository(model, tmp_path / "repo")


def test_broken_language_model_is_one_line_even_with_decode_workers(tmp_path):
    import subprocess
    import sys

    import soundfile as sf

    model = _model_copy(tmp_path, lambda c: c.setdefault("decoding", {}).update(lm="lm.arpa"))
    (model / "lm.arpa").write_text("not an ARPA file\n")
    (model / "lm.unigrams.txt").write_text("the\ncat\n")
    wav = tmp_path / "a.wav"
    sf.write(str(wav), NORMAL, 16000)
    out = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "transcribe", str(wav), "--model", str(model),
                          "--decode-workers", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "cannot load language model" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
