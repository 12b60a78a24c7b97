"""A stream's final transcript is the offline transcript of its audio, on both service backends,
with the bundled model and its default decoder (beam search + the model's LM), on spoken audio.

Finals come from the full-context second pass (w2v_serve.streaming); the reference is offline
recognition (``Transcriber``, what ``w2v transcribe`` runs) of the same samples.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tests.serve_helpers import espeak, start_tritonserver_or_skip
from w2v_serve.audio import resample
from w2v_serve.decoding import BEAM, options_for_model
from w2v_serve.engine import EngineOptions
from w2v_serve.service.client import RecognizerClient, final_text
from w2v_serve.service.server import ThreadedServer
from w2v_serve.streaming import StreamingConfig
from w2v_serve.transcribe import Transcriber, _bundled_model

pytestmark = pytest.mark.slow
SPOKEN = [("the northern wind told old stories in the morning", "en-gb+f2"),
          ("close the door after you and turn off the light", "en-us+m3")]


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spoken")
    out = []
    for i, (text, voice) in enumerate(SPOKEN):
        wav = tmp / f"spoken{i}.wav"
        import subprocess
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
        audio, rate = sf.read(str(wav), dtype="float32")
        out.append(resample(audio, rate, 16000))
    return out


def _offline(runtime: str = "auto") -> Transcriber:
    model = _bundled_model()
    return Transcriber(model, decoder=options_for_model(model), engine_options=EngineOptions(runtime=runtime))


def _check(address: str, spoken, offline: Transcriber) -> None:
    with RecognizerClient(address) as client:
        for audio in spoken:
            reference = offline.transcribe(audio, sample_rate=16000)
            results = list(client.stream_audio(audio, chunk_ms=160))
            assert reference.text and final_text(results) == reference.text
            finals = [r for r in results if r["is_final"] and r["text"]]
            assert [(w["word"], w["start_s"], w["end_s"]) for r in finals for w in r["words"]] == \
                   [(w.word, round(w.start_s, 3), round(w.end_s, 3)) for w in reference.words]
            assert any(not r["is_final"] and r["text"] for r in results)     # partials on the way


def test_embedded_stream_final_equals_offline(spoken):
    from w2v_serve.service.backends.embedded import EmbeddedBackend

    model = _bundled_model()
    decoder = options_for_model(model)
    assert decoder.method == BEAM and decoder.lm
    backend = EmbeddedBackend(model, StreamingConfig(), decoder)
    with ThreadedServer(backend) as srv:
        _check(srv.address, spoken, _offline())


def test_triton_stream_final_equals_offline(spoken, tmp_path):
    pytest.importorskip("tritonclient.grpc")
    from w2v_serve.service.backends.triton import TritonBackend
    from w2v_serve.triton.repository import write_repository

    repo = write_repository(_bundled_model(), tmp_path / "repo")
    server = start_tritonserver_or_skip(repo, tmp_path)
    try:
        # The repository's acoustic model runs ONNX Runtime: the offline reference does too.
        with ThreadedServer(TritonBackend([server.grpc_url])) as srv:
            _check(srv.address, spoken, _offline("onnxruntime"))
    finally:
        server.stop(grace_s=3)
