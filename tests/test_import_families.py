"""``w2v import hf`` -> ``w2v export`` -> ``w2v transcribe`` for every family and layout of
the wav2vec 2.0 family, against transformers on espeak-ng speech.

Each checkpoint is a tiny random-weight model built and saved with transformers 5 (see
tests/hf_families.py), some rewritten in transformers 4's layout. Per checkpoint: the model
directory's log-probabilities (what ``w2v transcribe`` runs) within 1e-3 of transformers'
(relative to their largest magnitude), ``--decoder greedy`` text equal to the processor's
``batch_decode`` with its special tokens removed, and beam search (no LM) running with no special
token in its text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests import hf_families as fam
from w2v_serve.cli import main as w2v

pytestmark = pytest.mark.slow
MAX_REL_ERROR = 1e-3


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return fam.speech_wav(tmp_path_factory.mktemp("speech"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = w2v([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def transcribe(capsys, wav: Path, model_dir: Path, *flags: str) -> dict:
    code, out, err = run(capsys, "transcribe", wav, "--model", model_dir, "--format", "jsonl", *flags)
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert "error" not in record, record
    return record


def engine_log_probs(model_dir: Path, audio: np.ndarray) -> np.ndarray:
    from w2v_serve.engine import Engine

    return Engine(model_dir).infer([audio])[0]


def check_against_transformers(capsys, tmp_path: Path, source: Path, model, processor, speech,
                               *import_flags: str) -> Path:
    """The whole user path for one checkpoint; returns the model directory."""
    wav, audio = speech
    ckpt, model_dir = tmp_path / "model.ckpt", tmp_path / "model"
    code, out, err = run(capsys, "import", "hf", source, "--out", ckpt, *import_flags)
    assert code == 0, err
    code, out, err = run(capsys, "export", ckpt, "--out", model_dir)
    assert code == 0, err
    ref_log_probs, ref_text = fam.reference(model, processor, audio)
    got = engine_log_probs(model_dir, audio)
    assert got.shape == ref_log_probs.shape
    rel = np.abs(got - ref_log_probs).max() / np.abs(ref_log_probs).max()
    assert rel < MAX_REL_ERROR, rel
    greedy = transcribe(capsys, wav, model_dir, "--decoder", "greedy")
    assert greedy["text"] == fam.without_specials(ref_text, processor.tokenizer)
    assert greedy["text"]                               # random weights still emit letters
    beam = transcribe(capsys, wav, model_dir, "--decoder", "beam", "--beam-width", "8")
    assert not re.search(r"\[|\]|<|>|⁇", beam["text"]), beam["text"]
    return model_dir


# ---------------------------------------------------------------------------- wav2vec 2.0
def test_wav2vec2_base_english_vocab_transformers5_layout(tmp_path, capsys, speech):
    model, processor = fam.build("wav2vec2", tmp_path / "src", vocab="english", do_normalize=False)
    assert (tmp_path / "src" / "processor_config.json").exists()
    assert not (tmp_path / "src" / "preprocessor_config.json").exists()
    model_dir = check_against_transformers(capsys, tmp_path, tmp_path / "src", model, processor, speech)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["special_tokens"]["blank"] == "<pad>" and card["special_tokens"]["blank_id"] == 0


def test_wav2vec2_stable_layer_norm_xlsr_vocab_transformers4_bin(tmp_path, capsys, speech):
    """[PAD] (the blank, config.pad_token_id) last, <s>/</s> in added_tokens.json, the feature
    extractor in preprocessor_config.json, pytorch_model.bin with weight_g/weight_v."""
    model, processor = fam.build("wav2vec2", tmp_path / "src", stable=True)
    src = fam.transformers4_files(tmp_path / "src")
    assert (src / "added_tokens.json").exists() and (src / "pytorch_model.bin").exists()
    model_dir = check_against_transformers(capsys, tmp_path, src, model, processor, speech)
    specials = json.loads((model_dir / "model_card.json").read_text())["special_tokens"]
    assert specials["blank"] == "[PAD]" and specials["blank_id"] == model.config.pad_token_id
    assert set(specials["specials"]) == {"[PAD]", "[UNK]", "<s>", "</s>"}


def test_wav2vec2_sharded_safetensors(tmp_path, capsys, speech):
    model, processor = fam.build("wav2vec2", tmp_path / "src", seed=3)
    for f in (tmp_path / "src").glob("model*.safetensors*"):
        f.unlink()
    model.save_pretrained(tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").exists()
    check_against_transformers(capsys, tmp_path, tmp_path / "src", model, processor, speech)


# ---------------------------------------------------------------------------- other families
def test_hubert_base(tmp_path, capsys, speech):
    model, processor = fam.build("hubert", tmp_path / "src", seed=1)
    check_against_transformers(capsys, tmp_path, tmp_path / "src", model, processor, speech)


def test_hubert_large_without_projection_layer_norm(tmp_path, capsys, speech):
    model, processor = fam.build("hubert", tmp_path / "src", stable=True, feat_proj_layer_norm=False, seed=2)
    check_against_transformers(capsys, tmp_path, tmp_path / "src", model, processor, speech)


def test_wavlm_base(tmp_path, capsys, speech):
    model, processor = fam.build("wavlm", tmp_path / "src", seed=4)
    check_against_transformers(capsys, tmp_path, tmp_path / "src", model, processor, speech)


def test_wavlm_large_transformers4_layout(tmp_path, capsys, speech):
    model, processor = fam.build("wavlm", tmp_path / "src", stable=True, seed=5)
    src = fam.transformers4_files(tmp_path / "src")
    check_against_transformers(capsys, tmp_path, src, model, processor, speech)


def test_data2vec_audio(tmp_path, capsys, speech):
    model, processor = fam.build("data2vec-audio", tmp_path / "src", seed=6)
    check_against_transformers(capsys, tmp_path, tmp_path / "src", model, processor, speech)


def test_other_model_types_are_refused_in_one_line(tmp_path, capsys):
    fam.build("wav2vec2", tmp_path / "src")
    code, out, err = run(capsys, "import", "hf", tmp_path / "src", "--out", tmp_path / "x.ckpt", "--language", "fra")
    assert code == 2 and "--language is for MMS checkpoints" in err and len(err.strip().splitlines()) == 1
    config = json.loads((tmp_path / "src" / "config.json").read_text())
    (tmp_path / "src" / "config.json").write_text(json.dumps({**config, "model_type": "sew"}))
    code, out, err = run(capsys, "import", "hf", tmp_path / "src", "--out", tmp_path / "x.ckpt")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'sew'" in err and "wav2vec2, hubert, wavlm, data2vec-audio" in err
    (tmp_path / "src" / "config.json").write_text(json.dumps(
        {**config, "architectures": ["Wav2Vec2ForSequenceClassification"]}))
    code, out, err = run(capsys, "import", "hf", tmp_path / "src", "--out", tmp_path / "x.ckpt")
    assert code == 2 and "Wav2Vec2ForSequenceClassification is not supported" in err


# ---------------------------------------------------------------------------- MMS
def test_mms_language_adapter_and_vocabulary(tmp_path, capsys, speech):
    src = fam.build_mms(tmp_path / "src")
    for flags in ((), ("--language", "deu")):
        code, out, err = run(capsys, "import", "hf", src, "--out", tmp_path / "x.ckpt", *flags)
        assert code == 2 and "available: eng, fra" in err and len(err.strip().splitlines()) == 1
    model, processor = fam.mms_reference(src, "fra")
    model_dir = check_against_transformers(capsys, tmp_path, src, model, processor, speech, "--language", "fra")
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["vocabulary"] == fam.MMS_LANGUAGES["fra"] and card["model_config"]["adapter_dim"] == 8


# ---------------------------------------------------------------------------- language model
def test_processor_with_lm_ships_its_lm_and_weights(tmp_path, capsys, speech):
    """A Wav2Vec2ProcessorWithLM repository: its KenLM file and unigrams land in the model
    directory as lm.arpa / lm.unigrams.txt with attrs.json's alpha, beta, unk_score_offset and
    score_boundary; `w2v transcribe` then decodes with it by default, exactly as with the
    LM and weights given by hand. (The processor's own pyctcdecode decoder is no reference:
    its alphabet holds <s> and </s> as characters, and they reach its text.)"""
    wav, audio = speech
    model, processor = fam.build_with_lm("hubert", tmp_path / "src", alpha=0.7, beta=2.0, seed=8)
    code, out, err = run(capsys, "import", "hf", tmp_path / "src", "--out", tmp_path / "m.ckpt",
                         "--export", tmp_path / "model")
    assert code == 0, err
    model_dir = tmp_path / "model"
    card = json.loads((model_dir / "model_card.json").read_text())
    assert {k: card["decoding"][k] for k in ("lm", "unigrams", "alpha", "beta", "unk_score_offset", "score_boundary")} \
        == {"lm": "lm.arpa", "unigrams": "lm.unigrams.txt", "alpha": 0.7, "beta": 2.0,
            "unk_score_offset": -8.0, "score_boundary": False}
    assert (model_dir / "lm.arpa").read_text() == (tmp_path / "src" / "language_model" / "_lm.arpa").read_text()
    default = transcribe(capsys, wav, model_dir)
    by_hand = transcribe(capsys, wav, model_dir, "--decoder", "beam", "--lm", model_dir / "lm.arpa",
                         "--alpha", "0.7", "--beta", "2.0")
    no_lm = transcribe(capsys, wav, model_dir, "--decoder", "beam", "--no-lm")
    assert default["text"] == by_hand["text"]
    assert set(default["text"].split()) <= set(fam.LM_WORDS), default["text"]
    assert default["text"] != no_lm["text"]
    from w2v_serve.decoding import options_for_model

    options = options_for_model(model_dir)
    assert (options.method, options.lm, options.alpha, options.beta, options.unk_score_offset,
            options.score_boundary) == ("beam", str(model_dir / "lm.arpa"), 0.7, 2.0, -8.0, False)
    ref_log_probs, _ = fam.reference(model, processor, audio)
    got = engine_log_probs(model_dir, audio)
    assert np.abs(got - ref_log_probs).max() / np.abs(ref_log_probs).max() < MAX_REL_ERROR


# ---------------------------------------------------------------------------- Hub ids, one command
def test_hub_id_from_local_cache_to_model_directory_in_one_command(tmp_path, capsys, speech, monkeypatch):
    wav, audio = speech
    model, processor = fam.build("wavlm", tmp_path / "src", seed=9)
    cache = tmp_path / "hf-home" / "hub"
    fam.hub_cache_layout(cache, "someone/tiny-wavlm-ctc", tmp_path / "src", commit="a" * 40)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run(capsys, "import", "hf", "someone/tiny-wavlm-ctc", "--export", tmp_path / "model")
    assert code == 0, err
    _, ref_text = fam.reference(model, processor, audio)
    assert transcribe(capsys, wav, tmp_path / "model", "--decoder", "greedy")["text"] == \
        fam.without_specials(ref_text, processor.tokenizer)
    # A revision that is not in the cache, and an id that is not: one line saying how to get it.
    for argv in (("someone/tiny-wavlm-ctc", "--revision", "b" * 40), ("facebook/wav2vec2-base-960h",)):
        code, out, err = run(capsys, "import", "hf", *argv, "--out", tmp_path / "x.ckpt")
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"hf download {argv[0]}" in err and "huggingface-cli download" in err


# ---------------------------------------------------------------------------- external data
def test_external_data_export_loads_everywhere(tmp_path, capsys, speech):
    """A small model forced to ONNX external data: each graph's weights in GRAPH.onnx.data,
    the same transcript and log-probabilities as the inline export, int8 variant included, and
    the Triton repository writer carries the data files."""
    from w2v_serve.triton.repository import write_repository

    wav, audio = speech
    model, processor = fam.build("hubert", tmp_path / "src", seed=10)
    assert run(capsys, "import", "hf", tmp_path / "src", "--out", tmp_path / "m.ckpt")[0] == 0
    code, out, err = run(capsys, "export", tmp_path / "m.ckpt", "--out", tmp_path / "inline")
    assert code == 0, err
    code, out, err = run(capsys, "export", tmp_path / "m.ckpt", "--out", tmp_path / "ext", "--external-data", "--int8")
    assert code == 0, err
    ext = tmp_path / "ext"
    card = json.loads((ext / "model_card.json").read_text())
    import onnx

    for graph, data in card["extra"]["external_data"].items():
        proto = onnx.load(str(ext / graph), load_external_data=False)
        external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        inline = [t for t in proto.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        assert external and all(len(t.raw_data) <= 1024 for t in inline), graph
        assert (ext / data).stat().st_size > 0
    assert (ext / "model.onnx.data").exists() and (ext / "model.int8.onnx.data").exists()
    np.testing.assert_allclose(engine_log_probs(ext, audio), engine_log_probs(tmp_path / "inline", audio), atol=1e-5)
    assert transcribe(capsys, wav, ext, "--decoder", "greedy")["text"] == \
        transcribe(capsys, wav, tmp_path / "inline", "--decoder", "greedy")["text"]
    assert transcribe(capsys, wav, ext, "--precision", "int8", "--decoder", "greedy")["text"]
    repo = write_repository(ext, tmp_path / "repo")
    assert (repo / "acoustic" / "1" / "model.onnx.data").exists()
