"""The corpus: the plan of every utterance of every split (written before any audio), rendering
in worker processes, resuming, manifests and the summary."""

from __future__ import annotations

import json
import os
import random
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Optional, Sequence

import soundfile as sf

from training.cost import StageCost
from training.synth.engines import ENGINES, voice_id
from training.synth.errors import SynthError
from training.synth.planning import Rendering, plan_full, plan_legacy, split_voices
from training.synth.rendering import render
from training.synth.text import collect_sentences
from w2v_serve.audio import SAMPLE_RATE


SPLITS = ("train", "dev", "test", "test_heldout_engine", "unlabeled")


@dataclass
class Plan:
    """The whole corpus before any audio: per utterance (split, path, rendering, seed)."""

    jobs: list
    meta: list
    info: dict


def _record(path: Path, out_dir: Path, r: Rendering, seed: int) -> dict:
    return json.loads(json.dumps({"path": str(path.relative_to(out_dir)), **asdict(r), "seed": seed}))


def _same_plan(old: dict, new: dict) -> bool:
    """Whether a file recorded with ``old`` is the one ``new`` plans. A record without an
    ``engine`` field is an espeak-ng record in espeak-ng's own units (words/min, pitch 0-99) with
    fewer fields: compare what it has."""
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
    defaults of this function are the espeak-ng-only corpus of the default-model recipe; the
    command's default engines are all three (:data:`DEFAULT_ENGINES`)."""
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
