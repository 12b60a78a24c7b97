"""One utterance from its plan: the engine, then its augmentation (the legacy set here, the full
chain in training.augment), written as 16-bit 16 kHz WAV."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import soundfile as sf

from training.synth.engines import ENGINES
from training.synth.planning import Rendering
from w2v_serve.audio import SAMPLE_RATE


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
