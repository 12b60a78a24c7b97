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
