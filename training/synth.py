"""A synthetic English speech corpus from espeak-ng (``w2v data synth``): deterministic, offline.

Text: English sentences of 4-14 plain words from Debian's ``fortunes`` collections (about 16 k
distinct sentences once punctuation is stripped), or any text files given with ``--text``.
Speech: espeak-ng in several English accents (en-us, en-gb, Scottish, Received Pronunciation,
Lancaster, West Midlands, Caribbean) and voice variants (male, female, klatt), with random speed
and pitch. Augmentation: gain, additive white/pink noise at a chosen SNR, a little room reverb,
telephone band-limiting.

Splits: sentences are split first (train / dev / test never share a sentence), and a share of
the (accent, variant) voice settings is held out: dev and test use only held-out settings, train
never does. Everything is a function of ``--seed`` and the utterance index, so the same command
gives the same corpus (espeak-ng's version aside), and an interrupted run resumes: files already
written (each appears only once complete) are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import soundfile as sf

from w2v_serve.audio import SAMPLE_RATE, load_audio

FORTUNES_DIR = Path("/usr/share/games/fortunes")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
            "+klatt", "+klatt2", "+klatt3")
MIN_WORDS, MAX_WORDS = 4, 14
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")


class SynthError(RuntimeError):
    """espeak-ng missing, or no usable text."""


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
    """The quotations of every plain fortune file (not the .dat indexes, not the offensive set)."""
    if not directory.is_dir():
        raise SynthError(f"{directory}: Debian's fortunes are not installed (apt-get install fortunes)")
    for f in sorted(directory.iterdir()):
        if f.suffix or not f.is_file():
            continue
        text = f.read_text(encoding="utf-8", errors="ignore")
        yield from text.split("\n%\n")


def collect_sentences(sources: Sequence[Path] = ()) -> list[str]:
    """Distinct normalized sentences, in a stable order."""
    blocks: Iterable[str]
    if sources:
        blocks = (p.read_text(encoding="utf-8", errors="ignore") for p in sources)
    else:
        blocks = fortune_blocks()
    seen: dict[str, None] = {}
    for block in blocks:
        for lines in (block.split("\n\n") if sources else [block]):
            for s in split_sentences(lines):
                n = normalize_sentence(s)
                if n:
                    seen.setdefault(n, None)
    return sorted(seen)


# ---------------------------------------------------------------------------- voices and audio
@dataclass(frozen=True)
class Rendering:
    """Everything that decides one utterance's audio."""

    text: str
    voice: str            # accent + variant, e.g. "en-gb-scotland+f3"
    speed: int            # words per minute
    pitch: int            # 0-99
    gain_db: float
    snr_db: Optional[float]
    noise: str            # "white" | "pink"
    reverb_rt60: float    # seconds, 0 = dry
    telephone: bool


def voice_settings() -> list[str]:
    return [a + v for a in ACCENTS for v in VARIANTS]


def split_voices(seed: int, held_out: float) -> tuple[list[str], list[str]]:
    voices = voice_settings()
    rng = random.Random(seed)
    rng.shuffle(voices)
    n = max(1, int(round(len(voices) * held_out)))
    return sorted(voices[n:]), sorted(voices[:n])


def plan_rendering(text: str, voices: Sequence[str], rng: random.Random, augment: bool) -> Rendering:
    noisy = augment and rng.random() < 0.6
    return Rendering(
        text=text, voice=rng.choice(list(voices)), speed=rng.randint(125, 205), pitch=rng.randint(20, 80),
        gain_db=rng.uniform(-12, 3) if augment else 0.0,
        snr_db=rng.uniform(8, 35) if noisy else None, noise=rng.choice(["white", "pink"]),
        reverb_rt60=rng.uniform(0.1, 0.5) if augment and rng.random() < 0.25 else 0.0,
        telephone=augment and rng.random() < 0.15,
    )


def speak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        try:
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", tmp.name, text],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise SynthError("espeak-ng is not installed (apt-get install espeak-ng)") from None
        except subprocess.CalledProcessError as e:
            raise SynthError(f"espeak-ng failed for voice {voice}: {e.stderr.decode(errors='ignore').strip()}") from e
        return load_audio(tmp.name, SAMPLE_RATE)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    x = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return x / (np.std(x) + 1e-9)


def augment(audio: np.ndarray, r: Rendering, seed: int) -> np.ndarray:
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


def render(job: tuple[int, Rendering, str, int]) -> tuple[int, int, Optional[str]]:
    """Worker: synthesize one utterance to 16-bit 16 kHz WAV; (index, samples, error)."""
    index, r, path, seed = job
    try:
        if os.path.exists(path):  # resuming: files appear only complete (written, then renamed)
            return index, sf.info(path).frames, None
        audio = augment(speak(r.text, r.voice, r.speed, r.pitch), r, seed)
        part = path + ".part"
        sf.write(part, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(part, path)
        return index, len(audio), None
    except Exception as e:  # reported, skipped: one bad utterance must not stop the corpus
        return index, 0, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------- corpus
def synthesize_corpus(out_dir: Path, *, num_train: int, num_dev: int, num_test: int, seed: int = 0,
                      held_out_voices: float = 0.15, augment_share: float = 0.5, workers: int = 0,
                      text_sources: Sequence[Path] = (), progress: bool = True) -> dict:
    out_dir = Path(out_dir).resolve()
    sentences = collect_sentences(text_sources)
    need = num_train + num_dev + num_test
    rng = random.Random(seed)
    order = sentences[:]
    rng.shuffle(order)
    eval_n = num_dev + num_test
    if len(order) < eval_n + 1:
        raise SynthError(f"only {len(order)} usable sentences for {need} utterances")
    splits_text = {"dev": order[:num_dev], "test": order[num_dev:eval_n]}
    train_pool = order[eval_n:]
    # More training utterances than sentences: repeat sentences with other voices and settings.
    splits_text["train"] = [train_pool[i % len(train_pool)] for i in range(num_train)]
    train_voices, eval_voices = split_voices(seed, held_out_voices)
    jobs, meta = [], []
    for split in ("train", "dev", "test"):
        (out_dir / "audio" / split).mkdir(parents=True, exist_ok=True)
        voices = train_voices if split == "train" else eval_voices
        for k, text in enumerate(splits_text[split]):
            index = len(jobs)
            urng = random.Random(f"{seed}/{split}/{k}")
            r = plan_rendering(text, voices, urng, augment=split == "train" and urng.random() < augment_share)
            path = out_dir / "audio" / split / f"{split}_{k:06d}.wav"
            jobs.append((index, r, str(path), urng.randrange(2 ** 31)))
            meta.append((split, path, r))
    workers = workers or max(1, os.cpu_count() or 1)
    results: dict[int, tuple[int, Optional[str]]] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="utt", desc="synth", disable=not (progress and sys.stderr.isatty()))
    with get_context("spawn").Pool(workers) as pool:
        for index, n, err in pool.imap_unordered(render, jobs, chunksize=8):
            results[index] = (n, err)
            bar.update(1)
    bar.close()

    from training.manifest import Utterance, write_split

    summary: dict = {"seed": seed, "sentences_available": len(sentences), "splits": {}, "failed": [],
                     "train_voices": train_voices, "held_out_voices": eval_voices}
    for split in ("train", "dev", "test"):
        utts, details = [], []
        for index, (s, path, r) in enumerate(meta):
            if s != split:
                continue
            n, err = results[index]
            if err:
                summary["failed"].append({"path": str(path), "error": err})
                continue
            utts.append(Utterance(path, n, r.text))
            details.append({"path": str(path.relative_to(out_dir)), **asdict(r)})
        write_split(out_dir, split, utts, "tsv", out_dir / "audio")
        write_split(out_dir, split, utts, "jsonl", None)
        with open(out_dir / f"{split}.renderings.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d) + "\n" for d in details)
        summary["splits"][split] = {"utterances": len(utts), "sentences": len(set(u.text for u in utts)),
                                    "hours": round(sum(u.num_samples for u in utts) / SAMPLE_RATE / 3600, 3)}
    (out_dir / "corpus.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def add_synth_parser(data_sub: argparse._SubParsersAction, handler) -> None:
    p = data_sub.add_parser("synth", help="synthesize an English speech corpus with espeak-ng")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--train", type=int, default=12000, help="training utterances (default 12000)")
    p.add_argument("--dev", type=int, default=300)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out-voices", type=float, default=0.15,
                   help="share of (accent, variant) voice settings kept for dev/test only")
    p.add_argument("--augment", type=float, default=0.5, help="share of training utterances augmented")
    p.add_argument("--text", action="append", default=[], metavar="FILE",
                   help="text file(s) to take sentences from (default: Debian's fortunes)")
    p.add_argument("--workers", type=int, default=0, help="parallel espeak-ng workers (default: all cores)")
    p.set_defaults(func=handler("training.synth:cmd_synth"))


def cmd_synth(args: argparse.Namespace) -> int:
    summary = synthesize_corpus(Path(args.out), num_train=args.train, num_dev=args.dev, num_test=args.test,
                                seed=args.seed, held_out_voices=args.held_out_voices, augment_share=args.augment,
                                workers=args.workers, text_sources=[Path(t) for t in args.text])
    for f in summary["failed"]:
        print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    for split, s in summary["splits"].items():
        print(f"{split}: {s['utterances']} utterances, {s['sentences']} sentences, {s['hours']} h")
    return 1 if summary["failed"] and not any(s["utterances"] for s in summary["splits"].values()) else 0
