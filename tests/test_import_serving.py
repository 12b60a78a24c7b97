"""Imported HuBERT and WavLM checkpoints served by every runtime path: streaming recognition,
the real tritonserver (offline and streaming models, over gRPC), and the gRPC service on both
its embedded and Triton backends. Reference: transformers' greedy ``batch_decode`` on espeak-ng
speech (special tokens removed). Windows with "enough context" (60 s each side), so a streamed
final equals the offline transcript."""

from __future__ import annotations

import pytest

from tests import hf_families as fam
from tests.serve_helpers import start_tritonserver_or_skip
from w2v_serve.streaming import StreamingConfig

pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.slow
STREAM_PARAMS = dict(chunk_ms=400, left_context_ms=60000, right_context_ms=60000, endpoint_ms=60000)


@pytest.mark.parametrize("family, stable", [("hubert", False), ("wavlm", True)])
def test_imported_model_through_streaming_triton_and_service(family, stable, tmp_path):
    from export.exporter import export_model
    from training.importers import import_hf
    from w2v_serve.service.backends.embedded import EmbeddedBackend
    from w2v_serve.service.backends.triton import TritonBackend
    from w2v_serve.service.client import RecognizerClient, final_text
    from w2v_serve.service.server import ThreadedServer
    from w2v_serve.streaming import StreamingRecognizer
    from w2v_serve.triton.client import TritonOfflineClient, TritonStream
    from w2v_serve.triton.repository import write_repository

    _, audio = fam.speech_wav(tmp_path / "speech")
    model, processor = fam.build(family, tmp_path / "src", stable=stable, seed=11)
    _, ref_text = fam.reference(model, processor, audio)
    expected = fam.without_specials(ref_text, processor.tokenizer)
    assert expected
    model_dir = export_model(import_hf(tmp_path / "src"), tmp_path / "model")
    config = StreamingConfig(**STREAM_PARAMS)

    recognizer = StreamingRecognizer(model_dir, config)
    recognizer.start(0)
    results = []
    for k in range(0, len(audio), 3200):
        results += recognizer.accept(0, audio[k:k + 3200], end=k + 3200 >= len(audio))
    assert " ".join(r.text for r in results if r.is_final and r.text) == expected

    with ThreadedServer(EmbeddedBackend(model_dir, config)) as srv, RecognizerClient(srv.address) as client:
        assert client.recognize(audio)["text"] == expected
        assert final_text(list(client.stream_audio(audio, chunk_ms=200))) == expected

    repo = write_repository(model_dir, tmp_path / "repo", streaming=STREAM_PARAMS, idle_timeout_s=30)
    server = start_tritonserver_or_skip(repo, tmp_path)
    try:
        assert TritonOfflineClient(server.grpc_url).transcribe(audio)["text"] == expected
        stream = TritonStream(server.grpc_url, 7)
        out = []
        for k in range(0, len(audio), 3200):
            out += stream.send(audio[k:k + 3200], end=k + 3200 >= len(audio))
        assert " ".join(r["text"] for r in out if r.get("is_final") and r.get("text")) == expected
        with ThreadedServer(TritonBackend([server.grpc_url])) as srv, RecognizerClient(srv.address) as client:
            assert client.recognize(audio)["text"] == expected
            assert final_text(list(client.stream_audio(audio, chunk_ms=200))) == expected
    finally:
        server.stop(grace_s=5)
