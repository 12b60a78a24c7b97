"""The Triton repository on the real tritonserver (from the nvidia-pytriton wheel), over gRPC.

One server for the module: the tiny exported model written into a repository by
``w2v_serve.triton.repository.write_repository`` with "enough context" streaming windows (60 s each side)
and a 1.5 s idle timeout.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.conftest import speech_like
from tests.serve_helpers import tiny_model_dir
from w2v_serve.streaming import StreamingConfig, StreamingRecognizer
from w2v_serve.transcribe import Transcriber
from w2v_serve.triton.client import TritonClientError, TritonOfflineClient, TritonStream

tritonclient = pytest.importorskip("tritonclient.grpc")
STREAM_PARAMS = dict(chunk_ms=400, left_context_ms=60000, right_context_ms=60000, endpoint_ms=60000)
IDLE_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from w2v_serve.triton.repository import write_repository
    from w2v_serve.triton.launcher import TritonServer, free_port

    repo = write_repository(tiny_model_dir("attention"), tmp_path_factory.mktemp("repo"),
                            streaming=STREAM_PARAMS, idle_timeout_s=IDLE_S)
    log = tmp_path_factory.mktemp("log") / "tritonserver.log"
    srv = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), log_file=log)
    srv.start(timeout_s=180)
    yield srv
    assert srv.stop() is not None  # exits on SIGINT within the grace period


AUDIO = [speech_like(n, seed=s, scale=sc) for n, s, sc in ((32000, 1, 0.5), (20000, 2, 0.05), (41000, 3, 1.0))]


def test_offline_through_triton_equals_embedded(server):
    embedded = Transcriber(tiny_model_dir("attention"))
    client = TritonOfflineClient(server.grpc_url)
    for audio in AUDIO:
        remote = client.transcribe(audio)
        local = embedded.transcribe(audio, sample_rate=16000).to_dict()
        assert remote["text"] == local["text"]
        assert [(w["word"], w["start_s"], w["end_s"]) for w in remote["words"]] == \
               [(w["word"], w["start_s"], w["end_s"]) for w in local["words"]]


def _stream(url, seq_id, audio, piece=3200):
    s = TritonStream(url, seq_id)
    out = []
    for k in range(0, len(audio), piece):
        out += s.send(audio[k:k + piece], end=k + piece >= len(audio))
    return out, s


def _final_text(results):
    return " ".join(r["text"] for r in results if r["is_final"] and r["text"])


def test_streaming_through_triton_equals_offline_and_embedded(server):
    audio = AUDIO[0]
    remote, s = _stream(server.grpc_url, 1001, audio)
    offline = TritonOfflineClient(server.grpc_url).transcribe(audio)["text"]
    embedded = StreamingRecognizer(tiny_model_dir("attention"), StreamingConfig(**STREAM_PARAMS))
    embedded.start(0)
    local = [r.to_dict() for r in embedded.accept(0, audio, end=True)]
    assert _final_text(remote) == offline == _final_text(local)
    assert s.active == 0   # END freed the sequence's state


def test_interleaved_sequences_never_mix(server):
    x, y = AUDIO[0], AUDIO[2]
    alone = [_final_text(_stream(server.grpc_url, 2000 + i, a)[0]) for i, a in enumerate((x, y))]
    sx, sy = TritonStream(server.grpc_url, 3001), TritonStream(server.grpc_url, 3002)
    out = {3001: [], 3002: []}
    for k in range(0, max(len(x), len(y)), 3200):
        for s, a in ((sx, x), (sy, y)):
            if k < len(a):
                out[s.sequence_id] += s.send(a[k:k + 3200], end=k + 3200 >= len(a))
    assert [_final_text(out[3001]), _final_text(out[3002])] == alone


def test_idle_sequence_state_is_freed(server):
    idle = TritonStream(server.grpc_url, 4001)
    idle.send(AUDIO[1][:3200])
    assert idle.active >= 1
    time.sleep(IDLE_S * 2.5)
    other = TritonStream(server.grpc_url, 4002)
    other.send(AUDIO[1][:3200])
    assert other.active == 1          # the idle sequence's state is gone, only 4002 is held
    with pytest.raises(TritonClientError):
        idle.send(AUDIO[1][3200:6400])  # its state is gone: the continuation is refused
    other.send(np.zeros(0, np.float32), end=True)


def test_protocol_errors_leave_the_server_serving(server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)

    def chunk(shape):
        a = grpcclient.InferInput("AUDIO", list(shape), "FP32")
        a.set_data_from_numpy(np.zeros(shape, np.float32))
        return [a]

    with pytest.raises(InferenceServerException, match="(?i)start"):     # no START
        client.infer("streaming", chunk((1, 1600)), sequence_id=5001)
    client.infer("streaming", chunk((1, 1600)), sequence_id=5002, sequence_start=True, sequence_end=True)
    with pytest.raises(InferenceServerException, match="(?i)start"):     # after END
        client.infer("streaming", chunk((1, 1600)), sequence_id=5002)
    with pytest.raises(InferenceServerException, match="(?i)shape|dims"):  # bad shape
        client.infer("streaming", chunk((1, 2, 1600)), sequence_id=5003, sequence_start=True)
    with pytest.raises(TritonClientError, match="non-finite"):           # bad samples
        TritonStream(server.grpc_url, 5004).send(np.full(1600, np.nan, np.float32))
    # Still serving, and the numbers are still right.
    assert _final_text(_stream(server.grpc_url, 5005, AUDIO[0])[0]) == \
        TritonOfflineClient(server.grpc_url).transcribe(AUDIO[0])["text"]


def test_acoustic_model_batches_ragged_requests(server):
    """Concurrent requests of different lengths (dynamic batcher) each get their own logits."""
    import tritonclient.grpc as grpcclient

    from w2v_serve.engine import Engine

    engine = Engine(tiny_model_dir("attention"))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    done: list = []
    for i, audio in enumerate(AUDIO):
        a = grpcclient.InferInput("audio", [1, len(audio)], "FP32")
        a.set_data_from_numpy(audio[None])
        n = grpcclient.InferInput("lengths", [1, 1], "INT64")
        n.set_data_from_numpy(np.array([[len(audio)]], np.int64))
        client.async_infer("acoustic", [a, n], callback=lambda result, error, i=i: done.append((i, result, error)))
    deadline = time.time() + 30
    while len(done) < len(AUDIO) and time.time() < deadline:
        time.sleep(0.05)
    assert len(done) == len(AUDIO)
    for i, result, error in done:
        assert error is None
        logits = result.as_numpy("logits")[0]
        frames = int(result.as_numpy("logit_lengths").reshape(-1)[0])
        np.testing.assert_allclose(logits[:frames], engine.log_probs(AUDIO[i]), atol=1e-4)


def test_cli_transcribe_through_triton_matches_embedded(server, tmp_path, capsys):
    import soundfile as sf

    from w2v_serve.cli import main as w2v

    paths = []
    for i, audio in enumerate(AUDIO):
        paths.append(str(tmp_path / f"f{i}.wav"))
        sf.write(paths[-1], audio, 16000, subtype="FLOAT")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    paths.insert(1, str(bad))
    assert w2v(["transcribe", *paths, "--triton", server.grpc_url, "--format", "jsonl"]) == 1
    remote = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert w2v(["transcribe", *paths, "--model", str(tiny_model_dir("attention")), "--format", "jsonl"]) == 1
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in remote] == paths
    assert "error" in remote[1] and "not a readable audio file" in remote[1]["error"]
    for r, loc in zip(remote, local):
        assert r.get("text") == loc.get("text")
        assert [w["word"] for w in r.get("words", [])] == [w["word"] for w in loc.get("words", [])]


def test_a_tritonserver_that_crashes_while_starting_is_started_again(server, tmp_path):
    """The binary segfaults on its first start (a wrapper sends itself SIGSEGV once); ``start``
    starts it again and the server answers. With every start crashing, ``start`` gives up after
    its tries with the exit code in the error."""
    from w2v_serve.triton.launcher import TritonExited, TritonServer, free_port

    def crashing_server(crashes: int) -> TritonServer:
        srv = TritonServer(server.repository, grpc_port=free_port(), http_port=free_port(),
                           metrics_port=free_port(), log_file=tmp_path / f"crash{crashes}.log")
        count = tmp_path / f"starts{crashes}"
        wrapper = tmp_path / f"tritonserver{crashes}"
        wrapper.write_text(f'#!/bin/sh\necho x >> "{count}"\n'
                           f'[ "$(wc -l < "{count}")" -le {crashes} ] && kill -SEGV $$\n'
                           f'exec "{srv.install.binary}" "$@"\n')
        wrapper.chmod(0o755)
        srv.install.binary = wrapper
        return srv

    srv = crashing_server(1)
    srv.start(timeout_s=180)
    try:
        assert (tmp_path / "starts1").read_text().count("x") == 2
        assert TritonOfflineClient(srv.grpc_url).transcribe(AUDIO[0])["text"] == \
            Transcriber(tiny_model_dir("attention")).transcribe(AUDIO[0], sample_rate=16000).text
    finally:
        srv.stop()

    always = crashing_server(99)
    with pytest.raises(TritonExited, match="code -11"):
        always.start(timeout_s=60, attempts=2)
    assert (tmp_path / "starts99").read_text().count("x") == 2
