"""Augmentations that move synthetic speech toward real recordings (``w2v data synth --augmentation full``).

Each augmentation is one small function ``f(audio, ..., rng) -> audio`` on float 16 kHz mono arrays,
plus a planner that draws its parameters from a ``random.Random``. :func:`plan_chain` picks, for one
utterance, which augmentations apply and with which parameters (a JSON-able list of
``[name, params]``); :func:`apply_chain` runs such a list. Everything is a function of the plan
and a seed, so the same plan gives the same samples (sox runs in repeatable mode, without dither).

The augmentations, in the order a chain applies them (a talker, a room, a microphone, noise, a
channel):

- ``speed``: speed perturbation by resampling (tempo and pitch together), factor 0.9-1.1 (sox ``speed``).
- ``pitch``: pitch shift without changing the tempo, +-300 cents (sox ``pitch``, WSOLA).
- ``formant``: vocal-tract-length warping: the spectral envelope (cepstrally smoothed, per 32 ms
  frame) is warped along frequency by alpha 0.88-1.12 (the piecewise-linear VTLP warp, Nyquist
  fixed) while the harmonics, and so F0, stay where they are.
- ``rir``: a synthesized room impulse response: a direct path plus exponentially decaying noise
  (RT60 0.15-0.9 s, direct-to-reverberant ratio -3..+12 dB, tail darker than its onset); the
  output keeps the reverberant tail.
- ``eq``: one to three peaking-EQ bands (sox ``equalizer``, 150-6000 Hz, +-10 dB).
- ``band``: band limits: a high-pass (80-300 Hz), a low-pass (3-7 kHz), or the telephone band
  300-3400 Hz (sox ``sinc``: steep FIR filters).
- ``noise``: white, pink, brown, or babble (3-6 other sentences, spoken by other training voices
  and mixed) noise at a chosen SNR (3-30 dB, measured over the whole utterance).
- ``codec``: a round trip through GSM 06.10, mu-law or A-law at 8 kHz, AMR-NB (4.75-12.2 kbit/s)
  or low-bitrate Ogg Vorbis (sox), back to 16 kHz.
- ``gain``: a level change (-12..+3 dB); the result is kept below full scale.
"""

from __future__ import annotations

import math
import random
import subprocess
from typing import Callable, Optional, Sequence

import numpy as np

SR = 16000


class AugmentError(RuntimeError):
    """sox missing or failing."""


# ---------------------------------------------------------------------------- sox
def sox(audio: np.ndarray, effects: Sequence[str], *, out_type: Sequence[str] = ("-t", "f32"),
        out_rate: int = SR) -> np.ndarray:
    """Run sox effects on a float 16 kHz mono signal (raw float32 through pipes); float32 back at
    ``out_rate``. ``-R`` (repeatable) and ``-D`` (no dither) keep it deterministic."""
    x = np.ascontiguousarray(audio, dtype=np.float32)
    cmd = ["sox", "-R", "-D", "-V1", "-t", "f32", "-r", str(SR), "-c", "1", "-",
           *out_type, "-r", str(out_rate), "-c", "1", "-", *effects]
    try:
        p = subprocess.run(cmd, input=x.tobytes(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    except FileNotFoundError:
        raise AugmentError("sox is not installed (apt-get install sox)") from None
    except subprocess.CalledProcessError as e:
        raise AugmentError(f"sox {' '.join(effects)}: {e.stderr.decode(errors='ignore').strip()}") from e
    return np.frombuffer(p.stdout, dtype=np.float32).copy()


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad to ``n`` samples (codecs pad to whole frames)."""
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


# ---------------------------------------------------------------------------- the augmentations
def speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Resampling speed perturbation: duration / factor, every frequency x factor."""
    return sox(audio, ["speed", f"{factor:.6f}", "rate", "-h", str(SR)])


def pitch(audio: np.ndarray, cents: float) -> np.ndarray:
    """Pitch shift by ``cents`` keeping the duration (sox WSOLA)."""
    return _fit(sox(audio, ["pitch", f"{cents:.3f}"]), len(audio))


def _stft(x: np.ndarray, n_fft: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    win = np.hanning(n_fft + 1)[:-1]
    pad = np.pad(x, (n_fft, n_fft + hop))
    frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop] * win
    return np.fft.rfft(frames, axis=1), win


def _istft(spec: np.ndarray, win: np.ndarray, hop: int, n: int) -> np.ndarray:
    n_fft = len(win)
    frames = np.fft.irfft(spec, n_fft, axis=1) * win
    out = np.zeros(hop * (len(frames) - 1) + n_fft)
    norm = np.zeros_like(out)
    for i, fr in enumerate(frames):
        out[i * hop:i * hop + n_fft] += fr
        norm[i * hop:i * hop + n_fft] += win ** 2
    out /= np.maximum(norm, 1e-8)
    return out[n_fft:n_fft + n]


def vtlp_warp(freqs: np.ndarray, alpha: float, f_hi: float = 4800.0, nyquist: float = SR / 2) -> np.ndarray:
    """The piecewise-linear VTLP frequency warp (Jaitly & Hinton 2013): f -> alpha f up to a
    boundary, then a straight line to the (fixed) Nyquist frequency."""
    b = f_hi * min(alpha, 1.0) / alpha
    return np.where(freqs <= b, freqs * alpha,
                    nyquist - (nyquist - f_hi * min(alpha, 1.0)) / (nyquist - b) * (nyquist - freqs))


def spectral_envelope(mag: np.ndarray, lifter: int = 30) -> np.ndarray:
    """Cepstrally smoothed log-magnitude envelope of each frame (rows of an rfft magnitude)."""
    n_fft = 2 * (mag.shape[-1] - 1)
    ceps = np.fft.irfft(np.log(mag + 1e-9), n_fft, axis=-1)
    ceps[..., lifter:n_fft - lifter + 1] = 0
    return np.fft.rfft(ceps, n_fft, axis=-1).real


def formant(audio: np.ndarray, alpha: float, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Vocal-tract-length warping: each frame's spectral envelope moves along frequency by the
    VTLP warp with factor ``alpha`` (>1: formants up, a shorter vocal tract); the fine structure
    (harmonics, so F0) and the phases stay."""
    x = np.asarray(audio, dtype=np.float64)
    spec, win = _stft(x, n_fft, hop)
    mag = np.abs(spec)
    log_env = spectral_envelope(mag)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SR)
    warped_at = vtlp_warp(freqs, alpha)  # the envelope value at f moves to warped_at(f)
    new_env = np.stack([np.interp(freqs, warped_at, row) for row in log_env])
    gain = np.exp(np.clip(new_env - log_env, -6.0, 6.0))  # at most +-52 dB per bin
    return _istft(spec * gain, win, hop, len(x)).astype(np.float32)


def synth_rir(rt60: float, drr_db: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """A room impulse response: a unit direct path, a few milliseconds of gap, then Gaussian noise
    decaying by 60 dB in ``rt60`` seconds (its high frequencies decaying a little faster), scaled to
    a direct-to-reverberant energy ratio of ``drr_db``."""
    n = int(max(rt60, 0.05) * 1.2 * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-3.0 * math.log(10.0) * t / rt60)
    # darker as it decays: a one-pole low-pass whose cut-off falls along the tail, done as a blend
    # of the tail with its smoothed self
    smooth = np.convolve(tail, np.ones(4) / 4.0, mode="same")
    w = np.clip(t / rt60, 0.0, 1.0)
    tail = (1.0 - 0.5 * w) * tail + 0.5 * w * smooth
    onset = int(rng.uniform(0.002, 0.008) * sr)
    tail[:onset] = 0.0
    tail *= math.sqrt(10 ** (-drr_db / 10.0) / (np.sum(tail ** 2) + 1e-12))
    tail[0] = 1.0
    return tail


def fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:n]


def rir(audio: np.ndarray, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Reverberation by a synthesized room impulse response; the output keeps the tail (it is
    longer by the response's length) and the input's peak level."""
    x = np.asarray(audio, dtype=np.float64)
    wet = fft_convolve(x, synth_rir(rt60, drr_db, rng))
    return (wet * (np.abs(x).max() / (np.abs(wet).max() + 1e-12))).astype(np.float32)


def eq(audio: np.ndarray, bands: Sequence[Sequence[float]]) -> np.ndarray:
    """Peaking EQ: ``bands`` of (centre Hz, Q, gain dB)."""
    effects: list[str] = []
    for f, q, g in bands:
        effects += ["equalizer", f"{f:.1f}", f"{q:.3f}q", f"{g:.2f}"]
    return _fit(sox(audio, effects), len(audio))


def band(audio: np.ndarray, low: float = 0.0, high: float = 0.0) -> np.ndarray:
    """Band limits with steep FIR filters (sox ``sinc``): a high-pass at ``low`` Hz and/or a
    low-pass at ``high`` Hz (0: none); 300/3400 is the telephone band."""
    spec = (f"{low:.0f}" if low else "") + (f"-{high:.0f}" if high else "")
    if not spec:
        return np.asarray(audio, dtype=np.float32)
    return _fit(sox(audio, ["sinc", "-a", "80", "-t", "50", spec]), len(audio))


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white, pink (1/f power) or brown (1/f^2 power) noise."""
    x = rng.standard_normal(n)
    if kind != "white":
        spectrum = np.fft.rfft(x)
        f = np.maximum(np.fft.rfftfreq(n, 1.0 / SR), 20.0)  # no DC drift below 20 Hz
        spectrum /= f ** (0.5 if kind == "pink" else 1.0)
        x = np.fft.irfft(spectrum, n)
    x -= x.mean()
    return x / (x.std() + 1e-12)


def babble(n: int, talkers: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Several talkers at once: each looped to ``n`` samples from a random offset, levels equal."""
    out = np.zeros(n)
    for t in talkers:
        t = np.asarray(t, dtype=np.float64)
        if not len(t):
            continue
        t = t / (t.std() + 1e-12)
        reps = np.tile(t, n // len(t) + 2)
        start = int(rng.integers(0, len(t)))
        out += reps[start:start + n]
    out -= out.mean()
    return out / (out.std() + 1e-12)


def add_noise(audio: np.ndarray, snr_db: float, noise: np.ndarray) -> np.ndarray:
    """Add ``noise`` scaled so that signal power / noise power over the utterance is ``snr_db``."""
    x = np.asarray(audio, dtype=np.float64)
    p_sig = np.mean(x ** 2) + 1e-12
    p_noise = np.mean(noise ** 2) + 1e-12
    return (x + noise * math.sqrt(p_sig / p_noise / 10 ** (snr_db / 10.0))).astype(np.float32)


CODECS = {  # name -> (sox output options for the encoded stream, its sample rate)
    "gsm": (["-t", "gsm"], 8000),
    "mulaw": (["-t", "wav", "-e", "u-law"], 8000),
    "alaw": (["-t", "wav", "-e", "a-law"], 8000),
    "amr-nb": (["-t", "amr-nb"], 8000),
    "vorbis": (["-t", "ogg"], SR),
}


def codec(audio: np.ndarray, name: str, quality: float = 0.0) -> np.ndarray:
    """A round trip through a speech or low-bitrate codec: encode (at 8 kHz for the telephone
    codecs), decode back to 16 kHz float, same length. ``quality``: AMR-NB mode 0-7 or the Vorbis
    quality (-1 lowest)."""
    opts, rate = CODECS[name]
    x = np.ascontiguousarray(audio, dtype=np.float32)
    enc_opts = list(opts)
    if name in ("amr-nb", "vorbis"):
        enc_opts = ["-C", f"{quality:g}", *enc_opts]
    try:
        enc = subprocess.run(["sox", "-R", "-D", "-V1", "-t", "f32", "-r", str(SR), "-c", "1", "-",
                              *enc_opts, "-r", str(rate), "-c", "1", "-"],
                             input=x.tobytes(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True).stdout
        dec = subprocess.run(["sox", "-R", "-D", "-V1", *opts, "-",
                              "-t", "f32", "-r", str(SR), "-c", "1", "-"],
                             input=enc, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True).stdout
    except FileNotFoundError:
        raise AugmentError("sox is not installed (apt-get install sox)") from None
    except subprocess.CalledProcessError as e:
        raise AugmentError(f"sox codec {name}: {e.stderr.decode(errors='ignore').strip()}") from e
    return _fit(np.frombuffer(dec, dtype=np.float32).copy(), len(x))


def gain(audio: np.ndarray, db: float, ceiling: float = 0.99) -> np.ndarray:
    x = np.asarray(audio, dtype=np.float64) * 10 ** (db / 20.0)
    peak = np.abs(x).max() if len(x) else 0.0
    if peak > ceiling:
        x *= ceiling / peak
    return x.astype(np.float32)


# ---------------------------------------------------------------------------- planning a chain
# name -> probability that an augmented utterance gets it (gain: always). The chain applies them
# in this order.
PROBABILITIES = {"speed": 0.4, "pitch": 0.3, "formant": 0.3, "rir": 0.35, "eq": 0.4, "band": 0.25,
                 "noise": 0.6, "codec": 0.2, "gain": 1.0}
NOISE_KINDS = ("white", "pink", "brown", "babble")


def _plan_one(name: str, rng: random.Random, babble_pool: Callable[[random.Random], list]) -> dict:
    if name == "speed":
        return {"factor": round(rng.uniform(0.9, 1.1), 4)}
    if name == "pitch":
        return {"cents": round(rng.uniform(-300, 300), 1)}
    if name == "formant":
        return {"alpha": round(rng.uniform(0.88, 1.12), 4)}
    if name == "rir":
        return {"rt60": round(rng.uniform(0.15, 0.9), 3), "drr_db": round(rng.uniform(-3, 12), 2)}
    if name == "eq":
        return {"bands": [[round(math.exp(rng.uniform(math.log(150), math.log(6000))), 1),
                           round(rng.uniform(0.7, 2.5), 3), round(rng.uniform(-10, 10), 2)]
                          for _ in range(rng.randint(1, 3))]}
    if name == "band":
        kind = rng.choice(["highpass", "lowpass", "telephone"])
        if kind == "highpass":
            return {"low": round(rng.uniform(80, 300)), "high": 0}
        if kind == "lowpass":
            return {"low": 0, "high": round(rng.uniform(3000, 7000))}
        return {"low": 300, "high": 3400}
    if name == "noise":
        kind = rng.choice(NOISE_KINDS)
        p = {"kind": kind, "snr_db": round(rng.uniform(3, 30), 2)}
        if kind == "babble":
            p["talkers"] = babble_pool(rng)
        return p
    if name == "codec":
        c = rng.choice(sorted(CODECS))
        q = rng.randint(0, 7) if c == "amr-nb" else (rng.choice([-1, 0, 1]) if c == "vorbis" else 0)
        return {"name": c, "quality": q}
    if name == "gain":
        return {"db": round(rng.uniform(-12, 3), 2)}
    raise KeyError(name)


def plan_chain(rng: random.Random, babble_pool: Optional[Callable[[random.Random], list]] = None) -> list:
    """Which augmentations one utterance gets, with their parameters: ``[[name, params], ...]``.
    ``babble_pool(rng)`` returns the talkers of a babble noise (a JSON-able list the renderer
    understands); without it babble is not chosen."""
    chain = []
    for name, p in PROBABILITIES.items():
        if rng.random() < p:
            params = _plan_one(name, rng, babble_pool or (lambda r: []))
            if name == "noise" and params["kind"] == "babble" and not params["talkers"]:
                params = {"kind": "pink", "snr_db": params["snr_db"]}
            chain.append([name, params])
    return chain


def apply_chain(audio: np.ndarray, chain: Sequence, seed: int,
                talkers: Optional[Callable[[list], list[np.ndarray]]] = None) -> np.ndarray:
    """Run a planned chain. ``talkers(spec)`` renders a babble noise's talkers (a list of arrays)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(audio, dtype=np.float32)
    for name, p in chain:
        if name == "speed":
            x = speed(x, p["factor"])
        elif name == "pitch":
            x = pitch(x, p["cents"])
        elif name == "formant":
            x = formant(x, p["alpha"])
        elif name == "rir":
            x = rir(x, p["rt60"], p["drr_db"], rng)
        elif name == "eq":
            x = eq(x, p["bands"])
        elif name == "band":
            x = band(x, p["low"], p["high"])
        elif name == "noise":
            if p["kind"] == "babble":
                if talkers is None:
                    raise AugmentError("babble noise needs a talker renderer")
                noise = babble(len(x), talkers(p["talkers"]), rng)
            else:
                noise = colored_noise(len(x), p["kind"], rng)
            x = add_noise(x, p["snr_db"], noise)
        elif name == "codec":
            x = codec(x, p["name"], p.get("quality", 0))
        elif name == "gain":
            x = gain(x, p["db"])
        else:
            raise AugmentError(f"unknown augmentation {name!r}")
    return gain(x, 0.0)  # never above full scale


def summarize(chain: Sequence) -> list[str]:
    """Short labels for corpus statistics: ``noise:babble``, ``codec:gsm``, ``band:telephone``..."""
    out = []
    for name, p in chain:
        if name == "noise":
            out.append(f"noise:{p['kind']}")
        elif name == "codec":
            out.append(f"codec:{p['name']}")
        elif name == "band":
            out.append("band:" + ("telephone" if (p["low"], p["high"]) == (300, 3400)
                                  else "highpass" if p["low"] else "lowpass"))
        else:
            out.append(name)
    return out
