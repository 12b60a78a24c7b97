"""The service's Triton backend on real tritonservers (the nvidia-pytriton wheel's), over gRPC.

Two Triton servers on one repository holding the tiny "attention" model with "enough context"
windows (60 s each side), so streamed finals must equal offline recognition.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import speech_like
from tests.serve_helpers import tiny_model_dir
from tests.service_helpers import DrivenStream, audio_request, float32_config, wait_for
from w2v_serve.service.client import RecognizerClient, final_text
from w2v_serve.service.server import ThreadedServer
from w2v_serve.transcribe import Transcriber

pytest.importorskip("tritonclient.grpc")
STREAM_PARAMS = dict(chunk_ms=400, left_context_ms=60000, right_context_ms=60000, endpoint_ms=60000)
ROOT = Path(__file__).resolve().parent.parent
AUDIO = speech_like(16000 * 2 + 321, seed=4, scale=0.5)


@pytest.fixture(scope="module")
def tritons(tmp_path_factory):
    from w2v_serve.triton.repository import write_repository
    from w2v_serve.triton.launcher import TritonServer, TritonError, free_port

    repo = write_repository(tiny_model_dir("attention"), tmp_path_factory.mktemp("repo"),
                            streaming=STREAM_PARAMS, idle_timeout_s=30)
    servers = []
    try:
        for i in range(2):
            log = tmp_path_factory.mktemp("log") / f"tritonserver{i}.log"
            srv = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), log_file=log)
            servers.append(srv.start(timeout_s=180))
    except TritonError as e:
        for s in servers:
            s.stop()
        pytest.skip(f"no tritonserver here: {e}")
    yield servers
    for s in servers:   # a sequence left open by the failover test would hold Triton's exit 10 s
        s.process.send_signal(signal.SIGCONT)
        s.stop(grace_s=3)


@pytest.fixture(scope="module")
def offline_text():
    return Transcriber(tiny_model_dir("attention")).transcribe(AUDIO, sample_rate=16000).text


def _backend(urls, **kw):
    from w2v_serve.service.backends.triton import TritonBackend

    return TritonBackend(urls, **kw)


def test_streams_and_recognize_through_triton_equal_offline(tritons, offline_text):
    with ThreadedServer(_backend([tritons[0].grpc_url])) as srv, RecognizerClient(srv.address) as client:
        results = list(client.stream_audio(AUDIO, chunk_ms=200))
        assert offline_text and final_text(results) == offline_text
        assert client.recognize(AUDIO)["text"] == offline_text
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):   # per-stream decoders are the embedded backend's
            list(client.stream_audio(AUDIO[:1600], decoder="beam"))
        assert wait_for(lambda: srv.server.backend.pool.servers[0].open_streams == 0)


def test_failover_pins_streams_spreads_load_and_takes_a_silent_server_out(tritons, offline_text):
    """Streams spread over two servers; one stops answering (SIGSTOP): the stream pinned to it
    ends with UNAVAILABLE without waiting for its client, the other finishes, new streams go to
    the live server; when it answers again (SIGCONT) it is back in rotation."""
    first, second = tritons
    backend = _backend([first.grpc_url, second.grpc_url], check_interval_s=0.5, request_timeout_s=2.0)
    pool = backend.pool
    with ThreadedServer(backend) as srv:
        # Fewest open streams first: one on each server. (With 60 s of look-ahead no partial comes
        # back, so the pool's counts tell where each stream went.)
        on_first, on_second = DrivenStream(srv.address), DrivenStream(srv.address)
        for s, counts in ((on_first, [1, 0]), (on_second, [1, 1])):
            s.send(float32_config())
            s.send(audio_request(AUDIO[:8000]))
            assert wait_for(lambda: [x.open_streams for x in pool.servers] == counts, timeout=10)
        time.sleep(0.5)                         # their first chunks reach Triton
        os.kill(second.process.pid, signal.SIGSTOP)
        try:
            t = time.monotonic()
            assert wait_for(lambda: on_second.error is not None, timeout=10)
            assert on_second.code == grpc.StatusCode.UNAVAILABLE and second.grpc_url in on_second.error.details()
            assert time.monotonic() - t < 6
            assert not pool.servers[1].up and pool.servers[1].open_streams == 0
            on_first.send(audio_request(AUDIO[8000:]))          # the other stream is unaffected
            on_first.end()
            assert on_first.wait().error is None and final_text(on_first.results) == offline_text
            with RecognizerClient(srv.address) as client:       # new streams go to the live server
                assert final_text(client.stream_audio(AUDIO, chunk_ms=400)) == offline_text
        finally:
            os.kill(second.process.pid, signal.SIGCONT)
        assert wait_for(lambda: pool.servers[1].up, timeout=10)    # the re-check puts it back
        a, b = DrivenStream(srv.address), DrivenStream(srv.address)
        for s, counts in ((a, [1, 0]), (b, [1, 1])):
            s.send(float32_config())
            s.send(audio_request(AUDIO[:8000]))
            assert wait_for(lambda: [x.open_streams for x in pool.servers] == counts, timeout=10)
        for s in (a, b):
            s.send(audio_request(AUDIO[8000:]))
            s.end()
            assert s.wait().error is None and final_text(s.results) == offline_text
        for s in (on_first, on_second, a, b):
            s.end()
            s.close()


class _ServeProcess:
    """`w2v serve ...` in a subprocess; its address once it logs "listening on"; SIGTERM ends it."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "w2v_serve.cli", "serve", "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True, env=env)

    def __enter__(self) -> str:
        deadline = time.monotonic() + 180
        for line in self.proc.stderr:
            if "listening on" in line:
                return line.split("listening on ")[1].split()[0]
            assert time.monotonic() < deadline
        raise AssertionError("the service did not start")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def test_serve_starts_a_local_tritonserver(tmp_path, offline_text):
    """`w2v serve --backend triton --model DIR` without --triton-url: a tritonserver of its own, on
    a scratch repository that is gone once the service stops."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    serve = _ServeProcess("--backend", "triton", "--model", str(tiny_model_dir("attention")), "--chunk-ms", "400",
                          "--left-context-ms", "60000", "--right-context-ms", "60000", "--endpoint-ms", "60000",
                          env={**os.environ, "TMPDIR": str(scratch)})
    with serve as address:
        assert [p.name[:15] for p in scratch.iterdir() if p.name.startswith("w2v-serve-repo")] == ["w2v-serve-repo-"]
        with RecognizerClient(address) as client:
            assert final_text(client.stream_audio(AUDIO, chunk_ms=250)) == offline_text
        assert serve.stop() == 0
    assert not [p for p in scratch.iterdir() if p.name.startswith("w2v-serve-repo")]


def test_serve_triton_without_model_uses_the_bundled_model():
    """`w2v serve --backend triton` with no --model serves the bundled default model, as the
    embedded backend does, decoding as `w2v transcribe` does (beam search with its own LM)."""
    sample = ROOT / "samples" / "sample.wav"
    reference = (ROOT / "samples" / "sample.txt").read_text().strip()
    serve = _ServeProcess("--backend", "triton")
    with serve as address:
        with RecognizerClient(address) as client:
            assert client.recognize_file(sample)["text"] == reference
        assert serve.stop() == 0


def test_triton_backend_without_weights_says_so(tmp_path):

    empty = tmp_path / "repo"
    (empty / "acoustic" / "1").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-m", "w2v_serve.cli", "serve", "--backend", "triton", "--repository",
                          str(empty), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no model in acoustic/1/" in out.stderr and "w2v export" in out.stderr


def test_riva_api_through_triton_equals_offline(tritons):
    """Riva's API over the Triton backend: riva.client's offline and streaming requests with a
    WAV file sent whole (header first) give offline recognition's transcript."""
    riva_client = pytest.importorskip("riva.client")
    import io

    import numpy as np
    import soundfile as sf

    pcm = np.round(AUDIO * 32767).astype(np.int16)
    expected = Transcriber(tiny_model_dir("attention")).transcribe(pcm / 32768.0, sample_rate=16000).text
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format="WAV", subtype="PCM_16")
    wav = buf.getvalue()
    with ThreadedServer(_backend([tritons[0].grpc_url])) as srv:
        asr = riva_client.ASRService(riva_client.Auth(uri=srv.address))
        config = riva_client.RecognitionConfig(max_alternatives=1, verbatim_transcripts=True,
                                               enable_word_time_offsets=True)
        response = asr.offline_recognize(wav, config)
        assert expected and response.results[0].alternatives[0].transcript == expected + " "
        streaming = riva_client.StreamingRecognitionConfig(config=config, interim_results=True)
        chunks = [wav[i:i + 6400] for i in range(0, len(wav), 6400)]
        results = [r for resp in asr.streaming_response_generator(chunks, streaming) for r in resp.results]
        assert "".join(r.alternatives[0].transcript for r in results if r.is_final) == expected + " "


def test_two_models_on_the_triton_backend_each_get_a_tritonserver(tmp_path):
    """`w2v serve --backend triton --model a=DIR --model b=DIR2`: the default model's tritonserver
    starts with the service, the other's on its first request; both are listed, each request is
    answered by its own model, and stopping the service stops both."""
    pytest.importorskip("riva.client")
    from w2v_serve.service.client import RivaRecognizerClient

    expected = {name: Transcriber(tiny_model_dir(kind)).transcribe(AUDIO, sample_rate=16000).text
                for name, kind in (("a", "attention"), ("b", "local"))}
    serve = _ServeProcess("--backend", "triton", "--model", f"a={tiny_model_dir('attention')}",
                          "--model", f"b={tiny_model_dir('local')}",
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    with serve as address:
        with RivaRecognizerClient(address) as riva, RecognizerClient(address) as client:
            loaded = {m["model"]: m["loaded"] for m in riva.list_models() if m["type"] == "offline"}
            assert loaded == {"a": "true", "b": "false"}
            assert client.recognize(AUDIO, model="b")["text"] == expected["b"]
            assert client.recognize(AUDIO)["text"] == expected["a"]
            assert {m["model"]: m["loaded"] for m in riva.list_models() if m["type"] == "offline"}["b"] == "true"
        assert serve.stop() == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("w2v-serve-repo")]
