"""``w2v data ...``: data preparation (manifests; the synthetic speech corpus of espeak-ng,
flite and festival voices). Parsers only: the handlers live in training.manifest and training.synth."""

from __future__ import annotations

import argparse

from w2v_serve.cli import handler


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("manifest", help="write fairseq .tsv/.ltr/.wrd or JSON-lines manifests for a folder or file list",
                       description="Scan audio files, read their lengths (at 16 kHz), attach transcripts (a "
                                   "<name>.txt beside each file, or --transcripts), split off a validation share.")
    p.add_argument("source", metavar="DIR|LIST", help="folder (searched recursively) or a text file with one path per line")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for train.* and valid.*")
    p.add_argument("--format", choices=("tsv", "jsonl"), default="tsv",
                   help="tsv: fairseq train.tsv (+ .ltr/.wrd); jsonl: train.jsonl with path, text, num_samples")
    p.add_argument("--valid-percent", type=float, default=0.0, metavar="F", help="share for valid.* (0..1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--ext", default="wav,flac,ogg", help="audio extensions to collect (comma-separated)")
    p.add_argument("--transcripts", metavar="FILE", help="id<TAB>text lines or JSON lines (path|id, text)")
    p.add_argument("--name", default="train", help="name of the main split (default: train)")
    p.set_defaults(func=handler("training.manifest:cmd_manifest"))


def _add_synth(data_sub: argparse._SubParsersAction) -> None:
    p = data_sub.add_parser(
        "synth", help="synthesize an English speech corpus (espeak-ng, flite, festival; augmentation)",
        description="Render a deterministic, resumable English speech corpus with Debian's speech engines: "
                    "train/dev/test (dev/test in held-out voices), test_heldout_engine (one engine's voices "
                    "only, never in training) and optionally unlabeled audio for pre-training. docs/corpus.md "
                    "has the details. `--engines espeak-ng` reproduces corpora made before engines were added.")
    p.add_argument("--out", metavar="DIR", help="corpus folder (required unless --list-voices)")
    p.add_argument("--train", type=int, default=12000, help="training utterances (default 12000)")
    p.add_argument("--dev", type=int, default=300)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", action="append", default=None, metavar="LIST",
                   help="comma-separated engines (default: espeak-ng,flite,festival); "
                        "`--engines espeak-ng` gives the espeak-ng-only corpus of the default-model recipe")
    p.add_argument("--held-out-engine", default=None, metavar="ENGINE|none",
                   help="engine kept out of train/dev/test; it speaks only the test_heldout_engine split "
                        "(default: festival; ignored when not among --engines)")
    p.add_argument("--test-heldout", type=int, default=None, metavar="N",
                   help="utterances of the test_heldout_engine split (default: as many as --test)")
    p.add_argument("--unlabeled", type=int, default=0, metavar="N",
                   help="extra utterances of sentences no labeled split has, written as split `unlabeled` "
                        "(manifest without text) for pre-training")
    p.add_argument("--held-out-voices", type=float, default=0.15,
                   help="share of each training engine's voice settings kept for dev/test only")
    p.add_argument("--augmentation", choices=("auto", "legacy", "full"), default="auto",
                   help="legacy: gain, white/pink noise, a little reverb, the telephone band; full: speed, pitch, formant, rooms, "
                        "EQ, band limits, noise incl. babble, codecs (auto: legacy for an espeak-ng-only corpus)")
    p.add_argument("--augment", type=float, default=None, metavar="F",
                   help="share of train/unlabeled utterances augmented (default 0.5 legacy, 0.8 full)")
    p.add_argument("--text", action="append", default=[], metavar="FILE",
                   help="text file(s) to take sentences from (instead of --text-source)")
    p.add_argument("--text-source", action="append", default=[], metavar="LIST",
                   help="built-in sentence sources, comma-separated: fortunes (default), wordnet "
                        "(WordNet's example sentences, Debian wordnet-base)")
    p.add_argument("--workers", type=int, default=0, help="parallel rendering workers (default: all cores)")
    p.add_argument("--list-voices", action="store_true", help="list the engines, whether they run here, their voices")
    p.set_defaults(func=handler("training.synth:cmd_synth"))


def _add_subset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subset", help="a labeled subset of a manifest by duration (10 min / 1 h / 10 h splits)",
                       description="The first utterances of a seeded shuffle until --hours of audio: with one "
                                   "seed, a smaller subset is part of a larger one (as the paper's splits).")
    p.add_argument("manifest", metavar="MANIFEST", help="a .tsv (with .ltr/.wrd beside it) or .jsonl manifest")
    p.add_argument("--hours", type=float, required=True, metavar="H", help="audio to take, e.g. 0.1667 (10 min)")
    p.add_argument("--out", required=True, metavar="PREFIX", help="DIR/NAME: writes NAME.tsv (+ .ltr, .wrd) in DIR")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=handler("training.manifest:cmd_subset"))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare training data (manifests, synthetic corpus)")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    _add_manifest(data_sub)
    _add_synth(data_sub)
    _add_subset(data_sub)
