"""A synthetic English speech corpus (``w2v data synth``): every English speech engine Debian has,
deterministic, offline, resumable. docs/corpus.md is the user's guide.

Modules:

* :mod:`training.synth.text` — sentences: English sentences of 4-14 plain words from Debian's
  ``fortunes`` collections, optionally WordNet's example sentences (``--text-source wordnet``), or
  any text files given with ``--text``.
* :mod:`training.synth.engines` — the engines (:data:`ENGINES`, one small class each, one interface:
  text, voice, speed, pitch, seed -> float32 16 kHz samples): espeak-ng in several English accents
  and voice variants; flite's voices (kal, kal16, awb, rms, slt); festival's (kal and ked diphones,
  slt HTS).
* :mod:`training.synth.planning` — what decides each utterance's audio (:class:`Rendering`):
  voice splits and the ``legacy`` and ``full`` plans.
* :mod:`training.synth.rendering` — one utterance from its plan. Augmentation: ``legacy`` (gain,
  white/pink noise, a little reverb, telephone band: the default-model recipe's espeak-ng-only
  corpus) or ``full`` (training.augment: speed, pitch and formant perturbation, room impulse
  responses, EQ and band limits, white/pink/brown/babble noise at varied SNR, codecs). Only train
  and unlabeled utterances are augmented.
* :mod:`training.synth.corpus` — the splits and the corpus. Sentences are split first (no two
  splits share a sentence). dev and test use held-out voice settings of the training engines (a
  share of each engine's voices that train never hears); one engine (``--held-out-engine``,
  festival by default) is held out of training entirely and speaks only ``test_heldout_engine``;
  ``unlabeled`` (``--unlabeled N``) speaks sentences that no labeled split has. Everything is a
  function of ``--seed`` and the utterance index, so the same command gives the same corpus (the
  engines' versions aside), and an interrupted run resumes: files already written (each appears
  only once complete) are kept unless the plan recorded for them differs from the new one.
* :mod:`training.synth.cli` — the ``w2v data synth`` handler.

The names below are the package's interface; import them from ``training.synth``.
"""

from __future__ import annotations

from training.synth.cli import cmd_synth, list_voices
from training.synth.corpus import SPLITS, Plan, _same_plan, plan_corpus, synthesize_corpus
from training.synth.engines import (ACCENTS, DEFAULT_ENGINES, ENGINES, VARIANTS, Engine, EspeakNG, Festival, Flite,
                                    speak, voice_id, voice_settings)
from training.synth.errors import SynthError
from training.synth.planning import Rendering, plan_full, plan_legacy, plan_rendering, split_voices
from training.synth.rendering import augment, render, synthesize
from training.synth.text import (FORTUNE_FILES, FORTUNES_DIR, MAX_WORDS, MIN_WORDS, TEXT_SOURCES, WORDNET_DIR,
                                 collect_sentences, fortune_blocks, normalize_sentence, split_sentences,
                                 wordnet_examples)

__all__ = [
    "ACCENTS", "DEFAULT_ENGINES", "ENGINES", "FORTUNE_FILES", "FORTUNES_DIR", "MAX_WORDS", "MIN_WORDS", "SPLITS",
    "TEXT_SOURCES", "VARIANTS", "WORDNET_DIR", "Engine", "EspeakNG", "Festival", "Flite", "Plan", "Rendering",
    "SynthError", "_same_plan", "augment", "cmd_synth", "collect_sentences", "fortune_blocks", "list_voices",
    "normalize_sentence", "plan_corpus", "plan_full", "plan_legacy", "plan_rendering", "render", "speak",
    "split_sentences", "split_voices", "synthesize", "synthesize_corpus", "voice_id", "voice_settings",
    "wordnet_examples",
]
