"""The speech engines (espeak-ng, flite, festival): one small class each, one interface (text,
voice, speed, pitch, seed -> float32 16 kHz samples). Speed and pitch are factors of the voice's
own; an engine applies them natively where it can, else with sox."""

from __future__ import annotations

import math
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from training.synth.errors import SynthError
from w2v_serve.audio import SAMPLE_RATE, load_audio


ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
            "+klatt", "+klatt2", "+klatt3")


def voice_settings() -> list[str]:
    """espeak-ng's English voice settings: every accent with every voice variant."""
    return [a + v for a in ACCENTS for v in VARIANTS]


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
        # The espeak-ng-only corpus's draws: 125-205 words/min, pitch 20-80.
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
    """espeak-ng with its own units (words/min, pitch 0-99)."""
    return ENGINES["espeak-ng"].speak(text, voice, speed / 175, pitch / 50)


def voice_id(engine: str, voice: str) -> str:
    """How summaries name a voice: espeak-ng's bare, the other engines' as engine:voice."""
    return voice if engine == "espeak-ng" else f"{engine}:{voice}"
