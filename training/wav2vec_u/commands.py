"""Handlers of ``w2v wav2vec-u prepare|probe|train|eval`` (parsers in w2v_serve.cli.wav2vec_u)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Optional

import torch

from training.checkpoint import atomic_torch_save
from training.wav2vec_u.features import FeatureSet
from training.wav2vec_u.gan import GanConfig, GanData, GanError, load_gan, phone_error_rate, train_gan
from training.wav2vec_u.lm import PhoneLM
from training.wav2vec_u.phonemize import SIL, PhoneSet, read_phone_lines
from training.wav2vec_u.prepare import PrepareConfig, load_refs, prepare
from training.wav2vec_u.probe import ProbeConfig, evaluate_probe, train_probe

log = logging.getLogger("w2v.wav2vec_u")


class Wav2vecUError(ValueError):
    """A work folder or model folder that is not ready for the command (printed, exit code 2)."""


def _setup(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _work(path: str) -> tuple[Path, PhoneSet]:
    work = Path(path)
    if not (work / "phones.json").exists() or not (work / "prepare.json").exists():
        raise Wav2vecUError(f"{work}: not a prepared wav2vec-U folder (run `w2v wav2vec-u prepare` first)")
    return work, PhoneSet.load(work / "phones.json")


def _ids(phones: PhoneSet, seqs: list[list[str]], drop_silence: bool) -> list[list[int]]:
    """Phone ids of reference sequences; phones outside the inventory are skipped."""
    index = {p: i for i, p in enumerate(phones.phones)}
    return [[index[p] for p in s if p in index and not (drop_silence and p == SIL)] for s in seqs]


# ---------------------------------------------------------------------------- prepare
def cmd_prepare(args: argparse.Namespace) -> int:
    _setup(args)
    voices = () if args.voices.strip().lower() in ("", "all") else _csv(args.voices)
    cfg = PrepareConfig(layer=args.layer, clusters=args.clusters, kmeans_iters=args.kmeans_iters,
                        kmeans_redo=args.kmeans_redo, pca_dim=args.pca_dim, pool=not args.no_pool, voices=voices,
                        max_train_utts=args.max_train_utts, max_test_utts=args.max_test_utts,
                        text_sources=_csv(args.text_source), text_files=tuple(args.text),
                        max_text_sentences=args.max_text_sentences, min_phone_count=args.min_phone_count,
                        keep_pauses=not args.no_pauses, phonemizer_voice=args.phonemizer_voice,
                        trim_db=args.trim_db, seed=args.seed)
    summary = prepare(Path(args.checkpoint), Path(args.corpus), Path(args.out), cfg)
    print(f"layer {summary['layer']} of {summary['num_layers']}; {summary['text']['phones']} phones; "
          f"{summary['text']['kept']} unpaired text sentences; PCA {cfg.pca_dim} dims "
          f"({summary['pca']['explained_variance']:.1%} of the variance); k-means {cfg.clusters}")
    for split, s in summary["splits"].items():
        print(f"{split}: {s['selected']} utterances, {s['frames']} frames -> {s['segments']} segments "
              f"({s['segments_per_reference_phone']} per reference phone)")
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------------- probe
def cmd_probe(args: argparse.Namespace) -> int:
    _setup(args)
    work, phones = _work(args.work)
    train = FeatureSet.load(work / "train")
    test = FeatureSet.load(work / "test")
    train_t = _ids(phones, load_refs(work, "train", phones), True)
    test_refs = load_refs(work, "test", phones)
    cfg = ProbeConfig(updates=args.updates, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    probe, info = train_probe(train, train_t, len(phones.phones), cfg, args.time_budget)
    res = evaluate_probe(probe, test, [[phones.phones.index(p) if p in phones.phones else -1 for p in r]
                                       for r in test_refs])
    gate = res["per"] <= args.gate
    record = {"per": res["per"], "errors": res["errors"], "ref_phones": res["ref_phones"],
              "utterances": res["utterances"], "gate": args.gate, "passed": gate, **info,
              "examples": [{"ref": " ".join(r), "hyp": " ".join(phones.phones[i] for i in h)}
                           for r, h in list(zip(test_refs, res["hyps"]))[:5]]}
    atomic_torch_save({"state": probe.state_dict(), "dim": train.dim, "phones": phones.phones}, work / "probe.pt")
    (work / "probe.json").write_text(json.dumps(record, indent=2) + "\n")
    verdict = ("passed: the features carry phones" if gate else
               "FAILED: a linear map cannot read phones from this layer; the GAN will not work on it")
    print(f"linear CTC probe: PER {res['per']:.1%} on {res['utterances']} test utterances "
          f"({info['updates']} updates); gate PER <= {args.gate:.0%} {verdict}")
    return 0


# ---------------------------------------------------------------------------- train
def gan_config(args: argparse.Namespace, seed: int) -> GanConfig:
    cfg = GanConfig(seed=seed)
    flags = {"batch_size": args.batch_size, "max_updates": args.updates, "discriminator_dim": args.disc_dim,
             "code_penalty": args.code_penalty, "gradient_penalty": args.gradient_penalty,
             "smoothness_weight": args.smoothness_weight, "lr_generator": args.lr_generator,
             "lr_discriminator": args.lr_discriminator}
    for k, v in flags.items():
        if v is not None:
            setattr(cfg, k, v)
    types = {f.name: f.type for f in fields(GanConfig)}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise Wav2vecUError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        current = getattr(cfg, key)
        if isinstance(current, bool):
            setattr(cfg, key, value.lower() in ("1", "true", "yes", "on"))
        else:
            setattr(cfg, key, type(current)(value))
    return cfg


def _check_gate(work: Path, ignore: bool) -> Optional[dict]:
    path = work / "probe.json"
    if not path.exists():
        if ignore:
            log.warning("no probe result in %s: training without the gate", work)
            return None
        raise Wav2vecUError(f"{work}: run the gate first (`w2v wav2vec-u probe {work}`), or pass --ignore-gate")
    probe = json.loads(path.read_text())
    if not probe["passed"]:
        msg = (f"the linear probe's PER is {probe['per']:.1%} (gate {probe['gate']:.0%}): the features do not "
               "carry phones linearly and the GAN will not find them")
        if not ignore:
            raise Wav2vecUError(msg + "; pass --ignore-gate to train anyway")
        log.warning("%s; training anyway (--ignore-gate)", msg)
    return probe


def cmd_train(args: argparse.Namespace) -> int:
    _setup(args)
    work, phones = _work(args.work)
    probe = _check_gate(work, args.ignore_gate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    segs = FeatureSet.load(work / "segments" / "train", mmap=False)
    text = [phones.index(p) for p in read_phone_lines(work / "text.phn")]
    text_ids = [t for t in text if t]
    if not text_ids:
        raise Wav2vecUError(f"{work}/text.phn: no usable text")
    n_valid = min(args.valid_utts, len(segs) // 5)
    train = FeatureSet.from_list([segs[i] for i in range(n_valid, len(segs))], segs.dim)
    valid = FeatureSet.from_list([segs[i] for i in range(n_valid)], segs.dim) if n_valid else None
    monitor = refs = None
    if (work / "segments" / "test.npy").exists() and not args.no_monitor:
        monitor = FeatureSet.load(work / "segments" / "test", mmap=False)
        refs = _ids(phones, load_refs(work, "test", phones), True)
    lm = PhoneLM([[p for p in line if p != SIL] for line in read_phone_lines(work / "text.phn")], args.lm_order)
    data = GanData(train, text_ids, phones.silence, valid, monitor, refs)
    seeds = [int(s) for s in _csv(args.seeds)] or [0]
    shutil.copyfile(work / "phones.json", out / "phones.json")
    runs = []
    for seed in seeds:
        cfg = gan_config(args, seed)
        run_dir = out / f"seed{seed}" if len(seeds) > 1 else out
        log.info("GAN seed %d: %d training / %d validation utterances, %d text sentences, %d phones, %s",
                 seed, len(train), n_valid, len(text_ids), len(phones.phones),
                 " ".join(f"{k}={v}" for k, v in asdict(cfg).items()))
        res = train_gan(data, phones, cfg, run_dir, lm, args.log_interval, args.eval_interval, not args.no_resume,
                        args.time_budget / len(seeds) if args.time_budget else 0.0)
        runs.append({"seed": seed, "dir": str(run_dir), **res})
    best = min(runs, key=lambda r: r["best_weighted_lm_ppl"])
    if len(seeds) > 1:
        shutil.copyfile(Path(best["dir"]) / "checkpoint_best.pt", out / "checkpoint_best.pt")
    summary = {"work": str(work), "seeds": seeds, "selected_seed": best["seed"],
               "selection": "lowest weighted_lm_ppl (LM perplexity / vocabulary usage^2) on held-out training audio",
               "probe_per": probe["per"] if probe else None, "runs": runs}
    (out / "train.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    last = best["history"][-1] if best["history"] else {}
    metric = best["best_weighted_lm_ppl"]
    print(f"GAN: {best['updates']} updates (seed {best['seed']}, {best['elapsed_s']} s); best weighted LM "
          f"perplexity {metric:.2f}" + (f"; last monitor PER {last['monitor_per']:.1%}" if "monitor_per" in last else "")
          if math.isfinite(metric) else f"GAN: {best['updates']} updates; no unsupervised metric (no validation audio)")
    print(f"wrote {out}/checkpoint_best.pt")
    return 0


# ---------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    _setup(args)
    model_dir = Path(args.model)
    ckpt = model_dir / f"checkpoint_{args.checkpoint}.pt" if args.checkpoint in ("best", "last") else Path(args.checkpoint)
    if not ckpt.exists():
        raise Wav2vecUError(f"{ckpt}: no such GAN checkpoint (train with `w2v wav2vec-u train` first)")
    model, state = load_gan(ckpt)
    work, phones = _work(args.work)
    if state["phones"]["phones"] != phones.phones:
        raise GanError(f"{ckpt} was trained with another phone inventory than {work}/phones.json")
    segs = FeatureSet.load(work / "segments" / args.split, mmap=False)
    if segs.dim != model.input_dim:
        raise GanError(f"{ckpt} takes {model.input_dim}-dim segments; {work} has {segs.dim}")
    refs = load_refs(work, args.split, phones)
    hyps = [[phones.phones[i] for i in h] for h in model.decode(list(segs), phones.silence)]
    per, errors, n = phone_error_rate(refs, hyps)
    probe = json.loads((work / "probe.json").read_text()) if (work / "probe.json").exists() else None
    result: dict[str, Any] = {"split": args.split, "checkpoint": str(ckpt), "update": state["update"],
                              "gan_per": per, "errors": errors, "ref_phones": n, "utterances": len(refs),
                              "probe_per": probe["per"] if probe else None,
                              "examples": [{"ref": " ".join(r), "hyp": " ".join(h)}
                                           for r, h in list(zip(refs, hyps))[:5]]}
    (model_dir / f"eval_{args.split}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.split}: GAN PER {per:.1%} ({errors}/{n} over {len(refs)} utterances, update {state['update']})"
          + (f"; linear probe PER {probe['per']:.1%}" if probe else ""))
    return 0
