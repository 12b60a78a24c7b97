"""The bundled default model (w2v_serve/models/default) and the language model a model directory
may ship: what `make demo` runs, and how every command picks the shipped LM and its tuned weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.serve_helpers import tiny_model_dir
from tests.test_decoding import TINY_ARPA
from w2v_serve.cli import main as w2v
from w2v_serve.decoding import BEAM, DEFAULT_ALPHA, DEFAULT_BETA, GREEDY, DecoderError, options_for_model
from w2v_serve.model_dir import ModelDirectory, ModelDirError, default_model_dir

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "sample.wav"


# ---------------------------------------------------------------------------- shipped LM
@pytest.fixture()
def model_with_lm(tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), d)
    (d / "tiny.arpa").write_text(TINY_ARPA)
    card = json.loads((d / "model_card.json").read_text())
    card["decoding"] = {"lm": "tiny.arpa", "alpha": 0.9, "beta": 2.5, "tuned_on": "test"}
    (d / "model_card.json").write_text(json.dumps(card))
    return d


def test_beam_search_uses_the_shipped_lm_with_its_tuned_weights(model_with_lm, tmp_path):
    shipped = str(model_with_lm / "tiny.arpa")
    o = options_for_model(model_with_lm, method=BEAM, beam_width=8)
    assert (o.method, o.lm, o.alpha, o.beta, o.beam_width) == (BEAM, shipped, 0.9, 2.5, 8)
    # Explicit values win; another LM gets pyctcdecode's defaults, not weights tuned for a different LM.
    assert options_for_model(model_with_lm, method=BEAM, alpha=0.1).alpha == 0.1
    other = tmp_path / "other.arpa"
    other.write_text(TINY_ARPA)
    o = options_for_model(model_with_lm, lm=str(other))
    assert (o.method, o.lm, o.alpha, o.beta) == (BEAM, str(other), DEFAULT_ALPHA, DEFAULT_BETA)
    # A model that ships an LM is decoded with it by default; greedy is one flag away, and
    # --no-lm turns the shipped LM off (greedy by default then, beam without an LM when asked).
    o = options_for_model(model_with_lm)
    assert (o.method, o.lm, o.alpha, o.beta) == (BEAM, shipped, 0.9, 2.5)
    assert (options_for_model(model_with_lm, method=GREEDY).method, options_for_model(model_with_lm, method=GREEDY).lm) == (GREEDY, None)
    assert options_for_model(model_with_lm, no_lm=True).method == GREEDY
    assert options_for_model(model_with_lm, method=BEAM, no_lm=True).lm is None
    with pytest.raises(DecoderError, match="contradict"):
        options_for_model(model_with_lm, lm=str(other), no_lm=True)
    # A model without an LM: beam search has none.
    assert options_for_model(tiny_model_dir(), method=BEAM).lm is None


def test_a_card_naming_a_missing_lm_is_an_error(model_with_lm):
    (model_with_lm / "tiny.arpa").unlink()
    with pytest.raises(ModelDirError, match="tiny.arpa"):
        options_for_model(model_with_lm, method=BEAM)


# ---------------------------------------------------------------------------- the bundled model
@pytest.fixture(scope="module")
def bundled() -> ModelDirectory:
    d = default_model_dir()
    assert d is not None, "w2v_serve/models/default is part of the repository"
    return ModelDirectory.load(d)


def test_the_bundled_model_card_records_data_training_and_results(bundled):
    extra = bundled.card.extra
    assert "synthetic" in extra["purpose"] and "not meant for real voices" in extra["purpose"]
    assert extra["data"]["splits"]["train"]["hours"] > 1
    assert extra["training"]["stages"] and all(s["updates"] > 0 for s in extra["training"]["stages"])
    results = extra["results"]
    for split in ("dev", "test"):
        greedy, beam = results[f"{split}_greedy"], results[f"{split}_beam64_lm"]
        assert greedy["utterances"] == beam["utterances"] == 300
        assert beam["wer"] < greedy["wer"]          # the shipped LM helps
    assert bundled.shipped_lm is not None and bundled.shipped_lm.stat().st_size > 0
    size_mb = sum(f.stat().st_size for f in bundled.path.iterdir()) / 2 ** 20
    assert size_mb < 60


def test_make_demo_sample_transcribes_right_with_the_shipped_lm(bundled, capsys):
    """What `make demo` prints: the bundled sample (a held-out test utterance, a voice setting
    never used in training) through beam search with the model's own LM, which is the default
    for a model that ships one: no decoder flag needed (the same as `--decoder beam`)."""
    reference = (ROOT / "samples" / "sample.txt").read_text().strip()
    assert w2v(["transcribe", str(SAMPLE)]) == 0
    assert capsys.readouterr().out.strip() == reference
    assert w2v(["transcribe", str(SAMPLE), "--decoder", "beam"]) == 0
    assert capsys.readouterr().out.strip() == reference
