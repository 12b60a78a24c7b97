"""The synthetic corpus (training.synth) and its augmentations (training.augment): every engine
speaks, every augmentation does what it claims, corpora are deterministic, splits stay apart."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from training import augment as A
from training import synth

SR = 16000
SENTENCE = "the cat sat quietly on the warm mat"


def _need(engine: str) -> None:
    why = synth.ENGINES[engine].missing()
    if why:
        pytest.skip(why)


def _rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(float(np.mean(np.asarray(x, np.float64) ** 2)) + 1e-20)


def _band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / SR)
    return float(spec[(f >= lo) & (f < hi)].sum())


def _drop_db(before: np.ndarray, after: np.ndarray, lo: float, hi: float) -> float:
    return 10 * math.log10(_band_energy(after, lo, hi) / _band_energy(before, lo, hi) + 1e-30)


def _noise(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


# ---------------------------------------------------------------------------- engines
ENGINE_VOICES = [("espeak-ng", "en-us"), ("espeak-ng", "en-gb-scotland+f3"), *[("flite", v) for v in synth.Flite.F0],
                 *[("festival", v) for v in synth.Festival.KINDS]]


@pytest.mark.parametrize("engine,voice", ENGINE_VOICES)
def test_engine_speaks(engine, voice):
    _need(engine)
    audio = synth.ENGINES[engine].speak(SENTENCE, voice, 1.0, 1.0, seed=0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    seconds = len(audio) / SR  # 16 kHz: load_audio resamples flite's 8 kHz kal and festival's 32 kHz slt
    assert 1.0 < seconds < 5.0, seconds  # eight words
    assert _rms_db(audio) > -40, "silent"
    assert np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("engine,voice", [("espeak-ng", "en-us"), ("flite", "slt"), ("festival", "kal_diphone")])
def test_engine_speed_is_native(engine, voice):
    _need(engine)
    e = synth.ENGINES[engine]
    slow, fast = e.speak(SENTENCE, voice, 0.8), e.speak(SENTENCE, voice, 1.25)
    assert len(slow) > 1.3 * len(fast)


@pytest.mark.parametrize("voice", ["slt", "rms"])  # slt: flite's own F0 target; rms: sox pitch
def test_pitch_factor_scales_f0(voice):
    _need("flite")
    e = synth.ENGINES["flite"]
    low, high = e.speak(SENTENCE, voice, 1.0, 0.85), e.speak(SENTENCE, voice, 1.0, 1.2)
    assert 1.25 < _median_f0(high) / _median_f0(low) < 1.6  # 1.2 / 0.85 = 1.41


def _median_f0(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    n, hop, out = 640, 160, []
    for s in range(0, len(x) - n, hop):
        fr = x[s:s + n] * np.hanning(n)
        if np.sqrt(np.mean(fr ** 2)) < 0.05 * np.abs(x).max():
            continue
        ac = np.correlate(fr, fr, "full")[n - 1:]
        lo, hi = SR // 400, SR // 60
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.4 * ac[0]:
            out.append(SR / k)
    return float(np.median(out))


# ---------------------------------------------------------------------------- augmentations
def test_band_limits():
    x = _noise()
    tel = A.band(x, 300, 3400)
    assert len(tel) == len(x)
    assert _drop_db(x, tel, 3400, 8000) < -20
    assert _drop_db(x, tel, 0, 300) < -20
    assert abs(_drop_db(x, tel, 500, 3200)) < 1
    assert _drop_db(x, A.band(x, 0, 4000), 4000, 8000) < -20
    assert _drop_db(x, A.band(x, 250, 0), 0, 250) < -20


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_rir_rt60_and_tail(rt60):
    impulse = np.zeros(SR // 10, np.float32)
    impulse[0] = 1.0
    h = A.rir(impulse, rt60, 0.0, np.random.default_rng(1)).astype(np.float64)
    assert len(h) >= len(impulse) + int(rt60 * SR)  # the tail is kept
    edc = np.cumsum((h ** 2)[::-1])[::-1]  # Schroeder backward integration
    edc_db = 10 * np.log10(edc / edc[0])
    t = np.arange(len(h)) / SR
    sel = (edc_db <= -10) & (edc_db >= -30)
    measured = -60.0 / np.polyfit(t[sel], edc_db[sel], 1)[0]
    assert abs(measured - rt60) < 0.2 * rt60, measured


def _talkers(spec):
    rng = np.random.default_rng(5)
    t = np.arange(SR) / SR
    return [(np.sin(2 * np.pi * (150 + 40 * i) * t) * (rng.random(SR) > 0.3)).astype(np.float32) for i in range(len(spec))]


@pytest.mark.parametrize("kind", A.NOISE_KINDS)
@pytest.mark.parametrize("snr", [5.0, 20.0])
def test_noise_snr(kind, snr):
    x = _noise(1.0) * 2
    params = {"kind": kind, "snr_db": snr}
    if kind == "babble":
        params["talkers"] = [["x"]] * 4
    y = A.apply_chain(x, [["noise", params]], seed=3, talkers=_talkers)
    measured = _rms_db(x) - _rms_db(y - x)
    assert abs(measured - snr) < 1.0


def test_speed_and_pitch():
    t = np.arange(SR) / SR
    tone = (0.2 * sum(np.sin(2 * np.pi * 200 * k * t) / k for k in range(1, 4))).astype(np.float32)
    assert abs(len(tone) / len(A.speed(tone, 1.1)) - 1.1) < 0.01
    shifted = A.pitch(tone, 300)
    assert len(shifted) == len(tone)
    spec = np.abs(np.fft.rfft(shifted * np.hanning(len(shifted))))
    f = np.fft.rfftfreq(len(shifted), 1.0 / SR)
    peak = f[np.argmax(np.where(f < 300, spec, 0))]
    assert abs(peak - 200 * 2 ** 0.25) < 3


def _vowel(f0: float = 125.0, formant: float = 1000.0) -> np.ndarray:
    t = np.arange(SR) / SR
    x = sum(np.cos(2 * np.pi * k * f0 * t) / math.sqrt((1 - (k * f0 / formant) ** 2) ** 2 + (k * f0 / formant / 4) ** 2)
            for k in range(1, 60))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _formant_centroid(y: np.ndarray, f0: float) -> float:
    """Power centroid of the harmonics between 300 Hz and 3 kHz: where the envelope sits."""
    mid = y[2000:-2000] * np.hanning(len(y) - 4000)
    spec = np.abs(np.fft.rfft(mid))
    f = np.fft.rfftfreq(len(mid), 1.0 / SR)
    fk = np.arange(1, 60) * f0
    power = np.array([spec[np.argmin(np.abs(f - k))] for k in fk]) ** 2
    sel = (fk > 300) & (fk < 3000)
    return float((power[sel] * fk[sel]).sum() / power[sel].sum())


@pytest.mark.parametrize("alpha", [0.88, 1.15])
def test_formant_warp_moves_envelope_keeps_f0(alpha):
    f0 = 125.0
    x = _vowel(f0, 1000.0)
    y = A.formant(x, alpha)
    moved = _formant_centroid(y, f0) / _formant_centroid(x, f0)
    assert 0.5 < (moved - 1) / (alpha - 1) < 1.2  # the envelope moved the chosen way, by about alpha
    assert abs(_median_f0(y) - f0) < 3  # the harmonics did not


def test_eq_boosts_its_band():
    x = _noise()
    y = A.eq(x, [[1000.0, 2.0, 10.0]])
    assert 7 < _drop_db(x, y, 900, 1100) < 11
    assert abs(_drop_db(x, y, 4000, 8000)) < 1


@pytest.mark.parametrize("name", sorted(A.CODECS))
def test_codec_round_trip(name):
    x = A.band(_noise(1.0), 300, 3400)
    y = A.codec(x, name, 0)
    assert len(y) == len(x) and y.dtype == np.float32
    assert _rms_db(y) > _rms_db(x) - 10  # the signal survives
    assert not np.array_equal(x, y)  # and was coded
    if A.CODECS[name][1] == 8000:
        assert _drop_db(_noise(1.0), A.codec(_noise(1.0), name, 0), 4200, 8000) < -20


def test_gain_ceiling_and_chain_plans_are_reproducible():
    assert np.abs(A.gain(_noise(), 30.0)).max() <= 0.99 + 1e-6
    plans = [A.plan_chain(random.Random(7), lambda r: [["t"]]) for _ in range(2)]
    assert plans[0] == plans[1]
    chain = [c for c in A.plan_chain(random.Random(7), None) if c[0] != "noise"] + [["noise", {"kind": "pink", "snr_db": 10}]]
    x = _noise(1.0)
    assert np.array_equal(A.apply_chain(x, chain, 11), A.apply_chain(x, chain, 11))


# ---------------------------------------------------------------------------- text and plans
def test_wordnet_sentences_are_plain_and_new():
    if not (synth.WORDNET_DIR / "data.noun").exists():
        pytest.skip("wordnet-base is not installed")
    examples = list(synth.wordnet_examples())
    assert len(examples) > 40000
    normalized = {synth.normalize_sentence(e) for e in examples[:2000]} - {None}
    assert len(normalized) > 1000


# The plan of `w2v data synth --engines espeak-ng --train 14652 --dev 300 --test 300 --seed 0` (the
# default-model recipe's corpus), hashed in espeak-ng's own units: the corpus is reproduced file for file.
LEGACY_PLAN_SHA256 = "0b282cb6d2d8c845060662bfd91b786a63beaaa2428adccc5410094dd7e82fb2"


def test_espeak_only_plan_is_the_default_model_recipes_corpus():
    if not (synth.FORTUNES_DIR / "fortunes").exists():
        pytest.skip("fortunes is not installed")
    plan = synth.plan_corpus(Path("/nonexistent"), num_train=14652, num_dev=300, num_test=300, seed=0,
                             engines=["espeak-ng"], held_out_engine="festival")
    assert plan.info["augmentation"] == "legacy"
    h = hashlib.sha256()
    for (_, r, path, seed), (split, _, _) in zip(plan.jobs, plan.meta):
        h.update(json.dumps([Path(path).stem, r.text, r.voice, round(175 * r.speed), round(50 * r.pitch), r.gain_db,
                             r.snr_db, r.noise, r.reverb_rt60, r.telephone, seed]).encode())
    assert h.hexdigest() == LEGACY_PLAN_SHA256


def test_splits_keep_engines_and_sentences_apart():
    plan = synth.plan_corpus(Path("/nonexistent"), num_train=3000, num_dev=100, num_test=100, seed=3,
                             engines=list(synth.DEFAULT_ENGINES), held_out_engine="festival",
                             num_test_heldout=150, num_unlabeled=2000, text_sources=[_text_file()])
    by: dict[str, list] = {}
    for split, _, r in plan.meta:
        by.setdefault(split, []).append(r)
    for split in ("train", "dev", "test", "unlabeled"):
        assert all(r.engine != "festival" for r in by[split]), split
    assert {r.engine for r in by["test_heldout_engine"]} == {"festival"}
    assert {r.engine for r in by["train"]} == {"espeak-ng", "flite"}
    text = {s: {r.text for r in rs} for s, rs in by.items()}
    labeled = text["train"] | text["dev"] | text["test"] | text["test_heldout_engine"]
    assert not text["unlabeled"] & labeled
    assert not text["test_heldout_engine"] & (text["train"] | text["dev"] | text["test"])
    assert not text["dev"] & text["train"] and not text["test"] & text["train"]
    # babble talkers: training engines speaking training-pool sentences (no evaluation sentence)
    babble = [t for r in by["train"] + by["unlabeled"] for name, p in r.chain
              if name == "noise" and p["kind"] == "babble" for t in p["talkers"]]
    assert babble and all(t[0] != "festival" for t in babble)
    assert not {t[2] for t in babble} & (text["dev"] | text["test"] | text["test_heldout_engine"] | text["unlabeled"])
    # voices: dev/test only in held-out settings
    train_v = {(r.engine, r.voice) for r in by["train"]}
    assert not train_v & {(r.engine, r.voice) for r in by["dev"] + by["test"]}
    # the training files do not depend on what else is reserved
    small = synth.plan_corpus(Path("/nonexistent"), num_train=50, num_dev=100, num_test=100, seed=3,
                              engines=list(synth.DEFAULT_ENGINES), held_out_engine="festival", num_test_heldout=150,
                              text_sources=[_text_file()])
    assert [asdict(r) for s, _, r in small.meta if s == "train"] == [asdict(r) for r in by["train"][:50]]


_TEXT: list[Path] = []


def _text_file() -> Path:
    """10000 distinct made-up sentences (no Debian text needed)."""
    if not _TEXT:
        import tempfile

        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
        lines = [" ".join(words[(i // 10 ** k) % 10] for k in range(4)) + " and more." for i in range(10000)]
        path = Path(tempfile.mkdtemp()) / "sentences.txt"
        path.write_text("\n\n".join(lines))
        _TEXT.append(path)
    return _TEXT[0]


def test_espeak_records_in_espeak_units_match_their_plan():
    old = {"path": "audio/train/train_000000.wav", "text": "a b c d", "voice": "en-us", "speed": 175, "pitch": 50,
           "gain_db": 0.0, "snr_db": None, "noise": "white", "reverb_rt60": 0.0, "telephone": False}
    new = {**old, "speed": 1.0, "pitch": 1.0, "engine": "espeak-ng", "chain": [], "seed": 1}
    assert synth._same_plan(old, new)
    assert not synth._same_plan(old, {**new, "text": "a b c e"})
    assert not synth._same_plan({**new, "seed": 1}, {**new, "seed": 2})


# ---------------------------------------------------------------------------- a real corpus
def test_corpus_is_deterministic_resumable_and_split(tmp_path):
    _need("espeak-ng")
    _need("flite")
    held = "festival" if not synth.ENGINES["festival"].missing() else "flite"
    engines = ["espeak-ng", "flite", "festival"] if held == "festival" else ["espeak-ng", "flite"]
    kw = dict(num_train=4, num_dev=1, num_test=1, seed=5, engines=engines, held_out_engine=held, num_test_heldout=1,
              num_unlabeled=2, augment_share=1.0, workers=2, progress=False, text_sources=[_text_file()])
    a = synth.synthesize_corpus(tmp_path / "a", **kw)
    assert not a["failed"]
    assert {s: v["utterances"] for s, v in a["splits"].items()} == {
        "train": 4, "dev": 1, "test": 1, "test_heldout_engine": 1, "unlabeled": 2}
    assert a["splits"]["test_heldout_engine"]["engines"] == {held: 1}
    for split in ("train", "dev", "test", "unlabeled"):
        assert held not in a["splits"][split]["engines"]
        rows = (tmp_path / "a" / f"{split}.tsv").read_text().splitlines()[1:]
        recs = {json.loads(line)["path"]: json.loads(line)
                for line in (tmp_path / "a" / f"{split}.renderings.jsonl").read_text().splitlines()}
        assert all(recs[f"audio/{row.split(chr(9))[0]}"]["engine"] != held for row in rows)
    assert not (tmp_path / "a" / "unlabeled.wrd").exists()  # unlabeled: audio only
    assert (tmp_path / "a" / "train.wrd").read_text().count("\n") == 4
    corpus = json.loads((tmp_path / "a" / "corpus.json").read_text())
    assert corpus["splits"]["train"]["augmented"] == 4 and corpus["splits"]["dev"]["augmented"] == 0
    # The engines run in the pool's processes: their CPU is counted (espeak-ng alone is ~10 ms each).
    assert corpus["render_cost"]["cpu_s"] > 0.05 and corpus["render_cost"]["rendered_now"] == 9

    files = sorted((tmp_path / "a" / "audio").rglob("*.wav"))
    assert len(files) == 9 and not list((tmp_path / "a" / "audio").rglob("*.part"))
    stamp = {f: f.stat().st_mtime_ns for f in files}
    again = synth.synthesize_corpus(tmp_path / "a", **kw)  # resume: nothing to do, nothing rewritten
    assert again["splits"] == a["splits"] and again["rerendered_for_a_changed_plan"] == 0
    assert again["render_cost"]["rendered_now"] == 0  # and the cost adds up over the starts
    assert again["render_cost"]["cpu_s"] >= a["render_cost"]["cpu_s"]
    assert again["render_cost"]["wall_s"] >= a["render_cost"]["wall_s"]
    assert all(f.stat().st_mtime_ns == stamp[f] for f in files)

    synth.synthesize_corpus(tmp_path / "b", **{**kw, "workers": 1})  # same command elsewhere: same bytes
    for f in files:
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
