"""The vocabulary type: transformers' vocab.json, fairseq's dict.ltr.txt, encode/decode."""

from __future__ import annotations

import json

import pytest

from w2v_serve.vocab import Vocabulary, VocabularyError


def test_reads_transformers_vocab_json_in_index_order(tmp_path):
    p = tmp_path / "vocab.json"
    # Written out of order on purpose: the indices decide.
    p.write_text(json.dumps({"|": 4, "<pad>": 0, "A": 5, "<s>": 1, "</s>": 2, "<unk>": 3, "B": 6}))
    v = Vocabulary.from_hf_vocab_json(p)
    assert v.tokens == ("<pad>", "<s>", "</s>", "<unk>", "|", "A", "B")
    assert (v.blank_id, v.word_delimiter_id, v.unk_id) == (0, 4, 3)
    assert v.is_uppercase


def test_reads_fairseq_dictionary_with_blank_first(tmp_path):
    p = tmp_path / "dict.ltr.txt"
    p.write_text("| 94802\nE 51860\nT 38431\n' 1000\n")
    v = Vocabulary.load(p)
    # fairseq's blank is its bos at index 0; indices of the letters are unchanged.
    assert v.tokens == ("<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "'")


def test_encode_decode_roundtrip_and_unknowns():
    v = Vocabulary.from_characters("abcdefghijklmnopqrstuvwxyz'")
    ids = v.encode("Hello  World")
    assert v.decode(ids) == "hello world"
    assert ids[5] == v.word_delimiter_id
    assert v.encode("a€b") == [v.index("a"), v.unk_id, v.index("b")]


def test_bad_vocabularies_are_refused(tmp_path):
    with pytest.raises(VocabularyError, match="twice"):
        Vocabulary(("<pad>", "a", "a"))
    p = tmp_path / "vocab.json"
    p.write_text(json.dumps({"<pad>": 0, "a": 2}))
    with pytest.raises(VocabularyError, match="0..1"):
        Vocabulary.from_hf_vocab_json(p)
    p.write_text("{not json")
    with pytest.raises(VocabularyError, match="cannot read"):
        Vocabulary.from_hf_vocab_json(p)


def test_save_load_both_formats(tmp_path):
    v = Vocabulary.from_characters("xyz")
    for name in ("vocab.json", "tokens.txt"):
        v.save(tmp_path / name)
        assert Vocabulary.load(tmp_path / name) == v


def test_pyctcdecode_labels_blank_empty_delimiter_space():
    v = Vocabulary(("<pad>", "<s>", "</s>", "<unk>", "|", "A"))
    labels = v.pyctcdecode_labels()
    assert labels[0] == "" and labels[4] == " " and labels[5] == "A"
    assert len(set(labels)) == len(labels)


# ---------------------------------------------------------------------------- token roles
def _xlsr_tokenizer(directory, *, added=True):
    """The XLSR fine-tuning recipe's tokenizer files as transformers 4 wrote them: [UNK] and
    [PAD] appended last to vocab.json, <s>/</s> in added_tokens.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "|": 2, "c": 3, "[UNK]": 4, "[PAD]": 5}))
    if added:
        (directory / "added_tokens.json").write_text(json.dumps({"<s>": 6, "</s>": 7}))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]", "pad_token": "[PAD]"}))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"unk_token": "[UNK]", "pad_token": "[PAD]", "word_delimiter_token": "|", "do_lower_case": False}))
    return directory


def test_hf_tokenizer_roles_pad_last_and_added_tokens(tmp_path):
    v = Vocabulary.from_hf_tokenizer(_xlsr_tokenizer(tmp_path / "tok"), vocab_size=8, pad_token_id=5)
    assert v.tokens == ("a", "b", "|", "c", "[UNK]", "[PAD]", "<s>", "</s>")
    assert (v.blank, v.blank_id, v.unk, v.word_delimiter, v.bos, v.eos) == ("[PAD]", 5, "[UNK]", "|", "<s>", "</s>")
    assert v.specials == {"[PAD]", "[UNK]", "<s>", "</s>"}
    # The roles survive a checkpoint round trip.
    assert Vocabulary.from_dict(v.to_dict()) == v
    # Collapsed ids with specials in between: only the letters and the delimiter reach text.
    assert v.decode([0, 4, 0, 2, 6, 1, 7, 3, 5]) == "aa bc"


def test_hf_tokenizer_head_smaller_than_tokenizer_drops_tokens_it_cannot_emit(tmp_path):
    v = Vocabulary.from_hf_tokenizer(_xlsr_tokenizer(tmp_path / "tok"), vocab_size=6, pad_token_id=5)
    assert len(v) == 6 and v.bos is None and v.blank_id == 5


def test_pyctcdecode_labels_blank_anywhere_and_specials_unique(tmp_path):
    v = Vocabulary.from_hf_tokenizer(_xlsr_tokenizer(tmp_path / "tok"), vocab_size=8, pad_token_id=5)
    assert v.pyctcdecode_labels() == ["a", "b", " ", "c", "⁇4", "", "⁇6", "⁇7"]


def test_nested_vocab_needs_a_known_language(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"eng": {"<pad>": 0, "a": 1, "|": 2},
                                                     "fra": {"<pad>": 0, "é": 1, "|": 2}}))
    with pytest.raises(VocabularyError, match="available: eng, fra"):
        Vocabulary.from_hf_tokenizer(tmp_path)
    with pytest.raises(VocabularyError, match="available: eng, fra"):
        Vocabulary.from_hf_tokenizer(tmp_path, language="deu")
    assert Vocabulary.from_hf_tokenizer(tmp_path, language="fra").tokens == ("<pad>", "é", "|")


def test_vocabulary_without_roles_keeps_old_meaning():
    v = Vocabulary(("<pad>", "<s>", "</s>", "<unk>", "|", "A"))
    assert v.blank_id == 0 and v.specials == {"<pad>", "<s>", "</s>", "<unk>"}
    assert v.with_roles({}) is v
