"""``w2v wav2vec-u prepare``: a corpus and a pre-trained checkpoint -> a wav2vec-U work folder.

Layout of the work folder (fairseq's names where it has them)::

    phones.json              inventory, folding table, counts (phonemize.PhoneSet)
    text.txt, text.phn       the unpaired sentences and their phones (none is a corpus transcript)
    SPLIT.tsv, SPLIT.wrd     the chosen utterances (train, test) and their words
    SPLIT.phn                their reference phones (for the probe and for scoring only)
    SPLIT.npy, SPLIT.lengths the layer's frames (float32, concatenated) and frames per utterance
    SPLIT.clusters           k-means id per frame, one utterance per line (fairseq's .src)
    centroids.npy            k-means centroids [k, d]
    pca_A.npy, pca_b.npy     PCA: x @ A + b
    segments/SPLIT.npy/.lengths   PCA'd, cluster-merged, adjacent-pair pooled: the GAN's input
    prepare.json             settings and statistics
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from training.checkpoint import load_checkpoint
from training.manifest import ManifestError, Utterance, read_manifest
from training.wav2vec_u.features import (
    FeatureError,
    FeatureSet,
    assign,
    check_layer,
    default_layer,
    kmeans,
    layer_features,
    mean_pool,
    merge_clusters,
    pca_apply,
    pca_fit,
    trim_silence,
)
from training.wav2vec_u.phonemize import (
    SIL,
    PhoneSet,
    build_phone_set,
    corpus_sentences,
    espeak_mnemonics,
    fold_sequence,
    phone_line,
    unpaired_sentences,
)
from w2v_serve.audio import SAMPLE_RATE, load_audio

log = logging.getLogger("w2v.wav2vec_u")

SPLITS = ("train", "test")


class PrepareError(ValueError):
    """A corpus or work folder that cannot be used (missing splits, no utterances left)."""


@dataclass
class PrepareConfig:
    layer: Optional[int] = None            # None: the middle block
    clusters: int = 64                     # fairseq: CLUS128
    kmeans_iters: int = 50                 # faiss's niter in fairseq's script
    kmeans_redo: int = 1                   # fairseq: nredo=3
    pca_dim: int = 128                     # fairseq: 512 (of 1024)
    pool: bool = True                      # mean_pool.py's adjacent-pair pooling after the merge
    voices: tuple[str, ...] = ("en-us",)   # voice-name prefixes kept (espeak-ng); () keeps all
    max_train_utts: int = 2000
    max_test_utts: int = 300
    text_sources: tuple[str, ...] = ("fortunes", "wordnet")
    text_files: tuple[str, ...] = ()
    max_text_sentences: int = 20000
    min_phone_count: int = 20
    keep_pauses: bool = True
    phonemizer_voice: str = "en-us"
    trim_db: float = -40.0                 # 0: no silence trimming
    seed: int = 0
    extra: dict = field(default_factory=dict)


def select_utterances(corpus: Path, split: str, voices: Sequence[str], limit: int, seed: int) -> tuple[list[Utterance], dict]:
    """The utterances of ``corpus/split.tsv`` (or ``.jsonl``) in the wanted voices (by the
    corpus's ``split.renderings.jsonl``: espeak-ng voices whose name starts with one of
    ``voices``), a seeded random ``limit`` of them (0: all), in manifest order."""
    tsv, jsonl = corpus / f"{split}.tsv", corpus / f"{split}.jsonl"
    manifest = tsv if tsv.exists() else jsonl
    if not manifest.exists():
        raise PrepareError(f"{corpus}: no {split}.tsv or {split}.jsonl (a folder made by `w2v data synth`)")
    try:
        utts = read_manifest(manifest, labels="wrd")
    except ManifestError as e:
        raise PrepareError(str(e)) from e
    info: dict[str, Any] = {"manifest": str(manifest), "in_manifest": len(utts)}
    rend = corpus / f"{split}.renderings.jsonl"
    if voices and rend.exists():
        by_path = {}
        for line in rend.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                by_path[str((corpus / d["path"]).resolve())] = (d.get("engine", "espeak-ng"), d.get("voice", ""))
        keep = []
        for u in utts:
            engine, voice = by_path.get(str(u.path.resolve()), ("", ""))
            if engine == "espeak-ng" and any(voice.startswith(v) for v in voices):
                keep.append(u)
        utts = keep
        info["voices"] = list(voices)
    elif voices:
        info["voices"] = "not filtered (no renderings file)"
        log.warning("%s: no %s; the voice filter %s is not applied", corpus, rend.name, ",".join(voices))
    utts = [u for u in utts if u.text]
    if limit and len(utts) > limit:
        chosen = set(random.Random(f"{seed}/{split}").sample(range(len(utts)), limit))
        utts = [u for i, u in enumerate(utts) if i in chosen]
    info["selected"] = len(utts)
    if not utts:
        raise PrepareError(f"{manifest}: no labeled utterances left in voices {','.join(voices) or 'any'}")
    return utts, info


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def extract_split(model: Any, utts: Sequence[Utterance], layer: int, trim_db: float) -> FeatureSet:
    items = []
    t0 = time.monotonic()
    audio_s = 0.0
    for i, u in enumerate(utts):
        audio = load_audio(u.path, SAMPLE_RATE)
        if trim_db:
            audio = trim_silence(audio, trim_db)
        audio_s += len(audio) / SAMPLE_RATE
        x, _ = layer_features(model, torch.from_numpy(audio).unsqueeze(0), None, layer)
        items.append(x[0].numpy())
        if (i + 1) % 200 == 0:
            log.info("features: %d/%d utterances (%.0f s of audio in %.0f s)", i + 1, len(utts), audio_s,
                     time.monotonic() - t0)
    return FeatureSet.from_list(items, model.config.embed_dim)


def prepare(checkpoint: Path, corpus: Path, out: Path, cfg: PrepareConfig) -> dict[str, Any]:
    t0 = time.monotonic()
    ckpt = load_checkpoint(checkpoint)          # fails first: a missing or foreign checkpoint
    model = ckpt.build_model()
    layer = default_layer(model) if cfg.layer is None else check_layer(model, cfg.layer)
    if not 0 < cfg.pca_dim <= model.config.embed_dim:
        raise FeatureError(f"--pca-dim {cfg.pca_dim} must be 1..{model.config.embed_dim} (the layer's width)")
    if not corpus.is_dir():
        raise PrepareError(f"{corpus}: no such corpus folder")
    selected = {s: select_utterances(corpus, s, cfg.voices, cfg.max_train_utts if s == "train" else cfg.max_test_utts,
                                     cfg.seed) for s in SPLITS}
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"checkpoint": str(checkpoint), "corpus": str(corpus), "layer": layer,
                               "num_layers": len(model.encoder.layers), "config": asdict(cfg), "splits": {}}

    # ---- text: unpaired sentences, phone inventory; reference phones of the audio
    exclude = corpus_sentences(corpus)
    sentences = unpaired_sentences(exclude, cfg.text_sources, [Path(p) for p in cfg.text_files],
                                   cfg.max_text_sentences, cfg.seed)
    log.info("phonemizing %d unpaired sentences (none of the corpus's %d transcripts)", len(sentences), len(exclude))
    table: dict = {}
    text_phones = [fold_sequence(r, table, cfg.keep_pauses)
                   for r in espeak_mnemonics(sentences, cfg.phonemizer_voice)]
    phones = build_phone_set(text_phones, table, cfg.min_phone_count, cfg.phonemizer_voice, cfg.keep_pauses)
    kept = [(s, p) for s, p in zip(sentences, text_phones) if len(p) >= 2 and phones.index(p) is not None]
    _write_lines(out / "text.txt", [s for s, _ in kept])
    _write_lines(out / "text.phn", [phone_line(p) for _, p in kept])
    refs: dict[str, list[list[str]]] = {}
    for split, (utts, _) in selected.items():
        raw = espeak_mnemonics([u.text or "" for u in utts], cfg.phonemizer_voice)
        refs[split] = [fold_sequence(r, phones.table, cfg.keep_pauses) for r in raw]
    phones.save(out / "phones.json")
    summary["text"] = {"sentences": len(sentences), "kept": len(kept), "phones": len(phones.phones),
                       "dropped_rare_phones": phones.dropped, "excluded_corpus_sentences": len(exclude)}
    log.info("%d phones (%s); %d text sentences kept", len(phones.phones), " ".join(phones.phones), len(kept))

    # ---- audio: layer features
    feats: dict[str, FeatureSet] = {}
    for split, (utts, info) in selected.items():
        root = Path("/")
        (out / f"{split}.tsv").write_text(f"{root}\n" + "".join(f"{u.path.resolve()}\t{u.num_samples}\n" for u in utts))
        _write_lines(out / f"{split}.wrd", [u.text or "" for u in utts])
        _write_lines(out / f"{split}.phn", [phone_line(p) for p in refs[split]])
        log.info("%s: extracting layer %d of %d utterances", split, layer, len(utts))
        feats[split] = extract_split(model, utts, layer, cfg.trim_db)
        feats[split].save(out / split)
        summary["splits"][split] = {**info, "frames": len(feats[split].data)}

    # ---- k-means on the training frames, a cluster id per frame
    x = torch.from_numpy(np.asarray(feats["train"].data, dtype=np.float32))
    log.info("k-means: %d clusters over %d frames", cfg.clusters, len(x))
    centroids, objective = kmeans(x, cfg.clusters, cfg.kmeans_iters, cfg.kmeans_redo, cfg.seed)
    np.save(out / "centroids.npy", centroids.numpy())
    summary["kmeans"] = {"k": cfg.clusters, "objective_per_frame": objective / len(x)}
    # ---- PCA on the training frames
    a, b = pca_fit(x, cfg.pca_dim)
    np.save(out / "pca_A.npy", a.numpy())
    np.save(out / "pca_b.npy", b.numpy())
    var = x.double().var(0).sum()
    proj_var = pca_apply(x, a, b).double().var(0).sum()
    summary["pca"] = {"dim": cfg.pca_dim, "explained_variance": float(proj_var / var)}
    del x

    # ---- segments: PCA, merge runs of a cluster (mean), pool adjacent pairs
    for split, fs in feats.items():
        clusters, segs = [], []
        for f in fs:
            ft = torch.from_numpy(np.array(f, dtype=np.float32))
            ids, _ = assign(ft, centroids)
            clusters.append(" ".join(map(str, ids.tolist())))
            seg = merge_clusters(pca_apply(ft, a, b), ids)
            segs.append((mean_pool(seg, 0.5) if cfg.pool else seg).numpy())
        _write_lines(out / f"{split}.clusters", clusters)
        seg_set = FeatureSet.from_list(segs, cfg.pca_dim)
        seg_set.save(out / "segments" / split)
        n_ref = sum(len([p for p in r if p != SIL]) for r in refs[split])
        seconds = sum(fs.lengths) * model.hop_length / SAMPLE_RATE
        summary["splits"][split].update({
            "audio_s_after_trim": round(seconds, 1), "segments": len(seg_set.data),
            "segments_per_s": round(len(seg_set.data) / max(seconds, 1e-9), 2),
            "reference_phones_per_s": round(n_ref / max(seconds, 1e-9), 2),
            "segments_per_reference_phone": round(len(seg_set.data) / max(n_ref, 1), 3)})
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    (out / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_refs(work: Path, split: str, phones: PhoneSet, drop_silence: bool = True) -> list[list[str]]:
    lines = (work / f"{split}.phn").read_text(encoding="utf-8").splitlines()
    return [[p for p in line.split() if not (drop_silence and p == SIL)] for line in lines]
