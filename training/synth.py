"""A synthetic English speech corpus (``w2v data synth``): every English speech engine Debian has,
deterministic, offline, resumable. docs/corpus.md is the user's guide.

Text: English sentences of 4-14 plain words from Debian's ``fortunes`` collections (about 15 k
distinct sentences once punctuation is stripped), optionally WordNet's example sentences (about
31 k more, ``--text-source wordnet``), or any text files given with ``--text``.

Engines (:data:`ENGINES`, one small class each, one interface: text, voice, speed, pitch, seed ->
float32 16 kHz samples): espeak-ng in several English accents and voice variants; flite's voices
(kal, kal16, awb, rms, slt); festival's (kal and ked diphones, slt HTS). Speed and pitch are
factors (1.0 = the voice's own); an engine applies them natively where it can, else with sox.

Augmentation: ``legacy`` (gain, white/pink noise, a little reverb, telephone band: the corpus as
it was before engines were added) or ``full`` (training.augment: speed, pitch and formant
perturbation, room impulse responses, EQ and band limits, white/pink/brown/babble noise at varied
SNR, codecs). Only train and unlabeled utterances are augmented.

Splits: sentences are split first (no two splits share a sentence). dev and test use held-out
voice settings of the training engines (a share of each engine's voices that train never hears);
one engine (``--held-out-engine``, festival by default) is held out of training entirely and
speaks only ``test_heldout_engine``; ``unlabeled`` (``--unlabeled N``) speaks sentences that no
labeled split has. Everything is a function of ``--seed`` and the utterance index, so the same
command gives the same corpus (the engines' versions aside), and an interrupted run resumes:
files already written (each appears only once complete) are kept unless the plan recorded for
them differs from the new one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import soundfile as sf

from training.cost import StageCost
from w2v_serve.audio import SAMPLE_RATE, load_audio

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# The collections of Debian's `fortunes` and `fortunes-min` packages. Pinned: another fortunes
# package installed later (fortune-anarchism, ...) must not change the corpus of the same command.
FORTUNE_FILES = (
    "art", "ascii-art", "computers", "cookie", "debian", "definitions", "disclaimer", "drugs",
    "education", "ethnic", "food", "fortunes", "goedel", "humorists", "kids", "knghtbrd", "law", "linux",
    "linuxcookie", "literature", "love", "magic", "medicine", "men-women", "miscellaneous", "news",
    "paradoxum", "people", "perl", "pets", "platitudes", "politics", "pratchett", "riddles", "science",
    "songs-poems", "sports", "startrek", "tao", "translate-me", "wisdom", "work", "zippy")
WORDNET_DIR = Path("/usr/share/wordnet")
TEXT_SOURCES = ("fortunes", "wordnet")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
            "+klatt", "+klatt2", "+klatt3")
MIN_WORDS, MAX_WORDS = 4, 14
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")
SPLITS = ("train", "dev", "test", "test_heldout_engine", "unlabeled")


class SynthError(RuntimeError):
    """An engine missing, or no usable text."""


# ---------------------------------------------------------------------------- text
def normalize_sentence(text: str) -> Optional[str]:
    """Lower-case words of letters (and inner apostrophes); None if anything else remains
    (digits, symbols, abbreviations) or the length is outside 4-14 words."""
    text = text.replace("’", "'").replace("`", "'")
    text = re.sub(r"[\"“”()\[\]]", " ", text)
    text = re.sub(r"[,;:.!?]+(\s|$)", " ", text)
    text = re.sub(r"\s+-+\s+|--", " ", text)
    words = text.lower().split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if not all(_WORD.match(w) for w in words):
        return None
    return " ".join(words)


def split_sentences(block: str) -> Iterator[str]:
    block = " ".join(block.split())
    for part in re.split(r"(?<=[.!?])\s+", block):
        yield part


def fortune_blocks(directory: Path = FORTUNES_DIR) -> Iterator[str]:
    """The quotations of Debian's fortunes collections (not the .dat indexes, not the offensive set)."""
    files = [directory / name for name in FORTUNE_FILES if (directory / name).is_file()]
    if not files:
        raise SynthError(f"{directory}: Debian's fortunes are not installed (apt-get install fortunes)")
    for f in files:
        text = f.read_text(encoding="utf-8", errors="ignore")
        yield from text.split("\n%\n")


def wordnet_examples(directory: Path = WORDNET_DIR) -> Iterator[str]:
    """WordNet 3.0's example sentences (the quoted parts of the glosses in Debian's wordnet-base),
    e.g. "the teacher should not deprecate his student's efforts"."""
    files = [directory / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.is_file() for f in files):
        raise SynthError(f"{directory}: WordNet is not installed (apt-get install wordnet-base)")
    for f in files:
        with open(f, encoding="utf-8", errors="ignore") as fh:
            for line in fh:
                if line.startswith(" ") or " | " not in line:
                    continue
                yield from re.findall(r'"([^"]+)"', line.split(" | ", 1)[1])


def collect_sentences(sources: Sequence[Path] = (), builtin: Sequence[str] = ("fortunes",)) -> list[str]:
    """Distinct normalized sentences, in a stable order: from text files if given, else from the
    built-in sources (``fortunes``, ``wordnet``)."""
    blocks: Iterable[str]
    if sources:
        blocks = (p.read_text(encoding="utf-8", errors="ignore") for p in sources)
    else:
        unknown = set(builtin) - set(TEXT_SOURCES)
        if unknown or not builtin:
            raise SynthError(f"text sources are {', '.join(TEXT_SOURCES)}; got {', '.join(builtin) or 'none'}")
        blocks = (b for name in sorted(set(builtin))
                  for b in (fortune_blocks() if name == "fortunes" else wordnet_examples()))
    seen: dict[str, None] = {}
    for block in blocks:
        for lines in (block.split("\n\n") if sources else [block]):
            for s in split_sentences(lines):
                n = normalize_sentence(s)
                if n:
                    seen.setdefault(n, None)
    return sorted(seen)


# ---------------------------------------------------------------------------- engines
def _run(cmd: Sequence[str], what: str, package: str) -> None:
    try:
        subprocess.run(list(cmd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise SynthError(f"{cmd[0]} is not installed (apt-get install {package})") from None
    except subprocess.CalledProcessError as e:
        raise SynthError(f"{what} failed: {e.stderr.decode(errors='ignore').strip()[-500:]}") from e


class Engine:
    """One speech synthesizer. ``speak(text, voice, speed, pitch, seed)`` returns float32 16 kHz
    mono samples; ``speed`` and ``pitch`` are factors (1.0: the voice's own rate and F0)."""

    name = ""
    binary = ""
    packages: tuple[str, ...] = ()
    fast = True   # cheap enough to render babble talkers with

    def voices(self) -> list[str]:
        raise NotImplementedError

    def missing(self) -> Optional[str]:
        """Why this engine cannot run here (None: it can)."""
        if shutil.which(self.binary) is None:
            return f"{self.binary} is not installed (apt-get install {' '.join(self.packages)})"
        return None

    def prosody(self, rng: random.Random) -> tuple[float, float]:
        """A random (speed, pitch) for one utterance."""
        return round(rng.uniform(0.8, 1.25), 3), round(rng.uniform(0.85, 1.2), 3)

    def speak(self, text: str, voice: str, speed: float = 1.0, pitch: float = 1.0, seed: int = 0) -> np.ndarray:
        raise NotImplementedError


def _pitch_by_sox(audio: np.ndarray, pitch: float) -> np.ndarray:
    """Pitch factor for engines that cannot change F0 themselves."""
    if abs(pitch - 1.0) < 1e-6:
        return audio
    from training.augment import pitch as pitch_shift

    return pitch_shift(audio, 1200.0 * math.log2(pitch))


class EspeakNG(Engine):
    """espeak-ng: accents x voice variants; speed 1.0 = 175 words/min, pitch 1.0 = espeak's 50."""

    name, binary, packages = "espeak-ng", "espeak-ng", ("espeak-ng",)

    def voices(self) -> list[str]:
        return voice_settings()

    def prosody(self, rng: random.Random) -> tuple[float, float]:
        # The draws of the corpus before engines were added: 125-205 words/min, pitch 20-80.
        return rng.randint(125, 205) / 175, rng.randint(20, 80) / 50

    def speak(self, text: str, voice: str, speed: float = 1.0, pitch: float = 1.0, seed: int = 0) -> np.ndarray:
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            try:
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(round(175 * speed)), "-p", str(round(50 * pitch)),
                                "-w", tmp.name, text], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except FileNotFoundError:
                raise SynthError("espeak-ng is not installed (apt-get install espeak-ng)") from None
            except subprocess.CalledProcessError as e:
                raise SynthError(f"espeak-ng failed for voice {voice}: {e.stderr.decode(errors='ignore').strip()}") from e
            return load_audio(tmp.name, SAMPLE_RATE)


class Flite(Engine):
    """flite (Debian's flite package): kal (diphone, 8 kHz), kal16 (diphone), awb, rms, slt
    (clustergen). Speed by ``duration_stretch``; pitch by ``int_f0_target_mean`` (rms ignores it:
    sox pitch instead). awb_time is left out: a limited-domain voice that only says times."""

    name, binary, packages = "flite", "flite", ("flite",)
    F0 = {"kal": 95.0, "kal16": 95.0, "awb": 130.0, "slt": 170.0, "rms": 0.0}  # 0: no native pitch

    def voices(self) -> list[str]:
        return list(self.F0)

    def missing(self) -> Optional[str]:
        why = super().missing()
        if why:
            return why
        out = subprocess.run(["flite", "-lv"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode()
        have = set(out.replace("Voices available:", "").split())
        lacking = [v for v in self.voices() if v not in have]
        return f"flite lacks voices {', '.join(lacking)}" if lacking else None

    def speak(self, text: str, voice: str, speed: float = 1.0, pitch: float = 1.0, seed: int = 0) -> np.ndarray:
        f0 = self.F0[voice]
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / speed:.4f}"]
            if f0:
                # the kal diphones break (octave jumps) below about 80 Hz
                cmd += ["--setf", f"int_f0_target_mean={max(85.0, f0 * pitch):.2f}"]
            _run([*cmd, "-t", text, "-o", tmp.name], f"flite voice {voice}", "flite")
            audio = load_audio(tmp.name, SAMPLE_RATE)
        return audio if f0 else _pitch_by_sox(audio, pitch)


class Festival(Engine):
    """festival with Debian's English voices: kal_diphone (festvox-kallpc16k), ked_diphone
    (festvox-kdlpc16k), cmu_us_slt_arctic_hts (festvox-us-slt-hts). Diphone voices: speed by
    Duration_Stretch, pitch by the intonation model's target F0 mean. HTS: speed by the engine's
    ``-r``; pitch with sox. One festival process per utterance (about 0.4 s of start-up)."""

    name, binary = "festival", "festival"
    packages = ("festival", "festvox-kallpc16k", "festvox-kdlpc16k", "festvox-us-slt-hts")
    fast = False
    KINDS = {"kal_diphone": "diphone", "ked_diphone": "diphone", "cmu_us_slt_arctic_hts": "hts"}
    VOICE_DIRS = ("/usr/share/festival/voices/english", "/usr/share/festival/voices/us")

    def voices(self) -> list[str]:
        return list(self.KINDS)

    def missing(self) -> Optional[str]:
        why = super().missing()
        if why:
            return why
        lacking = [v for v in self.voices() if not any(Path(d, v).is_dir() for d in self.VOICE_DIRS)]
        return (f"festival lacks voices {', '.join(lacking)} (apt-get install {' '.join(self.packages[1:])})"
                if lacking else None)

    def speak(self, text: str, voice: str, speed: float = 1.0, pitch: float = 1.0, seed: int = 0) -> np.ndarray:
        kind = self.KINDS[voice]
        with tempfile.TemporaryDirectory() as d:
            wav = os.path.join(d, "out.wav")
            lines = [f"(voice_{voice})"]
            if kind == "diphone":
                lines += [f"(Parameter.set 'Duration_Stretch (/ (Parameter.get 'Duration_Stretch) {speed:.4f}))",
                          f"(set! int_lr_params (cons (list 'target_f0_mean (* {pitch:.4f} (cadr (assoc "
                          "'target_f0_mean int_lr_params)))) int_lr_params))"]
            else:
                lines += [f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {speed:.4f}))))']
            safe = text.replace("\\", " ").replace('"', " ")
            lines += [f'(set! utt (utt.synth (Utterance Text "{safe}")))', f"(utt.save.wave utt \"{wav}\" 'riff)"]
            script = os.path.join(d, "say.scm")
            Path(script).write_text("\n".join(lines) + "\n")
            _run(["festival", "-b", script], f"festival voice {voice}", " ".join(self.packages))
            if not os.path.exists(wav):
                raise SynthError(f"festival voice {voice} wrote no audio")
            audio = load_audio(wav, SAMPLE_RATE)
        return _pitch_by_sox(audio, pitch) if kind == "hts" else audio


# Adding an engine is one entry here (and its Debian packages in the Makefile's SYSTEM_PACKAGES).
ENGINES: dict[str, Engine] = {e.name: e for e in (EspeakNG(), Flite(), Festival())}
DEFAULT_ENGINES = ("espeak-ng", "flite", "festival")


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng with its own units (words/min, 0-99): the interface before engines were added."""
    return ENGINES["espeak-ng"].speak(text, voice, speed / 175, pitch / 50)


def voice_id(engine: str, voice: str) -> str:
    """How summaries name a voice: espeak-ng's bare (as corpora always did), others engine:voice."""
    return voice if engine == "espeak-ng" else f"{engine}:{voice}"


# ---------------------------------------------------------------------------- voices and audio
@dataclass(frozen=True)
class Rendering:
    """Everything that decides one utterance's audio. speed/pitch: factors of the voice's own
    (espeak-ng: 1.0 = 175 words/min and pitch 50). The legacy augmentation's fields come next;
    ``chain`` is the full augmentation's plan (training.augment)."""

    text: str
    voice: str
    speed: float
    pitch: float
    gain_db: float = 0.0
    snr_db: Optional[float] = None
    noise: str = "white"      # "white" | "pink"
    reverb_rt60: float = 0.0  # seconds, 0 = dry
    telephone: bool = False
    engine: str = "espeak-ng"
    chain: tuple = ()


def voice_settings() -> list[str]:
    return [a + v for a in ACCENTS for v in VARIANTS]


def split_voices(seed: int, held_out: float, voices: Optional[Sequence[str]] = None,
                 salt: str = "") -> tuple[list[str], list[str]]:
    """(train voices, dev/test voices) of one engine; espeak-ng's without a salt, as always."""
    voices = list(voices) if voices is not None else voice_settings()
    rng = random.Random(f"{seed}/{salt}" if salt else seed)
    rng.shuffle(voices)
    n = max(1, int(round(len(voices) * held_out)))
    if n >= len(voices):
        n = len(voices) - 1 if len(voices) > 1 else 0
    return sorted(voices[n:]), sorted(voices[:n])


def plan_rendering(text: str, voices: Sequence[str], rng: random.Random, augment: bool) -> Rendering:
    """The legacy plan of one espeak-ng utterance (the draws of the corpus before engines were added)."""
    return plan_legacy(text, {"espeak-ng": list(voices)}, rng, augment)


def _pick_voice(voices: dict[str, list[str]], rng: random.Random) -> tuple[str, str]:
    engines = [e for e in voices if voices[e]]
    engine = engines[0] if len(engines) == 1 else rng.choice(engines)  # one engine: no draw (legacy)
    return engine, rng.choice(list(voices[engine]))


def plan_legacy(text: str, voices: dict[str, list[str]], rng: random.Random, augment: bool) -> Rendering:
    noisy = augment and rng.random() < 0.6
    engine, voice = _pick_voice(voices, rng)
    speed, pitch = ENGINES[engine].prosody(rng)
    return Rendering(
        text=text, voice=voice, speed=speed, pitch=pitch,
        gain_db=rng.uniform(-12, 3) if augment else 0.0,
        snr_db=rng.uniform(8, 35) if noisy else None, noise=rng.choice(["white", "pink"]),
        reverb_rt60=rng.uniform(0.1, 0.5) if augment and rng.random() < 0.25 else 0.0,
        telephone=augment and rng.random() < 0.15, engine=engine,
    )


def plan_full(text: str, voices: dict[str, list[str]], rng: random.Random, augment: bool,
              babble_texts: Sequence[str]) -> Rendering:
    from training.augment import plan_chain

    engine, voice = _pick_voice(voices, rng)
    speed, pitch = ENGINES[engine].prosody(rng)
    fast = {e: v for e, v in voices.items() if v and ENGINES[e].fast}

    def babble_pool(r: random.Random) -> list:
        if not fast or not babble_texts:
            return []
        talkers = []
        for _ in range(r.randint(3, 6)):
            e, v = _pick_voice(fast, r)
            s, p = ENGINES[e].prosody(r)
            talkers.append([e, v, r.choice(babble_texts), s, p])
        return talkers

    chain = tuple(plan_chain(rng, babble_pool)) if augment else ()
    return Rendering(text=text, voice=voice, speed=speed, pitch=pitch, engine=engine, chain=chain)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    x = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return x / (np.std(x) + 1e-9)


def augment(audio: np.ndarray, r: Rendering, seed: int) -> np.ndarray:
    """The legacy augmentation (gain, white/pink noise, a little reverb, telephone band)."""
    rng = np.random.default_rng(seed)
    x = audio.astype(np.float64)
    if r.reverb_rt60 > 0:  # exponentially decaying noise tail: a small room
        n = int(r.reverb_rt60 * SAMPLE_RATE)
        ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)
        ir[0] = 1.0 / 0.3
        wet = np.fft.irfft(np.fft.rfft(x, len(x) + n) * np.fft.rfft(ir, len(x) + n), len(x) + n)[: len(x)]
        x = wet * (np.abs(x).max() / (np.abs(wet).max() + 1e-9))
    if r.telephone:  # 300-3400 Hz band
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(len(x), 1.0 / SAMPLE_RATE)
        spec[(f < 300) | (f > 3400)] = 0
        x = np.fft.irfft(spec, len(x))
    if r.snr_db is not None:
        noise = _pink(len(x), rng) if r.noise == "pink" else rng.standard_normal(len(x))
        p_sig = np.mean(x ** 2) + 1e-12
        x = x + noise * np.sqrt(p_sig / (10 ** (r.snr_db / 10)) / (np.mean(noise ** 2) + 1e-12))
    x = x * 10 ** (r.gain_db / 20)
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x.astype(np.float32)


def _talkers(spec: list) -> list[np.ndarray]:
    return [ENGINES[e].speak(t, v, s, p) for e, v, t, s, p in spec]


def synthesize(r: Rendering, seed: int) -> np.ndarray:
    """One utterance's samples (float32, 16 kHz): the engine, then its augmentation."""
    from training.augment import apply_chain

    audio = ENGINES[r.engine].speak(r.text, r.voice, r.speed, r.pitch, seed)
    if r.chain:
        return apply_chain(audio, r.chain, seed, talkers=_talkers)
    return augment(audio, r, seed)


def render(job: tuple[int, Rendering, str, int]) -> tuple[int, int, Optional[str]]:
    """Worker: synthesize one utterance to 16-bit 16 kHz WAV; (index, samples, error)."""
    index, r, path, seed = job
    try:
        if os.path.exists(path):  # resuming: files appear only complete (written, then renamed)
            return index, sf.info(path).frames, None
        audio = synthesize(r, seed)
        part = path + ".part"
        sf.write(part, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(part, path)
        return index, len(audio), None
    except Exception as e:  # reported, skipped: one bad utterance must not stop the corpus
        return index, 0, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------- corpus
@dataclass
class Plan:
    """The whole corpus before any audio: per utterance (split, path, rendering, seed)."""

    jobs: list
    meta: list
    info: dict


def _record(path: Path, out_dir: Path, r: Rendering, seed: int) -> dict:
    return json.loads(json.dumps({"path": str(path.relative_to(out_dir)), **asdict(r), "seed": seed}))


def _same_plan(old: dict, new: dict) -> bool:
    """Whether a file recorded with ``old`` is the one ``new`` plans. Records written before
    engines were added hold espeak-ng's own units and fewer fields: compare what they have."""
    old = dict(old)
    if "engine" not in old:
        old["speed"], old["pitch"] = old["speed"] / 175, old["pitch"] / 50
    return all(new.get(k) == v for k, v in old.items())


def plan_corpus(out_dir: Path, *, num_train: int, num_dev: int, num_test: int, seed: int = 0,
                held_out_voices: float = 0.15, augment_share: Optional[float] = None, engines: Sequence[str] = ("espeak-ng",),
                held_out_engine: Optional[str] = None, num_test_heldout: Optional[int] = None,
                num_unlabeled: int = 0, augmentation: str = "auto", text_sources: Sequence[Path] = (),
                text_builtin: Sequence[str] = ("fortunes",)) -> Plan:
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise SynthError(f"unknown engine(s) {', '.join(unknown)}; engines: {', '.join(ENGINES)}")
    engines = [e for e in ENGINES if e in engines]  # the registry's order: the flag's order does not matter
    if held_out_engine and held_out_engine not in ENGINES:
        raise SynthError(f"unknown held-out engine {held_out_engine}; engines: {', '.join(ENGINES)}")
    held = held_out_engine if held_out_engine in engines else None
    train_engines = [e for e in engines if e != held]
    if not train_engines:
        raise SynthError(f"{held} is held out and no other engine is left to train on")
    if augmentation == "auto":
        augmentation = "legacy" if engines == ["espeak-ng"] else "full"
    if augmentation not in ("legacy", "full"):
        raise SynthError(f"augmentation is auto, legacy or full, not {augmentation}")
    if augment_share is None:
        augment_share = 0.5 if augmentation == "legacy" else 0.8

    sentences = collect_sentences(text_sources, text_builtin)
    rng = random.Random(seed)
    order = sentences[:]
    rng.shuffle(order)
    eval_n = num_dev + num_test
    n_heldout = (num_test if num_test_heldout is None else num_test_heldout) if held else 0
    rest = len(order) - eval_n - n_heldout
    if rest < 1:
        raise SynthError(f"only {len(order)} usable sentences for {eval_n + n_heldout} evaluation utterances")
    # Reserved sentences come from the end of the shuffled order, so the training pool's first
    # sentences (and so the training files) stay the same whatever is reserved.
    n_unl = min(num_unlabeled, rest // 2)
    if num_unlabeled and not n_unl:
        raise SynthError("no sentences left for unlabeled utterances")
    tail = order[::-1]
    splits_text = {"dev": order[:num_dev], "test": order[num_dev:eval_n],
                   "test_heldout_engine": tail[:n_heldout]}
    unl_pool = tail[n_heldout:n_heldout + n_unl]
    train_pool = order[eval_n:len(order) - n_heldout - n_unl]
    # More utterances than sentences: repeat sentences with other voices and settings.
    splits_text["train"] = [train_pool[i % len(train_pool)] for i in range(num_train)]
    # Babble talkers speak training sentences from the part of the pool no reservation can take.
    babble_texts = order[eval_n:eval_n + rest - rest // 2]
    splits_text["unlabeled"] = [unl_pool[i % len(unl_pool)] for i in range(num_unlabeled)] if n_unl else []

    train_voices: dict[str, list[str]] = {}
    eval_voices: dict[str, list[str]] = {}
    for e in train_engines:
        t, v = split_voices(seed, held_out_voices, ENGINES[e].voices(), salt="" if e == "espeak-ng" else e)
        train_voices[e], eval_voices[e] = t, v
    split_voice = {"train": train_voices, "unlabeled": train_voices, "dev": eval_voices, "test": eval_voices,
                   "test_heldout_engine": {held: ENGINES[held].voices()} if held else {}}
    need = {e for s in SPLITS if splits_text[s] for e, vs in split_voice[s].items() if vs}
    for e in sorted(need):
        why = ENGINES[e].missing()
        if why:
            raise SynthError(f"engine {e}: {why}")

    jobs, meta = [], []
    for split in SPLITS:
        augmentable = split in ("train", "unlabeled")
        for k, text in enumerate(splits_text[split]):
            urng = random.Random(f"{seed}/{split}/{k}")
            aug = augmentable and urng.random() < augment_share
            if augmentation == "legacy":
                r = plan_legacy(text, split_voice[split], urng, aug)
            else:
                r = plan_full(text, split_voice[split], urng, aug, babble_texts)
            path = out_dir / "audio" / split / f"{split}_{k:06d}.wav"
            jobs.append((len(jobs), r, str(path), urng.randrange(2 ** 31)))
            meta.append((split, path, r))
    info = {"seed": seed, "engines": engines, "held_out_engine": held, "augmentation": augmentation,
            "augment_share": augment_share, "text_sources": [str(p) for p in text_sources] or sorted(set(text_builtin)),
            "sentences_available": len(sentences),
            "sentence_pools": {"train": len(train_pool), "dev": num_dev, "test": num_test,
                               "test_heldout_engine": n_heldout, "unlabeled": n_unl},
            "train_voices": [voice_id(e, v) for e in train_voices for v in train_voices[e]],
            "held_out_voices": [voice_id(e, v) for e in eval_voices for v in eval_voices[e]],
            "held_out_engine_voices": [voice_id(held, v) for v in ENGINES[held].voices()] if held else []}
    return Plan(jobs, meta, info)


def _split_stats(utts: list, renderings: list[Rendering]) -> dict:
    from training.augment import summarize

    aug: Counter = Counter()
    augmented = 0
    for r in renderings:
        labels = summarize(r.chain) if r.chain else [
            lab for lab, on in (("gain", r.gain_db != 0.0), (f"noise:{r.noise}", r.snr_db is not None),
                                ("reverb", r.reverb_rt60 > 0), ("band:telephone", r.telephone)) if on]
        augmented += bool(labels)
        aug.update(labels)
    return {"utterances": len(utts), "sentences": len(set(r.text for r in renderings)),
            "hours": round(sum(u.num_samples for u in utts) / SAMPLE_RATE / 3600, 3),
            "engines": dict(sorted(Counter(r.engine for r in renderings).items())),
            "voices": dict(sorted(Counter(voice_id(r.engine, r.voice) for r in renderings).items())),
            "augmented": augmented, "augmentations": dict(sorted(aug.items()))}


def synthesize_corpus(out_dir: Path, *, num_train: int, num_dev: int, num_test: int, seed: int = 0,
                      held_out_voices: float = 0.15, augment_share: Optional[float] = None, workers: int = 0,
                      text_sources: Sequence[Path] = (), progress: bool = True,
                      engines: Sequence[str] = ("espeak-ng",), held_out_engine: Optional[str] = "festival",
                      num_test_heldout: Optional[int] = None, num_unlabeled: int = 0,
                      augmentation: str = "auto", text_builtin: Sequence[str] = ("fortunes",)) -> dict:
    """Render (or finish rendering) a corpus; returns the summary written to corpus.json. The
    defaults of this function are the espeak-ng corpus as it always was; the command's default
    engines are all three (:data:`DEFAULT_ENGINES`)."""
    out_dir = Path(out_dir).resolve()
    plan = plan_corpus(out_dir, num_train=num_train, num_dev=num_dev, num_test=num_test, seed=seed,
                       held_out_voices=held_out_voices, augment_share=augment_share, engines=engines,
                       held_out_engine=held_out_engine, num_test_heldout=num_test_heldout,
                       num_unlabeled=num_unlabeled, augmentation=augmentation, text_sources=text_sources,
                       text_builtin=text_builtin)
    splits = [s for s in SPLITS if s in ("train", "dev", "test") or any(m[0] == s for m in plan.meta)]
    # Resuming: a file whose recorded plan differs from this one (another command wrote it) is
    # rendered again. Then the plan is recorded before any audio, so an interrupted run is checked too.
    replanned = 0
    for split in splits:
        (out_dir / "audio" / split).mkdir(parents=True, exist_ok=True)
        rec_path = out_dir / f"{split}.renderings.jsonl"
        old = {}
        if rec_path.exists():
            for line in rec_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    d = json.loads(line)
                    old[d["path"]] = d
        records = []
        for (_, r, path, useed), (s, p, _) in zip(plan.jobs, plan.meta):
            if s != split:
                continue
            rec = _record(p, out_dir, r, useed)
            prev = old.get(rec["path"])
            if prev is not None and p.exists() and not _same_plan(prev, rec):
                p.unlink()
                replanned += 1
            records.append(rec)
        if records or not rec_path.exists():
            with open(rec_path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(d) + "\n" for d in records)

    workers = workers or max(1, os.cpu_count() or 1)
    summary_path = out_dir / "corpus.json"
    # Rendering's CPU and wall time, added up over the starts that finished a corpus.
    earlier = json.loads(summary_path.read_text()).get("render_cost") if summary_path.exists() else None
    cost = StageCost(earlier)
    results: dict[int, tuple[int, Optional[str]]] = {}
    from tqdm import tqdm

    todo = []
    for job in plan.jobs:  # resuming: files appear only complete (written, then renamed)
        if os.path.exists(job[2]):
            results[job[0]] = (sf.info(job[2]).frames, None)
        else:
            todo.append(job)
    bar = tqdm(total=len(plan.jobs), initial=len(results), unit="utt", desc="synth",
               disable=not (progress and sys.stderr.isatty()))
    if todo and (workers == 1 or len(todo) == 1):
        for job in todo:
            index, n, err = render(job)
            results[index] = (n, err)
            bar.update(1)
    elif todo:
        with get_context("spawn").Pool(min(workers, len(todo))) as pool:
            for index, n, err in pool.imap_unordered(render, todo, chunksize=8 if len(todo) > 64 * workers else 1):
                results[index] = (n, err)
                bar.update(1)
    bar.close()

    from training.manifest import Utterance, write_split

    summary: dict = {**plan.info, "splits": {}, "failed": [], "rerendered_for_a_changed_plan": replanned,
                     "render_cost": {**cost.total(), "workers": workers, "rendered_now": len(todo)}}
    for split in splits:
        utts, details, rends = [], [], []
        for (index, r, _, useed), (s, path, _) in zip(plan.jobs, plan.meta):
            if s != split:
                continue
            n, err = results[index]
            if err:
                summary["failed"].append({"path": str(path), "error": err})
                continue
            utts.append(Utterance(path, n, None if split == "unlabeled" else r.text))
            details.append(_record(path, out_dir, r, useed))
            rends.append(r)
        write_split(out_dir, split, utts, "tsv", out_dir / "audio")
        write_split(out_dir, split, utts, "jsonl", None)
        with open(out_dir / f"{split}.renderings.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in details)
        summary["splits"][split] = _split_stats(utts, rends)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def list_voices() -> str:
    lines = []
    for name, e in ENGINES.items():
        why = e.missing()
        lines.append(f"{name}: {'ok' if not why else 'MISSING: ' + why} ({len(e.voices())} voices)")
        lines.append("  " + " ".join(e.voices()))
    return "\n".join(lines)


def _csv(values: Sequence[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def cmd_synth(args: argparse.Namespace) -> int:
    if getattr(args, "list_voices", False):
        print(list_voices())
        return 0
    if not args.out:
        print("w2v data synth: --out DIR is required", file=sys.stderr)
        return 2
    explicit = args.held_out_engine is not None
    held_arg = args.held_out_engine if explicit else "festival"
    held = None if held_arg.lower() in ("none", "") else held_arg
    summary = synthesize_corpus(Path(args.out), num_train=args.train, num_dev=args.dev, num_test=args.test,
                                seed=args.seed, held_out_voices=args.held_out_voices, augment_share=args.augment,
                                workers=args.workers, text_sources=[Path(t) for t in args.text],
                                engines=_csv(args.engines or [",".join(DEFAULT_ENGINES)]), held_out_engine=held,
                                num_test_heldout=args.test_heldout, num_unlabeled=args.unlabeled,
                                augmentation=args.augmentation, text_builtin=_csv(args.text_source) or ["fortunes"])
    for f in summary["failed"]:
        print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    if explicit and held and held not in summary["engines"]:
        print(f"note: the held-out engine {held} is not among --engines: no test_heldout_engine split", file=sys.stderr)
    if args.train > summary["sentence_pools"]["train"]:
        print(f"note: {args.train} training utterances over {summary['sentence_pools']['train']} sentences: "
              "sentences repeat with other voices", file=sys.stderr)
    if summary["rerendered_for_a_changed_plan"]:
        print(f"note: {summary['rerendered_for_a_changed_plan']} files in {args.out} were planned differently "
              "by an earlier command and were rendered again", file=sys.stderr)
    print(f"engines: {', '.join(summary['engines'])} (held out: {summary['held_out_engine'] or 'none'}); "
          f"augmentation: {summary['augmentation']} on {summary['augment_share']:.0%} of train/unlabeled")
    for split, s in summary["splits"].items():
        print(f"{split}: {s['utterances']} utterances, {s['sentences']} sentences, {s['hours']} h")
    return 1 if summary["failed"] and not any(s["utterances"] for s in summary["splits"].values()) else 0
