"""`w2v lm build`: a real toolkit (IRSTLM) builds an ARPA LM that KenLM loads and that steers beam search."""

from __future__ import annotations

from tests.test_decoding import ambiguous_logits
from tests.serve_helpers import VOCAB
from w2v_serve.cli import main as w2v
from w2v_serve.decoding import BEAM, CTCDecoder, DecoderOptions
from w2v_serve.lm import find_irstlm, read_unigrams, unigrams_path_for


def test_lm_build_cli_writes_arpa_and_unigrams_that_steer_beam_search(tmp_path, capsys):
    find_irstlm()      # fails loudly (with the apt package to install) rather than skipping
    text = tmp_path / "domain.txt"
    text.write_text("The cat sat on the mat.\nthe cat sat!\nA black cat sat there, the cat sat.\n"
                    "the dog sat\nthe bat flew away\n" * 5)
    out = tmp_path / "lm" / "domain.arpa"
    assert w2v(["lm", "build", str(text), "--order", "3", "--out", str(out)]) == 0
    arpa = out.read_text()
    assert "\\data\\" in arpa and "ngram 3=" in arpa.replace("  ", " ").replace("  ", " ")
    unigrams = read_unigrams(unigrams_path_for(out))
    assert unigrams == {"the", "cat", "sat", "on", "mat", "a", "black", "there", "dog", "bat", "flew", "away"}
    assert "wrote" in capsys.readouterr().err

    lp = ambiguous_logits()      # acoustically "the bat sat"
    assert CTCDecoder(VOCAB).decode(lp).text == "the bat sat"
    beam = CTCDecoder(VOCAB, DecoderOptions(method=BEAM, beam_width=16, lm=str(out), alpha=1.0, beta=0.0))
    assert beam.decode(lp).text == "the cat sat"


def test_lm_build_reports_empty_text(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("... !!! \n\n")
    assert w2v(["lm", "build", str(empty), "--out", str(tmp_path / "x.arpa")]) == 2
    assert "no words" in capsys.readouterr().err


def test_lexicon_words_become_unigrams_below_every_word_of_the_text(tmp_path):
    import kenlm

    text = tmp_path / "domain.txt"
    text.write_text("the bat sat on the mat\nthe dog sat\n" * 5)
    lexicon = tmp_path / "words"
    lexicon.write_text("Cat\ndog's\nthe\ntwo words\n\n")
    out = tmp_path / "lex.arpa"
    assert w2v(["lm", "build", str(text), "--out", str(out), "--lexicon", str(lexicon),
                "--lexicon-logprob", "-6"]) == 0
    assert read_unigrams(unigrams_path_for(out)) == {"the", "bat", "sat", "on", "mat", "dog", "cat", "dog's"}
    model = kenlm.Model(str(out))       # KenLM checks the header's n-gram counts against the file
    lexicon_only = model.score("cat", bos=False, eos=False)
    assert abs(lexicon_only - -6.0) < 1e-4
    # "the" came from the text, not the lexicon, and keeps its estimated probability.
    assert model.score("the", bos=False, eos=False) > -2
    assert min(model.score(w, bos=False, eos=False) for w in ("bat", "sat", "mat", "dog")) > lexicon_only


def test_a_missing_or_empty_lexicon_is_reported(tmp_path, capsys):
    text = tmp_path / "domain.txt"
    text.write_text("the cat sat\n" * 5)
    out = tmp_path / "x.arpa"
    assert w2v(["lm", "build", str(text), "--out", str(out), "--lexicon", str(tmp_path / "nope")]) == 2
    assert "cannot read the lexicon" in capsys.readouterr().err
    empty = tmp_path / "words"
    empty.write_text("two words\n...\n")
    assert w2v(["lm", "build", str(text), "--out", str(out), "--lexicon", str(empty)]) == 2
    assert "holds no words" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("x.arpa*"))   # nothing half-written
