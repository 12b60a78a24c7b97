"""Small real speech corpora for training tests: espeak-ng sentences written as 16 kHz WAV."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SENTENCES = [
    "the cat sat on the mat",
    "a big dog ran home",
    "she sells sea shells",
    "open the red door now",
    "we like green tea",
    "time to go to bed",
    "birds fly over the hills",
    "my phone is on the desk",
]
VOICES = ["en-us+f3", "en-us+m3", "en-gb+f2", "en-us+m7"]


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def write_corpus(directory: Path, sentences=SENTENCES, voices=("en-us",), speed: int = 160,
                 name: str = "train") -> Path:
    """One WAV per (sentence, voice) plus fairseq train.tsv/.ltr/.wrd; returns the .tsv path."""
    from training.manifest import words_to_ltr

    directory.mkdir(parents=True, exist_ok=True)
    rows, words = [], []
    for i, text in enumerate(sentences):
        for j, voice in enumerate(voices):
            wav = espeak(text, directory / f"{name}_{i}_{j}.wav", voice, speed)
            rows.append(f"{wav.name}\t{sf.info(str(wav)).frames * 16000 // sf.info(str(wav)).samplerate}")
            words.append(text.upper())
    tsv = directory / f"{name}.tsv"
    tsv.write_text(f"{directory}\n" + "".join(r + "\n" for r in rows))
    (directory / f"{name}.wrd").write_text("".join(w + "\n" for w in words))
    (directory / f"{name}.ltr").write_text("".join(words_to_ltr(w) + "\n" for w in words))
    return tsv


def write_speech_like(directory: Path, count: int, seconds: float, seed: int = 0) -> Path:
    """Unlabeled 'speech-like' audio: espeak-ng sentences in several voices and speeds, concatenated
    and cut into equal clips (structured, varied, and quick to make)."""
    from training.manifest import words_to_ltr  # noqa: F401  (same helpers as write_corpus)

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pieces = []
    for i in range(count):
        text = " ".join(SENTENCES[k] for k in rng.choice(len(SENTENCES), 2, replace=False))
        wav = espeak(text, directory / f"tmp_{i}.wav", VOICES[i % len(VOICES)], int(rng.integers(140, 200)),
                     int(rng.integers(30, 70)))
        audio, sr = sf.read(str(wav), dtype="float32")
        wav.unlink()
        pieces.append((audio, sr))
    rows = []
    n = int(seconds * 16000)
    for i, (audio, sr) in enumerate(pieces):
        import soxr

        audio = soxr.resample(audio, sr, 16000) if sr != 16000 else audio
        audio = np.pad(audio, (0, max(0, n - len(audio))))[:n]
        path = directory / f"clip_{i}.wav"
        sf.write(str(path), audio, 16000)
        rows.append(f"{path.name}\t{n}")
    tsv = directory / "train.tsv"
    tsv.write_text(f"{directory}\n" + "".join(r + "\n" for r in rows))
    return tsv


# A tiny wav2vec 2.0 (~0.6 M parameters): the `small` recipe's mechanics at a size that trains in
# seconds on 2 cores.
TINY_CONV = "[[128,10,5],[128,3,2],[128,3,2],[128,3,2],[128,3,2],[128,2,2],[128,2,2]]"
TINY_MODEL = [
    f"model.conv_layers={TINY_CONV}", "model.embed_dim=128", "model.num_heads=4", "model.ffn_dim=256",
    "model.num_layers=2", "model.pos_conv_kernel=32", "model.pos_conv_groups=8", "model.num_codevectors=32",
    "model.codevector_dim=64", "model.final_dim=64",
]
