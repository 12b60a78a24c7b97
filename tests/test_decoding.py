"""CTC decoding: greedy against an independent reference, beam search, KenLM, hotwords, times."""

from __future__ import annotations

import numpy as np
import pytest

from tests.serve_helpers import FRAME_S, VOCAB, peaky, reference_greedy, spell
from w2v_serve.decoding import (
    BEAM, CTCDecoder, DecoderError, DecoderOptions, Transcript, alignment_confidence, safe_cut_frame,
)


def random_log_probs(seed: int, frames: int = 300, sharp: float = 4.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((frames, len(VOCAB))) * sharp
    x[:, 0] += 2.0                                   # blank-heavy, like a real CTC model
    x -= np.logaddexp.reduce(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_reference_decode(seed):
    lp = random_log_probs(seed)
    out = CTCDecoder(VOCAB).decode(lp)
    assert out.text == reference_greedy(lp)
    assert out.text                                   # the check means something
    assert [w.word for w in out.words] == out.text.split()


@pytest.mark.parametrize("seed", range(3))
def test_beam_width_1_without_lm_equals_greedy(seed):
    lp = random_log_probs(seed)
    greedy = CTCDecoder(VOCAB).decode(lp)
    beam = CTCDecoder(VOCAB, DecoderOptions(method=BEAM, beam_width=1)).decode(lp)
    assert beam.text == greedy.text
    assert [(w.start_s, w.end_s) for w in beam.words] == [(w.start_s, w.end_s) for w in greedy.words]
    assert [w.confidence for w in beam.words] == pytest.approx([w.confidence for w in greedy.words], rel=1e-5)


def test_greedy_word_times_and_confidence():
    # "_ _ h h _ i _ | _ y o _ _" : "hi" on frames 2..5 (end exclusive 6), "yo" on 9..10.
    frames = ["_", "_", "h", "h", "_", "i", "_", "|", "_", "y", "o", "_", "_"]
    out = CTCDecoder(VOCAB, frame_seconds=FRAME_S).decode(peaky(frames, p=0.9), frame_offset=100)
    assert out.text == "hi yo"
    hi, yo = out.words
    assert (hi.start_s, hi.end_s) == pytest.approx((2.04, 2.12))    # 100 frames of offset = 2 s
    assert (yo.start_s, yo.end_s) == pytest.approx((2.18, 2.22))
    assert hi.confidence == pytest.approx(0.9, rel=1e-5)
    # The greedy confidence is the best alignment's per-frame probability (Viterbi agrees).
    lp = peaky(frames, p=0.9)
    assert alignment_confidence(lp[2:6], [VOCAB.index("h"), VOCAB.index("i")]) == pytest.approx(hi.confidence, rel=1e-5)


AMBIGUOUS = {"c": 0.40, "b": 0.55}     # acoustically "bat", the LM / hotword should say "cat"


def ambiguous_logits() -> np.ndarray:
    frames = spell("the") + ["|", "_", AMBIGUOUS, AMBIGUOUS, "_", "a", "a", "_", "t", "_", "|"] + spell("sat")
    return peaky(frames)


# A hand-written bigram LM: "the cat sat" is likely, "bat" almost never follows "the".
TINY_ARPA = """\\data\\
ngram 1=7
ngram 2=6

\\1-grams:
-1.0\t<s>\t-0.3
-1.0\t</s>\t0.0
-1.5\t<unk>\t0.0
-0.7\tthe\t-0.3
-1.0\tcat\t-0.3
-3.0\tbat\t-0.3
-1.0\tsat\t-0.3

\\2-grams:
-0.1\t<s> the
-0.2\tthe cat
-3.5\tthe bat
-0.1\tcat sat
-0.5\tbat sat
-0.1\tsat </s>

\\end\\
"""


def test_lm_flips_an_ambiguous_decode(tmp_path):
    lm = tmp_path / "tiny.arpa"
    lm.write_text(TINY_ARPA)
    lp = ambiguous_logits()
    assert CTCDecoder(VOCAB).decode(lp).text == "the bat sat"
    assert CTCDecoder(VOCAB, DecoderOptions(method=BEAM, beam_width=1)).decode(lp).text == "the bat sat"
    with_lm = CTCDecoder(VOCAB, DecoderOptions(method=BEAM, beam_width=16, lm=str(lm), alpha=1.0, beta=0.0))
    out = with_lm.decode(lp)
    assert out.text == "the cat sat"
    # The LM chose "cat" against the acoustics: its confidence is below the acoustic winner's.
    cat = out.words[1]
    assert cat.confidence < CTCDecoder(VOCAB).decode(lp).words[1].confidence


def test_binary_lm_needs_unigrams(tmp_path):
    fake = tmp_path / "lm.bin"
    fake.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0")
    with pytest.raises(DecoderError, match="unigram"):
        CTCDecoder(VOCAB, DecoderOptions(method=BEAM, lm=str(fake)))


def test_hotword_recovers_what_greedy_misses():
    lp = ambiguous_logits()
    assert CTCDecoder(VOCAB).decode(lp).text == "the bat sat"
    beam = CTCDecoder(VOCAB, DecoderOptions(method=BEAM, beam_width=16))
    assert beam.decode(lp).text == "the bat sat"
    out = beam.decode(lp, hotwords=["cat"], hotword_weight=5.0)
    assert out.text == "the cat sat"
    # Per request: the next call without hotwords is unaffected.
    assert beam.decode(lp).text == "the bat sat"


def test_options_are_checked():
    with pytest.raises(DecoderError, match="beam"):
        DecoderOptions(method="greedy", hotwords=("x",))
    with pytest.raises(DecoderError, match="unknown decoder"):
        DecoderOptions(method="viterbi")
    with pytest.raises(DecoderError, match="shape"):
        CTCDecoder(VOCAB).decode(np.zeros((5, 3)))


def test_segments_cut_at_word_boundaries_decode_like_the_whole():
    text = "one two three four five six seven eight nine ten"
    lp = peaky(spell(text, gap=3))
    whole = CTCDecoder(VOCAB).decode(lp)
    parts, start = [], 0
    while True:
        cut = safe_cut_frame(lp, VOCAB, start + 20, min(start + 40, len(lp)))
        if cut is None:
            break
        parts.append(CTCDecoder(VOCAB).decode(lp[start:cut], frame_offset=start))
        start = cut
    parts.append(CTCDecoder(VOCAB).decode(lp[start:], frame_offset=start))
    assert len(parts) > 3
    joined = Transcript.join(parts)
    assert joined.text == whole.text == text
    assert joined.words == whole.words


# ---------------------------------------------------------------- silence, noise, LM weights
def test_beam_keeps_the_best_alignment_over_uncertain_blanks():
    """Hand-worked: 40 frames of blank 0.7 / "a" 0.3. The all-blank path (0.7^40) is the best
    alignment; the labelling "a" sums 40 one-frame alignments and more (>= 40 x 0.3 x 0.7^39,
    17x the empty one), which a search summing alignments prefers. The search keeps the best."""
    p = np.full((40, len(VOCAB)), 1e-6)
    p[:, 0], p[:, VOCAB.encode("a")[0]] = 0.7, 0.3
    lp = np.log(p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    assert np.log(40 * 0.3 * 0.7 ** 39) > np.log(0.7 ** 40)       # the summed labelling's bound
    out = CTCDecoder(VOCAB, DecoderOptions(method=BEAM, beam_width=16, token_min_logp=-5.0)).decode(lp)
    assert out.text == ""
    # A frame where "a" is the best token is emitted.
    lp2 = lp.copy()
    lp2[20, 0], lp2[20, VOCAB.encode("a")[0]] = np.log(0.3), np.log(0.7)
    assert CTCDecoder(VOCAB, DecoderOptions(method=BEAM, beam_width=16)).decode(lp2).text == "a"


@pytest.fixture(scope="module")
def bundled():
    from w2v_serve.engine import Engine
    from w2v_serve.transcribe import _bundled_model

    return Engine(_bundled_model())


@pytest.fixture(scope="module")
def quiet_log_probs(bundled):
    rng = np.random.default_rng(0)
    silence = np.zeros(160000, np.float32)
    noise = (rng.standard_normal(160000) * 0.003).astype(np.float32)   # about -50 dBFS
    return {"silence": bundled.log_probs(silence), "noise": bundled.log_probs(noise)}


@pytest.fixture(scope="module")
def speech_log_probs(bundled, tmp_path_factory):
    import soundfile as sf

    from tests.speech_data import espeak

    tmp = tmp_path_factory.mktemp("speech")
    out = []
    for i, (text, voice) in enumerate([("the northern wind told old stories in the morning", "en-gb+f2"),
                                       ("close the door after you", "en-us+m3"),
                                       ("she sells sea shells by the sea shore", "en-029+m5")]):
        audio, rate = sf.read(str(espeak(text, tmp / f"s{i}.wav", voice)), dtype="float32")
        from w2v_serve.audio import resample
        out.append(bundled.log_probs(resample(audio, rate, 16000)))
    return out


def _bundled_decoder(bundled, **kw):
    from w2v_serve.decoding import options_for_model

    return CTCDecoder(bundled.model.vocab, options_for_model(bundled.model.path, **kw),
                      frame_seconds=bundled.frame_seconds)


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["default", "beam without LM", "alpha=beta=0"])
def test_silence_and_noise_decode_to_nothing(bundled, quiet_log_probs, setting):
    kw = {"default": {}, "beam without LM": dict(method=BEAM, no_lm=True),
          "alpha=beta=0": dict(alpha=0.0, beta=0.0)}[setting]
    decoder = _bundled_decoder(bundled, **kw)
    assert decoder.options.method == BEAM
    for name, lp in quiet_log_probs.items():
        assert (lp.argmax(axis=1) == bundled.model.vocab.blank_id).all(), name   # the frames say nothing
        out = decoder.decode(lp)
        assert out.text == "" and out.words == (), (name, out.text)


@pytest.mark.slow
def test_zero_lm_weights_equal_no_lm(bundled, speech_log_probs):
    zero, none = _bundled_decoder(bundled, alpha=0.0, beta=0.0), _bundled_decoder(bundled, method=BEAM, no_lm=True)
    with_lm = _bundled_decoder(bundled)
    assert zero.options.lm is not None and none.options.lm is None
    for lp in speech_log_probs:
        a, b = zero.decode(lp), none.decode(lp)
        assert a.text and a.text == b.text and a.words == b.words
        assert abs(a.score - b.score) < 1e-6
    assert any(with_lm.decode(lp).text != none.decode(lp).text for lp in speech_log_probs)   # the LM matters


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["default", "greedy", "hotwords"])
def test_blocks_decode_like_the_whole(bundled, speech_log_probs, setting):
    """A sequence advanced block by block (a stream) ends with the transcript of one decode."""
    decoder = _bundled_decoder(bundled, method="greedy") if setting == "greedy" else _bundled_decoder(bundled)
    hotwords = ["northern", "shore"] if setting == "hotwords" else None
    rng = np.random.default_rng(1)
    for lp in speech_log_probs:
        whole = decoder.decode(lp, frame_offset=7, hotwords=hotwords)
        state = decoder.begin(frame_offset=7, hotwords=hotwords)
        t, partials = 0, []
        while t < len(lp):
            n = int(rng.integers(1, 40))
            decoder.advance(state, lp[t:t + n])
            partials.append(decoder.partial(state))
            t += n
        final = decoder.finish(state)
        assert final == whole
        assert partials[-1].text.split()[:-1] == whole.text.split()[:-1] or setting == "greedy" and partials[-1] == whole


@pytest.mark.slow
def test_per_call_lm_weights_equal_a_decoder_built_with_them_and_share_the_lm(bundled, speech_log_probs):
    default = _bundled_decoder(bundled)
    other = _bundled_decoder(bundled, alpha=1.2, beta=0.0)
    assert default._beam.language_model._kenlm_model is other._beam.language_model._kenlm_model   # loaded once
    for lp in speech_log_probs:
        assert default.decode(lp, alpha=1.2, beta=0.0) == other.decode(lp)
        assert default.decode(lp, alpha=0.0, beta=0.0).text == _bundled_decoder(bundled, method=BEAM, no_lm=True).decode(lp).text
    assert (default._beam.language_model.alpha, default._beam.language_model.beta) == (0.5, 1.0)   # untouched


def test_blank_last_and_specials_never_reach_text_greedy_and_beam():
    """An XLSR-recipe vocabulary: [PAD] (the blank) last, [UNK] and <s>/</s> special. Greedy and
    beam search agree, and no special token shows in the text."""
    from w2v_serve.vocab import Vocabulary

    vocab = Vocabulary(("a", "b", "|", "[UNK]", "<s>", "</s>", "[PAD]"), unk="[UNK]", blank="[PAD]",
                       pad="[PAD]", bos="<s>", eos="</s>")
    path = [0, 6, 0, 3, 2, 4, 1, 5, 1, 6, 6, 2, 0]  # a a [UNK] | <s> b </s> b _ _ | a
    logp = np.full((len(path), len(vocab)), -12.0, np.float32)
    logp[np.arange(len(path)), path] = -0.01
    greedy = CTCDecoder(vocab, DecoderOptions(method="greedy")).decode(logp)
    beam = CTCDecoder(vocab, DecoderOptions(method="beam", beam_width=8)).decode(logp)
    assert greedy.text == "aa bb a"
    assert beam.text == greedy.text
