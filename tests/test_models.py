"""Several models in one server: the registry (names, languages, leases, idle unloading), the
--model forms, and w2v.v1 requests that pick a model, on real servers over loopback."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from tests.conftest import speech_like
from tests.serve_helpers import tiny_model_dir
from w2v_serve.service.backends.embedded import EmbeddedBackend
from w2v_serve.service.client import RecognizerClient, RecognizerError
from w2v_serve.service.errors import ServiceError
from w2v_serve.service.models import ModelEntry, ModelRegistry, ModelSpecError, parse_model_specs
from w2v_serve.service.server import ThreadedServer
from w2v_serve.transcribe import Transcriber

AUDIO = speech_like(16000 * 2, seed=3, scale=0.5)


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory):
    """A folder with the two tiny models, one named and tagged de-DE by its card."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model_dir("attention"), root / "attention")
    shutil.copytree(tiny_model_dir("local"), root / "local")
    card = root / "local" / "model_card.json"
    d = json.loads(card.read_text())
    d.update(name="lokal", language_code="de-DE")
    card.write_text(json.dumps(d))
    return root


class CountingLoader:
    def __init__(self) -> None:
        self.loaded, self.backends = [], []

    def __call__(self, entry: ModelEntry):
        self.loaded.append(entry.name)
        b = EmbeddedBackend(entry.path)
        self.backends.append(b)
        return b


def test_model_flags_name_models_from_card_or_directory(two_dirs):
    entries = parse_model_specs([str(two_dirs)])
    assert [(e.name, e.language_code) for e in entries] == [("attention", "en-US"), ("lokal", "de-DE")]
    entries = parse_model_specs([f"first={two_dirs / 'attention'}", str(two_dirs / "local")])
    assert [e.name for e in entries] == ["first", "lokal"]
    with pytest.raises(ModelSpecError, match="two models are named 'attention'"):
        parse_model_specs([str(two_dirs / "attention"), str(two_dirs / "attention")])
    with pytest.raises(ModelSpecError, match="not a directory"):
        parse_model_specs([f"x={two_dirs / 'missing'}"])
    with pytest.raises(ModelSpecError, match="model name"):
        parse_model_specs([f"bad name={two_dirs / 'attention'}"])


def test_resolve_by_name_and_language(two_dirs):
    reg = ModelRegistry(parse_model_specs([str(two_dirs)]), CountingLoader())
    assert reg.names() == ["attention", "lokal"] and reg.default_name == "attention"
    assert reg.resolve() == "attention"
    assert reg.resolve("lokal") == "lokal"
    assert reg.resolve(None, "de-DE") == "lokal"
    assert reg.resolve(None, "DE") == "lokal"          # a bare language, any case
    assert reg.resolve(None, "en-GB") == "attention"   # same language, another region
    for name, lang, words in (("nope", None, "model 'nope' is not served"),
                              (None, "fr-FR", "no model for language 'fr-FR'"),
                              ("lokal", "en-US", "'lokal' is de-DE")):
        with pytest.raises(ServiceError) as e:
            reg.resolve(name, lang)
        assert e.value.code.name == "INVALID_ARGUMENT"
        assert words in e.value.message and "attention (en-US), lokal (de-DE)" in e.value.message
    info = {i.name: i for i in reg.describe()}
    assert info["lokal"].language_code == "de-DE" and info["attention"].default and not info["lokal"].loaded


def test_lease_loads_on_first_use_holds_and_unloads_when_idle(two_dirs):
    loader = CountingLoader()
    reg = ModelRegistry(parse_model_specs([str(two_dirs)]), loader, idle_unload_s=5.0)
    reg.start()
    assert loader.loaded == ["attention"]

    async def use():
        async with reg.lease("lokal") as backend:
            assert loader.loaded[-1] == "lokal" and {i.name: i for i in reg.describe()}["lokal"].loaded
            # Held: not unloaded however old its last use.
            assert reg.unload_idle(now=1e12) == []
            return backend
    asyncio.run(use())
    assert loader.loaded == ["attention", "lokal"]
    assert reg.unload_idle() == []                     # used just now
    assert reg.unload_idle(now=1e12) == ["lokal"]       # the default stays loaded
    assert not {i.name: i for i in reg.describe()}["lokal"].loaded
    asyncio.run(use())                                  # loads again on the next use
    assert loader.loaded == ["attention", "lokal", "lokal"]
    reg.close()


def test_w2v_requests_pick_the_model(two_dirs):
    entries = parse_model_specs([str(two_dirs)])
    reg = ModelRegistry(entries, lambda e: EmbeddedBackend(e.path))
    expected = {name: Transcriber(two_dirs / d).transcribe(AUDIO, sample_rate=16000).text
                for name, d in (("attention", "attention"), ("lokal", "local"))}
    assert expected["attention"] != expected["lokal"]
    with ThreadedServer(reg) as srv, RecognizerClient(srv.address, timeout_s=60) as client:
        assert client.recognize(AUDIO)["text"] == expected["attention"]
        assert client.recognize(AUDIO, model="lokal")["text"] == expected["lokal"]
        finals = [r["text"] for r in client.stream_audio(AUDIO, model="lokal") if r["is_final"]]
        assert " ".join(t for t in finals if t) == expected["lokal"]
        with pytest.raises(RecognizerError) as e:
            client.recognize(AUDIO, model="nope")
        assert e.value.code.name == "INVALID_ARGUMENT" and "served: attention (en-US), lokal (de-DE)" in e.value.details
        with pytest.raises(RecognizerError) as e:
            list(client.stream_audio(np.zeros(1600, np.float32), model="nope"))
        assert e.value.code.name == "INVALID_ARGUMENT"


def test_export_writes_the_name_and_language_a_server_reads(tmp_path):
    import torch

    from tests.serve_helpers import TINY, VOCAB
    from training.checkpoint import Checkpoint
    from training.model import wav2vec2_small
    from w2v_serve.cli import main as w2v

    torch.manual_seed(0)
    Checkpoint.from_model(wav2vec2_small(vocab_size=len(VOCAB), **TINY).eval(), VOCAB).save(tmp_path / "m.ckpt")
    out = tmp_path / "exported"
    assert w2v(["export", str(tmp_path / "m.ckpt"), "--out", str(out), "--no-check", "--name", "kiel",
                "--language-code", "de-DE"]) == 0
    [entry] = parse_model_specs([str(out)])
    assert (entry.name, entry.language_code) == ("kiel", "de-DE")
    assert w2v(["export", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "x"), "--no-check",
                "--name", "no spaces"]) == 2


def test_a_model_that_fails_to_load_answers_unavailable_and_loads_on_a_later_request(two_dirs):
    """The loader fails on the first use of a model (a server that did not start, say): that
    request ends UNAVAILABLE naming the model and the cause, and the next one loads it."""
    loader, failures = CountingLoader(), ["tritonserver exited with code -11 while starting"]

    def flaky(entry: ModelEntry):
        if entry.name == "lokal" and failures:
            raise RuntimeError(failures.pop())
        return loader(entry)

    reg = ModelRegistry(parse_model_specs([str(two_dirs)]), flaky)
    reg.start()

    async def use():
        async with reg.lease("lokal") as backend:
            return backend
    with pytest.raises(ServiceError) as e:
        asyncio.run(use())
    assert e.value.code.name == "UNAVAILABLE" and "lokal" in e.value.message and "code -11" in e.value.message
    assert not {i.name: i for i in reg.describe()}["lokal"].loaded
    assert asyncio.run(use()) is loader.backends[-1] and loader.loaded == ["attention", "lokal"]
    reg.close()
