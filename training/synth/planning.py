"""What decides each utterance's audio (:class:`Rendering`): voice splits, and the legacy and
full plans (engine, voice, speed, pitch, augmentation)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

from training.synth.engines import ENGINES, voice_settings

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


def split_voices(seed: int, held_out: float, voices: Optional[Sequence[str]] = None,
                 salt: str = "") -> tuple[list[str], list[str]]:
    """(train voices, dev/test voices) of one engine; espeak-ng's are drawn without a salt."""
    voices = list(voices) if voices is not None else voice_settings()
    rng = random.Random(f"{seed}/{salt}" if salt else seed)
    rng.shuffle(voices)
    n = max(1, int(round(len(voices) * held_out)))
    if n >= len(voices):
        n = len(voices) - 1 if len(voices) > 1 else 0
    return sorted(voices[n:]), sorted(voices[:n])


def plan_rendering(text: str, voices: Sequence[str], rng: random.Random, augment: bool) -> Rendering:
    """The legacy plan of one espeak-ng utterance (the draws of the espeak-ng-only corpus)."""
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
